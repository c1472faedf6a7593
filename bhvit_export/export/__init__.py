"""torch -> ONNX: the float reference graph, and the fused graph built from it by ``passes``."""
