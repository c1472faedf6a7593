"""The PNG of the end-to-end results: median latency per system and configuration (log scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bhvit_export.errors import BhvitError

from .end_to_end import ConfigResult
from .systems import SYSTEMS


def write_png(results: Sequence[ConfigResult], path: Path) -> Path:
    """Grouped bars, one group per configuration; needs matplotlib (the ``bench`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BhvitError("--plot needs matplotlib: pip install 'bhvit-export[bench]'") from None
    from bhvit_export.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(results) + 2), 4.5))
    width = 0.8 / len(SYSTEMS)
    for i, s in enumerate(SYSTEMS):
        xs = [j + i * width for j, r in enumerate(results) if s in r.latency]
        ys = [r.latency[s]["median"] for r in results if s in r.latency]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(results))])
    ax.set_xticklabels([r.config.label for r in results], rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("median latency per batch (ms, log)")
    ax.set_title("BHViT end to end: bhvit-export vs onnxruntime fp32, TVM fp32, PyTorch eager")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
        tmp.chmod(0o644)  # mkstemp makes 0600; a plot is meant to be shared
    plt.close(fig)
    return path
