"""RetrievalService.Upsert is one transaction per call, and its progress comes from the server.

A real grpc.aio server over loopback in front of a real CollectionManager (SQLite + faiss in a
temporary folder, the bundled MiniLM embedder), driven through the raw stub, the SDK and the
`ragloom ingest` CLI. Regressions covered: a cancelled or deadline-exceeded upsert used to be
stored anyway (the batch running in its worker thread finished); the progress bar counted
batches handed to gRPC, so it read 100% after the server died with most documents unstored.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from background_loop import BackgroundLoop

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import DeadlineExceeded, RagloomError
from ragloom.retrieval.collections import CollectionManager, Document
from ragloom.retrieval.embed import Embedder
from ragloom.retrieval.upsert import UpsertTransaction
from ragloom.services._proto import retrieval_pb2 as pb
from ragloom.services._proto import retrieval_pb2_grpc as pb_grpc
from ragloom.services.server import RagloomServer, start_server

BASE = [
    Document("keep", "The lighthouse keeper climbs the tower every evening to light the lamp.", {"rev": 1}),
    Document("bread", "Sourdough bread rises slowly thanks to wild yeast.", {"rev": 1}),
    Document("volcano", "Lava flows from an erupting volcano.", {"rev": 1}),
]
REPLACED = "Quarterly revenue of the lighthouse company grew by twelve percent."


def _many(n: int, prefix: str = "d") -> list[dict[str, Any]]:
    docs = [{"id": f"{prefix}{i}", "text": f"Note {i}: topic {i % 11} is discussed here at some length."} for i in range(n)]
    docs[n // 2] = {"id": "keep", "text": REPLACED, "metadata": {"rev": 2}}  # would replace BASE[0]
    return docs


class GatedEmbedder:
    """The real embedder; each document batch (more than one text) takes a permit first, so a
    test decides how many batches get through, and sees how many were started."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        self.permits = threading.Semaphore(1_000_000)
        self.batches = 0
        self.in_flight = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def allow(self, n: int) -> None:
        """From now on let exactly n more document batches through."""
        self.permits = threading.Semaphore(n)

    def open(self) -> None:
        self.permits.release(1_000_000)

    def encode(self, texts: Any, show_progress: bool = False) -> np.ndarray:
        if len(texts) <= 1:  # a search's query
            return self._inner.encode(texts, show_progress)
        self.in_flight += 1
        try:
            self.batches += 1
            assert self.permits.acquire(timeout=120), "no permit came"
            return self._inner.encode(texts, show_progress)
        finally:
            self.in_flight -= 1


