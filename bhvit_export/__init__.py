"""bhvit-export: BHViT checkpoints of the official training code -> ONNX -> TVM.

Importing the package is cheap on purpose (no torch, no onnx): the CLI's ``--help`` and
``--version`` must answer at once. The public API is ``from bhvit_export import export, compile,
verify`` (``api.py``: the commands' options, the commands' reports; each imports its stage lazily).
"""

__version__ = "0.1.0"
