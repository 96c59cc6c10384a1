"""Faults: processes killed with SIGKILL mid-write, Redis cut under load, PostgreSQL connections
terminated under load. Real processes, files, Redis and PostgreSQL throughout.

- kill -9 during an ingest (a retrieval-only server in its own process, as in
  test_upsert_transactions), during index saves, and during chunk-KV disk writes; then reopen and
  check that the store, the faiss index and the cache agree, and that nothing committed was lost.
- Redis: the chunk-KV store's Redis tier is reached through a TCP proxy this test controls
  (the system Redis cannot be restarted from a test); cutting it drops every connection and refuses
  new ones, as a restarting Redis does.
- PostgreSQL: the collection store and a Tables connector on the machine's PostgreSQL; their
  backends are ended with pg_terminate_backend under load. Only this test's own connections are
  ended (they carry an application_name of their own): other suites may share the database.

Each test prints its figures (faults injected, requests, statuses, anything lost) for the closing
note; `pytest -s` shows them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import grpc
import pytest
import sqlalchemy as sa
import torch
from background_loop import BackgroundLoop
from test_upsert_transactions import SERVER

from ragloom.cache.chunk_kv import (
    ChunkKV,
    ChunkKVStore,
    DiskTier,
    MemoryTier,
    RedisTier,
    chunk_key,
    encode_entry,
)
from ragloom.cache.codec import CodecConfig
from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import RagloomError
from ragloom.retrieval.collections import CollectionManager, Document
from ragloom.retrieval.index import MANIFEST, VectorIndex
from ragloom.retrieval.store import ChunkRow, CollectionRow, DocumentRow
from ragloom.services._proto import retrieval_pb2 as rpb
from ragloom.services._proto import retrieval_pb2_grpc as rpb_grpc
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.services._proto import tables_pb2_grpc as tpb_grpc
from ragloom.services.server import start_server

PG_URL = os.environ.get("RAGLOOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
ENV = os.environ | {"RAGLOOM_DEVICE": "cpu"}


def _wait(cond: Callable[[], bool], what: str, limit: float = 60) -> None:
    """Poll until cond() holds; bounded, so a regression fails instead of hanging."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _figures(name: str, **figures: Any) -> None:
    print(f"\nFAULT FIGURES {name}: {json.dumps(figures, sort_keys=True, default=str)}")


# -- store <-> index agreement ----------------------------------------------------------------------


def _check_consistent(data: Path, collection: str) -> list[str]:
    """Open the data dir as a restarted server would and check that store and index agree: every
    document has its chunks, every index entry is a stored chunk's slot and every stored chunk is
    in the index. Returns the stored document ids."""
    m = CollectionManager(data)
    try:
        with m.store.session() as s:
            row = s.query(CollectionRow).filter_by(name=collection).one()
            docs = {d.id: d.doc_id for d in s.query(DocumentRow).filter_by(collection_id=row.id)}
            chunks = s.query(ChunkRow.document_id, ChunkRow.idx, ChunkRow.slot).filter_by(collection_id=row.id).all()
            idx = m._index(row)  # loads the saved index, or rebuilds it when it is behind the store
        per_doc: dict[int, list[int]] = {}
        for doc, i, _ in chunks:
            per_doc.setdefault(doc, []).append(i)
        assert set(per_doc) == set(docs), "documents without chunks, or chunks without documents"
        assert all(sorted(ix) == list(range(len(ix))) for ix in per_doc.values()), "a document lost some chunks"
        ids = faiss.vector_to_array(idx.binary.id_map) if idx.kind == "flat" else None
        assert idx.ntotal == len(chunks)
        if ids is not None:
            assert sorted(ids.tolist()) == sorted(slot for _, _, slot in chunks), "index and store disagree"
        assert idx.store_version == row.version
        return list(docs.values())
    finally:
        m.close()


# -- 1. kill -9 during an ingest --------------------------------------------------------------------


