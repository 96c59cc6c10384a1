"""grpc.aio server assembly: servicers, health, reflection, limits, keepalive and graceful shutdown.

`build_server(settings, engine, collections=...)` wires a server around an already running
AsyncEngine and/or a CollectionManager (tests and embedding use it; each service is registered
only when its backend is given; Rag needs both, and a chunk-KV store, built from the settings'
chunk_kv_* fields unless one is given); `serve(settings)` is what `ragloom serve` runs: load
the model, open the collection store (the embedder loads on first use, so startup stays fast),
serve until SIGTERM/SIGINT, drain, stop.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ragloom.config import Settings
from ragloom.errors import InvalidArgument
from ragloom.generation.constrain import deadline
from ragloom.services import auth
from ragloom.services._proto import generation_pb2_grpc, rag_pb2_grpc, retrieval_pb2_grpc, tables_pb2_grpc
from ragloom.services.decoding import DecodeRequests
from ragloom.services.generation import SERVICE_NAME as GENERATION_SERVICE
from ragloom.services.generation import GenerationServicer
from ragloom.services.limits import AdmitCalls, Gate, LoopLag, ShedWhenLate
from ragloom.services.metrics import Metrics, MetricsInterceptor
from ragloom.services.rag import SERVICE_NAME as RAG_SERVICE
from ragloom.services.rag import RagServicer
from ragloom.services.reflection_docs import enable_documented_reflection
from ragloom.services.retrieval import SERVICE_NAME as RETRIEVAL_SERVICE
from ragloom.services.retrieval import RetrievalServicer
from ragloom.services.tables import SERVICE_NAME as TABLES_SERVICE
from ragloom.services.tables import TablesServicer

if TYPE_CHECKING:
    from ragloom.cache.chunk_kv import ChunkKVStore
    from ragloom.connectors.registry import ConnectorRegistry
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.retrieval.collections import CollectionManager

log = logging.getLogger(__name__)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        # gRPC's default (300 s) makes clients that ping during a long, silent unary
        # generation get GOAWAY "too_many_pings"; vLLM's front end uses the same values.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC sets SO_REUSEPORT by default on Linux: a second server on a busy port would then
        # bind too, and the kernel would split connections between the two.
        ("grpc.so_reuseport", 0),
    ]


def _listen_error(host: str, port: int, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"cannot listen on {host}:{port}: {reason}; stop the process using it "
        "(another `ragloom serve`?) or pick another port with --port N (--port 0 picks a free one)"
    )


def check_port_free(host: str, port: int) -> None:
    """Raise InvalidArgument naming the port when host:port cannot be bound.

    `serve` calls this before the model loads (seconds to minutes), so a busy port is reported at
    once; build_server's own bind (without SO_REUSEPORT) still catches a port taken meanwhile."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _listen_error(host, port, f"unknown host ({exc.strerror})") from exc
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # as gRPC binds: SO_REUSEADDR (a closed server's TIME_WAIT connections don't count)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                in_use = exc.errno == errno.EADDRINUSE
                raise _listen_error(host, port, "the port is already in use" if in_use else str(exc)) from exc


