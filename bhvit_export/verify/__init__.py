"""``bhvit-export verify``: run a bundle where it will be deployed and compare it with its reference.

``metrics`` (accuracy numbers and the pass criteria), ``runners`` (where the library runs: this
process, a TVM RPC server, a tracker's device, the native runner), ``latency`` (timing summaries),
``verify`` (the command's library call). Imports no torch and no onnx: a device needs numpy, click
and the TVM runtime only.
"""

# ``from bhvit_export import verify``: this package is also the public function (see ../api.py).
from ..api import make_callable as _make_callable, verify as _api_verify  # noqa: E402

_make_callable(__name__, _api_verify)