class RecordingManager(CollectionManager):
    """Keeps the transactions it opened, so a test can see their end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transactions: list[UpsertTransaction] = []

    def begin_upsert(self, name: str) -> UpsertTransaction:
        tx = super().begin_upsert(name)
        self.transactions.append(tx)
        return tx


@dataclass
class Served:
    data_dir: Path
    manager: RecordingManager
    server: RagloomServer
    embedder: GatedEmbedder

    @property
    def address(self) -> str:
        return self.server.address


def _wait(cond: Callable[[], bool], what: str, limit: float = 120) -> None:
    """Poll until cond() holds; bounded, so a regression fails instead of hanging."""
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(device="cpu")


def _serve(bg: BackgroundLoop, data_dir: Path, embedder: Embedder) -> Served:
    gated = GatedEmbedder(embedder)
    manager = RecordingManager(data_dir, embedder=gated)  # type: ignore[arg-type]
    settings = Settings(host="127.0.0.1", port=0, shutdown_grace_s=1.0, data_dir=data_dir)
    server = bg.run(start_server(settings, None, collections=manager))
    return Served(data_dir, manager, server, gated)


def _stop(bg: BackgroundLoop, s: Served) -> None:
    s.embedder.open()
    bg.run(s.server.stop(0))
    s.manager.close()


@pytest.fixture
def served(bg: BackgroundLoop, tmp_path: Path, embedder: Embedder) -> Iterator[Served]:
    s = _serve(bg, tmp_path, embedder)
    s.manager.create_collection("kb")
    s.manager.upsert("kb", BASE)
    s.manager.transactions.clear()
    try:
        yield s
    finally:
        _stop(bg, s)


def _snapshot(m: CollectionManager) -> tuple[int, int, list[tuple[str, str]]]:
    """What a reader sees: counts, and every hit for a query the new documents would win."""
    info = m.get_collection("kb")
    hits = m.search("kb", "the lighthouse company's quarterly revenue", k=10)
    return info.documents, info.chunks, [(h.id, h.text) for h in hits]


def _requests(docs: list[dict[str, Any]], batch: int, progress: bool = True) -> Iterator[pb.UpsertRequest]:
    yield pb.UpsertRequest(collection="kb", progress=progress)
    for start in range(0, len(docs), batch):
        yield pb.UpsertRequest(
            documents=[pb.Document(id=d["id"], text=d["text"]) for d in docs[start : start + batch]]
        )


def _assert_unchanged(s: Served, before: tuple[int, int, list[tuple[str, str]]]) -> None:
    assert _snapshot(s.manager) == before
    assert before[0] == len(BASE) and ("keep", BASE[0].text) in before[2]  # the old version is what is served


# -- cancel and deadline ----------------------------------------------------------------------


def test_client_cancel_mid_batch_stores_nothing_and_stops_embedding(served: Served) -> None:
    before = _snapshot(served.manager)
    served.embedder.allow(0)
    served.embedder.batches = 0
    with grpc.insecure_channel(served.address) as channel:
        call = pb_grpc.RetrievalServiceStub(channel).Upsert(_requests(_many(400), batch=400), timeout=120)
        _wait(lambda: served.embedder.in_flight == 1, "the batch to start embedding")
        call.cancel()
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert info.value.code() == grpc.StatusCode.CANCELLED
    [tx] = served.manager.transactions
    _wait(lambda: tx.state == "rolled back", "the server to roll the call back")
    served.embedder.open()  # the embedder batch that was running may finish now
    _wait(lambda: served.embedder.in_flight == 0, "the running batch to end")
    _assert_unchanged(served, before)  # this search embeds a query after the cancelled batch
    # 400 texts are 7 embedder batches; the cancel stopped the work after the running one
    assert served.embedder.batches == 1


def test_deadline_exceeded_upsert_stores_nothing_also_after_restart(
    bg: BackgroundLoop, tmp_path: Path, embedder: Embedder
) -> None:
    first = _serve(bg, tmp_path, embedder)
    try:
        first.manager.create_collection("kb")
        first.manager.upsert("kb", BASE)
        first.manager.transactions.clear()
        before = _snapshot(first.manager)
        acks: list[int] = []
        first.embedder.allow(3)  # three batches of 50 are staged; the fourth waits past the deadline
        with Client(first.address) as client, pytest.raises(DeadlineExceeded):
            client.upsert("kb", _many(600), batch_size=50, progress=acks.append, timeout=15)
        [tx] = first.manager.transactions
        _wait(lambda: tx.state == "rolled back", "the server to roll the call back")
        first.embedder.open()
        _wait(lambda: first.embedder.in_flight == 0, "the running batch to end")
        assert 0 < sum(acks) <= 150 and all(n > 0 for n in acks)  # staged ones, never the total
        _assert_unchanged(first, before)
    finally:
        _stop(bg, first)
    again = _serve(bg, tmp_path, embedder)
    try:
        _assert_unchanged(again, before)
    finally:
        _stop(bg, again)


# -- progress from the server's acknowledgements -----------------------------------------------


def test_progress_counts_acknowledged_documents_and_reaches_the_total_with_the_commit(served: Served) -> None:
    seen: list[tuple[int, int]] = []  # (documents acknowledged so far, documents visible then)

    def progress(n: int) -> None:
        total = (seen[-1][0] if seen else 0) + n
        seen.append((total, served.manager.get_collection("kb").documents))

    docs = _many(240)
    with Client(served.address) as client:
        result = client.upsert("kb", docs, batch_size=40, progress=progress)
    assert (result.documents, result.chunks) == (240, 240)
    counts = [c for c, _ in seen]
    assert counts == sorted(set(counts)) and len(counts) >= 3  # increasing, batch by batch
    assert counts[-1] == 240 and all(c < 240 for c in counts[:-1])
    # every count below the total came while nothing was visible; the total only once committed
    assert [v for _, v in seen[:-1]] == [len(BASE)] * (len(seen) - 1)
    assert seen[-1][1] == len(BASE) + 240 - 1  # "keep" replaced, not added
    hits = served.manager.search("kb", "the lighthouse company's quarterly revenue", k=1)
    assert (hits[0].id, hits[0].text) == ("keep", REPLACED)


def test_old_clients_get_one_response(served: Served) -> None:
    """Without `progress` the server sends only the final message, as the unary-response RPC did."""
    with grpc.insecure_channel(served.address) as channel:
        replies = list(pb_grpc.RetrievalServiceStub(channel).Upsert(_requests(_many(90), 30, progress=False), timeout=120))
    assert [(r.documents, r.committed) for r in replies] == [(90, True)]
    with grpc.insecure_channel(served.address) as channel:
        replies = list(pb_grpc.RetrievalServiceStub(channel).Upsert(_requests(_many(90), 30), timeout=120))
    assert [(r.documents, r.committed) for r in replies] == [(30, False), (60, False), (90, True)]


def test_a_failing_document_source_rolls_the_whole_call_back(served: Served) -> None:
    before = _snapshot(served.manager)

    def docs() -> Iterator[dict[str, Any]]:
        yield from _many(100)
        # fail only once the server has staged some of them: those must go too
        _wait(lambda: bool(served.manager.transactions) and served.manager.transactions[0].documents > 0,
              "the server to stage a batch")
        raise OSError("disk went away while reading documents")

    with Client(served.address) as client, pytest.raises(OSError, match="disk went away"):
        client.upsert("kb", docs(), batch_size=10)
    [tx] = served.manager.transactions
    _wait(lambda: tx.state == "rolled back", "the server to roll the call back")
    _assert_unchanged(served, before)


# -- a server killed mid-upsert ---------------------------------------------------------------

SERVER = """
import asyncio, sys
from pathlib import Path
from ragloom.config import Settings
from ragloom.retrieval.collections import CollectionManager
from ragloom.services.server import start_server

