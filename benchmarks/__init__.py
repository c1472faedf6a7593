"""Benchmarks (``bhvit-export bench``): speed claims live here, never in the tests.

``artifacts`` builds and caches what is timed (the PyTorch model, the reference and fused ONNX, the
TVM builds), ``systems`` wraps each system behind one call, ``end_to_end`` runs them interleaved and
reports, ``kernels`` measures the binary GEMMs against the popcount roofline, ``plot`` draws the PNG.
"""
