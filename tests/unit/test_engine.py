from __future__ import annotations

import pytest

from ragloom.errors import InvalidArgument
from ragloom.generation.runner.engine import Request
from ragloom.generation.runner.params import SamplingParams


def test_chat_template_and_answer(engine):
    ids = engine.encode(messages=[{"role": "user", "content": "What is the capital of France?"}])
    text = engine.tokenizer.decode(ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")
    out = engine.generate([ids], SamplingParams(max_tokens=24, temperature=0))[0]
    assert "Paris" in out.text and out.finish_reason == "stop"


def test_stop_string_truncates_and_is_not_streamed(engine):
    ids = engine.encode(prompt="1, 2, 3, 4, 5, 6,")
    full = engine.generate([ids], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    assert " 9" in full.text
    stop = engine.generate([ids], SamplingParams(max_tokens=12, temperature=0, stop=[" 9"]))[0]
    assert stop.finish_reason == "stop"
    assert stop.text == full.text[: full.text.index(" 9")]


def test_stop_token_ids_and_max_tokens(engine):
    ids = engine.encode(prompt="Hello")
    free = engine.generate([ids], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    assert free.finish_reason == "length" and free.completion_tokens == 6
    stop_id = free.token_ids[2]
    stopped = engine.generate([ids], SamplingParams(max_tokens=6, temperature=0, stop_token_ids=[stop_id]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]


def test_streamed_deltas_concatenate_to_text(engine):
    engine.add_request(Request("s", engine.encode(prompt="Tell me a story:"), SamplingParams(max_tokens=20, seed=3)))
    pieces: list[str] = []
    ids: list[int] = []
    last = None
    while engine.has_unfinished():
        for out in engine.step():
            pieces.append(out.text)
            ids += out.token_ids
            last = out
    assert last is not None and last.finished and last.completion_tokens == 20
    assert len(ids) == 20  # every generated token was streamed once
    # the incremental detokenizer's deltas add up to a plain decode of the generated ids
    assert "".join(pieces) == engine.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize(
    "prompt_ids, params, message",
    [
        ([], SamplingParams(), "empty"),
        ([10**7], SamplingParams(), "vocabulary"),
        ([1, 2], SamplingParams(max_tokens=10**9), "exceeds the context"),
        ([1, 2], SamplingParams(temperature=-1), "temperature"),
    ],
)
def test_bad_requests_rejected(engine, prompt_ids, params, message):
    with pytest.raises(InvalidArgument, match=message):
        engine.add_request(Request("bad", prompt_ids, params))
    assert not engine.has_unfinished()


def test_abort_frees_blocks(engine):
    engine.add_request(Request("ab", engine.encode(prompt="Count:"), SamplingParams(max_tokens=50)))
    engine.step()
    assert engine.kv.allocator.num_used > 0
    out = engine.abort("ab")
    assert out is not None and out.finished and out.finish_reason == "abort"
    assert engine.kv.allocator.num_used == 0 and engine.abort("ab") is None


def test_empty_prompt_encode(engine):
    with pytest.raises(InvalidArgument):
        engine.encode(prompt="")
    with pytest.raises(InvalidArgument):
        engine.encode(messages=[{"role": "wizard", "content": "hi"}])
