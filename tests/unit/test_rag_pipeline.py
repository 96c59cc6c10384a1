"""RagPipeline (cache/rag.py) on the bundled model with a real memory + disk chunk-KV store.

Most checks run the plan's prefill directly (what the engine's step calls), which fills the
usage; two run the request through the engine to compare greedy answers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragloom.cache.chunk_kv import ChunkKV, ChunkKVStore, DiskTier, MemoryTier, chunk_key
from ragloom.cache.rag import DEFAULT_SYSTEM_PROMPT, AskPlan, PassageText, RagPipeline
from ragloom.errors import InvalidArgument
from ragloom.generation.runner.engine import Request
from ragloom.generation.runner.params import SamplingParams

PASSAGES = [
    PassageText("eiffel", "The Eiffel Tower is a wrought-iron tower in Paris, France.", 0.9),
    PassageText("everest", "Mount Everest is the highest mountain on Earth.", 0.5),
    PassageText("danube", "The Danube flows through Vienna and Budapest.", 0.4),
]
QUESTION = "In which city is the Eiffel Tower?"
GREEDY = SamplingParams(max_tokens=6, temperature=0)


def _store(disk: Path | None = None, memory_bytes: int = 64 << 20) -> ChunkKVStore:
    tiers: list = [MemoryTier(memory_bytes)]
    if disk is not None:
        tiers.append(DiskTier(disk))
    return ChunkKVStore(tiers)


def _prefill(engine, plan: AskPlan) -> torch.Tensor:
    """Run the plan's prefill as the engine's step would; the last prompt token's logits."""
    assert plan.request.prefill is not None
    res = plan.request.prefill(engine.model)
    assert plan.usage.done.is_set()
    assert res.k.shape[1] == len(plan.request.prompt_token_ids) == plan.usage.prompt_tokens
    return res.logits


def _run(engine, request: Request) -> str:
    engine.add_request(request)
    text = ""
    while engine.has_unfinished():
        for out in engine.step():
            if out.request_id == request.request_id:
                text += out.text
    if request.request_id in engine.failures:
        raise engine.failures.pop(request.request_id)
    return text


def _plan(pipeline: RagPipeline, rid: str, mode: str = "blend", **kw) -> AskPlan:
    return pipeline.plan(QUESTION, PASSAGES, GREEDY, request_id=rid, mode=mode, **kw)


def test_second_ask_reuses_every_chunk_from_memory_then_disk(engine, tmp_path: Path) -> None:
    pipeline = RagPipeline(engine, _store(tmp_path / "kv"))
    first = _plan(pipeline, "first")
    assert first.tiers == [None, None, None] and first.usage.tier_hits == {}
    _prefill(engine, first)
    assert first.usage.chunks_computed == len(PASSAGES)

    second = _plan(pipeline, "second")
    assert second.tiers == ["memory"] * len(PASSAGES)
    logits = _prefill(engine, second)
    u = second.usage
    assert u.chunks_computed == 0 and u.tier_hits == {"memory": len(PASSAGES)}
    assert u.reused_tokens > 0 and u.reused_tokens + u.recomputed_tokens == u.prompt_tokens
    assert torch.isfinite(logits).all()

    # a restart: empty memory, the same disk folder
    restarted = RagPipeline(engine, _store(tmp_path / "kv"))
    third = _plan(restarted, "third")
    _prefill(engine, third)
    assert third.usage.tier_hits == {"disk": len(PASSAGES)} and third.usage.chunks_computed == 0
    assert _plan(restarted, "fourth").usage.tier_hits == {"memory": len(PASSAGES)}  # promoted on the hit


def test_full_mode_reuses_nothing(engine) -> None:
    pipeline = RagPipeline(engine, _store())
    _prefill(engine, _plan(pipeline, "warm"))
    full = _plan(pipeline, "full", mode="full")
    assert full.tiers == [None, None, None] and full.usage.tier_hits == {}
    _prefill(engine, full)
    u = full.usage
    assert (u.reused_tokens, u.recomputed_tokens, u.chunks_computed) == (0, u.prompt_tokens, 0)


