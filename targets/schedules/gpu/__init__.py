"""CUDA schedules: :mod:`.packed` holds the loop nests of the packed kernels (bit-packing stages and
popcount GEMMs), which the kernel modules dispatch to when the target's kind is ``cuda``."""