@dataclass
class RagloomServer:
    """A bound (not yet started) server plus the pieces shutdown needs."""

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    engine: AsyncEngine | None
    host: str
    port: int
    collections: CollectionManager | None = None
    # services that report readiness through grpc.health.v1; "" is overall liveness
    health_services: tuple[str, ...] = ("",)
    rag: RagServicer | None = None
    # the chunk-KV store build_server made (closed on stop); None when the caller gave one
    owned_chunk_store: ChunkKVStore | None = None
    registry: ConnectorRegistry | None = None  # closed (its connections) on stop
    api_keys: auth.ApiKeys | None = None  # the keys the auth interceptor checks (--api-keys), reloadable
    tls: bool = False  # served over TLS (mTLS when settings.tls_client_ca is set)
    metrics: Metrics | None = None  # this server's Prometheus registry (services/metrics.py)
    metrics_port: int | None = None  # where it is served over HTTP, when --metrics-port is set
    loop_lag: LoopLag | None = None  # the event loop's lateness, watched for --max-loop-lag-s
    gates: dict[str, Gate] = field(default_factory=dict)  # admission of a method's calls, by method path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def reload_api_keys(self) -> bool:
        """Re-read the API key file (SIGHUP); a bad file keeps the keys in use (logged)."""
        return self.api_keys.reload() if self.api_keys is not None else False

    async def start(self) -> None:
        """Start serving; health says NOT_SERVING until every collection's index has caught up
        with the store (a replica behind a load balancer gets traffic only once its searches
        need no rebuild), then SERVING."""
        for name in self.health_services:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.loop_lag is not None:
            self.loop_lag.start()
        if self.collections is not None:
            started = time.monotonic()
            warmed = await asyncio.to_thread(self.collections.warm)
            if warmed:
                log.info("indexes of %d collection(s) caught up with the store in %.1fs", warmed,
                         time.monotonic() - started)
        for name in self.health_services:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING first so load balancers stop routing, then drain in-flight calls.
        Constraint compiles in progress stop at once (UNAVAILABLE): they run on worker threads
        that the process would otherwise wait for at exit."""
        await self.health.enter_graceful_shutdown()
        if cancelled := deadline.cancel_all("the server is shutting down"):
            log.info("stopped %d constraint compile(s) in progress", cancelled)
        await self.server.stop(grace)
        if self.loop_lag is not None:
            self.loop_lag.stop()
        if self.metrics is not None:
            self.metrics.close()
        if self.rag is not None:
            log.info("chunk KV store at shutdown: %s", _stats_line(self.rag.store.stats()))
        if self.owned_chunk_store is not None:
            self.owned_chunk_store.close()
        if self.registry is not None:
            await asyncio.to_thread(self.registry.close)


def _stats_line(stats: dict[str, Any]) -> str:
    tiers = ", ".join(
        f"{name} {t.get('hits', 0)} hits/{t.get('misses', 0)} misses/{t.get('bytes', 0)} B"
        + ("" if t.get("available", True) else " (UNAVAILABLE)")
        + (f"/{t['errors']} errors" if t.get("errors") else "")
        for name, t in stats.get("tiers", {}).items()
    )
    return f"{stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses; {tiers or 'no tiers'}"


def build_chunk_store(settings: Settings, device: str | None = None) -> ChunkKVStore:
    """memory -> disk -> Redis (when chunk_kv_redis_url is set), from the settings' chunk_kv_* fields."""
    from ragloom.cache.chunk_kv import ChunkKVStore, ChunkKVStoreConfig

    config = ChunkKVStoreConfig(
        memory_bytes=settings.chunk_kv_memory_bytes,
        memory_device=device or "cpu",
        disk_dir=settings.chunk_kv_disk_dir,
        disk_bytes=settings.chunk_kv_disk_bytes,
        redis_url=settings.chunk_kv_redis_url,
        redis_prefix=settings.chunk_kv_redis_prefix,
        redis_ttl_s=settings.chunk_kv_redis_ttl_s,
        codec_bits=settings.chunk_kv_codec_bits,
        codec_group_size=settings.chunk_kv_codec_group_size,
        codec_entropy=settings.chunk_kv_codec_entropy,
    )
    store = ChunkKVStore.from_config(config, data_dir=settings.data_dir)
    log.info(
        "chunk KV store: %s; codec %d-bit, group %d%s",
        " -> ".join(f"{t.name}" for t in store.tiers) or "no tiers",
        config.codec_bits, config.codec_group_size, ", zlib" if config.codec_entropy else "",
    )
    return store


