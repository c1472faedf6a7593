"""Run one long native call (a TVM build, an RPC handshake) so that Ctrl-C, SIGTERM and timeouts work.

Python runs signal handlers only between bytecodes of the main thread: while the main thread is
inside a C++ call that lasts a minute (``tvm.compile``) or forever (a socket read from a peer that
never answers), Ctrl-C does nothing. So the call runs in a daemon worker thread (TVM releases the
GIL while it works) and the main thread waits on it in short slices, in which signals are handled
and a deadline is checked. The stuck worker cannot be cancelled; it is abandoned, and
:func:`bhvit_export.cli.main` then ends the process with ``os._exit`` after its one error line,
because a normal interpreter shutdown could wait on, or crash in, a thread still inside TVM.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")
#: How often the waiting main thread wakes up (signals are handled at once anyway: the wait is
#: interrupted by them; this only bounds how late a deadline is noticed).
_SLICE_S = 0.05
_abandoned = threading.Event()


class Timeout(Exception):
    """The call did not return within the deadline (the caller turns it into its own error)."""


def abandoned() -> bool:
    """True once a worker was left running (interrupted or timed out): the process must end hard."""
    return _abandoned.is_set()


def call(fn: Callable[[], T], timeout: Optional[float] = None) -> T:
    """``fn()`` in a worker thread; its result or exception, :class:`Timeout`, or the interrupt."""
    box: dict[str, object] = {}
    # An Event of our own, not Thread.join/is_alive: a signal that interrupts join() can leave the
    # thread marked as stopped while it still runs (CPython's bpo-45274 handling).
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e
        finally:
            done.set()

    worker = threading.Thread(target=work, name="bhvit-native-call", daemon=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    worker.start()
    try:
        while not done.wait(_SLICE_S):
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout()
    except BaseException:
        if not done.is_set():
            _abandoned.set()
        raise
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
