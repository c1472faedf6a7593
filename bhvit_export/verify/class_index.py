"""Which class index of the model each ``--images`` class folder is: ``--labels``, ImageNet, or sorted order.

torchvision's ImageFolder numbers the folders in sorted order, which is right only when the folder
holds *every* class of the model: a 10-class sample of ImageNet's validation set would be labelled
0..9 and scored against the wrong logits. So:

- ``--labels FILE`` maps folder names to indices: JSON (a list of names in index order; ``{name:
  index}``; or Keras' ``{"0": ["n01440764", "tench"], ...}``) or TXT (one class per line in index
  order, the first word is the folder name, as in ImageNet's ``LOC_synset_mapping.txt``). It must
  list exactly as many classes as the model outputs.
- without it, a 1000-class model whose folders are WordNet IDs (``n01440764``) uses ImageNet-1k's
  synset order (the sorted list of its 1000 WNIDs, ``imagenet_synsets.txt``), which is how the
  official training numbered them;
- otherwise the folders must be exactly the model's class count, in sorted order.

Anything else is refused: a top-1 against mismatched labels is a number that means nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from ..errors import BundleError

SYNSETS_FILE = Path(__file__).with_name("imagenet_synsets.txt")
WNID = re.compile(r"n\d{8}")
#: A class-index file is a small text file; refuse anything that could exhaust memory.
MAX_LABELS_BYTES = 64 << 20


def imagenet_synsets() -> list[str]:
    """ImageNet-1k's 1000 WNIDs in class-index order."""
    return SYNSETS_FILE.read_text(encoding="ascii").split()


def _names_from_json(obj: Any, path: Path) -> list[str]:
    if isinstance(obj, list) and all(isinstance(v, str) for v in obj):
        return list(obj)
    if isinstance(obj, dict) and obj and all(isinstance(v, int) for v in obj.values()):
        idx = {int(v): str(k) for k, v in obj.items()}
        if sorted(idx) != list(range(len(obj))):
            raise BundleError(f"--labels {path}: the indices are not 0..{len(obj) - 1}, each once")
        return [idx[i] for i in range(len(obj))]
    if isinstance(obj, dict) and obj and all(str(k).isdigit() for k in obj):
        keys = sorted(obj, key=int)
        if [int(k) for k in keys] != list(range(len(keys))):
            raise BundleError(f"--labels {path}: the keys are not 0..{len(keys) - 1}")
        vals = [obj[k] for k in keys]
        return [str(v[0]) if isinstance(v, list) and v else str(v) for v in vals]
    raise BundleError(
        f"--labels {path}: expected a list of class names, {{name: index}}, or {{\"0\": [\"n01440764\", \"tench\"], ...}}"
    )


def read_labels(path: Path) -> list[str]:
    """Folder names in class-index order from a JSON or TXT class-index file."""
    if not path.is_file():
        raise BundleError(f"--labels {path}: no such file")
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise BundleError(f"--labels {path}: {path.stat().st_size} bytes is not a class-index file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            names = _names_from_json(json.loads(text), path)
        except json.JSONDecodeError as e:
            raise BundleError(f"--labels {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        names = [line.split()[0] for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise BundleError(f"--labels {path}: some class names appear twice")
    return names


def folder_indices(folders: list[str], num_classes: int, labels: Optional[Path], root: Path) -> tuple[dict[str, int], str]:
    """``{folder: class index}`` and where the mapping came from (for the report)."""
    if labels is not None:
        names, source = read_labels(labels), f"--labels {labels.name}"
        if len(names) != num_classes:
            raise BundleError(f"--labels {labels} lists {len(names)} classes, the model outputs {num_classes}")
    elif num_classes == 1000 and all(WNID.fullmatch(f) for f in folders):
        names, source = imagenet_synsets(), "ImageNet-1k synset order"
    else:
        if len(folders) != num_classes:
            raise BundleError(
                f"--images {root} has {len(folders)} class folders, the model outputs {num_classes} classes: "
                "pass --labels FILE (JSON or TXT, the model's classes in index order) to say which folder is which class"
            )
        return {f: i for i, f in enumerate(folders)}, "sorted folder names (ImageFolder)"
    index = {n: i for i, n in enumerate(names)}
    unknown = [f for f in folders if f not in index]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise BundleError(f"--images {root}: class folders not in {source}: {', '.join(unknown[:5])}{more}")
    return {f: index[f] for f in folders}, source
