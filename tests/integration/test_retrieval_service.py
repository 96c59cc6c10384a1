"""The Retrieval service end to end: a real grpc.aio server over loopback in front of a real
CollectionManager (SQLite + faiss in a temporary data dir, the bundled MiniLM embedder), and
the SDK and the `ragloom` CLI as callers.

As in test_generation_service.py, the server runs on its own event loop in a background
thread; tests call it through the blocking Client, or the AsyncClient on pytest's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from background_loop import BackgroundLoop
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ragloom.client import AsyncClient, Client, _error
from ragloom.config import Settings
from ragloom.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from ragloom.retrieval.collections import MAX_UPSERT_BATCH, CollectionManager
from ragloom.services._proto import retrieval_pb2 as pb
from ragloom.services._proto import retrieval_pb2_grpc as pb_grpc
from ragloom.services.server import RagloomServer, start_server

SAMPLE = Path(__file__).resolve().parents[2] / "ragloom" / "demo_data" / "sample.jsonl"
DIM = 384  # the bundled all-MiniLM-L6-v2


def _sample_docs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _settings(**overrides: Any) -> Settings:
    base = {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1.0}
    return Settings(**(base | overrides))


@dataclass
class Served:
    bg: BackgroundLoop
    data_dir: Path
    manager: CollectionManager
    server: RagloomServer

    @property
    def address(self) -> str:
        return self.server.address


def _serve(bg: BackgroundLoop, data_dir: Path) -> Served:
    # no embedder given: it loads on first use, as in `ragloom serve`
    manager = CollectionManager(data_dir)
    server = bg.run(start_server(_settings(data_dir=data_dir), None, collections=manager))
    return Served(bg, data_dir, manager, server)


def _stop(served: Served) -> None:
    served.bg.run(served.server.stop(0))
    served.manager.close()


@pytest.fixture(scope="module")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture(scope="module")
def served(bg: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = _serve(bg, tmp_path_factory.mktemp("retrieval-data"))
    try:
        yield s
    finally:
        _stop(s)


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.address, timeout=120) as c:
        yield c


@pytest.fixture
def sample(client: Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh collection holding the bundled sample documents; deleted afterwards."""
    name = "sample-" + re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:60]
    client.create_collection(name)
    client.upsert(name, _sample_docs(), batch_size=2)  # several stream messages
    try:
        yield name
    finally:
        try:
            client.delete_collection(name)
        except NotFound:
            pass


# -- happy paths ---------------------------------------------------------------------------


def test_collection_lifecycle(client: Client) -> None:
    info = client.create_collection("life", chunk_tokens=64, chunk_overlap=8, metadata={"owner": "tests", "v": 2})
    assert (info.name, info.dim, info.documents, info.chunks) == ("life", DIM, 0, 0)
    assert info.model and info.created_at is not None and info.created_at.tzinfo is not None
    assert info.index == "flat" and info.index_requested == "auto"  # "auto" resolves to flat for a small collection
    assert (info.chunk_tokens, info.chunk_overlap) == (64, 8)
    assert info.metadata == {"owner": "tests", "v": 2}  # a whole number comes back as int
    with pytest.raises(AlreadyExists) as exists:
        client.create_collection("life")
    assert (exists.value.reason, exists.value.metadata["collection"]) == ("COLLECTION_EXISTS", "life")

    docs = _sample_docs()
    result = client.upsert("life", docs, batch_size=4)
    assert result.documents == len(docs) and result.chunks >= len(docs)
    listed = {c.name: c for c in client.list_collections()}
    assert listed["life"].documents == len(docs) and listed["life"].chunks == result.chunks

    assert client.delete("life", ["croissant", "no-such-id"]) == 1
    assert client.delete("life", ["croissant"]) == 0
    assert {c.name: c for c in client.list_collections()}["life"].documents == len(docs) - 1

    client.delete_collection("life")
    assert "life" not in {c.name for c in client.list_collections()}
    with pytest.raises(NotFound):
        client.delete_collection("life")