def build_server(
    settings: Settings,
    engine: AsyncEngine | None,
    *,
    collections: CollectionManager | None = None,
    chunk_store: ChunkKVStore | None = None,
) -> RagloomServer:
    """Assemble and bind a server on settings.host:settings.port (port 0 picks a free one).

    Generation is served when engine is given, Retrieval when collections is, Rag (and
    Upsert's precompute_kv) when both are; the caller owns both (starts/shuts down the engine,
    closes the manager). Rag uses chunk_store, or a store built from the settings that the
    server closes on stop. Call it on the event loop that will run the server: grpc.aio binds
    to the current loop.
    """
    # refused before anything is built: exposure, unreadable TLS files, a bad key file
    auth.check_exposure(settings)
    credentials = auth.server_credentials(settings)
    api_keys = auth.ApiKeys(settings.api_keys) if settings.api_keys is not None else None
    metrics = Metrics()
    loop_lag = LoopLag() if settings.max_loop_lag_s is not None else None
    gates = {"/ragloom.v1.TablesService/ExecuteSql": Gate(
        settings.max_sql_running, settings.max_sql_queued, "--max-sql-running, --max-sql-queued")}
    metrics.watch_gates(gates)
    server = grpc.aio.server(
        options=server_options(settings),
        # beyond this, gRPC itself answers RESOURCE_EXHAUSTED (health checks count too)
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        # DecodeRequests: undecodable requests get INVALID_ARGUMENT, not grpc.aio's UNKNOWN
        # AuthInterceptor: after metrics (refused calls are counted), before decoding (an unknown
        # caller's bytes are not parsed)
        # ShedWhenLate: first after metrics, so that a shed call costs the loop as little as can be
        # AdmitCalls: after auth (an unknown caller takes no slot), before decoding (a refusal is cheap)
        interceptors=[MetricsInterceptor(metrics),
                      *([ShedWhenLate(loop_lag, settings.max_loop_lag_s)] if loop_lag and settings.max_loop_lag_s else []),
                      *([auth.AuthInterceptor(api_keys, settings.rate_limit_per_s, settings.rate_limit_burst)]
                        if api_keys else []),
                      AdmitCalls(gates),
                      DecodeRequests()],
    )
    services: list[str] = []
    if engine is not None:
        metrics.watch_engine(engine)
        generation_pb2_grpc.add_GenerationServiceServicer_to_server(GenerationServicer(engine, metrics), server)
        services.append(GENERATION_SERVICE)
    rag: RagServicer | None = None
    owned: ChunkKVStore | None = None
    if engine is not None and collections is not None:
        from ragloom.cache.rag import RagPipeline

        if chunk_store is None:
            chunk_store = owned = build_chunk_store(settings, str(engine.engine.device))
        rag = RagServicer(
            engine,
            collections,
            RagPipeline(engine.engine, chunk_store),
            default_mode=settings.ask_mode,
            default_ratio=settings.ask_recompute_ratio,
            max_k=settings.ask_max_k,
            metrics=metrics,
        )
        metrics.watch_chunk_store(chunk_store.stats)
        rag_pb2_grpc.add_RagServiceServicer_to_server(rag, server)
        services.append(RAG_SERVICE)
    if collections is not None:
        precompute = rag.precompute if rag is not None else None
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(
            RetrievalServicer(collections, precompute, max_k=settings.search_max_k, metrics=metrics), server
        )
        services.append(RETRIEVAL_SERVICE)

    registry: ConnectorRegistry | None = None
    if collections is not None:  # connectors live next to the collections' store, in data_dir
        from ragloom.connectors.registry import ConnectorRegistry
        from ragloom.connectors.sandbox import ConnectorSandbox
        from ragloom.connectors.text2sql import Text2Sql

        sandbox = ConnectorSandbox.for_server(settings.data_dir, settings.connector_roots, settings.connector_hosts)
        log.info("connector sandbox: %s", sandbox.describe())
        json_file = Path(settings.data_dir) / "connectors.json"
        if settings.store_url:  # replicas share the store: the registry lives there, so all see one
            from ragloom.connectors.registry_store import open_shared_registry

            key = settings.secret_key.get_secret_value() if settings.secret_key is not None else None
            registry = open_shared_registry(collections.store, sandbox, key, legacy_file=json_file)
        else:
            registry = ConnectorRegistry(json_file, sandbox)
        mgr = collections
        t2s = Text2Sql(engine.engine, embedder=lambda: mgr.embedder) if engine is not None else None
        tables_pb2_grpc.add_TablesServiceServicer_to_server(
            TablesServicer(registry, engine, t2s, max_rows=settings.sql_max_rows,
                           max_timeout_s=settings.sql_max_timeout_s, metrics=metrics),
            server,
        )
        services.append(TABLES_SERVICE)

    # the asyncio flavour: the sync HealthServicer would block the event loop in Watch.
    # A service not yet set answers SERVICE_UNKNOWN (NOT_FOUND on Check) until start().
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    # reflection with the proto comments (services/reflection_docs.py): grpcurl describe shows the docs
    if settings.reflection:
        enable_documented_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    try:
        target = f"{settings.host}:{settings.port}"
        port = server.add_secure_port(target, credentials) if credentials else server.add_insecure_port(target)
    except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
        if owned is not None:
            owned.close()
        raise _listen_error(settings.host, settings.port, str(exc)) from exc
    if port == 0:  # older grpc versions signal a failed bind this way
        if owned is not None:
            owned.close()
        raise _listen_error(settings.host, settings.port, "the port is probably in use")
    metrics_port: int | None = None
    if settings.metrics_port is not None:
        # on the gRPC host: the interface the operator already chose to expose
        try:
            metrics_port = metrics.serve(settings.host, settings.metrics_port)
        except OSError as exc:
            if owned is not None:
                owned.close()
            raise _listen_error(settings.host, settings.metrics_port, f"metrics port: {exc}") from exc
        log.info("Prometheus metrics on http://%s:%d/metrics", settings.host, metrics_port)
    return RagloomServer(
        server=server,
        health=health_servicer,
        engine=engine,
        host=settings.host,
        port=port,
        collections=collections,
        health_services=("", *services),
        rag=rag,
        owned_chunk_store=owned,
        registry=registry,
        metrics=metrics,
        metrics_port=metrics_port,
        loop_lag=loop_lag,
        gates=gates,
        api_keys=api_keys,
        tls=credentials is not None,
    )


