"""``bhvit-export verify``: run a bundle where it will be deployed and compare it with its reference.

``metrics`` (accuracy numbers and the pass criteria), ``runners`` (where the library runs: this
process, a TVM RPC server, a tracker's device, the native runner), ``latency`` (timing summaries),
``verify`` (the command's library call). Imports no torch and no onnx: a device needs numpy, click
and the TVM runtime only.
"""
