"""Deployment targets: compute kernels and build helpers for running the packed-bit ops."""