def test_search_ranks_by_meaning_and_returns_metadata(client: Client, sample: str) -> None:
    hits = client.search(sample, "Hamming distance over sign bits of embeddings", k=3)
    assert len(hits) == 3
    assert hits[0].id == "binary-quantization"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top = hits[0]
    assert "Hamming" in top.text and top.chunk_id
    assert top.metadata == {"topic": "retrieval", "lang": "en"}
    assert client.search(sample, "KV blocks and block tables", k=1)[0].id == "paged-kv-cache"
    assert len(client.search(sample, "anything", k=100)) == len(_sample_docs())  # k beyond the size


def test_search_filters(client: Client, sample: str) -> None:
    fr = client.search(sample, "breakfast pastry", k=5, filter={"lang": "fr"})
    assert [h.id for h in fr] == ["croissant"]
    en = client.search(sample, "breakfast pastry", k=10, filter={"lang": "en"})
    assert en and all(h.metadata["lang"] == "en" for h in en)
    picked = client.search(sample, "database", k=10, filter={"topic": {"$in": ["tables", "rag"]}})
    assert {h.id for h in picked} == {"text-to-sql-guard", "chunk-kv-reuse"}
    assert client.search(sample, "database", k=5, filter={"lang": "de"}) == []


LONG_DOC = " ".join(f"Molten lava poured from the erupting volcano on day {i}." for i in range(60))
GROUP_DOCS = [
    {"id": "long", "text": LONG_DOC},
    {"id": "quake", "text": "An earthquake shook the ground near the mountain."},
    {"id": "geyser", "text": "A geyser spouts boiling water and steam into the air."},
    {"id": "ash", "text": "  Ash clouds from an eruption grounded flights.  "},
    {"id": "bread", "text": "Knead the dough, let it rise, then bake the bread."},
]


def test_search_groups_by_document_and_reports_chunk_offsets(served: Served, client: Client) -> None:
    client.create_collection("grouped", chunk_tokens=16, chunk_overlap=0)
    try:
        client.upsert("grouped", GROUP_DOCS)
        texts = {d["id"]: d["text"] for d in GROUP_DOCS}
        q = "a volcano erupting lava"
        plain = client.search("grouped", q, k=4, oversample=1)
        assert [h.id for h in plain] == ["long"] * 4  # a long document fills every hit
        grouped = client.search("grouped", q, k=4, oversample=1, group_by_document=True)
        assert len({h.id for h in grouped}) == 4 and grouped[0].id == "long"  # k counts documents
        assert [h.score for h in grouped] == sorted((h.score for h in grouped), reverse=True)
        for h in plain + grouped:
            assert h.chunk_id == f"{h.id}#{h.chunk_index}"
            assert texts[h.id][h.start_char : h.end_char] == h.text  # offsets in characters
        assert len({h.chunk_index for h in plain}) == 4  # four different chunks of one document
        ash = next(h for h in client.search("grouped", "ash clouds", k=5, group_by_document=True) if h.id == "ash")
        assert (ash.start_char, ash.end_char) == (2, len(texts["ash"]) - 2)  # the stripped span

        r = _run(["search", "grouped", q, "-k", "3", "--oversample", "1", "--group-by-document", "--json",
                  "--address", served.address])
        assert r.returncode == 0, r.stderr
        hits = [json.loads(line) for line in r.stdout.splitlines()]
        assert len({h["id"] for h in hits}) == 3
        assert all(texts[h["id"]][h["start_char"] : h["end_char"]] == h["text"] for h in hits)
    finally:
        client.delete_collection("grouped")


