"""Per-key rate limits: a token bucket for each API key name, checked by the auth interceptor
after the key and its scope (services/auth.py), so a call over its key's rate never reaches a
servicer. A key's own `rate_per_s`/`burst` in the key file win over the server's defaults
(--rate-limit-per-s, --rate-limit-burst); no rate means no limit. Without API keys there are no
identities to limit: the engine's bounded queue (--max-queued) and gRPC's max_concurrent_rpcs
bound the load instead.

Bounded admission of one kind of call (Gate, AdmitCalls): ExecuteSql runs at most
--max-sql-running statements at once with --max-sql-queued more waiting; a call beyond that is
refused before its request is decoded. The bound is about the server's own process, not the
database: every statement's guard (a sqlglot parse), its reads and its row encoding take turns
with the event loop on one interpreter lock, and with more statements running at once than
cores, the loop falls behind on accepting new calls. Those wait in gRPC's own queue, where no
limit sees them, and their callers' latency grows without bound (benchmarks/README.md, load).

Load shedding on the event loop's lateness (LoopLag, ShedWhenLate; --max-loop-lag-s, off by
default): the other bound that sees calls still waiting in gRPC's queue for the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from ragloom.errors import ResourceExhausted
from ragloom.services.handlers import behaviour, rebuild, refusing, responses


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; one call takes one token."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, now: float | None = None) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be there."""
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimits:
    """The buckets of every key name; a key whose limit changes (key file reload) starts afresh."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()  # interceptors of one server run on one loop; cheap insurance

    def check(self, name: str, rate: float | None, burst: float | None, now: float | None = None) -> float:
        """0.0 when the call may go on, else the seconds to wait (no rate: never limited)."""
        if rate is None or rate <= 0 or math.isnan(rate):
            return 0.0
        size = burst if burst is not None and burst >= 1 else max(1.0, rate)
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None or bucket.rate != rate or bucket.burst != size:
                bucket = self._buckets[name] = TokenBucket(rate, size, stamp=now)
            return bucket.take(now)


class LoopLag:
    """How late the server's event loop runs a timer: how long a call that reaches Python now has
    waited behind the work already queued there. gRPC's max_concurrent_rpcs only counts calls
    that have reached Python, so on a saturated loop new calls wait in gRPC's own queue, unseen
    by any limit; this is the signal to shed them (ShedWhenLate)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ragloom-loop-lag")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.lag_s = max(0.0, loop.time() - due)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class ShedWhenLate(grpc.aio.ServerInterceptor):
    """Refuses ragloom.v1 calls with RESOURCE_EXHAUSTED (OVERLOADED, with a retry delay) while the
    event loop runs more than max_lag_s late (--max-loop-lag-s): a refusal costs the loop far less
    than a call, so the loop catches up and the calls it admits wait at most about max_lag_s
    before their handler starts. Health checks always pass."""

    def __init__(self, lag: LoopLag, max_lag_s: float, prefix: str = "/ragloom.") -> None:
        self._lag, self._max, self._prefix = lag, max_lag_s, prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        lag = self._lag.lag_s
        if handler is None or lag <= self._max or not method.startswith(self._prefix):
            return handler
        return refusing(handler, ResourceExhausted(
            f"the server is overloaded: its event loop runs {lag * 1000:.0f} ms late "
            f"(max_loop_lag_s {self._max:g}); retry later",
            reason="OVERLOADED", metadata={"loop_lag_ms": f"{lag * 1000:.0f}"}, retry_after_s=max(0.5, 2 * lag),
        ), method)


class Gate:
    """At most `running` calls inside at once and `queued` more waiting their turn (first come,
    first served); a call that finds both full is refused. `hold_s` is a moving average of how
    long a call stays inside, for the refusal's retry delay. `limits` names the settings, for
    the refusal's message."""

    def __init__(self, running: int, queued: int, limits: str = "") -> None:
        if running < 1 or queued < 0:
            raise ValueError(f"a gate needs running >= 1 and queued >= 0, not {running} and {queued}")
        self.running, self.queued, self.limits = running, queued, limits
        self.inside = 0
        self.waiting = 0
        self.hold_s = 0.0
        self._slots: asyncio.Semaphore | None = None  # made on the serving loop, at first use

    def full(self) -> bool:
        return self.inside >= self.running and self.waiting >= self.queued

    def retry_after_s(self) -> float:
        """About when the calls ahead of a new one will have gone through."""
        return min(10.0, max(0.05, self.hold_s * (self.waiting + self.inside) / self.running))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.running)
        self.waiting += 1
        try:
            await self._slots.acquire()  # a caller that goes away while waiting takes no slot
        finally:
            self.waiting -= 1
        self.inside += 1
        entered = time.monotonic()
        try:
            yield
        finally:
            self.inside -= 1
            self._slots.release()
            self.hold_s += 0.1 * (time.monotonic() - entered - self.hold_s)


class AdmitCalls(grpc.aio.ServerInterceptor):
    """Runs each method that has a Gate through it: a call that finds the gate full gets
    RESOURCE_EXHAUSTED (OVERLOADED, with a retry delay) before its request is decoded; the
    others wait for a slot, in order, and hold it until their last response is sent."""

    def __init__(self, gates: dict[str, Gate]) -> None:
        self.gates = gates

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        gate = self.gates.get(method)
        if handler is None or gate is None:
            return handler
        if gate.full():
            name = method.rsplit("/", 1)[-1]
            return refusing(handler, ResourceExhausted(
                f"the server is busy: {gate.inside} {name} calls running and {gate.waiting} waiting, as many "
                f"as it allows ({gate.limits or 'its limits'}); retry later",
                reason="OVERLOADED", metadata={"running": str(gate.inside), "waiting": str(gate.waiting)},
                retry_after_s=gate.retry_after_s(),
            ), method)
        return _through(handler, gate)


def _through(handler: grpc.RpcMethodHandler, gate: Gate) -> grpc.RpcMethodHandler:
    inner = behaviour(handler)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with gate.slot():
            return await inner(request, context)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with gate.slot():
            async for message in responses(handler, request, context):
                yield message

    return rebuild(handler, unary, stream)
