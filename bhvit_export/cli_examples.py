"""The "Examples" section at the end of every ``--help`` (click epilogs), kept apart from the option code.

``\\b`` tells click not to rewrap the paragraph that follows, so each example stays on its own line.
"""

from __future__ import annotations


def _examples(*lines: str) -> str:
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


TOP = _examples(
    "bhvit-export to-onnx checkpoint.pth -o model.onnx      # fused graph, validated in onnxruntime",
    "bhvit-export inspect model.onnx                         # ops, BOPs/FLOPs, size",
    "bhvit-export compile model.onnx -o bundle -t aarch64    # TVM bundle for a Cortex-A72",
    "bhvit-export verify bundle                              # accuracy and latency on this machine",
    "bhvit-export targets                                    # what --target accepts",
)
TO_ONNX = _examples(
    "bhvit-export to-onnx checkpoint.pth -o model.onnx",
    "bhvit-export to-onnx checkpoint.pth -o model-ref.onnx --reference   # float graph, standard ONNX ops",
    "bhvit-export to-onnx checkpoint.pth -o model.onnx --entry model_ema --config config.json",
    "bhvit-export to-onnx checkpoint.pth -o model.onnx --no-validate --json > report.json",
)
INSPECT = _examples(
    "bhvit-export inspect model.onnx",
    "bhvit-export inspect model.onnx --json | jq .binary_ops",
    "bhvit-export inspect model.onnx --ops                     # + each bhvit op's inputs, attributes, cost",
)
COMPILE = _examples(
    "bhvit-export compile model.onnx -o bundle                  # this x86-64 CPU",
    "bhvit-export compile model.onnx -o bundle -t x86_64 --mcpu haswell",
    "bhvit-export compile model.onnx -o rpi4.tar -t raspberry-pi/4b-aarch64",
    "bhvit-export compile model.onnx -o a53 -t 'llvm -mtriple=aarch64-linux-gnu -mcpu=cortex-a53'",
    "bhvit-export compile model.onnx -o orin -t jetson-orin --batch 8",
    "bhvit-export compile model.onnx -o bundle --json > compile.json   # progress on stderr",
)
VERIFY = _examples(
    "bhvit-export verify bundle",
    "bhvit-export verify bundle --threads 4 --runs 100 --profile",
    "bhvit-export verify bundle-a72 --rpc 127.0.0.1:9090        # with `bhvit-export emulate` running",
    "bhvit-export verify bundle-a72 --native                    # the C++ runner, under qemu here",
    "bhvit-export verify bundle --images val/ --limit 500 --reference model.onnx",
    "bhvit-export verify bundle --images val/ --labels imagenet_class_index.json",
)
EMULATE = _examples(
    "bhvit-export emulate &                                   # aarch64 device on 127.0.0.1:9090",
    "bhvit-export verify bundle-a72 --rpc 127.0.0.1:9090",
    "bhvit-export emulate --port 9191 --host 0.0.0.0          # reachable from other machines",
)
BENCH = _examples(
    "bhvit-export bench --model tiny --batch 1 --threads 2",
    "bhvit-export bench --model tiny --batch 1 --threads 2 --system bhvit --system openvino_fp32",
    "bhvit-export bench --checkpoint checkpoint.pth --batch 1 --threads 2",
    "bhvit-export bench --model tiny --kernels --breakdown --json > bench.json",
)
TARGETS = _examples(
    "bhvit-export targets",
    "bhvit-export targets --json | jq '.tags | keys'",
)
