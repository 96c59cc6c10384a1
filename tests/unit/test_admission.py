"""Admission control in the engine (#21): a bounded waiting queue answered with OVERLOADED and a
retry delay, and the configured prompt-token bound. On the session's bundled-model engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from ragloom.errors import ResourceExhausted
from ragloom.generation.runner.async_engine import AsyncEngine
from ragloom.generation.runner.engine import LLMEngine, Request
from ragloom.generation.runner.params import SamplingParams
from ragloom.services.status import failure_status


@pytest.fixture
def small_queue(engine: LLMEngine) -> Iterator[LLMEngine]:
    """The session engine with max_queued=1 (restored afterwards)."""
    saved = engine.settings.max_queued
    engine.settings.max_queued = 1
    try:
        yield engine
    finally:
        engine.settings.max_queued = saved


def _request(engine: LLMEngine, rid: str) -> Request:
    return Request(rid, engine.encode(prompt="Hello there"), SamplingParams(max_tokens=2, temperature=0.0))


def test_admit_refuses_when_the_queue_is_full(small_queue: LLMEngine) -> None:
    engine = small_queue
    engine.admit()  # empty queue: admitted
    engine.add_request(_request(engine, "queued-1"))
    try:
        with pytest.raises(ResourceExhausted) as info:
            engine.admit()
        err = info.value
        assert err.reason == "OVERLOADED"
        assert err.retry_after_s is not None and 0.5 <= err.retry_after_s <= 60
        assert err.metadata == {"waiting": "1", "max_queued": "1"}
        # on the wire: RESOURCE_EXHAUSTED with ErrorInfo OVERLOADED and RetryInfo of that delay
        code, _, trailers = failure_status(err, "Generate test", "rid-1")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = status_pb2.Status.FromString(dict(trailers)["grpc-status-details-bin"])
        infos, retries = [], []
        for packed in status.details:
            if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                infos.append(error_details_pb2.ErrorInfo())
                packed.Unpack(infos[-1])
            elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retries.append(error_details_pb2.RetryInfo())
                packed.Unpack(retries[-1])
        assert [i.reason for i in infos] == ["OVERLOADED"]
        delay = retries[0].retry_delay
        assert delay.seconds + delay.nanos / 1e9 == pytest.approx(err.retry_after_s, abs=1e-6)
    finally:
        engine.abort("queued-1")
    engine.admit()  # drained: admitted again


def test_retry_delay_follows_recent_throughput(engine: LLMEngine) -> None:
    saved = list(engine._finished_at)
    try:
        engine._finished_at.clear()
        assert engine.retry_after_s(10) == 1.0  # no rate known yet
        engine._finished_at.extend([100.0 + i * 0.1 for i in range(11)])  # 10 requests per second
        assert engine.retry_after_s(30) == pytest.approx(3.0)
        assert engine.retry_after_s(1) == 0.5  # never an immediate retry
        assert engine.retry_after_s(10_000) == 60.0
    finally:
        engine._finished_at.clear()
        engine._finished_at.extend(saved)


def test_async_engine_answers_overloaded_for_the_request_over_the_bound(small_queue: LLMEngine) -> None:
    """The engine thread is held (a run() call waiting on an event) while two requests arrive;
    released, it applies both before stepping: the first waits in the queue, the second finds
    the queue full. Deterministic: nothing depends on timing."""
    engine = small_queue

    async def scenario() -> list[Any]:
        front = AsyncEngine(engine)
        await front.start()
        hold, held = threading.Event(), threading.Event()

        def block(_: LLMEngine) -> None:
            held.set()
            hold.wait(30)

        try:
            blocker = asyncio.ensure_future(front.run(block))
            await asyncio.to_thread(held.wait, 30)

            async def consume(rid: str) -> Any:
                try:
                    return [out async for out in front.generate(_request(engine, rid))][-1]
                except ResourceExhausted as exc:
                    return exc

            first = asyncio.ensure_future(consume("first"))
            second = asyncio.ensure_future(consume("second"))
            await asyncio.sleep(0)  # both generate() calls have queued their _Add commands
            await asyncio.sleep(0)
            hold.set()
            await blocker
            return list(await asyncio.gather(first, second))
        finally:
            hold.set()
            await front.shutdown()

    first, second = asyncio.run(scenario())
    assert not isinstance(first, BaseException) and first.finished and first.finish_reason in ("stop", "length")
    assert isinstance(second, ResourceExhausted) and second.reason == "OVERLOADED"
    assert second.retry_after_s is not None and second.retry_after_s >= 0.5


def test_reservations_refuse_before_the_pre_work(small_queue: LLMEngine) -> None:
    """Ask holds a place across its retrieval: with max_queued=1, a second Ask arriving while the
    first one's place is held is refused at once, and the place comes back on release or on
    leaving the block (also when the pre-work raises)."""
    engine = small_queue

    async def scenario() -> None:
        front = AsyncEngine(engine)
        await front.start()
        try:
            with front.reservation() as place:
                with pytest.raises(ResourceExhausted) as info:
                    with front.reservation():
                        pass
                assert info.value.reason == "OVERLOADED" and info.value.metadata["waiting"] == "1"
                place.release()
                place.release()  # releasing twice gives back one place only
                with front.reservation():
                    pass
            with pytest.raises(ValueError):
                with front.reservation():
                    raise ValueError("retrieval failed")
            with front.reservation() as place:  # every place came back
                place.release()
                outs = [out async for out in front.generate(_request(engine, "reserved"))]
                assert outs[-1].finished
        finally:
            await front.shutdown()

    asyncio.run(scenario())


def test_max_prompt_tokens(engine: LLMEngine) -> None:
    saved = engine.settings.max_prompt_tokens
    engine.settings.max_prompt_tokens = 4
    try:
        req = Request("long", engine.encode(prompt="one two three four five six seven"), SamplingParams(max_tokens=1))
        with pytest.raises(ResourceExhausted) as info:
            engine.validate(req)
        assert info.value.reason == "REQUEST_TOO_LARGE"
        assert info.value.metadata["max_prompt_tokens"] == "4"
        engine.validate(Request("short", req.prompt_token_ids[:4], SamplingParams(max_tokens=1)))
    finally:
        engine.settings.max_prompt_tokens = saved
