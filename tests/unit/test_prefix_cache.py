"""Prefix caching end to end on the bundled model: greedy output with the cache equals output
without it (batches, a fully cached prompt, preemption), hits are reported, and blended prompts
(a custom prefill, approximate KV) neither share nor publish blocks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from ragloom.config import EngineSettings
from ragloom.generation.runner.engine import LLMEngine, PrefillResult, Request
from ragloom.generation.runner.params import SamplingParams

SYSTEM = (
    "You are the help desk of the Riverside public library. Answer in one or two sentences, "
    "politely, and only about the library: opening hours are 9 to 18 on weekdays and 10 to 14 on "
    "Saturdays, loans last three weeks and can be renewed twice online, the reading room is on the "
    "second floor, and children's books are in the east wing next to the garden."
)
QUESTIONS = [
    "When do you open on Saturday?",
    "How long can I keep a book?",
    "Where is the reading room?",
    "Do you have books for kids?",
]
GREEDY = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)


def _engine(**overrides: object) -> LLMEngine:
    base: dict[str, object] = {"device": "cpu", "weights": "float32", "block_size": 16}
    return LLMEngine(EngineSettings(**(base | overrides)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def llm() -> LLMEngine:
    return _engine(kv_cache_tokens=4096, max_num_seqs=8)


@contextmanager
def caching(engine: LLMEngine, on: bool) -> Iterator[None]:
    old = engine.scheduler.prefix_caching
    engine.scheduler.prefix_caching = on
    try:
        yield
    finally:
        engine.scheduler.prefix_caching = old


@pytest.fixture(autouse=True)
def no_writes_into_shared_blocks(llm: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every KV write of the model lands in a block owned by one sequence and not published."""
    kv, write = llm.kv, llm.kv.write

    def checked(layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if layer == 0:
            for block in set((slots // kv.block_size).tolist()):
                assert kv.allocator.refs(block) == 1, f"write into block {block} shared by {kv.allocator.refs(block)}"
                assert kv.allocator.hash_of(block) is None, f"write into published block {block}"
        write(layer, slots, k, v)

    monkeypatch.setattr(kv, "write", checked)


def _prompts(engine: LLMEngine, tag: str) -> list[list[int]]:
    """Chat prompts sharing a long system prompt; `tag` keeps each test's chain its own."""
    system = f"[{tag}] {SYSTEM}"
    return [engine.encode(messages=[{"role": "system", "content": system}, {"role": "user", "content": q}])
            for q in QUESTIONS]


def _run(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams = GREEDY,
         prefill: list | None = None) -> list[tuple[list[int], int]]:
    """Submit all prompts at once and step to the end: (generated ids, cached_tokens) per prompt."""
    rids = [uuid.uuid4().hex for _ in prompts]
    for i, (rid, ids) in enumerate(zip(rids, prompts)):
        engine.add_request(Request(rid, ids, params, prefill=prefill[i] if prefill else None))
    tokens: dict[str, list[int]] = {rid: [] for rid in rids}
    cached: dict[str, int] = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
            if out.finished:
                cached[out.request_id] = out.cached_tokens
    return [(tokens[r], cached[r]) for r in rids]


def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_greedy_output_with_the_cache_equals_without(llm: LLMEngine) -> None:
    prompts = _prompts(llm, "equal")
    with caching(llm, False):
        reference = [ids for ids, _ in _run(llm, prompts)]
        assert all(c == 0 for _, c in _run(llm, prompts[:2]))  # off: no hits, even for a repeat
    before = llm.loads()
    (first, first_cached), = _run(llm, prompts[:1])  # alone: fills the cache
    rest = _run(llm, prompts[1:])  # a batch of three, each sharing the system prompt's blocks
    again = _run(llm, prompts)  # everything again, in one batch
    assert [first] + [ids for ids, _ in rest] == reference
    assert [ids for ids, _ in again] == reference

    bs = llm.kv.block_size
    shared = _common(prompts[0], prompts[1])
    assert shared > 3 * bs  # the test means something: several blocks in common
    assert first_cached == 0
    assert [c for _, c in rest] == [_common(prompts[0], p) // bs * bs for p in prompts[1:]]
    # every prompt itself is cached now (up to its last block holding the last prompt token)
    assert [c for _, c in again] == [(len(p) - 1) // bs * bs for p in prompts]
    after = llm.loads()
    hits = first_cached + sum(c for _, c in rest) + sum(c for _, c in again)
    assert after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens == hits
    queried = len(prompts[0]) + sum(len(p) for p in prompts[1:]) + sum(len(p) for p in prompts)
    assert after.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens == queried
    assert after.kv_blocks_used == 0  # cached blocks count as free


@pytest.mark.parametrize("length", [64, 70])  # exactly four blocks, and four blocks and a bit
def test_a_fully_cached_prompt_recomputes_its_last_token(llm: LLMEngine, length: int) -> None:
    ids = (_prompts(llm, f"full-{length}")[0] * 2)[:length]
    with caching(llm, False):
        (reference, _), = _run(llm, [ids])
    (once, c1), = _run(llm, [ids])
    (twice, c2), = _run(llm, [ids])  # the autouse fixture checks no shared block is written
    assert once == twice == reference
    assert c1 == 0 and c2 == (length - 1) // 16 * 16


@pytest.mark.parametrize("speculative", ["off", "lookup"])
def test_preemption_with_the_cache_gives_the_same_output(speculative: str) -> None:
    # 15 blocks of 8 tokens for four sequences of ~40 tokens each: decode has to preempt.
    small = _engine(kv_cache_tokens=120, block_size=8, max_num_seqs=4, speculative=speculative)
    prompts = [small.encode(prompt="In the old harbour town, every single morning the fishermen" + t)
               for t in [" sang", " argued about", " counted the", " mended their nets and"]]
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    with caching(small, False):
        reference = [ids for ids, _ in _run(small, prompts, params)]
    preempted = small.scheduler.num_preemptions
    assert preempted > 0
    alone = [_run(small, [p], params)[0][0] for p in prompts]  # fills the cache too
    squeezed = _run(small, prompts, params)
    if speculative == "off":  # drafts change which steps run out of room
        assert small.scheduler.num_preemptions > preempted  # the cached run was preempted as well
    assert [ids for ids, _ in squeezed] == reference == alone
    assert small.kv.allocator.num_used == 0


def test_custom_prefill_requests_neither_share_nor_publish(llm: LLMEngine) -> None:
    ids = _prompts(llm, "custom")[0]
    n, cfg = len(ids), llm.config
    called: list[int] = []

    def poisoned(model: object) -> PrefillResult:
        """Approximate KV (here: zeros) reused for 5 tokens: it must stay this request's own."""
        called.append(1)
        zeros = torch.zeros(cfg.num_layers, n, cfg.num_kv_heads, cfg.head_dim)
        return PrefillResult(zeros, zeros.clone(), torch.zeros(cfg.vocab_size), reused_tokens=5)

    with caching(llm, False):
        (reference, _), = _run(llm, [ids])
    cached_blocks, before = llm.kv.allocator.num_cached, llm.loads()
    (_, c), = _run(llm, [ids], prefill=[poisoned])
    assert called and c == 5  # its own report, not a prefix-cache hit
    assert llm.kv.allocator.num_cached == cached_blocks  # nothing published from it (prompt or decode)
    assert llm.loads().prefix_cache_queried_tokens == before.prefix_cache_queried_tokens

    (plain, c), = _run(llm, [ids])  # nothing of the poisoned KV is found
    assert plain == reference and c == 0
    called.clear()
    (_, c), = _run(llm, [ids], prefill=[poisoned])  # cached now, but it runs its own prefill
    assert called and c == 5
    (plain, c), = _run(llm, [ids])  # and the cached blocks were not overwritten by it
    assert plain == reference and c == (n - 1) // 16 * 16


def test_prefix_caching_setting_reaches_the_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragloom.cli import _parser

    monkeypatch.setenv("RAGLOOM_PREFIX_CACHING", "false")
    assert EngineSettings().prefix_caching is False
    monkeypatch.delenv("RAGLOOM_PREFIX_CACHING")
    assert EngineSettings().prefix_caching is True
    assert _parser().parse_args(["serve", "--no-prefix-caching"]).prefix_caching is False
    assert _parser().parse_args(["serve"]).prefix_caching is None  # not given: settings decide