class ProcessServer:
    """A retrieval-only ragloom server in its own process (test_upsert_transactions.SERVER)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(data)], stdout=subprocess.PIPE, text=True,
                                     env=ENV)
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        assert self.address, "the server process did not start"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _docs(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": f"{prefix} note {i}: topic {i % 13} about harbours, ships and tides."}
            for i in range(n)]


def _kill_mid_ingest(data: Path, rounds: int, docs_per_call: int) -> dict[str, Any]:
    """Committed calls, then a streamed upsert killed after `kill_after` acks; restart; check."""
    committed = 0
    acked_lost = 0
    for r in range(rounds):
        server = ProcessServer(data)
        try:
            with Client(server.address, timeout=120) as c:
                if r == 0:
                    c.create_collection("kb")
                c.upsert("kb", _docs(f"c{r}x", 30), batch_size=10)  # committed before the fault
                committed += 30
                acks: list[int] = []
                kill_after = random.randint(1, 3)

                def progress(n: int, acks: list[int] = acks, kill_after: int = kill_after,
                             server: ProcessServer = server) -> None:
                    acks.append(n)
                    if len(acks) == kill_after:
                        server.proc.send_signal(signal.SIGKILL)

                with pytest.raises(RagloomError):
                    c.upsert("kb", _docs(f"k{r}x", docs_per_call), batch_size=20, progress=progress, timeout=120)
            server.proc.wait(30)
            assert 0 < sum(acks) < docs_per_call
            acked_lost += sum(acks)
        finally:
            server.stop()
        counts = Counter(d.rstrip("0123456789") for d in _check_consistent(data, "kb"))
        assert sum(v for k, v in counts.items() if k.startswith("c")) == committed, counts
        assert not any(k.startswith("k") for k in counts), f"a killed call left documents: {counts}"
    # a restarted server serves the committed documents and takes new ones
    server = ProcessServer(data)
    try:
        with Client(server.address, timeout=120) as c:
            assert {i.name: i.documents for i in c.list_collections()}["kb"] == committed
            hits = c.search("kb", "c0x note 7: topic 7 about harbours, ships and tides.", k=1)
            assert hits[0].id == "c0x7"
            assert c.upsert("kb", _docs("after", 10)).documents == 10
            assert c.search("kb", "after note 3: topic 3 about harbours, ships and tides.", k=1)[0].id == "after3"
    finally:
        server.stop()
    counts = Counter(d.rstrip("0123456789") for d in _check_consistent(data, "kb"))
    assert counts.get("after") == 10
    return {"kills": rounds, "committed_documents": committed, "acked_uncommitted_documents_dropped": acked_lost,
            "committed_lost": 0, "stored_after": sum(counts.values())}


@pytest.mark.slow  # ~25 s with its server start; `make test` stays under 15 min
def test_kill_during_ingest_keeps_store_and_index_consistent(tmp_path: Path) -> None:
    _figures("kill-9 ingest", **_kill_mid_ingest(tmp_path / "data", rounds=1, docs_per_call=300))


@pytest.mark.slow
def test_kill_during_ingest_repeatedly(tmp_path: Path) -> None:
    _figures("kill-9 ingest x5", **_kill_mid_ingest(tmp_path / "data", rounds=5, docs_per_call=600))


# -- 2. kill -9 during index saves ------------------------------------------------------------------

SAVER = """
import sys
import numpy as np
from pathlib import Path
from ragloom.retrieval.collections import CollectionManager, Document

data, per_call = Path(sys.argv[1]), int(sys.argv[2])
m = CollectionManager(data)
if "kb" not in [c.name for c in m.list_collections()]:
    m.create_collection("kb", index="flat")
