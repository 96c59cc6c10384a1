"""The Generation service end to end: a real grpc.aio server over loopback, a real engine on the
bundled model, and the SDK as the caller.

The server (and its AsyncEngine) runs on its own event loop in a background thread, the way it
runs in `ragloom serve`; tests call it through the blocking Client, or the AsyncClient on
pytest's loop, so client and server never share a loop.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from background_loop import LiveServer, live_server
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_loads import wait_idle, wait_idle_async

from ragloom.client import AsyncClient, Client
from ragloom.config import Settings
from ragloom.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    RagloomError,
    ResourceExhausted,
    Unavailable,
)
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import generation_pb2_grpc as pb_grpc
from ragloom.services.server import start_server

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name three colours."}]
MAX_MESSAGE_BYTES = 1 << 20  # small, so the oversize test sends only 2 MiB
LONG = 400  # max_tokens for requests that must still be running when we act on them


Served = LiveServer


def _settings(**overrides: Any) -> Settings:
    base = {
        "host": "127.0.0.1",
        "port": 0,
        "device": "cpu",
        "kv_cache_tokens": 4096,
        "max_message_bytes": MAX_MESSAGE_BYTES,
        "shutdown_grace_s": 1.0,
    }
    return Settings(**(base | overrides))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with live_server(_settings()) as s:
        yield s


@pytest.fixture
def client(served: Served) -> Iterator[Client]:
    with Client(served.address, timeout=60) as c:
        yield c


# -- happy paths ---------------------------------------------------------------------------


def test_unary_generate(served: Served, client: Client) -> None:
    llm = served.engine.engine
    c = client.generate(PROMPT, max_tokens=8, temperature=0, request_id="unary-1")
    assert c.request_id == "unary-1"
    assert c.finish_reason in ("stop", "length")
    assert 1 <= c.usage.completion_tokens <= 8
    assert c.usage.completion_tokens == len(c.token_ids)
    assert c.usage.prompt_tokens == len(llm.encode(prompt=PROMPT))
    assert c.text.strip()
    assert "Paris" in c.text  # the bundled model knows this one greedily


def test_stream_chunks_concatenate_and_final_has_usage(client: Client) -> None:
    s = client.stream(messages=CHAT, max_tokens=12, temperature=0, ignore_eos=True)
    chunks = list(s)
    assert chunks and s.completion is not None
    assert "".join(ch.text for ch in chunks) == s.completion.text
    assert [t for ch in chunks for t in ch.token_ids] == s.completion.token_ids
    assert s.finish_reason == "length"
    assert s.usage is not None and s.usage.completion_tokens == 12 and s.usage.prompt_tokens > 0
    running = [ch.usage.completion_tokens for ch in chunks]
    assert running == sorted(running) and running[-1] == 12
    # the streamed result is the unary result
    assert client.generate(messages=CHAT, max_tokens=12, temperature=0, ignore_eos=True).text == s.completion.text


def test_greedy_is_deterministic(client: Client) -> None:
    a = client.generate(PROMPT, max_tokens=10, temperature=0)
    b = client.generate(PROMPT, max_tokens=10, temperature=0)
    assert a.token_ids == b.token_ids and a.text == b.text


def test_seed_is_deterministic(client: Client) -> None:
    kw: dict[str, Any] = {"max_tokens": 12, "temperature": 1.0, "ignore_eos": True}
    a = client.generate(PROMPT, seed=1234, **kw)
    b = client.generate(PROMPT, seed=1234, **kw)
    assert a.token_ids == b.token_ids
    others = {tuple(client.generate(PROMPT, seed=s, **kw).token_ids) for s in (1, 2, 3)}
    assert len(others | {tuple(a.token_ids)}) > 1, "different seeds never changed the sample"


def test_abort_running_stream(client: Client) -> None:
    s = client.stream(PROMPT, max_tokens=LONG, ignore_eos=True, temperature=0)
    it = iter(s)
    first = next(it)
    assert first.token_ids
    assert client.abort(s.request_id) is True
    rest = list(it)
    assert s.finish_reason == "abort"
    assert s.usage is not None and s.usage.completion_tokens < LONG
    # a token sampled in the same step as the abort may be counted without being streamed
    assert len(first.token_ids) + sum(len(ch.token_ids) for ch in rest) <= s.usage.completion_tokens
    assert client.abort(s.request_id) is False  # idempotent: already finished
    wait_idle(client)


async def test_concurrent_streams(served: Served) -> None:
    async with AsyncClient(served.address, timeout=60) as ac:

        async def one(i: int) -> tuple[str, int, str | None, str]:
            s = ac.stream(messages=CHAT, max_tokens=8, ignore_eos=True, seed=i, request_id=f"conc-{i}")
            text = "".join([ch.text async for ch in s])
            assert s.completion is not None
            return s.request_id, s.completion.usage.completion_tokens, s.finish_reason, text

        results = await asyncio.gather(*(one(i) for i in range(4)))
        # The engine frees the finished requests' slots and KV blocks just after their last message:
        # wait (bounded) for its loads to read idle; the test fails if they never do (a leak).
        await wait_idle_async(ac)
    assert sorted(r[0] for r in results) == [f"conc-{i}" for i in range(4)]
    assert all(r[1] == 8 and r[2] == "length" for r in results)


def test_prefix_cache_hits_reach_usage_and_loads(client: Client) -> None:
    prompt = ("Notes for the prefix cache test, long enough for several 16-token blocks: the same "
              "preamble is sent twice, so the second request reuses the first one's KV. Then:")
    before = client.loads()
    first = client.generate(prompt, max_tokens=4, temperature=0)
    second = client.generate(prompt, max_tokens=4, temperature=0)
    assert first.usage.cached_tokens == 0 and second.token_ids == first.token_ids
    # all of the prompt's full blocks but the one holding its last token (that one is recomputed)
    assert second.usage.cached_tokens == (second.usage.prompt_tokens - 1) // 16 * 16 > 0
    after = wait_idle(client)
    assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == second.usage.cached_tokens
    assert after.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens == 2 * first.usage.prompt_tokens


SPEC_PROMPT = ("Copy this line exactly: the quick brown fox jumps over the lazy dog near the river bank.\n"
               "Copy: the quick brown fox jumps over")


def test_speculative_per_request_same_output_with_usage_and_loads(client: Client) -> None:
    """A request turns speculation off or asks for prompt lookup: the same greedy tokens, the
    drafts counted in usage and in GetLoads; an unknown method is refused."""
    plain = client.generate(SPEC_PROMPT, max_tokens=24, temperature=0, ignore_eos=True, speculative="off")
    before = wait_idle(client)
    spec = client.generate(SPEC_PROMPT, max_tokens=24, temperature=0, ignore_eos=True, speculative="lookup")
    assert spec.token_ids == plain.token_ids
    assert plain.usage.draft_tokens == 0
    assert spec.usage.draft_tokens >= spec.usage.accepted_tokens > 0
    after = wait_idle(client)
    assert after.speculative_accepted_tokens - before.speculative_accepted_tokens == spec.usage.accepted_tokens
    assert after.speculative_steps > before.speculative_steps and after.mean_accepted_tokens > 0
    with pytest.raises(InvalidArgument, match="speculative") as info:  # refused by the SDK, before any call
        client.generate(PROMPT, max_tokens=2, speculative="medusa")
    assert info.value.field == "speculative"


def test_client_cancel_frees_kv_blocks(client: Client) -> None:
    s = client.stream(PROMPT, max_tokens=LONG, ignore_eos=True)
    it = iter(s)
    next(it), next(it)
    busy = client.loads()
    assert busy.running == 1 and busy.kv_blocks_used > 0
    s.cancel()
    wait_idle(client)


def test_deadline_exceeded_aborts_engine_request(client: Client) -> None:
    with pytest.raises(DeadlineExceeded) as info:
        client.generate(PROMPT, max_tokens=LONG, ignore_eos=True, timeout=0.5)
    assert isinstance(info.value.__cause__, grpc.RpcError)
    assert info.value.__cause__.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_idle(client)


# -- bad requests, each while a good one keeps running ----------------------------------------

# (name, generate() arguments, error class, reason, field); reason None: gRPC itself refuses the
# call, before any ragloom code (no details to check)
BAD_REQUESTS: list[tuple[str, dict[str, Any], type[RagloomError], str | None, str | None]] = [
    ("empty prompt", {"prompt": ""}, InvalidArgument, "INVALID_FIELD", "prompt"),
    ("empty messages", {"messages": []}, InvalidArgument, "INVALID_FIELD", "prompt"),
    ("negative max_tokens", {"prompt": PROMPT, "max_tokens": -1}, InvalidArgument, "INVALID_FIELD",
     "sampling.max_tokens"),
    ("huge max_tokens", {"prompt": PROMPT, "max_tokens": 10**9}, InvalidArgument, "INVALID_FIELD",
     "sampling.max_tokens"),
    ("negative temperature", {"prompt": PROMPT, "temperature": -0.5}, InvalidArgument, "INVALID_FIELD",
     "sampling.temperature"),
    ("top_p above 1", {"prompt": PROMPT, "top_p": 1.5}, InvalidArgument, "INVALID_FIELD", "sampling.top_p"),
    ("empty stop string", {"prompt": PROMPT, "stop": ["\n", ""]}, InvalidArgument, "INVALID_FIELD",
     "sampling.stop[1]"),
    ("stop token outside the vocabulary", {"prompt": PROMPT, "stop_token_ids": [10**8]}, InvalidArgument,
     "INVALID_FIELD", "sampling.stop_token_ids[0]"),
    ("unknown model", {"prompt": PROMPT, "model": "no-such-model"}, NotFound, "MODEL_NOT_FOUND", None),
    ("prompt longer than the context", {"prompt": "hello " * 9000}, ResourceExhausted, "REQUEST_TOO_LARGE", None),
    ("oversize message", {"prompt": "x" * (2 * MAX_MESSAGE_BYTES)}, ResourceExhausted, None, None),
]


def test_bad_requests_get_the_right_code_while_others_are_served(client: Client) -> None:
    good = client.stream(PROMPT, max_tokens=24, ignore_eos=True, temperature=0)
    it = iter(good)
    next(it)  # the good request is running
    for name, kwargs, expected, reason, field in BAD_REQUESTS:
        with pytest.raises(expected) as info:
            client.generate(max_tokens=kwargs.pop("max_tokens", 4), request_id=f"bad-{len(name)}", **kwargs)
        assert isinstance(info.value.__cause__, grpc.RpcError), name
        assert str(info.value), f"{name}: empty error message"
        if reason is not None:  # the server's google.rpc details, read back by the SDK
            assert (info.value.reason, info.value.field) == (reason, field), (name, str(info.value))
            assert info.value.metadata["request_id"] == f"bad-{len(name)}", name
    list(it)
    assert good.finish_reason == "length" and good.usage is not None and good.usage.completion_tokens == 24
    # and the server still answers new requests
    assert client.generate(PROMPT, max_tokens=4, temperature=0).usage.completion_tokens >= 1


def _user(text: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, content=text)


RAW_BAD_REQUESTS: list[tuple[str, pb.GenerateRequest, str, str]] = [
    ("no input", pb.GenerateRequest(), "INVALID_FIELD", "prompt"),
    ("prompt and messages", pb.GenerateRequest(prompt=PROMPT, messages=[_user("hi")]), "INVALID_FIELD", "prompt"),
    ("a role left unset", pb.GenerateRequest(messages=[_user("hi"), pb.ChatMessage(content="x")]), "INVALID_FIELD",
     "messages[1].role"),
    ("a role this server does not know", pb.GenerateRequest(messages=[pb.ChatMessage(role=7, content="x")]),  # type: ignore[arg-type]
     "INVALID_FIELD", "messages[0].role"),
    ("a system message after the first", pb.GenerateRequest(
        messages=[_user("hi"), pb.ChatMessage(role=pb.ROLE_SYSTEM, content="Be brief.")]), "INVALID_FIELD",
     "messages[1].role"),
    ("regex and choices", pb.GenerateRequest(prompt=PROMPT, regex="a+", choices=["a"]), "INVALID_FIELD", "choices"),
    ("a backreference", pb.GenerateRequest(prompt=PROMPT, regex=r"(a)\1"), "GRAMMAR_INVALID", "regex"),
    ("negative top_k", pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(top_k=-1)), "INVALID_FIELD",
     "sampling.top_k"),
    ("min_p above 1", pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(min_p=2)), "INVALID_FIELD",
     "sampling.min_p"),
    ("zero repetition_penalty", pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(repetition_penalty=0)),
     "INVALID_FIELD", "sampling.repetition_penalty"),
    ("a speculative method this server does not know", pb.GenerateRequest(prompt=PROMPT, speculative=9),  # type: ignore[arg-type]
     "INVALID_FIELD", "speculative"),
    ("a malformed request_id", pb.GenerateRequest(prompt=PROMPT, request_id="no spaces allowed"), "INVALID_FIELD",
     "request_id"),
]


@pytest.mark.parametrize(("name", "raw", "reason", "field"), RAW_BAD_REQUESTS, ids=[c[0] for c in RAW_BAD_REQUESTS])
def test_raw_bad_requests_name_their_field(served: Served, name: str, raw: pb.GenerateRequest, reason: str,
                                           field: str) -> None:
    from ragloom.client import _error

    raw.sampling.max_tokens = raw.sampling.max_tokens or 2
    with grpc.insecure_channel(served.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(pb_grpc.GenerationServiceStub(channel).Generate(raw, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
    err = _error(info.value)
    assert (err.reason, err.field) == (reason, field), (name, str(err))


def test_raw_request_ids_abort_and_loads(served: Served) -> None:
    from ragloom.client import _error

    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Abort(pb.AbortRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _error(info.value).field == "request_id"
        # an unset request_id is filled in by the server and reported back, in the header too
        call = stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=2)), timeout=30)
        last = list(call)[-1]
        assert last.WhichOneof("response") == "complete" and len(last.complete.request_id) == 32
        assert dict(call.initial_metadata())["x-request-id"] == last.complete.request_id
        assert last.complete.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
        # a client's id is used as given
        call = stub.Generate(pb.GenerateRequest(prompt=PROMPT, request_id="raw-1", sampling=pb.SamplingParams(max_tokens=2)),
                             timeout=30)
        assert list(call)[-1].complete.request_id == "raw-1" and dict(call.initial_metadata())["x-request-id"] == "raw-1"
        loads, call = stub.GetLoads.with_call(pb.GetLoadsRequest(request_id="loads-1"), timeout=10)
        assert loads.model == served.engine.engine.model_id and dict(call.initial_metadata())["x-request-id"] == "loads-1"
        with pytest.raises(grpc.RpcError) as info:
            stub.GetLoads(pb.GetLoadsRequest(request_id="x" * 129), timeout=10)
        assert _error(info.value).field == "request_id"


def test_sdk_refuses_unknown_strings_before_any_call(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.generate(messages=[{"role": "wizard", "content": "hi"}], max_tokens=2)
    assert info.value.field == "messages[0].role" and info.value.__cause__ is None  # no call was made


def test_bad_constraint_maps_to_invalid_argument_through_the_sdk(served: Served) -> None:
    from ragloom.client import _error

    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(pb.GenerateRequest(prompt=PROMPT, json_schema="{"), timeout=30))
    err = _error(info.value)
    assert isinstance(err, InvalidArgument) and (err.reason, err.field) == ("SCHEMA_INVALID", "json_schema")


def test_max_concurrent_rpcs_exceeded(served: Served, client: Client) -> None:
    limited = served.bg.run(start_server(_settings(max_concurrent_rpcs=1), served.engine))
    try:
        with Client(limited.address, timeout=60) as lc:
            s = lc.stream(PROMPT, max_tokens=LONG, ignore_eos=True)
            it = iter(s)
            next(it)  # one RPC in flight: the limit
            with pytest.raises(ResourceExhausted):
                lc.generate(PROMPT, max_tokens=2)
            s.cancel()
            wait_idle(client)
            # the slot is free again once the first call has ended
            assert lc.generate(PROMPT, max_tokens=2).usage.completion_tokens >= 1
    finally:
        served.bg.run(limited.stop(0))


# -- health, reflection, graceful shutdown ----------------------------------------------------


def test_health(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("ragloom.v1.GenerationService") == "SERVING"
    with pytest.raises(NotFound):
        client.health("no.such.Service")


def test_reflection_lists_the_service(served: Served) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="ragloom.v1.GenerationService"),
        ]
        listed, symbol = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {"ragloom.v1.GenerationService", "grpc.health.v1.Health"} <= names
    assert symbol.file_descriptor_response.file_descriptor_proto  # the descriptor is served


def test_graceful_stop_finishes_in_flight_and_reports_not_serving(served: Served, client: Client) -> None:
    extra = served.bg.run(start_server(_settings(shutdown_grace_s=30.0), served.engine))
    with Client(extra.address, timeout=60) as ec:
        assert ec.health() == "SERVING"
        s = ec.stream(PROMPT, max_tokens=16, ignore_eos=True, temperature=0)
        it = iter(s)
        next(it)
        stopping = asyncio.run_coroutine_threadsafe(extra.stop(30.0), served.bg.loop)
        list(it)  # the in-flight stream completes during the grace period
        stopping.result(60)
        assert s.finish_reason == "length" and s.usage is not None and s.usage.completion_tokens == 16
        assert served.bg.run(extra.health.Check(_health_request(""), None)).status == 2  # NOT_SERVING
        with pytest.raises(Unavailable):
            ec.generate(PROMPT, max_tokens=2, timeout=5)


def _health_request(service: str) -> Any:
    from grpc_health.v1 import health_pb2

    return health_pb2.HealthCheckRequest(service=service)


# -- CLI and the serve subprocess ---------------------------------------------------------------

RAGLOOM = [sys.executable, "-m", "ragloom.cli"]


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"RAGLOOM_DEVICE": "cpu"}
    return subprocess.run(RAGLOOM + args, capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_help() -> None:
    r = _run(["--help"])
    assert r.returncode == 0
    for word in ("serve", "generate", "models"):
        assert word in r.stdout
    r = _run(["serve", "--help"])
    assert r.returncode == 0 and "--port" in r.stdout and "--config" in r.stdout


def test_cli_models() -> None:
    r = _run(["models"])
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct" in r.stdout and "bundled" in r.stdout


def test_cli_generate_local() -> None:
    r = _run(["generate", "--local", "--raw", PROMPT, "--max-tokens", "6", "--temperature", "0", "--usage"])
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "prompt_tokens=" in r.stderr and "completion_tokens=" in r.stderr


def test_cli_generate_local_speculative() -> None:
    r = _run(["generate", "--local", "--raw", SPEC_PROMPT, "--max-tokens", "16", "--temperature", "0",
              "--speculative", "lookup", "--num-speculative-tokens", "4", "--usage"])
    assert r.returncode == 0, r.stderr
    assert "accepted_tokens=" in r.stderr and "draft_tokens=" in r.stderr


def test_cli_errors_are_one_line_without_traceback() -> None:
    r = _run(["generate", "--address", "127.0.0.1:1", "hello", "--timeout", "3", "--no-stream"])
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("ragloom: error") and len(r.stderr.strip().splitlines()) == 1
    r = _run(["serve", "--config", "/no/such/file.toml"])
    assert r.returncode == 1 and "config file not found" in r.stderr and "Traceback" not in r.stderr


def test_serve_subprocess_and_sigterm(tmp_path: Path, served: Served) -> None:
    from ragloom.demo import start_server, stop_server, wait_serving

    stderr_path = tmp_path / "serve.stderr"
    proc, address, model = start_server(stderr_path, timeout=180)
    try:
        assert model == served.engine.engine.model_id
        with Client(address, timeout=60) as c:
            wait_serving(c)
            assert c.generate(PROMPT, max_tokens=3, temperature=0).usage.completion_tokens >= 1
    finally:
        code = stop_server(proc)
    assert code == 0
    log = stderr_path.read_text()
    assert "SIGTERM received" in log and "server stopped" in log, log[-2000:]


@pytest.mark.slow
def test_demo_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "ragloom.demo"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "finish_reason=" in r.stdout and "server stopped" in r.stdout
    assert "ingested 6 documents" in r.stdout and "1. " in r.stdout.split("collections and semantic search")[1]