def test_duplicate_ids_replace(client: Client) -> None:
    client.create_collection("dups")
    try:
        client.upsert("dups", [{"id": "x", "text": "The cat sleeps on the warm windowsill.", "metadata": {"rev": 1}}])
        client.upsert("dups", [{"id": "x", "text": "Quarterly revenue grew by twelve percent.", "metadata": {"rev": 2}}])
        info = {c.name: c for c in client.list_collections()}["dups"]
        assert info.documents == 1 and info.chunks == 1
        hits = client.search("dups", "cat on a windowsill", k=5)
        assert len(hits) == 1 and "revenue" in hits[0].text and hits[0].metadata == {"rev": 2}
        # within one stream, across messages, the later one wins too
        r = client.upsert(
            "dups",
            [{"id": "y", "text": "first version"}, {"id": "y", "text": "second version"}],
            batch_size=1,
        )
        assert r.documents == 2  # both were stored, one after the other
        assert {c.name: c for c in client.list_collections()}["dups"].documents == 2
        assert [h.text for h in client.search("dups", "version", k=5) if h.id == "y"] == ["second version"]
    finally:
        client.delete_collection("dups")


def test_precomputed_vectors_and_create_if_missing(client: Client) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3, DIM)).astype(np.float32)
    docs = [{"id": f"v{i}", "text": f"vector document {i}", "vector": vecs[i].tolist()} for i in range(3)]
    r = client.upsert("vectors", docs, create_if_missing=True)
    try:
        assert (r.documents, r.chunks) == (3, 3)  # one chunk per precomputed vector
        info = {c.name: c for c in client.list_collections()}["vectors"]
        assert info.documents == 3 and info.dim == DIM
    finally:
        client.delete_collection("vectors")


async def test_async_client_and_the_loop_keeps_serving(served: Served) -> None:
    """A long upsert runs in a worker thread: health checks are answered while it runs."""
    docs = [{"id": f"d{i}", "text": f"Document number {i} talks about topic {i % 7} at some length."} for i in range(600)]
    async with AsyncClient(served.address, timeout=120) as ac:
        await ac.create_collection("async")
        try:

            async def gen() -> Any:  # an async iterable of documents works too
                for d in docs:
                    yield d

            upsert = asyncio.ensure_future(ac.upsert("async", gen(), batch_size=300))
            answered_during_upsert = 0
            while not upsert.done():
                assert await ac.health("ragloom.v1.RetrievalService", timeout=10) == "SERVING"
                answered_during_upsert += not upsert.done()
                await asyncio.sleep(0.05)
            result = await upsert
            assert result.documents == 600
            # Not a timing but a count: a loop blocked while each of the 2 batches is embedded would
            # answer only around the batch boundaries (one call in flight at each, about 4 in all);
            # a free loop answers every poll while the 600 documents are embedded (dozens on CPU).
            assert answered_during_upsert >= 5
            hits = await ac.search("async", "Document number 42", k=3)
            assert hits and "d42" in {h.id for h in hits}
            assert [c.documents for c in await ac.list_collections() if c.name == "async"] == [600]
            assert await ac.delete("async", ["d1", "d2"]) == 2
        finally:
            await ac.delete_collection("async")


# -- errors ----------------------------------------------------------------------------------


