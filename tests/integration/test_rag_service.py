"""The Rag service end to end: a real grpc.aio server over loopback with a real engine on the
bundled model, a real CollectionManager (SQLite + faiss in a temporary folder) and real chunk-KV
stores (memory, disk, the machine's Redis), called through the SDK, the raw stub and the CLI.

Answers are kept to a few tokens: what is checked is the flow (passages, tokens, complete),
the cache accounting and the status codes, not the model's prose.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from background_loop import BackgroundLoop
from server_loads import wait_idle

from ragloom.client import AsyncClient, Client, _error
from ragloom.config import Settings
from ragloom.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from ragloom.generation.runner import async_engine
from ragloom.generation.runner.engine import LLMEngine
from ragloom.retrieval.collections import CollectionManager
from ragloom.services._proto import generation_pb2 as gpb
from ragloom.services._proto import rag_pb2 as pb
from ragloom.services._proto import rag_pb2_grpc as pb_grpc
from ragloom.services.server import RagloomServer, start_server

REDIS_URL = os.environ.get("RAGLOOM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1

DOCS = [
    {"id": "eiffel", "text": "The Eiffel Tower is a wrought-iron tower in Paris, France.", "metadata": {"topic": "city"}},
    {"id": "everest", "text": "Mount Everest is the highest mountain on Earth.", "metadata": {"topic": "nature"}},
    {"id": "danube", "text": "The Danube flows through Vienna and Budapest.", "metadata": {"topic": "nature"}},
]
QUESTION = "In which city is the Eiffel Tower?"
FEW = {"max_tokens": 4, "temperature": 0}


def _settings(tmp: Path, **overrides: Any) -> Settings:
    base = {
        "host": "127.0.0.1",
        "port": 0,
        "shutdown_grace_s": 1.0,
        "data_dir": tmp,
        "chunk_kv_memory_bytes": 64 << 20,
        "chunk_kv_disk_dir": tmp / f"kv-{uuid.uuid4().hex[:8]}",  # a fresh disk tier per server
    }
    return Settings(**(base | overrides))


@dataclass
class Served:
    bg: BackgroundLoop
    engine: Any  # AsyncEngine
    manager: CollectionManager
    server: RagloomServer
    tmp: Path

    @property
    def address(self) -> str:
        return self.server.address

    def another(self, **overrides: Any) -> RagloomServer:
        """A second server on the same engine and collections, with its own chunk-KV store."""
        return self.bg.run(start_server(_settings(self.tmp, **overrides), self.engine, collections=self.manager))

    def stop(self, server: RagloomServer) -> None:
        self.bg.run(server.stop(0))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("rag")
    # the model's conversion cache stays in the default data dir; everything else is in tmp
    llm = LLMEngine(Settings(device="cpu", kv_cache_tokens=4096, max_num_seqs=4))
    bg = BackgroundLoop()
    engine = async_engine.AsyncEngine(llm)
    bg.run(engine.start())
    manager = CollectionManager(tmp / "collections")
    server = bg.run(start_server(_settings(tmp), engine, collections=manager))
    served = Served(bg, engine, manager, server, tmp)
    try:
        with Client(server.address, timeout=300) as c:
            c.create_collection("kb")
            c.upsert("kb", DOCS)
        yield served
    finally:
        bg.run(server.stop(0))
        bg.run(engine.shutdown())
        manager.close()
        bg.close()


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.address, timeout=300) as c:
        yield c


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; everything under it is deleted afterwards."""
    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2)
    try:
        r.ping()
    except Exception as e:  # noqa: BLE001 - any connection failure means "no server here"
        if os.environ.get("CI"):  # CI has Redis: a missing server there is a failure, not a skip
            pytest.fail(f"Redis not reachable at {REDIS_URL}: {e}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {e}")
    prefix = f"ragloom_test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        names = list(r.scan_iter(match=prefix + "*"))
        if names:
            r.delete(*names)
        r.close()


# -- the flow --------------------------------------------------------------------------------


