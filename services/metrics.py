"""Prometheus metrics of one server (`--metrics-port`), through prometheus_client.

Every server owns a `Metrics` with its own CollectorRegistry (tests run several servers in one
process; the global registry would mix them). What is counted where:

- requests by service, method and status code, and their duration: `MetricsInterceptor`, a
  grpc.aio server interceptor around every ragloom.v1 handler, so each way a call can end (a
  return, context.abort from services/status.py, cancellation mid-stream) is seen once;
- time to first token, inter-token latency, prompt and completion tokens: `TokenTimer`, fed by
  the Generate and Ask handlers with the engine's outputs;
- queue depth, running sequences, KV blocks, prefix-cache tokens and chunk-KV tier hits: read
  at scrape time from `AsyncEngine.loads()` and the chunk-KV store's stats() (cheap counters under
  a lock), so they cost nothing between scrapes;
- search latency, SQL refusals by rule and constraint compile time: observed by the servicers;
- calls running and waiting at a method's admission gate (ExecuteSql's --max-sql-running and
  --max-sql-queued): read at scrape time from the gates.

The exposition is served by prometheus_client's own HTTP server on a daemon thread, bound to the
gRPC host (the same interface the operator chose to expose).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ragloom.errors import ForbiddenQuery

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.services.limits import Gate

# latency buckets: a token is milliseconds, a first token or a search tens to hundreds of them
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_COMPILE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)

# the guard's refusals by the start of their message -> a short rule label (connectors/guard.py);
# an error that names its rule in metadata["rule"] is counted by that name instead
_SQL_RULES = (
    ("only one read-only select", "statement"),
    ("variables and bind parameters", "variables"),
    ("schema-qualified function", "schema_function"),
    ("table-valued functions", "table_function"),
    ("function ", "function"),
    ("system catalogs", "system_catalog"),
    ("table ", "foreign_table"),
    ("the connection is read-only", "read_only_connection"),
)


def sql_rule(exc: ForbiddenQuery) -> str:
    """A short, bounded label for the rule a refused query broke."""
    if rule := exc.metadata.get("rule"):
        return rule
    text = str(exc).lower()
    for prefix, label in _SQL_RULES:
        if text.startswith(prefix):
            return label
    return "other"


class Metrics:
    """The metrics of one server; see the module's docstring for where each is observed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ragloom_requests", "RPCs finished, by service, method and gRPC status code",
            ["service", "method", "code"], registry=r,
        )
        self.request_seconds = Histogram(
            "ragloom_request_duration_seconds", "RPC duration (streams: until the last message)",
            ["service", "method"], buckets=_REQUEST_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "ragloom_time_to_first_token_seconds", "from a Generate/Ask call's arrival to its first token",
            ["rpc"], buckets=_TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "ragloom_inter_token_latency_seconds",
            "seconds per token between consecutive token outputs of one stream", ["rpc"],
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter("ragloom_prompt_tokens", "prompt tokens of finished requests", ["rpc"], registry=r)
        self.completion_tokens = Counter(
            "ragloom_completion_tokens", "generated tokens of finished requests", ["rpc"], registry=r
        )
        self.search_seconds = Histogram(
            "ragloom_search_duration_seconds", "Search: embedding the query, searching and rescoring",
            buckets=_REQUEST_BUCKETS, registry=r,
        )
        self.sql_refusals = Counter(
            "ragloom_sql_refusals", "SQL refused by the guard or the read-only connection, by rule", ["rule"], registry=r
        )
        self.compile_seconds = Histogram(
            "ragloom_constraint_compile_seconds", "compiling a constraint (cache hits included), by kind",
            ["kind"], buckets=_COMPILE_BUCKETS, registry=r,
        )
        self._http: WSGIServer | None = None

    def watch_engine(self, engine: AsyncEngine) -> None:
        self.registry.register(_EngineCollector(engine))

    def watch_chunk_store(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_ChunkKVCollector(stats))

    def watch_gates(self, gates: dict[str, Gate]) -> None:
        self.registry.register(_GateCollector(gates))

    def count_refusal(self, exc: ForbiddenQuery) -> None:
        self.sql_refusals.labels(sql_rule(exc)).inc()

    def timer(self, rpc: str) -> TokenTimer:
        return TokenTimer(self, rpc)

    # -- the HTTP endpoint ----------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics (any path, as prometheus_client does) on host:port; the port bound."""
        server, _thread = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class TokenTimer:
    """One Generate/Ask stream's token timings, from the handler's start."""

    def __init__(self, metrics: Metrics, rpc: str) -> None:
        self._m = metrics
        self._rpc = rpc
        self._start = time.perf_counter()
        self._last: float | None = None

    def tokens(self, n: int) -> None:
        """An output with n new tokens arrived (several with speculative decoding)."""
        if n <= 0:
            return
        now = time.perf_counter()
        if self._last is None:
            self._m.ttft.labels(self._rpc).observe(now - self._start)
        else:
            self._m.itl.labels(self._rpc).observe((now - self._last) / n)
        self._last = now

    def finished(self, prompt_tokens: int, completion_tokens: int) -> None:
        self._m.prompt_tokens.labels(self._rpc).inc(prompt_tokens)
        self._m.completion_tokens.labels(self._rpc).inc(completion_tokens)


class _EngineCollector(Collector):
    """The engine's loads, read at scrape time (AsyncEngine refreshes them after every step)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        loads = self._engine.loads()
        yield GaugeMetricFamily("ragloom_queue_depth", "requests waiting for the engine", value=loads.waiting)
        yield GaugeMetricFamily("ragloom_running_sequences", "sequences the engine decodes", value=loads.running)
        yield GaugeMetricFamily("ragloom_kv_blocks_used", "KV cache blocks in use", value=loads.kv_blocks_used)
        yield GaugeMetricFamily("ragloom_kv_blocks_total", "KV cache blocks", value=loads.kv_blocks_total)
        yield CounterMetricFamily(
            "ragloom_prefix_cache_queried_tokens", "prompt tokens looked up in the prefix cache",
            value=loads.prefix_cache_queried_tokens,
        )
        yield CounterMetricFamily(
            "ragloom_prefix_cache_hit_tokens", "prompt tokens found in the prefix cache",
            value=loads.prefix_cache_hit_tokens,
        )


class _ChunkKVCollector(Collector):
    """Chunk-KV store hits and misses per tier, read at scrape time from its counters."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        hits = CounterMetricFamily("ragloom_chunk_kv_hits", "chunk-KV lookups served by a tier", labels=["tier", "kind"])
        misses = CounterMetricFamily("ragloom_chunk_kv_misses", "chunk-KV lookups a tier missed", labels=["tier", "kind"])
        for name, tier in self._stats().get("tiers", {}).items():
            kind = str(tier.get("kind", ""))
            hits.add_metric([name, kind], float(tier.get("hits", 0)))
            misses.add_metric([name, kind], float(tier.get("misses", 0)))
        yield hits
        yield misses


class _GateCollector(Collector):
    """Calls inside and waiting at each method's admission gate (services/limits.py)."""

    def __init__(self, gates: dict[str, Gate]) -> None:
        self._gates = gates

    def collect(self) -> Iterable[Metric]:
        calls = GaugeMetricFamily("ragloom_admitted_calls", "calls running or waiting at a method's admission gate",
                                  labels=["method", "state"])
        for path, gate in self._gates.items():
            method = path.rsplit("/", 1)[-1]
            calls.add_metric([method, "running"], float(gate.inside))
            calls.add_metric([method, "waiting"], float(gate.waiting))
        yield calls


# -- requests by RPC and status: a server interceptor ----------------------------------------

_Handler = Callable[..., Any]


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every ragloom.v1 call by status code when it ends, and times it. Handlers of other
    services (health, reflection) pass through: their Watch writes with context.write, which a
    wrapping async generator could not mix with."""

    def __init__(self, metrics: Metrics, prefix: str = "/ragloom.") -> None:
        self._m = metrics
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method_path: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method_path.startswith(self._prefix):
            return handler
        service, _, method = method_path.lstrip("/").rpartition("/")
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, service, method), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary, service, method), **kwargs)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(self._stream(handler.unary_stream, service, method), **kwargs)
        if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(self._stream(handler.stream_stream, service, method), **kwargs)
        return handler

    def _done(self, service: str, method: str, started: float, code: grpc.StatusCode) -> None:
        self._m.requests.labels(service, method, code.name).inc()
        self._m.request_seconds.labels(service, method).observe(time.perf_counter() - started)

    def _unary(self, inner: _Handler, service: str, method: str) -> _Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                return await inner(request, context)
            except BaseException as exc:
                code = _ended_with(exc, context)
                raise
            finally:
                self._done(service, method, started, code)

        return handle

    def _stream(self, inner: _Handler, service: str, method: str) -> _Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                async for response in inner(request, context):
                    yield response
            except BaseException as exc:  # GeneratorExit too: the client went away mid-stream
                code = _ended_with(exc, context)
                raise
            finally:
                self._done(service, method, started, code)

        return handle


def _ended_with(exc: BaseException, context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status code a call that raised `exc` ends with: the one context.abort() set (status.py
    aborts every failure), CANCELLED for cancellation, else what gRPC answers (UNKNOWN)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
        return code
    if isinstance(code, int) and code:  # some grpc versions keep the raw number
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