def test_unknown_collection_is_not_found(client: Client) -> None:
    for call in (
        lambda: client.search("nope", "query"),
        lambda: client.upsert("nope", [{"id": "a", "text": "b"}]),
        lambda: client.upsert("nope", []),  # the header alone is checked
        lambda: client.delete("nope", ["a"]),
        lambda: client.delete_collection("nope"),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert "nope" in str(info.value)
        assert isinstance(info.value.__cause__, grpc.RpcError)
        # the machine-readable details a client (and RagService's Ask) branches on
        assert (info.value.code, info.value.reason) == ("NOT_FOUND", "COLLECTION_NOT_FOUND")
        assert info.value.metadata["collection"] == "nope" and info.value.metadata["request_id"]


BAD_UPSERTS: list[tuple[str, list[dict[str, Any]], str, str]] = [
    ("empty text", [{"id": "a", "text": "ok"}, {"id": "b", "text": "   "}], "empty text", "documents[1].text"),
    ("wrong dimension", [{"id": "a", "text": "t", "vector": [0.1] * (DIM - 1)}], "dimension", "documents[0].vector"),
    (
        "zero vector",
        [{"id": "a", "text": "t", "vector": [0.1] * DIM}, {"id": "b", "text": "t", "vector": [0.0] * DIM}],
        "zero vector",
        "documents[1].vector",
    ),
    (
        "mixed vectors",
        [{"id": "a", "text": "t", "vector": [0.1] * DIM}, {"id": "b", "text": "u"}],
        "either all or none",
        "documents[1].vector",
    ),
]


@pytest.mark.parametrize("case", BAD_UPSERTS, ids=[c[0] for c in BAD_UPSERTS])
def test_bad_upserts_are_invalid_argument(client: Client, sample: str, case: tuple[str, list[Any], str, str]) -> None:
    _, docs, words, field = case
    before = {c.name: c for c in client.list_collections()}[sample]
    with pytest.raises(InvalidArgument) as info:
        client.upsert(sample, docs, batch_size=MAX_UPSERT_BATCH + 1)
    assert words in str(info.value), str(info.value)
    assert isinstance(info.value.__cause__, grpc.RpcError)  # answered by the server, not the SDK
    assert (info.value.reason, info.value.field) == ("INVALID_FIELD", field)
    assert info.value.metadata["stream_message"] == "1"  # the header is message 0, the batch message 1
    after = {c.name: c for c in client.list_collections()}[sample]
    assert (after.documents, after.chunks) == (before.documents, before.chunks)  # nothing stored


def test_oversize_batch_is_resource_exhausted_and_not_retryable(client: Client, sample: str) -> None:
    docs = [{"id": f"d{i}", "text": "x"} for i in range(MAX_UPSERT_BATCH + 1)]
    before = {c.name: c for c in client.list_collections()}[sample]
    with pytest.raises(ResourceExhausted, match="at most") as info:
        client.upsert(sample, docs, batch_size=MAX_UPSERT_BATCH + 1)
    assert (info.value.code, info.value.reason, info.value.field) == ("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE", "documents")
    assert info.value.retry_after_s is None  # the same batch never fits: no RetryInfo
    after = {c.name: c for c in client.list_collections()}[sample]
    assert (after.documents, after.chunks) == (before.documents, before.chunks)


def test_bad_searches_and_names_are_invalid_argument(client: Client, sample: str) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"query": ""}, "query", "query"),
        ({"query": "x", "k": 0}, "k must be", "k"),
        ({"query": "x", "filter": {"lang": {"$regex": "e.*"}}}, "operator", "filter"),
        ({"query": "x", "oversample": 0}, "oversample", "oversample"),
    ]
    for kwargs, words, field in cases:
        with pytest.raises(InvalidArgument) as info:
            client.search(sample, **kwargs)
        assert words in str(info.value), (kwargs, str(info.value))
        assert (info.value.reason, info.value.field) == ("INVALID_FIELD", field)
    with pytest.raises(InvalidArgument, match="invalid") as info:
        client.create_collection("no spaces/allowed")
    assert info.value.field == "name"
    with pytest.raises(InvalidArgument, match="chunk_overlap") as info:
        client.create_collection("bad-overlap", chunk_tokens=16, chunk_overlap=16)
    assert info.value.field == "chunk_overlap"
    with pytest.raises(InvalidArgument) as info:
        client.create_collection("bad-tokens", chunk_tokens=4)
    assert info.value.field == "chunk_tokens"
    with pytest.raises(InvalidArgument) as info:
        client.search(sample, "x", request_id="not a valid id!")
    assert info.value.field == "request_id"


def test_sdk_rejects_unsendable_documents_and_stores_none(client: Client) -> None:
    client.create_collection("partial")
    try:
        docs = [{"id": "ok", "text": "fine"}, {"id": "bad", "text": "x", "metadata": {"when": object()}}]
        with pytest.raises(InvalidArgument, match="JSON-like"):
            client.upsert("partial", docs, batch_size=1)
        # one transaction: the SDK cancels the call, so the batch sent before the bad one is not stored
        assert [c.documents for c in client.list_collections() if c.name == "partial"] == [0]
    finally:
        client.delete_collection("partial")


