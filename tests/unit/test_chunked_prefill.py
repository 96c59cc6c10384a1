"""Chunked prefill mixed with decode, and decode attention read in place from the paged cache.

Without a model: the allocator hands out consecutive blocks, runs/views/reads of the cache, and
the chunked scheduler's budget, order and preemption. On the bundled model (float32 weights, so
that only the order of additions differs): attention in place equals the gathered path, a step
mixing decodes and prompt chunks equals separate steps, and greedy output with chunked prefill
equals prefill-first.
"""

from __future__ import annotations

import pytest
import torch

from ragloom.config import EngineSettings
from ragloom.generation.runner import batch as batch_mod
from ragloom.generation.runner.batch import ForwardBatch
from ragloom.generation.runner.engine import LLMEngine
from ragloom.generation.runner.kv import BlockAllocator, KVCache
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.scheduler import Scheduler
from ragloom.generation.runner.sequence import Sequence

CPU = torch.device("cpu")


def _seq(rid: str, ids: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(rid, list(ids), SamplingParams(max_tokens=max_tokens), [], None, None)  # type: ignore[arg-type]


# ---- allocator and cache layout -----------------------------------------------------------------


def test_allocations_are_consecutive_and_leave_room_to_grow() -> None:
    a = BlockAllocator(64)
    first = a.allocate(4, room=4)
    assert first == [4, 5, 6, 7]  # room on both sides
    assert a.allocate(2, after=first[-1]) == [8, 9]  # growth continues the run
    second = a.allocate(3, room=4)
    assert second == list(range(second[0], second[0] + 3)) and second[0] >= 9 + 4
    a.free(first)
    assert a.allocate(1, after=9) == [10]
    # fragmented: whatever is free, still n blocks
    taken = a.allocate(a.num_free)
    assert len(set(taken)) == len(taken) and a.num_free == 0


def test_runs_views_and_all_layer_reads() -> None:
    kv = KVCache(2, num_blocks=8, block_size=4, num_kv_heads=2, head_dim=3, dtype=torch.float32, device=CPU)
    table = [5, 6, 2, 3, 7]
    assert kv.runs(table, 0, 18) == [(20, 8), (8, 8), (28, 2)]
    assert kv.runs(table, 6, 10) == [(26, 2), (8, 2)]
    assert kv.slot_tensor(table, 6, 10).tolist() == [26, 27, 8, 9]
    slots = kv.slot_tensor(table, 0, 18)
    k, v = torch.randn(2, 18, 2, 3), torch.randn(2, 18, 2, 3)
    kv.write_layers(slots, k, v)
    rk, rv = kv.read(slots)
    assert torch.equal(rk, k) and torch.equal(rv, v)
    vk, vv = kv.view(1, 8, 8)  # the second run, layer 1, in place: [heads, tokens, dim]
    assert torch.equal(vk, k[1, 8:16].transpose(0, 1)) and torch.equal(vv, v[1, 8:16].transpose(0, 1))
    assert vk.data_ptr() == kv.k[1, 0, 8].data_ptr()  # a view, not a copy
    gk, _ = kv.gather(0, slots.view(1, -1))
    assert torch.equal(gk[0], k[0])


# ---- the chunked scheduler (no model) -----------------------------------------------------------


def _compute(sched: Scheduler) -> tuple[list[str], list[int]]:
    """One step as the engine runs it, minus the model; a completed prompt samples a token."""
    batch = sched.schedule()
    assert batch is not None
    for i, seq in enumerate(batch.seqs):
        done = batch.completes(i)
        seq.num_computed += batch.num_tokens[i]
        sched.publish(seq)
        if done:
            seq.output_ids.append(1)
    return [s.request_id for s in batch.seqs], batch.num_tokens


def test_a_long_prompt_is_prefilled_in_chunks_beside_the_decodes() -> None:
    kv = KVCache(1, 64, 4, 1, 2, torch.float32, CPU)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=16, chunked_prefill=True)
    short = _seq("short", list(range(5)), max_tokens=20)
    sched.add(short)
    assert _compute(sched) == (["short"], [5])
    long = _seq("long", list(range(100, 140)))  # 40 tokens
    sched.add(long)
    steps = [_compute(sched) for _ in range(3)]
    # the decode goes first every step; the prompt takes what is left of the budget (15)
    assert steps == [(["short", "long"], [1, 15]), (["short", "long"], [1, 15]), (["short", "long"], [1, 10])]
    assert len(long.output_ids) == 1  # sampled once, after its last chunk only
    assert _compute(sched) == (["short", "long"], [1, 1])
    assert kv.runs(long.block_table, 0, long.num_tokens) == [(long.block_table[0] * 4, long.num_tokens)]


