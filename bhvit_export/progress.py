"""Progress of the long steps (a TVM build takes tens of seconds to minutes) on stderr.

A library call reports through one callable, ``say(msg)``; a step that may take long is wrapped in
:func:`long_step`, which uses the callable's ``step`` context manager when it has one. The CLI passes
a :class:`Progress`: on a terminal each long step is a tqdm spinner with the elapsed time; otherwise
(a log, CI, ``2>file``) plain ``... msg`` lines, and a ``... msg: N s elapsed`` line every
``every`` seconds so a log never looks hung. stdout is never written, so ``--json`` stays clean.
The ticker runs in a thread: TVM's build spends its time in our Python schedules and in C++ calls
that release the GIL, so the thread gets to run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional, TextIO

Say = Callable[[str], None]
SPINNER = "|/-\\"


class Progress:
    """``say(msg)`` for one-line steps, ``with say.step(msg):`` for long ones; always on stderr."""

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None, every: float = 15.0) -> None:
        self.stream = stream if stream is not None else _own_stderr()
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every

    def __call__(self, msg: str) -> None:
        print(f"... {msg}", file=self.stream, flush=True)

    @contextlib.contextmanager
    def step(self, msg: str) -> Iterator[None]:
        start = time.perf_counter()
        stop = threading.Event()
        tqdm = _tqdm() if self.tty else None
        if tqdm is not None:

            # a pty without a size (ssh -t, script, CI runners) reports 0x0, and tqdm hides a bar below the
            # last row of the screen: give it the size shutil falls back to (80x24)
            size = shutil.get_terminal_size()
            bar = tqdm(total=None, desc=f"... {msg}", bar_format="{desc} [{elapsed}]", file=self.stream,
                       leave=False, ncols=size.columns or 80, nrows=size.lines or 24)

            def tick() -> None:
                i = 0
                while not stop.wait(0.2):
                    i += 1
                    bar.set_description_str(f"... {msg} {SPINNER[i % len(SPINNER)]}", refresh=True)

        else:
            self(msg)
            bar = None

            def tick() -> None:
                while not stop.wait(self.every):
                    self(f"{msg}: {time.perf_counter() - start:.0f} s elapsed")

        ticker = threading.Thread(target=tick, name="bhvit-progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            if bar is not None:
                bar.close()
        self(f"{msg}: done in {time.perf_counter() - start:.1f} s")


def _own_stderr() -> TextIO:
    """A stream on a duplicate of file descriptor 2, made now.

    A TVM step sends fd 2 to its log file while it runs (:mod:`bhvit_export.tvm_failure`); the
    progress of that very step must still reach the user's terminal, so it writes to its own copy.
    """
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", encoding="utf-8", errors="replace", buffering=1)
    except (AttributeError, OSError, ValueError):  # no real fd (pytest's capture, an embedding app)
        return sys.stderr


def _tqdm() -> Any:
    """tqdm's class, or None where it is not installed (a device with only numpy, click and TVM)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


@contextlib.contextmanager
def long_step(say: Any, msg: str) -> Iterator[None]:
    """``say.step(msg)`` if ``say`` is a :class:`Progress` (or alike), else ``say(msg)`` once."""
    step = getattr(say, "step", None)
    if step is None:
        say(msg)
        yield
    else:
        with step(msg):
            yield
