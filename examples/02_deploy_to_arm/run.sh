#!/usr/bin/env bash
# Compile the demo Tiny for this CPU and for a Raspberry Pi 4 class board, and verify both:
# the x86_64 bundle here, the aarch64 bundle on the emulated ARM device (qemu) over TVM RPC and
# through its native C++ runner. Run from the repository root after README command (a).
set -euo pipefail
BX=${BX:-.venv/bin/bhvit-export}
[ -f out/demo.onnx ] || { echo "run README command (a) first (it writes out/demo.onnx)" >&2; exit 2; }

$BX compile out/demo.onnx -o out/demo-x86_64
$BX verify out/demo-x86_64 --runs 10

$BX compile out/demo.onnx --target aarch64 --mcpu cortex-a72 -o out/demo-aarch64.tar
$BX verify out/demo-aarch64.tar --native --runs 2 --warmup 1      # the C++ runner under qemu

$BX emulate --port 9090 &                                          # an emulated board on loopback
EMU=$!
trap 'kill $EMU 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/9090) 2>/dev/null && break; sleep 0.2; done
$BX verify out/demo-aarch64.tar --rpc 127.0.0.1:9090 --runs 2 --warmup 1