def test_ask_streams_passages_then_tokens_then_complete_and_reuses_on_the_second_ask(
    served: Served, client: Client
) -> None:
    assert client.health("ragloom.v1.RagService") == "SERVING"
    with grpc.insecure_channel(served.address) as channel:
        req = pb.AskRequest(request_id="ask-1", question=QUESTION, collection="kb", k=3)
        req.sampling.max_tokens, req.sampling.temperature = 4, 0
        call = pb_grpc.RagServiceStub(channel).Ask(req, timeout=300)
        msgs = list(call)
        assert dict(call.initial_metadata())["x-request-id"] == "ask-1"
    kinds = [m.WhichOneof("response") for m in msgs]
    assert kinds[0] == "passages" and kinds[-1] == "complete" and set(kinds[1:-1]) == {"chunk"}
    passages = msgs[0].passages.passages
    assert [p.id for p in passages][0] == "eiffel" and len(passages) == 3
    assert all(p.kv_source == pb.KV_SOURCE_COMPUTED and p.tokens > 0 and p.text for p in passages)  # a cold cache
    assert passages[0].metadata["topic"] == "city"
    done = msgs[-1].complete
    assert done.request_id == "ask-1" and done.mode == pb.ASK_MODE_BLEND  # the server's default mode
    assert done.finish_reason in (gpb.FINISH_REASON_STOP, gpb.FINISH_REASON_LENGTH)
    assert done.answer == "".join(m.chunk.text for m in msgs[1:-1])
    assert [(c.id, c.rank) for c in done.citations] == [(p.id, i) for i, p in enumerate(passages, 1)]
    assert [c.score for c in done.citations] == [p.score for p in passages]
    u = done.usage
    assert u.chunks_computed == 3 and dict(u.tier_hits) == {}
    assert u.completion_tokens == len([t for m in msgs[1:-1] for t in m.chunk.token_ids])
    # passages computed by this very request are not "reused": at most the stored head is
    assert u.reused_tokens + u.recomputed_tokens <= u.prompt_tokens

    second = client.ask(QUESTION, collection="kb", k=3, **FEW)
    assert [p.kv_source for p in second.passages] == ["memory"] * 3 and second.mode == "blend"
    assert second.usage.reused_tokens > 0 and second.usage.chunks_computed == 0
    assert second.usage.tier_hits == {"memory": 3}
    assert second.usage.recomputed_tokens < second.usage.prompt_tokens
    assert second.usage.prompt_tokens == u.prompt_tokens
    stats = client.cache_stats(request_id="stats-1")
    assert stats.hits >= 3 and {(t.name, t.kind) for t in stats.tiers} == {("memory", "memory"), ("disk", "disk")}
    assert stats.codec_bits == 8 and next(t for t in stats.tiers if t.name == "disk").entries >= 4
    wait_idle(client)


def test_precompute_kv_on_upsert_and_the_async_client(served: Served, client: Client) -> None:
    import asyncio

    docs = [
        {"id": "rhine", "text": "The Rhine rises in the Swiss Alps.", "metadata": {"lang": "en"}},
        {"id": "loire", "text": "The Loire is the longest river in France.", "metadata": {"lang": "en"}},
    ]
    result = client.upsert("pre", docs, create_if_missing=True, precompute_kv=True)
    assert (result.documents, result.chunks, result.kv_precomputed) == (2, 2, 2)
    assert client.upsert("pre", docs, precompute_kv=True).kv_precomputed == 0  # stored already

    async def ask() -> Any:
        async with AsyncClient(served.address, timeout=300) as ac:
            return await ac.ask("Where does the Rhine rise?", collection="pre", k=2, **FEW)

    answer = asyncio.run(ask())
    assert answer.usage.chunks_computed == 0 and answer.usage.tier_hits == {"memory": 2}
    assert answer.passages[0].id == "rhine" and answer.text


