"""Observability and bounds end to end (#21): Prometheus metrics scraped over HTTP from a live
server, JSON log lines carrying the request id, tokenization off the event loop, and the
configured prompt and constraint bounds. A real server on the bundled model, the SDK as caller."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from background_loop import LiveServer, live_server
from prometheus_client.parser import text_string_to_metric_families

from ragloom.client import Client
from ragloom.config import Settings
from ragloom.errors import InvalidArgument, ResourceExhausted
from ragloom.services.logs import JsonFormatter

GEN = "ragloom.v1.GenerationService"


@pytest.fixture(scope="module")
def served() -> Iterator[LiveServer]:
    settings = Settings(host="127.0.0.1", port=0, device="cpu", kv_cache_tokens=4096, shutdown_grace_s=1.0,
                        metrics_port=0, max_prompt_tokens=64, max_constraint_bytes=64)
    with live_server(settings) as s:
        yield s


@pytest.fixture
def client(served: LiveServer) -> Iterator[Client]:
    with Client(served.address, timeout=60) as c:
        yield c


def _scrape(served: LiveServer) -> dict[str, list[Any]]:
    port = served.server.metrics_port
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert found, f"no sample {name} {labels}; have {sorted(samples)}"
    return float(sum(found))


def test_metrics_after_calls(served: LiveServer, client: Client) -> None:
    before = _scrape(served)
    ok_before = sum(s.value for s in before.get("ragloom_requests_total", [])
                    if s.labels.get("method") == "Generate" and s.labels.get("code") == "OK")
    out = client.generate("The capital of France is", max_tokens=6, temperature=0, ignore_eos=True)
    stream = client.stream("Count: one, two,", max_tokens=5, temperature=0, ignore_eos=True)
    list(stream)
    with pytest.raises(InvalidArgument):
        client.generate("", max_tokens=2)
    client.loads()
    # a call is counted once its handler has finished, which can be just after the client has its
    # answer: scrape until the last call shows
    deadline = time.monotonic() + 10
    samples = _scrape(served)
    while not any(x.labels.get("method") == "GetLoads" for x in samples.get("ragloom_requests_total", [])) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
        samples = _scrape(served)

    assert _value(samples, "ragloom_requests_total", service=GEN, method="Generate", code="OK") == ok_before + 2
    assert _value(samples, "ragloom_requests_total", service=GEN, method="Generate", code="INVALID_ARGUMENT") >= 1
    assert _value(samples, "ragloom_requests_total", service=GEN, method="GetLoads", code="OK") >= 1
    assert _value(samples, "ragloom_request_duration_seconds_count", service=GEN, method="Generate") >= 3
    assert _value(samples, "ragloom_time_to_first_token_seconds_count", rpc="Generate") >= 2
    assert _value(samples, "ragloom_inter_token_latency_seconds_count", rpc="Generate") >= 1
    assert _value(samples, "ragloom_completion_tokens_total", rpc="Generate") >= out.usage.completion_tokens + 5
    assert _value(samples, "ragloom_prompt_tokens_total", rpc="Generate") >= out.usage.prompt_tokens
    # read from the engine at scrape time
    assert _value(samples, "ragloom_kv_blocks_total") == served.llm.kv.num_blocks
    for gauge in ("ragloom_queue_depth", "ragloom_running_sequences", "ragloom_kv_blocks_used"):
        assert _value(samples, gauge) >= 0
    assert _value(samples, "ragloom_prefix_cache_queried_tokens_total") > 0


def test_constraint_compile_time_is_observed(served: LiveServer, client: Client) -> None:
    client.generate("Yes or no?", choices=["yes", "no"], max_tokens=3)
    assert _value(_scrape(served), "ragloom_constraint_compile_seconds_count", kind="choices") >= 1


def test_constraint_size_bound(client: Client) -> None:
    with pytest.raises(InvalidArgument) as info:
        client.generate("A number:", regex="[0-9]" * 40, max_tokens=3)  # 200 bytes > 64
    assert info.value.field == "regex"
    assert info.value.metadata["max_constraint_bytes"] == "64"


def test_prompt_token_bound(client: Client) -> None:
    with pytest.raises(ResourceExhausted) as info:
        client.generate("word " * 200, max_tokens=1)
    assert info.value.reason == "REQUEST_TOO_LARGE"
    assert info.value.metadata["max_prompt_tokens"] == "64"


def test_json_log_lines_carry_the_request_id(client: Client) -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("ragloom")
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with pytest.raises(InvalidArgument):
            client.generate("", max_tokens=2, request_id="json-log-1")
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    mine = [rec for rec in lines if rec.get("request_id") == "json-log-1"]
    assert mine, lines
    assert {"time", "level", "logger", "message"} <= set(mine[0])
    assert "json-log-1" in mine[0]["message"]  # status.failure_status's "Generate json-log-1 rejected"


def test_tokenization_does_not_block_the_event_loop(served: LiveServer, client: Client,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """While a big prompt is being tokenized (held there until the test says so), another call
    completes. Were tokenizing on the event loop, GetLoads could not be answered until the hold
    gave up, and its deadline would fail the test first."""
    llm = served.llm
    original = llm.encode
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []

    def held_encode(prompt: str | None = None, messages: Any = None) -> list[int]:
        if prompt is not None and prompt.startswith("HUGE"):
            entered.set()
            released.append(release.wait(30))
        return original(prompt=prompt, messages=messages)

    monkeypatch.setattr(llm, "encode", held_encode)
    results: list[Any] = []

    def big_call() -> None:
        with Client(served.address, timeout=120) as c:
            try:
                results.append(c.generate("HUGE " + "lorem ipsum " * 20_000, max_tokens=1))
            except Exception as exc:  # noqa: BLE001 - the prompt is over max_prompt_tokens: an answer
                results.append(exc)

    worker = threading.Thread(target=big_call)
    worker.start()
    try:
        assert entered.wait(60), "the big prompt never reached the tokenizer"
        loads = client.loads(timeout=20)  # answered while the tokenizer is still held
        assert loads.kv_blocks_total > 0
    finally:
        release.set()
        worker.join(60)
    assert released == [True], "the tokenizer was released by its own timeout, not after GetLoads"
    assert isinstance(results[0], ResourceExhausted)  # and the big call was answered
