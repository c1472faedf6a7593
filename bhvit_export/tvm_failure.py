"""A TVM step (import, build): its chatter goes to a log file, a failure is one ``error:`` line naming it.

TVM's errors carry the whole IR of the function that failed and a C++ backtrace, hundreds of lines
that bury the one line a user needs; its ONNX importer also prints to stdout (which must stay clean
for ``--json``) and its C++ side to file descriptor 2, some of it only when its objects are freed.
So while a step runs (through :mod:`bhvit_export.background`, so Ctrl-C and SIGTERM stop it at once)
both streams go to a log file in the system's temp folder (never beside ``-o``: nothing is written
there on failure). A failure becomes a CompileError naming that file; a success deletes an empty log
and keeps one TVM wrote to, with a note saying where.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

from . import background
from .errors import BhvitError, CompileError, TargetError

T = TypeVar("T")
#: The longest TVM message line quoted in the error (the log has all of it).
MAX_QUOTE = 300


def _headline(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "Check failed" in ln or "Error" in ln), lines[0] if lines else "")
    name = type(e).__name__
    text = pick if pick.startswith(name) else f"{name}: {pick}" if pick else name
    return text if len(text) <= MAX_QUOTE else text[: MAX_QUOTE - 3] + "..."


@contextlib.contextmanager
def _output_to(fd: int) -> Iterator[None]:
    """Send this process's stdout and stderr (Python's and the C++ file descriptors) to ``fd``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    log = os.fdopen(os.dup(fd), "w", encoding="utf-8", errors="replace", buffering=1)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            yield
    finally:
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)
        log.close()


def tvm_step(step: str, fn: Callable[[], T], notes: Optional[list[str]] = None) -> T:
    """``fn()`` (interruptible, its output logged); any non-bhvit exception becomes a CompileError."""
    fd, path = tempfile.mkstemp(prefix="bhvit-export-tvm-", suffix=".log")
    log = Path(path)
    ours: Optional[BhvitError] = None  # a converter's own one-line error: re-raised with its message
    failure: Optional[str] = None
    try:
        with _output_to(fd):
            try:
                return background.call(fn)
            except BhvitError as e:
                ours = e.with_traceback(None)
                ours.__context__ = None
            except Exception as e:  # TVMError, InternalError, ValueError from a converter, ...
                os.write(fd, f"\nbhvit-export compile: TVM failed while {step}\n\n".encode())
                os.write(fd, "".join(traceback.format_exception(type(e), e, e.__traceback__)).encode("utf-8", "replace"))
                failure = _headline(e)
                e.__traceback__ = None
            finally:
                gc.collect()  # TVM objects the failed step held print their warnings now, into the log
    finally:
        os.close(fd)
        empty = log.exists() and log.stat().st_size == 0
        if ours is not None or (failure is None and empty):
            log.unlink(missing_ok=True)
        elif failure is None and log.exists() and notes is not None:
            notes.append(f"TVM printed messages while {step}: see {log}")
    if type(ours) is TargetError:  # a converter refusing the model: this step (compile) failed, not the target
        raise CompileError(str(ours)) from None
    if ours is not None:
        raise ours
    raise CompileError(f"TVM failed while {step}: {failure} (full TVM output in {log})")
