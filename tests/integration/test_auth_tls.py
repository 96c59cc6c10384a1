"""TLS, mTLS and API keys on real servers over loopback: handshakes (with and without the CA,
with and without a client certificate), the auth matrix (every RPC x no key / wrong key /
wrong scope / right scope), Abort of another key's request, the SDK's api_key= and
RAGLOOM_API_KEY, the CLI's flags, reflection switched off, a SIGHUP reload, and `ragloom serve`
refusing to listen beyond loopback unprotected.

Certificates are made per test session with `cryptography`: a CA, a server certificate for
localhost/127.0.0.1 signed by it, a client certificate signed by it, and an unrelated CA."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from background_loop import LiveServer, live_server
from google.rpc import error_details_pb2, status_pb2

from ragloom.client import AsyncClient, Client
from ragloom.config import EngineSettings, Settings
from ragloom.errors import ResourceExhausted, ScopeMissing, Unauthenticated, Unavailable
from ragloom.retrieval.collections import CollectionManager
from ragloom.services import auth
from ragloom.services._proto import (
    generation_pb2,
    generation_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    tables_pb2,
    tables_pb2_grpc,
)
from ragloom.services.status import DETAILS_KEY

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TIMEOUT = 30.0


# -- certificates ---------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # signed nothing here


def _name(cn: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool, san: bool = False) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(folder: Path, stem: str, cert: Any, key: Any | None) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("certs")
    ca_key, other_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    ca = _cert("ragloom test CA", ca_key, "ragloom test CA", ca_key, ca=True)
    other = _cert("other CA", other_key, "other CA", other_key, ca=True)
    server = _cert("localhost", server_key, "ragloom test CA", ca_key, ca=False, san=True)
    client = _cert("app client", client_key, "ragloom test CA", ca_key, ca=False)
    ca_path, _ = _write_pair(folder, "ca", ca, None)
    other_path, _ = _write_pair(folder, "other", other, None)
    server_paths = _write_pair(folder, "server", server, server_key)
    client_paths = _write_pair(folder, "client", client, client_key)
    return Certs(ca_path, *server_paths, *client_paths, other_path)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectionManager]:
    mgr = CollectionManager(tmp_path_factory.mktemp("collections"))
    yield mgr
    mgr.close()


def _settings(tmp: Path, **kw: Any) -> Settings:
    """The server's settings; its data dir (connectors.json) is the test's own folder."""
    return Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp, **kw)


# the engine's: the default data dir, where the bundled model is already converted
ENGINE = EngineSettings(device="cpu", kv_cache_tokens=2048, max_num_seqs=4)


# -- TLS and mTLS handshakes ----------------------------------------------------------------


def test_tls_handshake(certs: Certs, manager: CollectionManager, tmp_path: Path) -> None:
    settings = _settings(tmp_path, tls_cert=certs.server_cert, tls_key=certs.server_key)
    with live_server(settings, model=False, collections=manager) as s:
        assert s.server.tls
        with Client(s.address, timeout=TIMEOUT, tls=True, root_certificates=certs.ca) as c:
            assert c.list_collections() == []
        # a client that does not trust the server's CA, or does not speak TLS, gets nowhere
        roots: Path | None
        for roots in (certs.other_ca, None):
            with Client(s.address, timeout=2, tls=True, root_certificates=roots) as c, pytest.raises(Unavailable):
                c.list_collections()
        with Client(s.address, timeout=2) as c, pytest.raises(Unavailable):
            c.list_collections()


def test_mtls_refuses_a_client_without_a_certificate(certs: Certs, manager: CollectionManager, tmp_path: Path) -> None:
    settings = _settings(tmp_path, tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca)
    with live_server(settings, model=False, collections=manager) as s:
        with Client(s.address, timeout=TIMEOUT, root_certificates=certs.ca, client_cert=certs.client_cert,
                    client_key=certs.client_key) as c:
            assert c.list_collections() == []
        with Client(s.address, timeout=5, root_certificates=certs.ca) as c, pytest.raises(Unavailable):
            c.list_collections()
        # the refusal is the handshake's: a raw channel never becomes ready
        channel = grpc.secure_channel(s.address, grpc.ssl_channel_credentials(certs.ca.read_bytes()))
        with pytest.raises(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=3)
        channel.close()


# -- keys and scopes ------------------------------------------------------------------------

# per scope: a key with only it, and a key with every scope but it
KEYS = {f"only_{s}": (f"key-only-{s}", [s]) for s in auth.SCOPES} | {
    f"all_but_{s}": (f"key-all-but-{s}", [o for o in auth.SCOPES if o != s]) for s in auth.SCOPES
}


def _key_file(path: Path, keys: dict[str, tuple[str, list[str]]]) -> Path:
    entries = [{"name": n, "sha256": hashlib.sha256(k.encode()).hexdigest(), "scopes": sc} for n, (k, sc) in keys.items()]
    path.write_text(json.dumps({"keys": entries}))
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, manager: CollectionManager) -> Iterator[LiveServer]:
    """All four services (with the bundled model), keys required."""
    tmp = tmp_path_factory.mktemp("keyed")
    settings = _settings(tmp, api_keys=_key_file(tmp / "keys.json", KEYS))
    with live_server(settings, ENGINE, collections=manager) as s:
        yield s


def _md(key: str | None) -> tuple[tuple[str, str], ...]:
    return () if key is None else (("authorization", f"Bearer {key}"),)


Call = Callable[[grpc.Channel, tuple[tuple[str, str], ...]], Any]


def _unary(stub: Any, method: str, request: Any) -> Call:
    return lambda ch, md: getattr(stub(ch), method)(request, metadata=md, timeout=TIMEOUT)


def _stream(stub: Any, method: str, request: Any) -> Call:
    return lambda ch, md: list(getattr(stub(ch), method)(request, metadata=md, timeout=TIMEOUT))


G, R, A, T = (generation_pb2_grpc.GenerationServiceStub, retrieval_pb2_grpc.RetrievalServiceStub,
              rag_pb2_grpc.RagServiceStub, tables_pb2_grpc.TablesServiceStub)
# one cheap call per RPC: with the right scope each ends in the servicer (OK or its own error)
CALLS: dict[str, Call] = {
    "Generate": _stream(G, "Generate", generation_pb2.GenerateRequest()),
    "Abort": _unary(G, "Abort", generation_pb2.AbortRequest(request_id="nobody")),
    "GetLoads": _unary(G, "GetLoads", generation_pb2.GetLoadsRequest()),
    "CreateCollection": _unary(R, "CreateCollection", retrieval_pb2.CreateCollectionRequest(name="")),
    "DeleteCollection": _unary(R, "DeleteCollection", retrieval_pb2.DeleteCollectionRequest(name="missing")),
    "ListCollections": _unary(R, "ListCollections", retrieval_pb2.ListCollectionsRequest()),
    "Upsert": lambda ch, md: list(R(ch).Upsert(iter([retrieval_pb2.UpsertRequest()]), metadata=md, timeout=TIMEOUT)),
    "Delete": _unary(R, "Delete", retrieval_pb2.DeleteRequest(collection="missing")),
    "Search": _unary(R, "Search", retrieval_pb2.SearchRequest(collection="missing", query="q")),
    "Ask": _stream(A, "Ask", rag_pb2.AskRequest()),
    "GetCacheStats": _unary(A, "GetCacheStats", rag_pb2.GetCacheStatsRequest()),
    "RegisterConnector": _unary(T, "RegisterConnector", tables_pb2.RegisterConnectorRequest(name="")),
    "ListConnectors": _unary(T, "ListConnectors", tables_pb2.ListConnectorsRequest()),
    "RemoveConnector": _unary(T, "RemoveConnector", tables_pb2.RemoveConnectorRequest(name="missing")),
    "DescribeSchema": _unary(T, "DescribeSchema", tables_pb2.DescribeSchemaRequest(connector="missing")),
    "AddExample": _unary(T, "AddExample", tables_pb2.AddExampleRequest(connector="missing")),
    "Query": _stream(T, "Query", tables_pb2.QueryRequest(connector="missing", question="q")),
    "ExecuteSql": _stream(T, "ExecuteSql", tables_pb2.ExecuteSqlRequest(connector="missing", sql="SELECT 1")),
}


def _scope(rpc: str) -> str:
    (scope,) = [s for m, s in auth.METHOD_SCOPES.items() if m.endswith(f"/{rpc}")]
    return scope


def _code_and_info(call: Call, channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, Any]:
    try:
        call(channel, md)
    except grpc.RpcError as exc:
        for key, value in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
            if key == DETAILS_KEY:
                for packed in status_pb2.Status.FromString(value).details:
                    if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                        info = error_details_pb2.ErrorInfo()
                        packed.Unpack(info)
                        return exc.code(), info  # type: ignore[attr-defined]
        return exc.code(), None  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, None


def test_calls_cover_every_rpc() -> None:
    assert {m.rsplit("/", 1)[1] for m in auth.METHOD_SCOPES} == set(CALLS)


@pytest.mark.parametrize("rpc", sorted(CALLS))
def test_auth_matrix(keyed: LiveServer, rpc: str) -> None:
    scope, call = _scope(rpc), CALLS[rpc]
    with grpc.insecure_channel(keyed.address) as ch:
        for md in (_md(None), _md("not-a-key"), (("authorization", "Basic key-only-admin"),)):
            code, info = _code_and_info(call, ch, md)
            assert code == grpc.StatusCode.UNAUTHENTICATED, (rpc, md, code)
            assert info is not None and info.reason == "API_KEY_INVALID"
        if scope != auth.ANY_KEY:
            code, info = _code_and_info(call, ch, _md(KEYS[f"all_but_{scope}"][0]))
            assert code == grpc.StatusCode.PERMISSION_DENIED, (rpc, code)
            assert info.reason == "SCOPE_MISSING" and info.metadata["scope"] == scope
        right = KEYS[f"only_{scope or 'ask'}"][0]  # any valid key for GetLoads / GetCacheStats
        code, _ = _code_and_info(call, ch, _md(right))
        assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED), (rpc, code)


def test_health_and_reflection_stay_open(keyed: LiveServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(keyed.address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answers = list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT))
        assert "ragloom.v1.GenerationService" in {s.name for s in answers[0].list_services_response.service}


def test_abort_only_your_own_requests(keyed: LiveServer) -> None:
    owner, other = KEYS["only_generate"][0], KEYS["all_but_admin"][0]
    request = generation_pb2.GenerateRequest(
        prompt="Count from one to a thousand:", request_id="owned-1",
        sampling=generation_pb2.SamplingParams(max_tokens=400, ignore_eos=True, temperature=0.0),
    )
    with grpc.insecure_channel(keyed.address) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        stream = stub.Generate(request, metadata=_md(owner), timeout=120)
        first = next(stream)
        assert first.HasField("chunk")
        # another key's abort looks like an unknown id, and does not stop the request
        assert not stub.Abort(generation_pb2.AbortRequest(request_id="owned-1"), metadata=_md(other), timeout=TIMEOUT).found
        assert stub.Abort(generation_pb2.AbortRequest(request_id="owned-1"), metadata=_md(owner), timeout=TIMEOUT).found
        last = list(stream)[-1]
        assert last.complete.finish_reason == generation_pb2.FINISH_REASON_ABORT


def test_sdk_api_key_and_env(keyed: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGLOOM_API_KEY", raising=False)
    with Client(keyed.address, timeout=TIMEOUT) as c, pytest.raises(Unauthenticated) as err:
        c.list_collections()
    assert err.value.code == "UNAUTHENTICATED" and err.value.reason == "API_KEY_INVALID"
    with Client(keyed.address, timeout=TIMEOUT, api_key=KEYS["only_retrieve"][0]) as c:
        c.list_collections()
        with pytest.raises(ScopeMissing) as denied:
            c.create_collection("denied")
        assert denied.value.metadata["scope"] == "admin"
    monkeypatch.setenv("RAGLOOM_API_KEY", KEYS["only_generate"][0])
    with Client(keyed.address, timeout=TIMEOUT) as c:
        # streams carry the key too
        assert sum(len(ch.token_ids) for ch in c.stream("Hi", max_tokens=2)) >= 1
        assert c.generate("Hi", max_tokens=2).usage.completion_tokens >= 1

    async def run_async() -> None:
        async with AsyncClient(keyed.address, timeout=TIMEOUT, api_key=KEYS["only_admin"][0]) as ac:
            await ac.create_collection("keyed_async")
            await ac.delete_collection("keyed_async")
        async with AsyncClient(keyed.address, timeout=TIMEOUT, api_key="wrong") as ac:
            with pytest.raises(Unauthenticated):
                await ac.list_collections()

    asyncio.run(run_async())


def test_cli_flags(certs: Certs, manager: CollectionManager, tmp_path: Path) -> None:
    keys = _key_file(tmp_path / "keys.json", {"cli": ("cli-key", ["retrieve"])})
    settings = _settings(tmp_path, tls_cert=certs.server_cert, tls_key=certs.server_key, api_keys=keys)
    with live_server(settings, model=False, collections=manager) as s:
        base = [sys.executable, "-m", "ragloom.cli", "collections", "--address", s.address, "--timeout", "30"]
        env = {k: v for k, v in os.environ.items() if k != "RAGLOOM_API_KEY"}
        ok = subprocess.run([*base, "--ca", str(certs.ca), "--api-key", "cli-key"], capture_output=True, text=True,
                            env=env, timeout=120)
        assert ok.returncode == 0, ok.stderr
        no_key = subprocess.run([*base, "--tls", "--ca", str(certs.ca)], capture_output=True, text=True, env=env,
                                timeout=120)
        assert no_key.returncode == 1 and "needs an API key" in no_key.stderr
        via_env = subprocess.run([*base, "--ca", str(certs.ca)], capture_output=True, text=True,
                                 env={**env, "RAGLOOM_API_KEY": "cli-key"}, timeout=120)
        assert via_env.returncode == 0, via_env.stderr


def test_reflection_can_be_switched_off(manager: CollectionManager, tmp_path: Path) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with live_server(_settings(tmp_path, reflection=False), model=False, collections=manager) as s, \
            grpc.insecure_channel(s.address) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]


def test_sighup_reloads_keys(manager: CollectionManager, tmp_path: Path) -> None:
    """The server's loop runs on this (main) thread, as in `ragloom serve`, so that SIGHUP reaches it."""
    assert threading.current_thread() is threading.main_thread()
    from ragloom.services.server import start_server

    path = _key_file(tmp_path / "keys.json", {"old": ("old-key", ["retrieve"])})

    async def scenario() -> None:
        srv = await start_server(_settings(tmp_path, api_keys=path), None, collections=manager)
        try:
            with auth.reload_on_sighup(srv.api_keys):
                async def works(key: str) -> bool:
                    async with AsyncClient(srv.address, timeout=TIMEOUT, api_key=key) as c:
                        try:
                            await c.list_collections()
                        except Unauthenticated:
                            return False
                        return True

                assert await works("old-key") and not await works("new-key")
                _key_file(path, {"new": ("new-key", ["retrieve"])})
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if await works("new-key"):
                        break
                assert await works("new-key") and not await works("old-key")
                path.write_text("{broken")  # a bad file keeps the keys in use
                os.kill(os.getpid(), signal.SIGHUP)
                await asyncio.sleep(0.3)
                assert await works("new-key")
        finally:
            await srv.stop(0)

    asyncio.run(scenario())