rng = np.random.default_rng(int(sys.argv[3]))
call = 0
while True:
    vectors = rng.standard_normal((per_call, m.embedder.dim)).astype("float32")
    # each call replaces half of the previous call's documents (index removals) and adds new ones
    ids = [f"v{sys.argv[3]}c{call}x{i}" for i in range(per_call // 2)]
    ids += [f"v{sys.argv[3]}c{call - 1}x{i}" for i in range(per_call // 2)]
    m.upsert_vectors("kb", [Document(d, "vector " + d) for d in ids], vectors)
    call += 1
    print(call, flush=True)  # committed, and its index saved
"""


def _store_version(data: Path, collection: str) -> int:
    m = CollectionManager(data)
    try:
        with m.store.session() as s:
            return s.query(CollectionRow).filter_by(name=collection).one().version
    finally:
        m.close()


def _kill_mid_save(data: Path, kills: int, per_call: int) -> dict[str, Any]:
    behind = hit_save = 0
    for k in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(data), str(per_call), str(k)],
                                stdout=subprocess.PIPE, text=True, env=ENV)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the process is up and one call is in
        assert first.strip(), "the saver did not start"
        # aim: kill the moment a save's temp file shows up (a save is a few ms of each call)
        folder = next(p.parent for p in data.rglob(MANIFEST))
        end = time.monotonic() + random.uniform(2, 6)
        while time.monotonic() < end and not any(n.startswith(".") and n.endswith(".tmp") for n in os.listdir(folder)):
            pass
        saving = time.monotonic() < end
        proc.send_signal(signal.SIGKILL)
        hit_save += saving
        out, _err = proc.communicate(timeout=30)
        printed = int(out.split()[-1]) if out.split() else int(first)
        loaded = VectorIndex.load(folder)  # never raises: the last complete save, or None
        assert loaded is None or loaded.ntotal == json.loads((folder / MANIFEST).read_text())["ntotal"]
        if loaded is None or loaded.store_version != _store_version(data, "kb"):
            behind += 1  # killed between a commit and its index save: rebuilt from the store below
        stored = _check_consistent(data, "kb")
        # process k stored v<k>c<-1..calls-1>; a commit may have landed after the last line printed
        mine = sum(d.startswith(f"v{k}c") for d in stored) // (per_call // 2)
        assert mine in (printed + 1, printed + 2), (mine, printed)
    return {"kills": kills, "documents_per_call": per_call, "stored_documents": len(stored),
            "index_behind_store_on_reopen": behind, "killed_while_a_save_was_writing": hit_save,
            "committed_lost": 0}


@pytest.mark.slow  # ~17 s; test_kill_during_ingest covers the index rebuild in `make test`
def test_kill_during_index_save_reopens_to_a_consistent_index(tmp_path: Path) -> None:
    _figures("kill-9 index save", **_kill_mid_save(tmp_path / "data", kills=2, per_call=1000))


@pytest.mark.slow
def test_kill_during_index_save_repeatedly(tmp_path: Path) -> None:
    _figures("kill-9 index save x12", **_kill_mid_save(tmp_path / "data", kills=12, per_call=4000))


# -- 3. kill -9 during chunk-KV disk writes ---------------------------------------------------------

MODEL, DTYPE = "fault-test-model", "float32"


def _kv(i: int) -> ChunkKV:
    """Entry i, the same in every process (seeded); ~1 MB of float32 KV."""
    g = torch.Generator().manual_seed(i)
    tokens = [i, i + 1, *range(254)]
    k = torch.randn(4, len(tokens), 4, 64, generator=g)
    v = torch.randn(4, len(tokens), 4, 64, generator=g)
    return ChunkKV(chunk_key(MODEL, DTYPE, tokens), tokens, k, v, 0, MODEL, DTYPE)


WRITER = """
import sys
from ragloom.cache.chunk_kv import ChunkKVStore, DiskTier
from ragloom.cache.codec import CodecConfig
from test_faults import _kv

store = ChunkKVStore([DiskTier(sys.argv[1])], CodecConfig(bits=16))
i = int(sys.argv[2])
while True:
    store.put(_kv(i))
    print(i, flush=True)  # on disk
    i += 1
"""


def _kill_mid_kv_write(folder: Path, kills: int, until_cut: int = 0) -> dict[str, Any]:
    """`kills` kills, more (up to 4 x) until `until_cut` of them cut a write short."""
    written: list[int] = []
    for _ in range(4 * kills):
        if _ >= kills and len(list(folder.glob("*/*.tmp"))) >= until_cut:
            break
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(len(written) + 1000 * _)],
                                stdout=subprocess.PIPE, text=True, env=ENV | {"PYTHONPATH": str(Path(__file__).parent)})
        assert proc.stdout is not None
        written.append(int(proc.stdout.readline()))
        # aim: kill while an entry's temp file is being written, else at a random moment
        end = time.monotonic() + random.uniform(0.5, 3)
        while time.monotonic() < end and not any(folder.glob("*/*.tmp")):
            pass
        proc.send_signal(signal.SIGKILL)
        out, _err = proc.communicate(timeout=30)
        written += [int(x) for x in out.split()]
    torn_writes = len(list(folder.glob("*/*.tmp")))  # writes the kills cut short
    tier = DiskTier(folder)  # a restart: the scan sees finished entries only
    leftovers = list(folder.glob("*/*.tmp"))
    store = ChunkKVStore([tier], CodecConfig(bits=16))
    served = 0
    for i in written:
        want = _kv(i)
        got, where = store.get(want.key, MODEL, DTYPE)
        assert got is not None and where == "disk", f"entry {i} was reported written but is not served"
        # bits=16 keeps float16 of the KV: the same reconstruction as when written
        assert torch.allclose(got.k, want.k.half().float()) and got.token_ids == want.token_ids
        served += 1
    # a kill after os.replace but before the line was printed leaves one more whole entry
    extra = [key for key in list(tier._index) if key not in {_kv(i).key for i in written}]
    kills = _ + 1
    assert len(extra) <= kills
    assert all(store.get(key, MODEL, DTYPE)[1] == "disk" for key in extra)  # whole, or it would be dropped
    stats = tier.stats()
    assert stats["entries"] == len(written) + len(extra) and stats["corrupt"] == 0
    return {"kills": kills, "entries_written": len(written), "entries_served": served,
            "writes_cut_by_the_kill": torn_writes, "corrupt_entries": stats["corrupt"],
            "temp_files_left": len(leftovers)}


def test_kill_during_chunk_kv_disk_write_serves_only_whole_entries(tmp_path: Path) -> None:
    figures = _kill_mid_kv_write(tmp_path / "kv", kills=2, until_cut=1)
    assert figures["writes_cut_by_the_kill"] > 0, "no kill landed mid-write: the test proved nothing"
    # temp files of a killed writer are removed by the next open (their writer is gone)
    assert figures["temp_files_left"] == 0
    _figures("kill-9 chunk-KV disk write", **figures)


def test_a_torn_chunk_kv_file_is_dropped_and_counted(tmp_path: Path) -> None:
    """What a non-atomic write (or a disk fault) would leave: never served, counted as corrupt."""
    store = ChunkKVStore([DiskTier(tmp_path)], CodecConfig(bits=16))
    good, torn = _kv(1), _kv(2)
    store.put(good)
    blob = encode_entry(torn, CodecConfig(bits=16))
    path = tmp_path / torn.key[:2] / f"{torn.key}.kv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(blob[: len(blob) // 2])
    reopened = DiskTier(tmp_path)
    store = ChunkKVStore([reopened], CodecConfig(bits=16))
    assert store.get(torn.key, MODEL, DTYPE) == (None, None)
    assert not path.exists() and reopened.stats()["corrupt"] == 1
    assert store.get(good.key, MODEL, DTYPE)[1] == "disk"


@pytest.mark.slow
def test_kill_during_chunk_kv_disk_write_repeatedly(tmp_path: Path) -> None:
    _figures("kill-9 chunk-KV disk write x10", **_kill_mid_kv_write(tmp_path / "kv", kills=10))


# -- 4. Redis cut and restored under load -----------------------------------------------------------


class TcpProxy:
    """127.0.0.1:<port> -> Redis, on a background loop. cut() closes every connection and refuses
    new ones (as a restarting Redis does); restore() lets them through again."""

    def __init__(self, bg: BackgroundLoop, host: str, port: int) -> None:
        self.bg, self.host, self.target_port = bg, host, port
        self.open = True
        self._conns: set[asyncio.StreamWriter] = set()
        self._server = bg.run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self._conns |= {writer, up_writer}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()
                self._conns.discard(w)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        async def run() -> None:
            self.open = False
            for w in list(self._conns):
                w.transport.abort()
            self._conns.clear()
        self.bg.run(run())

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self._server.close()
        self.cut()


@pytest.fixture
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    try:
        yield loop
    finally:
        loop.close()


def _redis_or_skip() -> Any:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as e:
        if os.environ.get("CI"):
            pytest.fail(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {e}")
        pytest.skip(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {e}")
    return client


def test_redis_cut_under_load_degrades_to_other_tiers_and_recovers(tmp_path: Path, bg: BackgroundLoop) -> None:
    direct = _redis_or_skip()
    proxy = TcpProxy(bg, REDIS_HOST, REDIS_PORT)
    prefix = f"ragloom:fault:{uuid.uuid4().hex[:8]}:"
    redis_tier = RedisTier(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, retry_interval_s=0.3,
                           connect_timeout_s=0.2, socket_timeout_s=0.5)
    store = ChunkKVStore([MemoryTier(8 * 2**20), DiskTier(tmp_path / "kv"), redis_tier], CodecConfig(bits=8))
    entries = [_kv(i) for i in range(24)]  # small memory tier: lookups go to disk and Redis too
    calls: Counter[str] = Counter()
    failures: list[BaseException] = []
    stop = threading.Event()
    phase = ["up"]

    def load(worker: int) -> None:
        rng = random.Random(worker)
        while not stop.is_set():
            e = rng.choice(entries)
            try:
                if rng.random() < 0.3:
                    store.put(e)
                    calls[f"put/{phase[0]}"] += 1
                else:
                    got, tier = store.get(e.key, MODEL, DTYPE)
                    calls[f"get/{phase[0]}/{tier or 'miss'}"] += 1
            except BaseException as exc:  # noqa: BLE001 - any exception reaching a caller is the failure
                failures.append(exc)

    workers = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(3)]
    try:
        for w in workers:
            w.start()
        _wait(lambda: sum(v for k, v in calls.items() if k.startswith("put/up")) >= 10, "puts through Redis")
        assert redis_tier.stats()["available"] and redis_tier.stats()["puts"] > 0
        phase[0] = "cut"
        proxy.cut()
        _wait(lambda: not store.stats()["tiers"]["redis"]["available"], "the Redis tier to notice the outage")
        during = sum(calls.values())
        time.sleep(1.5)  # several retry intervals of load against a dead Redis
        cut_stats = store.stats()
        assert sum(calls.values()) - during > 20, "operations stalled while Redis was down"
        assert not cut_stats["tiers"]["redis"]["available"] and cut_stats["redis_errors"] > 0
        phase[0] = "restored"
        proxy.restore()
        _wait(lambda: store.stats()["tiers"]["redis"]["available"], "the Redis tier to recover by itself", 10)
        puts_before = redis_tier.stats()["puts"]
        _wait(lambda: redis_tier.stats()["puts"] > puts_before, "writes to reach Redis again", 10)
    finally:
        stop.set()
        for w in workers:
            w.join(30)
        proxy.close()
        store.close()
    assert not failures, failures[:3]
    # what was written after the restore is really in Redis
    fresh = _kv(999)
    store2 = ChunkKVStore([RedisTier(f"redis://{REDIS_HOST}:{REDIS_PORT}/0", prefix=prefix)], CodecConfig(bits=8))
    store2.put(fresh)
    assert store2.get(fresh.key, MODEL, DTYPE)[1] == "redis"
    stats = redis_tier.stats()
    for name in direct.scan_iter(match=prefix + "*"):
        direct.delete(name)
    _figures("redis cut", faults=1, calls=dict(calls), caller_errors=len(failures),
             redis_errors=stats["errors"], outages=stats["outages"], skipped_while_down=stats["skipped"],
             available_after=stats["available"])


# -- 5. PostgreSQL connections terminated under load ------------------------------------------------


def _pg_admin_or_skip() -> sa.Engine:
    try:
        engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as c:
            c.execute(sa.text("select 1"))
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server here"
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {PG_URL}: {e}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {e}")
    return engine


def _terminate(admin: sa.Engine, app: str) -> int:
    """pg_terminate_backend on this test's connections (tagged with application_name `app`)."""
    with admin.connect() as c:
        return int(c.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = :app"
        ), {"app": app}).scalar() or 0)


def _tagged(url: str, app: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={app}"


def test_postgres_connections_terminated_under_load(tmp_path: Path, bg: BackgroundLoop) -> None:
    admin = _pg_admin_or_skip()
    tag = uuid.uuid4().hex[:10]
    app, schema, table = f"ragloom_fault_{tag}", f"ragloom_fault_{tag}", f"fault_rows_{tag}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        c.execute(sa.text(f'CREATE TABLE "{schema}"."{table}" (id int primary key, name text)'))
        c.execute(sa.text(f'INSERT INTO "{schema}"."{table}" SELECT g, \'row \' || g FROM generate_series(1, 50) g'))
    manager = CollectionManager(tmp_path, store_url=_tagged(PG_URL, app), store_schema=schema)
    server = bg.run(start_server(Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=tmp_path), None,
                                 collections=manager))
    statuses: Counter[str] = Counter()
    unexpected: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()
    upserted: list[str] = []
    try:
        manager.create_collection("kb")
        manager.upsert("kb", [Document(d["id"], d["text"]) for d in _docs("base", 10)])
        with Client(server.address, timeout=60) as sdk:
            sdk.register_connector("pg", _tagged(f"{PG_URL}?schema={schema}", app))
        channel = grpc.insecure_channel(server.address)
        retrieval = rpb_grpc.RetrievalServiceStub(channel)
        tables = tpb_grpc.TablesServiceStub(channel)

        def record(what: str, fn: Callable[[], Any]) -> bool:
            try:
                fn()
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    with lock:
                        unexpected.append(f"{what}: {code}: {e.details()}")
            with lock:
                statuses[f"{what}/{code}"] += 1
            return code == "OK"

        def load(worker: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                if worker == 0:
                    doc = f"w{worker}n{n}"
                    reqs = [rpb.UpsertRequest(collection="kb"),
                            rpb.UpsertRequest(documents=[rpb.Document(id=doc, text=f"fault note {n} on tides")])]
                    if record("Upsert", functools.partial(lambda r: list(retrieval.Upsert(iter(r), timeout=30)), reqs)):
                        upserted.append(doc)
                elif worker == 1:
                    record("Search", lambda: retrieval.Search(
                        rpb.SearchRequest(collection="kb", query="harbours and ships", k=3), timeout=30))
                else:
                    record("ExecuteSql", lambda: list(tables.ExecuteSql(
                        tpb.ExecuteSqlRequest(connector="pg", sql=f"SELECT count(*) FROM {table}"), timeout=30)))

        workers = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(3)]
        for w in workers:
            w.start()
        terminated = []
        for _ in range(6):
            time.sleep(0.7)
            terminated.append(_terminate(admin, app))
        time.sleep(0.7)
        stop.set()
        for w in workers:
            w.join(60)
        # recovered by itself: every call now succeeds, without a restart
        after: Counter[str] = Counter()
        checks: list[tuple[str, Callable[[], Any]]] = [
                ("Search", lambda: retrieval.Search(rpb.SearchRequest(collection="kb", query="tides", k=3), timeout=30)),
                ("ExecuteSql", lambda: list(tables.ExecuteSql(
                    tpb.ExecuteSqlRequest(connector="pg", sql=f"SELECT count(*) FROM {table}"), timeout=30))),
        ]
        for _ in range(3):
            for what, fn in checks:
                fn()
                after[what] += 1
        channel.close()
        # nothing a successful Upsert committed was lost
        with manager.store.session() as s:
            stored = {d for (d,) in s.query(DocumentRow.doc_id)}
        lost = [d for d in upserted if d not in stored]
    finally:
        bg.run(server.stop(0))
        manager.close()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    _figures("postgres terminate", faults=len(terminated), backends_terminated=sum(terminated),
             statuses=dict(statuses), unexpected=unexpected, recovered_calls=dict(after),
             upserts_ok=len(upserted), upserts_lost=len(lost))
    assert sum(terminated) >= 6, terminated  # each round found connections of ours to end
    assert not unexpected, unexpected[:5]
    assert not lost, lost
    assert all(statuses[f"{w}/OK"] > 0 for w in ("Upsert", "Search", "ExecuteSql")), statuses
