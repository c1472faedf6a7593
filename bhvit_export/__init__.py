"""bhvit-export: BHViT checkpoints of the official training code -> ONNX -> TVM.

Importing the package is cheap on purpose (no torch, no onnx): the CLI's ``--help`` and
``--version`` must answer at once. Import the stage you need, e.g.
``from bhvit_export.checkpoint import load_checkpoint``.
"""

__version__ = "0.1.0"