def test_raw_stream_protocol_errors(served: Served, sample: str) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.RetrievalServiceStub(channel)
        cases = [
            ([], "empty Upsert stream", "collection"),
            ([pb.UpsertRequest(documents=[pb.Document(id="a", text="b")])], "must name the collection", "collection"),
            ([pb.UpsertRequest(collection=sample), pb.UpsertRequest(collection="other")], "later message", "collection"),
            ([pb.UpsertRequest(collection=sample, documents=[pb.Document(id="", text="b")])], "empty id",
             "documents[0].id"),
            ([pb.UpsertRequest(collection=sample, request_id="bad id")], "request_id", "request_id"),
        ]
        for requests, words, field in cases:
            with pytest.raises(grpc.RpcError) as info:
                list(stub.Upsert(iter(requests), timeout=30))  # a reply stream: the error comes with it
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
            assert words in info.value.details()
            assert _error(info.value).field == field
        # the first message's request_id names the call: in the x-request-id header and the error details
        call = stub.Upsert(iter([pb.UpsertRequest(collection="nope", request_id="bulk-42")]), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            list(call)
        assert ("x-request-id", "bulk-42") in call.initial_metadata()
        err = _error(info.value)
        assert (err.reason, err.metadata["request_id"], err.metadata["collection"]) == (
            "COLLECTION_NOT_FOUND", "bulk-42", "nope")
        # unset k means 10, not 0
        hits, call = stub.Search.with_call(
            pb.SearchRequest(collection=sample, query="anything", request_id="search-1"), timeout=30
        )
        assert len(hits.hits) == len(_sample_docs())
        assert ("x-request-id", "search-1") in call.initial_metadata()
        # CollectionInfo.index is the kind in use; the requested one travels beside it
        listed = {c.name: c for c in stub.ListCollections(pb.ListCollectionsRequest(), timeout=30).collections}
        assert (listed[sample].index, listed[sample].index_requested) == (pb.INDEX_KIND_FLAT, pb.INDEX_KIND_AUTO)
        made = stub.CreateCollection(pb.CreateCollectionRequest(name="forced-flat", index=pb.INDEX_KIND_FLAT), timeout=30)
        assert (made.collection.index, made.collection.index_requested) == (pb.INDEX_KIND_FLAT, pb.INDEX_KIND_FLAT)
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="forced-flat"), timeout=30)
        # an IndexKind number this server does not know (a newer client's) is refused, naming the field
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateCollection(pb.CreateCollectionRequest(name="future", index=9), timeout=30)  # type: ignore[arg-type]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _error(info.value).field == "index"
        for bad, field in ((pb.DeleteRequest(ids=["a"]), "collection"), (pb.DeleteRequest(collection=sample, ids=[""]), "ids[0]")):
            with pytest.raises(grpc.RpcError) as info:
                stub.Delete(bad, timeout=30)
            assert _error(info.value).field == field


# -- persistence, health, reflection -----------------------------------------------------------


def test_persistence_across_restart(bg: BackgroundLoop, tmp_path: Path) -> None:
    first = _serve(bg, tmp_path)
    try:
        with Client(first.address, timeout=120) as c:
            c.create_collection("kept", metadata={"note": "survives"})
            c.upsert("kept", _sample_docs())
            c.delete("kept", ["croissant"])
            before = [(h.id, round(h.score, 4)) for h in c.search("kept", "cached passages for RAG", k=3)]
    finally:
        _stop(first)
    second = _serve(bg, tmp_path)
    try:
        with Client(second.address, timeout=120) as c:
            [info] = c.list_collections()
            assert (info.name, info.documents, info.metadata) == ("kept", len(_sample_docs()) - 1, {"note": "survives"})
            after = [(h.id, round(h.score, 4)) for h in c.search("kept", "cached passages for RAG", k=3)]
            assert after == before and after[0][0] == "chunk-kv-reuse"
            assert c.search("kept", "breakfast pastry", filter={"lang": "fr"}) == []  # the delete persisted
    finally:
        _stop(second)


