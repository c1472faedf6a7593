"""ONNX graph passes: the float reference graph -> packed-bit ``bhvit`` ops (see pipeline.py)."""