def test_serve_refuses_to_listen_beyond_loopback_unprotected(tmp_path: Path) -> None:
    env = {**os.environ, "RAGLOOM_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ragloom.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert "refusing to listen on 0.0.0.0:0 without TLS" in done.stderr and "--insecure" in done.stderr
    assert "loading model" not in done.stderr  # refused before the model loads


# -- per-key rate limits (services/limits.py) -----------------------------------------------


def test_rate_limits_per_key(manager: CollectionManager, tmp_path: Path) -> None:
    """A key over its rate gets RESOURCE_EXHAUSTED (RATE_LIMITED) with a retry delay; other keys
    keep their own budget; a key's own rate_per_s in the file wins over the server default."""
    entries = [
        {"name": "slow", "sha256": hashlib.sha256(b"slow-key").hexdigest(), "scopes": ["retrieve"]},
        {"name": "fast", "sha256": hashlib.sha256(b"fast-key").hexdigest(), "scopes": ["retrieve"],
         "rate_per_s": 1000, "burst": 1000},
    ]
    (tmp_path / "keys.json").write_text(json.dumps({"keys": entries}))
    # 0.01 calls/s with a burst of 2: the third call within a second is over any clock jitter
    settings = _settings(tmp_path, api_keys=tmp_path / "keys.json", rate_limit_per_s=0.01, rate_limit_burst=2)
    with live_server(settings, model=False, collections=manager) as s:
        with Client(s.address, timeout=TIMEOUT, api_key="slow-key") as slow, \
                Client(s.address, timeout=TIMEOUT, api_key="fast-key") as fast:
            assert slow.list_collections() == [] and slow.list_collections() == []
            with pytest.raises(ResourceExhausted) as err:
                slow.list_collections()
            assert err.value.reason == "RATE_LIMITED" and err.value.metadata["key"] == "slow"
            assert err.value.retry_after_s is not None and 50 < err.value.retry_after_s <= 100
            for _ in range(20):  # its own limit, far above the default
                assert fast.list_collections() == []


def test_token_bucket() -> None:
    from ragloom.services.limits import RateLimits, TokenBucket

    bucket = TokenBucket(rate=2.0, burst=3.0, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token comes every 0.5 s
    assert bucket.take(0.5) == 0.0 and bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at the burst
    limits = RateLimits()
    assert all(limits.check("k", None, None) == 0.0 for _ in range(100))  # no rate: no limit
    assert limits.check("k", 1.0, None, now=0.0) == 0.0 and limits.check("k", 1.0, None, now=0.0) > 0
