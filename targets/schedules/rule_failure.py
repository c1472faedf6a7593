"""What happens when a schedule rule raises: it is logged with the rule and the function, and raised
in strict mode (the tests run strict) instead of being silently taken as "not applicable".

In a user's build a rule that trips over an unusual shape must not stop the compile: the next rule
(at worst the fallback) schedules the function and the bundle stays correct, only slower there. So
outside strict mode the failure is one warning on the ``bhvit.schedules`` logger. In the tests the
same failure is a :class:`ScheduleRuleError`, so a rule that breaks on some shape cannot hide
behind the fallback. ``BHVIT_STRICT_SCHEDULES=1`` (set by ``tests/conftest.py``) turns it on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

#: Set to 1 to raise instead of log (the tests do).
STRICT_ENV = "BHVIT_STRICT_SCHEDULES"
logger = logging.getLogger("bhvit.schedules")


class ScheduleRuleError(RuntimeError):
    """A schedule rule raised on a function (strict mode only)."""


def strict() -> bool:
    """True when :data:`STRICT_ENV` asks failures to be raised."""
    return os.environ.get(STRICT_ENV, "").strip() not in ("", "0")


def function_name(func: Any) -> str:
    """The PrimFunc's ``global_symbol``, or ``<unnamed>``."""
    attrs = getattr(func, "attrs", None)
    name = attrs.get("global_symbol", None) if attrs is not None else None
    return str(name) if name is not None else "<unnamed>"


def rule_failed(rule: str, func: Any, err: BaseException) -> None:
    """Log that ``rule`` raised ``err`` on ``func``; in strict mode raise :class:`ScheduleRuleError`."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    what = f"schedule rule {rule} failed on {function_name(func)} ({type(err).__name__}: {first})"
    if strict():
        raise ScheduleRuleError(what) from err
    logger.warning("%s; the next rule schedules it", what)
