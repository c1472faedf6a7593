"""torch -> ONNX: the float reference graph, and the fused graph built from it by ``passes``."""

# ``from bhvit_export import export``: this package is also the public function (see ../api.py).
from ..api import export as _api_export, make_callable as _make_callable  # noqa: E402

_make_callable(__name__, _api_export)