def test_health_and_reflection(served: Served, client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("ragloom.v1.RetrievalService") == "SERVING"
    with pytest.raises(NotFound):  # this server was built without an engine
        client.health("ragloom.v1.GenerationService")
    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="ragloom.v1.RetrievalService"),
        ]
        listed, symbol = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"ragloom.v1.RetrievalService", "grpc.health.v1.Health"} <= names
    assert "ragloom.v1.GenerationService" not in names
    assert symbol.file_descriptor_response.file_descriptor_proto


# -- CLI ---------------------------------------------------------------------------------------

RAGLOOM = [sys.executable, "-m", "ragloom.cli"]


def _run(args: list[str], cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"RAGLOOM_DEVICE": "cpu"}
    return subprocess.run(RAGLOOM + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def test_cli_ingest_search_collections(served: Served, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "lighthouse.md").write_text("# Lighthouses\n\nA lighthouse guides ships at night with a rotating lamp.\n")
    (docs / "bread.txt").write_text("Sourdough bread rises slowly thanks to wild yeast and lactic bacteria.\n")
    (docs / "empty.txt").write_text("  \n")
    (docs / "image.png").write_bytes(b"\x89PNG not really")
    (docs / "sub" / "more.jsonl").write_text(
        json.dumps({"id": "volcano", "text": "Lava flows from an erupting volcano.", "metadata": {"kind": "geo"}})
        + "\n\n"
        + json.dumps({"id": 7, "text": "Glaciers carve valleys over thousands of years.", "metadata": {"kind": "geo"}})
        + "\n"
    )
    addr = ["--address", served.address]

    r = _run(["ingest", "docs", "--collection", "cli", "--create", "--chunk-tokens", "64", *addr], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ingested 4 documents" in r.stdout and "'cli'" in r.stdout
    assert "skipped docs/image.png" in r.stderr and "skipped docs/empty.txt" in r.stderr
    # ingesting again replaces (same ids); --create on an existing collection is fine
    r = _run(["ingest", "docs/bread.txt", "-c", "cli", "--create", "-q", *addr], cwd=tmp_path)
    assert r.returncode == 0 and "ingested 1 documents" in r.stdout, r.stderr

    r = _run(["search", "cli", "ships at sea in the dark", "-k", "2", "--json", *addr])
    assert r.returncode == 0, r.stderr
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(hits) == 2 and hits[0]["id"] == "docs/lighthouse.md"
    assert hits[0]["metadata"] == {"source": "docs/lighthouse.md"}

    r = _run(["search", "cli", "ice and glaciers", "--filter", '{"kind": "geo"}', *addr])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.match(r"^1\. -?[0-9.]+  7  \(chunk \S+\)$", lines[0]), r.stdout
    assert re.match(r"^2\. -?[0-9.]+  volcano  ", lines[3]), r.stdout
    assert lines[1].strip().startswith("Glaciers carve") and lines[2].strip() == 'metadata: {"kind": "geo"}'
    assert len(lines) == 6  # only the two geo documents pass the filter

    r = _run(["collections", *addr])
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("cli "))
    assert row.split()[1:3] == ["4", "4"]

    for args, words in (
        (["search", "missing", "q", *addr], "does not exist"),
        (["search", "cli", "q", "--filter", "[1]", *addr], "JSON object"),
        (["ingest", "nowhere", "-c", "cli", *addr], "no such file"),
    ):
        r = _run(args, cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.startswith("ragloom: error") and words in r.stderr, r.stderr
    served.manager.delete_collection("cli")


def test_cli_help_mentions_retrieval_commands() -> None:
    r = _run(["--help"])
    assert r.returncode == 0
    for word in ("ingest", "search", "collections"):
        assert word in r.stdout
    r = _run(["ingest", "--help"])
    assert r.returncode == 0 and ".jsonl" in r.stdout and "--collection" in r.stdout