async def start_server(
    settings: Settings,
    engine: AsyncEngine | None,
    *,
    collections: CollectionManager | None = None,
    chunk_store: ChunkKVStore | None = None,
) -> RagloomServer:
    """build_server + start, on the running loop."""
    srv = build_server(settings, engine, collections=collections, chunk_store=chunk_store)
    await srv.start()
    return srv


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Load the model, serve until SIGTERM/SIGINT, then drain for settings.shutdown_grace_s."""
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.generation.runner.engine import LLMEngine
    from ragloom.retrieval.collections import CollectionManager

    check_port_free(settings.host, settings.port)  # a busy port is an error now, not after the model loads
    auth.check_exposure(settings)  # so is listening unprotected beyond loopback
    log.info("loading model %s (device=%s, dtype=%s)", settings.model, settings.device, settings.dtype)
    # loading blocks for seconds; keep the loop responsive to signals meanwhile
    llm = await asyncio.to_thread(LLMEngine, settings)
    engine = AsyncEngine(llm)
    await engine.start()
    collections: CollectionManager | None = None
    try:
        # opens the store and indexes; the embedding model itself loads on first use
        collections = await asyncio.to_thread(CollectionManager, settings.data_dir, settings.store_url)
        srv = await start_server(settings, engine, collections=collections)
        # Everything loaded so far (weights' Python wrappers, tokenizer tables, sqlglot, the
        # indexes' metadata) lives as long as the server: out of the collector's sight, a full
        # collection under load took ~55 ms instead of 0.22-0.37 s here (vLLM's API server does
        # the same).
        gc.collect()
        gc.freeze()
        log.info(
            "serving %s on %s (max_concurrent_rpcs=%d, max_message_bytes=%d)",
            llm.model_id,
            srv.address,
            settings.max_concurrent_rpcs,
            settings.max_message_bytes,
        )
        log.info(
            "transport: %s; API keys: %s; reflection: %s",
            ("mTLS" if settings.tls_client_ca else "TLS") if srv.tls else "plaintext",
            f"{len(srv.api_keys.ring.keys)} from {settings.api_keys} (SIGHUP reloads)" if srv.api_keys else "none",
            "on" if settings.reflection else "off",
        )
        # One machine-readable line on stdout: with --port 0 this is how callers learn the port.
        print(f"ragloom: serving {llm.model_id} on {srv.address}", flush=True)
        if ready is not None:
            ready.set()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        received: list[str] = []

        def _on_signal(sig: signal.Signals) -> None:
            received.append(sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig)
        try:
            with auth.reload_on_sighup(srv.api_keys):
                await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        log.info(
            "%s received: draining for up to %.1fs, then stopping",
            received[0] if received else "stop",
            settings.shutdown_grace_s,
        )
        await srv.stop(settings.shutdown_grace_s)
    finally:
        await engine.shutdown()
        if collections is not None:
            await asyncio.to_thread(collections.close)
    log.info("server stopped")
    sys.stdout.flush()