def test_prefix_mode_reuses_the_exact_prefix_and_answers_as_full(engine) -> None:
    # memory only: entries keep their exact tensors (no codec round trip), so prefix reuse is exact
    pipeline = RagPipeline(engine, _store())
    assert pipeline.precompute(engine.model, [p.text for p in PASSAGES]) == len(PASSAGES)
    assert pipeline.precompute(engine.model, [p.text for p in PASSAGES]) == 0  # already stored

    prefix = _plan(pipeline, "prefix", mode="prefix")
    # prefix mode can use only the first passage (exact right after the head); it fetches no more
    assert prefix.tiers == ["memory"] + [None] * (len(PASSAGES) - 1)
    head, _ = pipeline.head_and_tail(DEFAULT_SYSTEM_PROMPT)
    prefix_answer = _run(engine, prefix.request)
    assert prefix.usage.reused_tokens == len(head) + len(pipeline.passage_tokens(PASSAGES[0].text))
    assert prefix.usage.chunks_computed == 0

    full = _plan(pipeline, "prefix-ref", mode="full")
    full_answer = _run(engine, full.request)
    assert full.usage.reused_tokens == 0
    assert prefix_answer == full_answer and full_answer.strip()


def test_chunk_kv_of_another_model_or_dtype_is_never_used(engine, tmp_path: Path) -> None:
    pipeline = RagPipeline(engine, _store(tmp_path / "kv"))
    store = pipeline.store
    head, _ = pipeline.head_and_tail(DEFAULT_SYSTEM_PROMPT)
    tag = pipeline._context_tag(head)
    cfg = engine.config
    tokens = [pipeline.passage_tokens(p.text) for p in PASSAGES[:2]]
    keys = [chunk_key(pipeline.model_id, pipeline.dtype, t, context=tag) for t in tokens]
    shape = (cfg.num_layers, 0, cfg.num_kv_heads, cfg.head_dim)
    # stored under the very keys this model would use, but made by another model / in another dtype
    for key, ids, (model, dtype) in zip(keys, tokens, [("someone/else", torch.float32), (pipeline.model_id, torch.bfloat16)]):
        kv = torch.randn(shape[0], len(ids), *shape[2:]).to(dtype)
        store.put(ChunkKV(key, ids, kv, kv.clone(), len(head), model, str(dtype).removeprefix("torch.")))

    plan = _plan(pipeline, "mismatch")
    assert plan.tiers[:2] == [None, None] and plan.usage.tier_hits == {}
    _prefill(engine, plan)
    assert plan.usage.chunks_computed == len(PASSAGES)
    assert store.stats()["tiers"]["memory"]["mismatches"] >= 2
    # recomputed and stored again under the same keys, now this model's: used from here on
    again = _plan(pipeline, "after")
    assert again.tiers == ["memory"] * len(PASSAGES)
    entry, _ = store.get(keys[1], pipeline.model_id, pipeline.dtype)
    assert entry is not None and entry.model_id == pipeline.model_id and entry.dtype == pipeline.dtype


def test_no_passages_and_bad_inputs(engine) -> None:
    pipeline = RagPipeline(engine, _store())
    empty = pipeline.plan(QUESTION, [], GREEDY, request_id="empty")
    _prefill(engine, empty)
    assert empty.passages == [] and empty.usage.tier_hits == {} and empty.usage.chunks_computed == 0
    for kwargs, match in (
        ({"question": "  "}, "question is empty"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
    ):
        args = {"question": QUESTION, "mode": "blend", "ratio": 0.15} | kwargs
        with pytest.raises(InvalidArgument, match=match):
            pipeline.plan(args.pop("question"), PASSAGES, GREEDY, request_id="bad", **args)
