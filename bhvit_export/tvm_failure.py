"""A TVM step (import, build) that fails: one ``error:`` line, and TVM's full text in a log file.

TVM's errors carry the whole IR of the function that failed and a C++ backtrace, hundreds of lines
that bury the one line a user needs. The step runs through :mod:`bhvit_export.background` (so Ctrl-C
and SIGTERM stop it at once); when it raises, the full text goes to a log file in the system's temp
folder (never beside ``-o``: nothing is written there on failure), and the error names that file.
"""

from __future__ import annotations

import tempfile
import traceback
from typing import Callable, TypeVar

from . import background
from .errors import BhvitError, TargetError

T = TypeVar("T")
#: The longest TVM message line quoted in the error (the log has all of it).
MAX_QUOTE = 300


def _headline(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "Check failed" in ln or "Error" in ln), lines[0] if lines else "")
    name = type(e).__name__
    text = pick if pick.startswith(name) else f"{name}: {pick}" if pick else name
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


def write_log(step: str, e: BaseException) -> str:
    """Write the step's exception, with its traceback and TVM's full message, to a new log file."""
    fd, path = tempfile.mkstemp(prefix="bhvit-export-tvm-", suffix=".log")
    with open(fd, "w", encoding="utf-8", errors="replace") as f:
        f.write(f"bhvit-export compile: TVM failed while {step}\n\n")
        f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return path


def tvm_step(step: str, fn: Callable[[], T]) -> T:
    """``fn()`` (interruptible); any non-bhvit exception becomes a TargetError naming the log file."""
    try:
        return background.call(fn)
    except BhvitError:
        raise
    except Exception as e:  # TVMError, InternalError, ValueError from a converter, ...
        try:
            where = f"full TVM output in {write_log(step, e)}"
        except OSError as log_error:
            where = f"no log written: {log_error.strerror}"
        raise TargetError(f"TVM failed while {step}: {_headline(e)} ({where})") from None
