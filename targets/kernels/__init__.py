"""Packed-bit compute kernels (numpy references and TVM TE/TIR kernels) for the ``bhvit`` ops.

Every kernel follows ``docs/packing.md``: bit 1 means -1, uint64 words, little-endian bit order,
zero padding bits. Importing this package does not import TVM; only the kernel modules do, so the
numpy references stay usable where TVM is not installed.
"""