def test_json_schema_answer(client: Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    answer = client.ask(QUESTION, collection="kb", k=2, json_schema=schema, max_tokens=24, temperature=0)
    assert answer.text.startswith("{")
    if answer.finish_reason == "stop":
        assert isinstance(answer.parsed, dict) and set(answer.parsed) == {"city"}


def test_empty_collection_answers_without_passages_and_filters_apply(client: Client) -> None:
    client.create_collection("empty")
    answer = client.ask(QUESTION, collection="empty", max_tokens=2, temperature=0)
    assert answer.passages == [] and answer.citations == [] and answer.usage.completion_tokens >= 1
    assert any("no passages" in w for w in answer.warnings)
    nature = client.ask("Which river flows through Vienna?", collection="kb", k=5, filter={"topic": "nature"},
                        max_tokens=2, temperature=0, mode="full")
    assert {p.id for p in nature.passages} == {"everest", "danube"}
    assert nature.mode == "full" and nature.usage.reused_tokens == 0 and nature.usage.tier_hits == {}


def test_bad_inputs_get_the_right_codes_and_the_server_keeps_serving(served: Served, client: Client) -> None:
    with pytest.raises(NotFound, match="does not exist") as missing:
        client.ask(QUESTION, collection="nope", request_id="ask-nope", **FEW)
    assert missing.value.reason == "COLLECTION_NOT_FOUND" and missing.value.metadata["collection"] == "nope"
    assert missing.value.metadata["request_id"] == "ask-nope"
    for kwargs, match, reason, field in (
        ({"question": "   "}, "question is empty", "INVALID_FIELD", "question"),
        ({"recompute_ratio": 1.5}, "recompute_ratio", "INVALID_FIELD", "recompute_ratio"),
        ({"recompute_ratio": -0.5}, "recompute_ratio", "INVALID_FIELD", "recompute_ratio"),
        ({"k": -1}, "k must be", "INVALID_FIELD", "k"),
        ({"k": 0}, "k must be", "INVALID_FIELD", "k"),  # 0 is sent as 0 (optional): not the default
        ({"k": 51}, r"k must be in \[1, 50\]", "INVALID_FIELD", "k"),
        ({"epic_tokens": -1, "mode": "epic"}, "epic_tokens", "INVALID_FIELD", "epic_tokens"),
        ({"json_schema": "{not json"}, "not valid JSON", "SCHEMA_INVALID", "json_schema"),
        ({"json_schema": {"type": "object", "required": "city"}}, "required", "SCHEMA_INVALID", "json_schema"),
        ({"max_tokens": 0}, "max_tokens", "INVALID_FIELD", "sampling.max_tokens"),
        ({"top_p": 0.0}, "top_p", "INVALID_FIELD", "sampling.top_p"),
        ({"filter": {"topic": {"$regex": "x"}}}, "unknown operator", "INVALID_FIELD", "filter"),
    ):
        args = {"question": QUESTION, "collection": "kb", **FEW} | kwargs
        with pytest.raises(InvalidArgument, match=match) as info:
            client.ask(args.pop("question"), **args)
        assert isinstance(info.value.__cause__, grpc.RpcError), kwargs  # the server's answer
        assert (info.value.reason, info.value.field) == (reason, field), (kwargs, str(info.value))
    with pytest.raises(InvalidArgument, match="mode must be one of") as info:  # refused by the SDK
        client.ask(QUESTION, collection="kb", mode="fastest", **FEW)
    assert info.value.field == "mode" and info.value.__cause__ is None
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.RagServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ask(pb.AskRequest(question=QUESTION), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no collection named
        assert _error(err.value).field == "collection"
        with pytest.raises(grpc.RpcError) as err:  # a mode this server does not know
            list(stub.Ask(pb.AskRequest(question=QUESTION, collection="kb", mode=9), timeout=30))  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and _error(err.value).field == "mode"
    # a deadline that passes mid-answer: DEADLINE_EXCEEDED, and the request is aborted
    with pytest.raises(DeadlineExceeded):
        # the schema forbids stopping before 150 items (300+ tokens), so the answer runs far past 1 s
        client.ask(QUESTION, collection="kb", k=3, max_tokens=400, temperature=0, timeout=1.0,
                   json_schema={"type": "array", "items": {"type": "integer"}, "minItems": 150})
    wait_idle(client)
    assert client.ask(QUESTION, collection="kb", k=1, **FEW).text  # still serving


def test_a_server_without_a_model_refuses_precompute_and_serves_no_rag(served: Served) -> None:
    server = served.bg.run(start_server(_settings(served.tmp), None, collections=served.manager))
    try:
        with Client(server.address, timeout=60) as c:
            with pytest.raises(FailedPrecondition, match="precompute_kv"):
                c.upsert("kb", [{"id": "x", "text": "never stored"}], precompute_kv=True)
            assert c.search("kb", "never stored", k=5)[0].id != "x"  # refused before storing anything
            with pytest.raises(NotFound):  # grpc.health.v1: an unknown service
                c.health("ragloom.v1.RagService")
            with pytest.raises(Unimplemented):
                c.ask(QUESTION, collection="kb", **FEW)
    finally:
        served.stop(server)


# -- the Redis tier ------------------------------------------------------------------------------


def test_redis_tier_serves_a_restarted_server(served: Served, redis_prefix: str) -> None:
    tier = {"chunk_kv_redis_url": REDIS_URL, "chunk_kv_redis_prefix": redis_prefix}
    first = served.another(**tier)
    try:
        with Client(first.address, timeout=300) as c:
            a = c.ask(QUESTION, collection="kb", k=2, **FEW)
            assert a.usage.chunks_computed == 2  # a fresh memory and disk; nothing in Redis yet
            assert next(t for t in c.cache_stats().tiers if t.name == "redis").puts >= 3  # head + 2 passages
    finally:
        served.stop(first)
    # a restart: empty memory tier, a fresh disk folder, the same Redis
    second = served.another(**tier)
    try:
        with Client(second.address, timeout=300) as c:
            b = c.ask(QUESTION, collection="kb", k=2, **FEW)
            assert b.usage.tier_hits == {"redis": 2} and b.usage.chunks_computed == 0
            assert [p.kv_source for p in b.passages] == ["redis", "redis"]
            redis_stats = next(t for t in c.cache_stats().tiers if t.name == "redis")
            assert redis_stats.available and redis_stats.hits >= 2 and redis_stats.errors == 0
    finally:
        served.stop(second)


def test_redis_down_still_answers_and_is_counted(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    server = served.another(chunk_kv_redis_url=DEAD_REDIS_URL)
    try:
        with caplog.at_level(logging.WARNING, logger="ragloom.cache.chunk_kv"), Client(server.address, timeout=300) as c:
            answer = c.ask(QUESTION, collection="kb", k=2, **FEW)
            assert answer.text and answer.usage.chunks_computed == 2
            again = c.ask(QUESTION, collection="kb", k=2, **FEW)
            assert again.usage.tier_hits == {"memory": 2}  # the other tiers serve
            stats = c.cache_stats()
        assert stats.redis_errors >= 1
        redis_stats = next(t for t in stats.tiers if t.name == "redis")
        assert not redis_stats.available and redis_stats.errors >= 1
        assert "unavailable" in caplog.text
    finally:
        served.stop(server)


# -- the CLI ------------------------------------------------------------------------------------

RAGLOOM = [sys.executable, "-m", "ragloom.cli"]


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(RAGLOOM + args, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_cli_ingest_precompute_and_ask(served: Served, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lighthouse.txt").write_text("A lighthouse guides ships at night with a rotating lamp.\n")
    r = _run(["ingest", str(docs), "-c", "cli", "--create", "--precompute-kv", "-q", "--address", served.address])
    assert r.returncode == 0, r.stderr
    assert "precomputed the KV of 1 chunks" in r.stdout

    r = _run(["ask", "cli", "What guides ships at night?", "-k", "1", "--max-tokens", "4", "--temperature", "0",
              "--address", served.address])
    assert r.returncode == 0, r.stderr
    assert "passages:" in r.stdout and "lighthouse.txt" in r.stdout and "KV: memory" in r.stdout
    assert "reused_tokens=" in r.stdout and "tier_hits: memory 1" in r.stdout and "chunks_computed=0" in r.stdout

    r = _run(["ask", "cli", "What guides ships?", "--json", "-k", "1", "--max-tokens", "2", "--address", served.address])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["passages"][0]["kv_source"] == "memory" and out["usage"]["reused_tokens"] > 0
    assert out["mode"] == "blend" and out["finish_reason"] in ("stop", "length")

    r = _run(["ask", "no-such-collection", "hi", "--address", served.address])
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = _run(["ask", "cli", "hi", "--mode", "bogus"])
    assert r.returncode == 2  # argparse: a usage error
