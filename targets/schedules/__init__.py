"""Schedules, one folder per target: :mod:`.cpu` (dlight-style rules for the float part of the
model, llvm targets) and :mod:`.gpu` (the CUDA loop nests of the packed kernels)."""
