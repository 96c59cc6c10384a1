"""The time limit on compiling a constraint, checked cooperatively from deep inside the compiler.

`compile_constraint` opens a `limit()`; the long loops (subset construction, minimization, product,
state elimination, terminal tables) call `check()`, which raises CompileTimeout once the limit has
passed, so a slow constraint stops within a fraction of a second of its deadline instead of holding
a worker thread until it finishes. `part()` names what is being built at the moment, for the error
message. The deadline lives in a context variable: no signature between the compiler's entry point
and its inner loops has to carry it, and concurrent compiles (one per worker thread) do not mix.
Outside a `limit()`, `check()` does nothing. `cancel_all()` (the server's stop) makes every compile
in progress stop at its next check, so a shutdown does not wait out a slow compile's limit on a
worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ragloom.errors import CompileTimeout, Unavailable


@dataclass
class Deadline:
    """One compile's limit, and what it is building now."""

    at: float  # time.monotonic() when the work must stop
    seconds: float  # the limit, for the message
    what: str  # the thing being compiled: "the json_schema constraint"
    part: str | None = None  # the piece being built now: "terminal S4 /\"...\"/"
    cancelled: str | None = None  # why it was cancelled (cancel_all), if it was

    def where(self) -> str:
        """What was being built when the limit passed: the thing, and the piece of it if known."""
        return f"{self.what}: {self.part}" if self.part else self.what

    def message(self) -> str:
        where = self.where()
        return (
            f"compiling {where} exceeded the {self.seconds:g}s limit (setting constraint_timeout_s); "
            "simplify it (shorter maxLength, fewer alternatives, shallower nesting) or raise the limit"
        )


_CURRENT: ContextVar[Deadline | None] = ContextVar("ragloom_compile_deadline", default=None)
_ACTIVE: dict[int, Deadline] = {}  # every limit() open now, on any thread
_LOCK = threading.Lock()


def check() -> None:
    """Raise CompileTimeout if the current limit has passed (cheap: call it in inner loops), and
    Unavailable if the compile was cancelled."""
    d = _CURRENT.get()
    if d is None:
        return
    if d.cancelled is not None:
        raise Unavailable(f"compiling {d.what} stopped: {d.cancelled}")
    if time.monotonic() > d.at:
        raise CompileTimeout(d.message(), metadata={"part": d.where()})


def cancel_all(reason: str) -> int:
    """Stop every compile in progress at its next check(); how many there were."""
    with _LOCK:
        for d in _ACTIVE.values():
            d.cancelled = reason
        return len(_ACTIVE)


@contextmanager
def limit(seconds: float, what: str) -> Iterator[Deadline]:
    """Work inside stops with CompileTimeout `seconds` from now; `what` names it in the message."""
    d = Deadline(time.monotonic() + seconds, seconds, what)
    token = _CURRENT.set(d)
    with _LOCK:
        _ACTIVE[id(d)] = d
    try:
        yield d
    finally:
        with _LOCK:
            del _ACTIVE[id(d)]
        _CURRENT.reset(token)


@contextmanager
def part(name: str, max_chars: int = 120) -> Iterator[None]:
    """Name the piece being built inside (nested parts: the innermost is named while it runs)."""
    d = _CURRENT.get()
    if d is None:
        yield
        return
    outer = d.part
    d.part = name if len(name) <= max_chars else name[: max_chars - 3] + "..."
    try:
        yield
    finally:
        d.part = outer