def test_prompts_part_way_go_before_new_ones_and_the_budget_holds() -> None:
    kv = KVCache(1, 64, 4, 1, 2, torch.float32, CPU)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=12, chunked_prefill=True)
    a, b = _seq("a", list(range(20))), _seq("b", list(range(50, 58)))
    sched.add(a)
    sched.add(b)
    assert _compute(sched) == (["a"], [12])
    assert _compute(sched) == (["a", "b"], [8, 4])
    assert _compute(sched) == (["a", "b"], [1, 4])
    assert _compute(sched) == (["a", "b"], [1, 1])


def test_a_step_without_decodes_prefills_up_to_max_prefill_tokens() -> None:
    kv = KVCache(1, 64, 4, 1, 2, torch.float32, CPU)
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=8, chunked_prefill=True, max_prefill_tokens=30)
    a, b = _seq("a", list(range(20))), _seq("b", list(range(50, 70)))
    sched.add(a)
    sched.add(b)
    assert _compute(sched) == (["a", "b"], [20, 10])  # nobody decodes: 30 tokens
    assert _compute(sched) == (["a", "b"], [1, 7])  # a decodes: back to the budget of 8


def test_chunks_preempt_only_sequences_not_yet_scheduled() -> None:
    # 6 blocks of 4: two 12-token prompts cannot both finish; neither deadlocks, both complete.
    kv = KVCache(1, 6, 4, 1, 2, torch.float32, CPU)
    sched = Scheduler(kv, max_num_seqs=4, max_num_batched_tokens=8, chunked_prefill=True)
    a, b = _seq("a", list(range(12)), max_tokens=2), _seq("b", list(range(30, 42)), max_tokens=2)
    sched.add(a)
    sched.add(b)
    for _ in range(30):
        if not sched.has_work():
            break
        batch = sched.schedule()
        assert batch is not None, "nothing schedulable while work remains"
        for i, seq in enumerate(batch.seqs):
            done = batch.completes(i)
            seq.num_computed += batch.num_tokens[i]
            if done:
                seq.output_ids.append(1)
                if len(seq.output_ids) == seq.params.max_tokens:
                    sched.finish(seq)
    assert not sched.has_work() and kv.allocator.num_used == 0
    assert len(a.output_ids) == 2 and len(b.output_ids) == 2


# ---- on the bundled model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> LLMEngine:
    return LLMEngine(EngineSettings(device="cpu", weights="float32", block_size=16, kv_cache_tokens=4096,
                                    prefix_caching=False, chunked_prefill=True, max_num_batched_tokens=32,
                                    max_prefill_tokens=32))


def _prompts(llm: LLMEngine) -> list[list[int]]:
    texts = ["The capital of France is", "List three colours:",
             "Once upon a time, in a village by the sea, there lived an old fisherman who every "
             "morning rowed out before dawn and came back with stories nobody believed. One day"]
    return [llm.encode(prompt=t) for t in texts]