async def main():
    data = Path(sys.argv[1])
    srv = await start_server(Settings(host="127.0.0.1", port=0, data_dir=data), None,
                             collections=CollectionManager(data))
    print(srv.address, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def process_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """A retrieval-only server in its own process (so that it can be killed), with BASE stored."""
    data = tmp_path / "killed"
    env = os.environ | {"RAGLOOM_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(data)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address, "the server process did not start"
        with Client(address, timeout=120) as c:
            c.create_collection("kb")
            c.upsert("kb", [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in BASE])
        yield proc, address, data
    finally:
        proc.kill()
        proc.wait(30)


def _after_restart(bg: BackgroundLoop, data: Path, embedder: Embedder) -> None:
    s = _serve(bg, data, embedder)
    try:
        _assert_unchanged(s, _snapshot(s.manager))
        info = s.manager.get_collection("kb")
        assert (info.documents, info.chunks) == (len(BASE), len(BASE))
        assert [h.id for h in s.manager.search("kb", "erupting volcano", k=1)] == ["volcano"]
    finally:
        _stop(bg, s)


def test_server_killed_mid_upsert_leaves_the_store_consistent_and_progress_short(
    bg: BackgroundLoop, embedder: Embedder, process_server: tuple[subprocess.Popen[str], str, Path]
) -> None:
    proc, address, data = process_server
    acks: list[int] = []

    def progress(n: int) -> None:
        acks.append(n)
        if len(acks) == 2:
            proc.send_signal(signal.SIGKILL)

    with Client(address) as client, pytest.raises(RagloomError):
        client.upsert("kb", _many(400), batch_size=20, progress=progress, timeout=120)
    proc.wait(30)
    assert 0 < sum(acks) < 400
    _after_restart(bg, data, embedder)


def test_cli_ingest_reports_a_killed_server_and_stops_short_of_100(
    bg: BackgroundLoop, embedder: Embedder, tmp_path: Path, process_server: tuple[subprocess.Popen[str], str, Path]
) -> None:
    proc, address, data = process_server
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(200):
        (docs / f"note{i:03d}.txt").write_text(f"Note {i}: topic {i % 11} is discussed here at some length.\n")
    env = os.environ | {"RAGLOOM_DEVICE": "cpu"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "ragloom.cli", "ingest", str(docs), "-c", "kb", "--batch-size", "8",
         "--address", address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    err: list[str] = []
    assert cli.stderr is not None
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: cli.stderr.read(1), "")), daemon=True)
    reader.start()
    _wait(lambda: any(int(n) > 0 for n, _ in re.findall(r"(\d+)/(\d+)", "".join(err))), "the bar to move")
    proc.send_signal(signal.SIGKILL)
    # wait(), not communicate(): communicate() would read stderr too, racing the reader thread
    # for the error message (the CLI prints only a few lines on stdout: no pipe can fill).
    cli.wait(timeout=120)
    reader.join(30)
    assert cli.stdout is not None
    out = cli.stdout.read()
    text = "".join(err)
    assert cli.returncode == 1, text
    last_done, total = map(int, re.findall(r"(\d+)/(\d+)", text)[-1])
    assert total == 200 and 0 < last_done < 200, text
    assert "nothing" in text and "stored" in text and "ingested" not in out, text
    _after_restart(bg, data, embedder)
