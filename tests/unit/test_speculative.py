"""Speculative decoding with prompt lookup (speculative/lookup.py, engine._draft/_accept): the
drafter's proposals, and greedy output exactly equal to plain greedy decoding, alone and in a
batch, with drafts cut by max_tokens and by a full KV cache."""

from __future__ import annotations

import pytest

from ragloom.config import EngineSettings
from ragloom.errors import InvalidArgument
from ragloom.generation.runner.engine import LLMEngine, Request
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.speculative.lookup import PromptLookup


def test_lookup_drafts_what_followed_the_latest_longest_match() -> None:
    d = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3], max_ngram=3, min_ngram=1)
    # suffix (2, 3) occurred twice before; the latest occurrence is followed by 7, 8, 2, 3
    assert d.propose([], 3) == [7, 8, 2]
    # with output (7): suffix (2, 3, 7) matches at position 6..8 -> 8, 2, 3, 7
    assert d.propose([7], 10) == [8, 2, 3, 7]
    assert d.propose([7, 42], 4) == []  # 42 never occurred
    assert d.propose([7, 42], 0) == []


def test_lookup_never_matches_the_suffix_itself() -> None:
    d = PromptLookup([5, 6], max_ngram=2, min_ngram=1)
    assert d.propose([], 4) == []  # (5, 6) and (6,) occur only as the suffix
    assert d.propose([5], 4) == [6, 5]  # (5,) occurred at the start, followed by 6, 5
    with pytest.raises(ValueError):
        PromptLookup([1], max_ngram=1, min_ngram=2)


COPY = ("Here is a list: alpha beta gamma delta epsilon zeta eta theta iota kappa lambda. "
        "Repeat the list exactly: alpha beta gamma delta")
PROMPTS = [COPY, "The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
           "Water boils at 100 degrees Celsius. Water boils at"]


@pytest.fixture(scope="module")
def engines() -> tuple[LLMEngine, LLMEngine]:
    base = dict(device="cpu", kv_cache_tokens=2048, prefix_caching=False)
    return (LLMEngine(EngineSettings(**base)),
            LLMEngine(EngineSettings(**base, speculative="lookup", num_speculative_tokens=6)))


def _run(engine: LLMEngine, prompts: list[str], params: SamplingParams, method: str | None = None):
    for i, p in enumerate(prompts):
        engine.add_request(Request(f"r{i}", engine.encode(p), params, speculative=method))
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            done.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finished:
                done[out.request_id + ":last"] = out
    return [done[f"r{i}"] for i in range(len(prompts))], [done[f"r{i}:last"] for i in range(len(prompts))]


def test_greedy_output_is_exactly_plain_greedy_alone(engines: tuple[LLMEngine, LLMEngine]) -> None:
    """Batch 1: verification attends each draft token as a decode step would, so the output is
    the same to the bit, near-ties included."""
    plain, spec = engines
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    for prompt in PROMPTS:
        assert _run(spec, [prompt], params)[0] == _run(plain, [prompt], params)[0]


def test_greedy_output_is_exactly_plain_greedy_in_a_batch(
        engines: tuple[LLMEngine, LLMEngine], monkeypatch: pytest.MonkeyPatch) -> None:
    """In a batch, too, when plain decoding reads keys in place like verification does (batched
    decodes of short contexts otherwise go through one padded kernel, whose rounding differs)."""
    from ragloom.generation.runner import batch

    monkeypatch.setattr(batch, "IN_PLACE_MIN_CONTEXT", 0)
    plain, spec = engines
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    want, _ = _run(plain, PROMPTS, params)
    got, last = _run(spec, PROMPTS, params)
    assert got == want
    assert all(len(t) == 40 for t in got) and all(o.completion_tokens == 40 for o in last)
    assert last[0].accepted_tokens > 0 and last[0].draft_tokens >= last[0].accepted_tokens


def test_drafts_stop_at_max_tokens_and_at_eos(engines: tuple[LLMEngine, LLMEngine]) -> None:
    plain, spec = engines
    for params in (SamplingParams(max_tokens=3, temperature=0, ignore_eos=True),
                   SamplingParams(max_tokens=60, temperature=0)):
        want, want_last = _run(plain, [COPY], params)
        got, got_last = _run(spec, [COPY], params)
        assert got == want and got_last[0].finish_reason == want_last[0].finish_reason
        assert len(got[0]) <= params.max_tokens


def test_who_speculates(engines: tuple[LLMEngine, LLMEngine]) -> None:
    _, spec = engines
    _, last = _run(spec, [COPY], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True), method="off")
    assert last[0].draft_tokens == 0
    _, last = _run(spec, [COPY], SamplingParams(max_tokens=20, temperature=0.8, seed=1, ignore_eos=True))
    assert last[0].draft_tokens == 0  # sampling decodes a token a step
    with pytest.raises(InvalidArgument, match="speculative"):
        spec.add_request(Request("bad", [1, 2, 3], SamplingParams(), speculative="medusa"))


def test_full_kv_cache_drops_drafts_not_tokens() -> None:
    """With room for the sequence but not its drafts, decoding goes on without them."""
    spec = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=96, block_size=16, prefix_caching=False,
                                    speculative="lookup", num_speculative_tokens=16))
    plain = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=96, block_size=16, prefix_caching=False))
    ids = spec.encode(COPY)
    params = SamplingParams(max_tokens=96 - len(ids) - 1, temperature=0, ignore_eos=True)
    want = plain.generate([ids], params)[0].token_ids
    assert spec.generate([ids], params)[0].token_ids == want


def test_no_drafts_in_steps_with_more_decodes_than_speculative_max_batch(
        engines: tuple[LLMEngine, LLMEngine]) -> None:
    _, spec = engines
    assert spec.settings.speculative_max_batch == 4
    _, last = _run(spec, [COPY] * 5, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    assert all(o.draft_tokens == 0 for o in last)  # five in lockstep: every step decodes five


def test_draft_length_adapts_to_acceptance(engines: tuple[LLMEngine, LLMEngine]) -> None:
    from ragloom.generation.runner.engine import SPEC_MISSES, SPEC_PAUSE
    from ragloom.generation.runner.sequence import Sequence

    _, spec = engines
    seq = Sequence("s", [1, 2], SamplingParams(temperature=0), [], spec.tokenizer, None)  # type: ignore[arg-type]
    spec._adapt(seq, 6, 6)
    assert seq.spec_k == 6  # capped at num_speculative_tokens
    spec._adapt(seq, 6, 2)
    assert seq.spec_k == 3  # mostly rejected: halved
    for _ in range(SPEC_MISSES):
        spec._adapt(seq, 3, 0)
    assert seq.spec_pause == SPEC_PAUSE and seq.spec_k == 1