def test_decode_in_place_equals_the_gathered_path(llm: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    kv = llm.kv
    ids = _prompts(llm)[2]
    # a fragmented table: its 3 blocks are 3 runs
    blocks = kv.allocator.allocate(6)
    table = [blocks[4], blocks[0], blocks[2]]
    try:
        assert len(kv.runs(table, 0, len(ids))) >= 3
        with torch.inference_mode():
            llm.model(ForwardBatch.build([ids[:-1]], [0], [table], kv, [1]), kv)
            step = ForwardBatch.build([ids[-1:]], [len(ids) - 1], [table], kv, [1])
            assert step.groups[0].runs is not None
            in_place = llm.model(step, kv)
            monkeypatch.setattr(batch_mod, "MAX_RUNS", 1)
            gathered_step = ForwardBatch.build([ids[-1:]], [len(ids) - 1], [table], kv, [1])
            assert gathered_step.groups[0].gather_slots is not None
            gathered = llm.model(gathered_step, kv)
    finally:
        kv.allocator.free(blocks)
    assert (in_place - gathered).abs().max().item() < 1e-4


def test_a_mixed_step_equals_separate_steps(llm: LLMEngine) -> None:
    kv = llm.kv
    a, b = _prompts(llm)[0], _prompts(llm)[2]
    ta: list[int] = []
    tb: list[int] = []
    kv.reserve(ta, len(a))
    kv.reserve(tb, len(b))
    try:
        with torch.inference_mode():
            llm.model(ForwardBatch.build([a[:-1]], [0], [ta], kv, [1]), kv)
            alone_b = llm.model(ForwardBatch.build([b[:20]], [0], [tb], kv, [1]), kv)
            alone_a = llm.model(ForwardBatch.build([a[-1:]], [len(a) - 1], [ta], kv, [1]), kv)
            # again, together: a's decode token and b's first chunk in one forward
            mixed = ForwardBatch.build([a[-1:], b[:20]], [len(a) - 1, 0], [ta, tb], kv, [1, 1])
            assert len(mixed.groups) == 2
            both = llm.model(mixed, kv)
            # a chunk without logits, then the rest of b
            none = ForwardBatch.build([a[-1:], b[:20]], [len(a) - 1, 0], [ta, tb], kv, [1, 0])
            assert llm.model(none, kv).shape[0] == 1
    finally:
        kv.release(ta)
        kv.release(tb)
    assert (both[0] - alone_a[0]).abs().max().item() < 1e-4
    assert (both[1] - alone_b[0]).abs().max().item() < 1e-4


def test_greedy_output_with_chunked_prefill_equals_prefill_first(llm: LLMEngine) -> None:
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompts = _prompts(llm)
    chunked = llm.generate(prompts, params)
    llm.scheduler.chunked_prefill = False
    try:
        whole = llm.generate(prompts, params)
    finally:
        llm.scheduler.chunked_prefill = True
    assert [c.token_ids for c in chunked] == [c.token_ids for c in whole]
    assert llm.kv.allocator.num_used == 0


def test_cli_scheduling_and_kv_flags_reach_the_settings(capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from ragloom import cli

    seen = {}
    monkeypatch.setattr("ragloom.services.server.serve", lambda settings, *a, **k: seen.setdefault("s", settings))
    cli.main(["serve", "--port", "0", "--no-chunked-prefill", "--no-prefix-caching", "--step-tokens", "128",
              "--kv-dtype", "int8"])
    s = seen["s"]
    assert (s.chunked_prefill, s.prefix_caching, s.max_num_batched_tokens, s.kv_dtype) == (False, False, 128, "int8")
    seen.clear()
    cli.main(["serve", "--port", "0"])  # not given: the defaults
    s = seen["s"]
    assert (s.chunked_prefill, s.prefix_caching, s.max_num_batched_tokens, s.kv_dtype) == (True, True, 512, "auto")
    for command in (["serve"], ["generate", "--local", "hi"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*command, "--kv-dtype", "int3"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'int3'" in capsys.readouterr().err
