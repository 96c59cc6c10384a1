from __future__ import annotations

import pytest
import torch

from ragloom.errors import ResourceExhausted
from ragloom.generation.runner.kv import BlockAllocator, KVCache


def test_allocator_refcounts():
    a = BlockAllocator(4)
    blocks = a.allocate(3)
    assert a.num_free == 1
    a.share(blocks[:1])
    a.free(blocks)
    assert a.num_free == 3  # the shared block is still held once
    a.free(blocks[:1])
    assert a.num_free == 4
    with pytest.raises(ResourceExhausted):
        a.allocate(5)
    with pytest.raises(AssertionError):
        a.free(blocks[:1])


def test_reserve_truncate_release_and_slots():
    kv = KVCache(num_layers=2, num_blocks=8, block_size=4, num_kv_heads=1, head_dim=2,
                 dtype=torch.float32, device=torch.device("cpu"))
    table: list[int] = []
    kv.reserve(table, 9)
    assert len(table) == 3 and kv.allocator.num_free == 5
    assert kv.slot_tensor(table, 3, 6).tolist() == [table[0] * 4 + 3, table[1] * 4, table[1] * 4 + 1]
    kv.truncate(table, 4)
    assert len(table) == 1 and kv.allocator.num_free == 7
    kv.release(table)
    assert table == [] and kv.allocator.num_free == 8


def test_write_then_gather_roundtrip():
    kv = KVCache(1, 4, 2, 1, 3, torch.float32, torch.device("cpu"))
    slots = torch.tensor([5, 0, 3])
    k = torch.arange(9, dtype=torch.float32).view(3, 1, 3)
    kv.write(0, slots, k, -k)
    keys, values = kv.gather(0, slots.view(1, 3))
    assert torch.equal(keys[0], k) and torch.equal(values[0], -k)


def test_preemption_under_kv_pressure_still_finishes_everything():
    """A cache too small for all sequences at once: preempted ones are recomputed, outputs equal."""
    from ragloom.config import EngineSettings
    from ragloom.generation.runner.engine import LLMEngine
    from ragloom.generation.runner.params import SamplingParams

    # float32 weights: bf16 activations of the int kernels round differently per batch shape
    small = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=64, block_size=8, max_num_seqs=4, weights="float32"))
    prompts = ["One two three four five", "The sky is", "Rivers flow to the", "Cats and dogs are"]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    squeezed = small.generate(prompts, params)
    assert small.scheduler.num_preemptions > 0
    alone = [small.generate([p], params)[0] for p in prompts]
    assert [c.token_ids for c in squeezed] == [c.token_ids for c in alone]
    assert small.kv.allocator.num_used == 0


# ---- prefix caching (no model: the scheduler's bookkeeping, with "compute" simulated) ----------

from ragloom.generation.runner.kv import block_hash  # noqa: E402
from ragloom.generation.runner.params import SamplingParams  # noqa: E402
from ragloom.generation.runner.scheduler import Scheduler  # noqa: E402
from ragloom.generation.runner.sequence import Sequence  # noqa: E402


def _kv(num_blocks: int, block_size: int = 4) -> KVCache:
    return KVCache(1, num_blocks, block_size, 1, 2, torch.float32, torch.device("cpu"))


def _seq(rid: str, ids: list[int], cache_prefix: bool = True) -> Sequence:
    return Sequence(rid, list(ids), SamplingParams(), [], None, None, cache_prefix=cache_prefix)  # type: ignore[arg-type]


def _step(sched: Scheduler, kind: str) -> list[Sequence]:
    """One step as the engine runs it, minus the model: every scheduled sequence's KV is computed
    (checking that it is written only into blocks that are its own and unpublished), then the
    full blocks are published. Decode steps append a token first, as sampling would."""
    batch = sched.schedule()
    assert batch is not None and batch.is_prefill == (kind == "prefill")
    a, bs = sched.kv.allocator, sched.kv.block_size
    for seq in batch.seqs:
        for pos in range(seq.num_computed, seq.num_tokens):
            block = seq.block_table[pos // bs]
            assert a.refs(block) == 1 and a.hash_of(block) is None, f"{seq.request_id} writes into a shared block"
        seq.num_computed = seq.num_tokens
        sched.publish(seq)
        seq.output_ids.append(1000 + len(seq.output_ids))
    return batch.seqs


def test_block_hash_covers_the_whole_chain():
    first = block_hash(None, [1, 2])
    assert block_hash(None, [1, 2]) == first and block_hash(None, [2, 1]) != first
    assert block_hash(first, [3, 4]) != block_hash(None, [3, 4])  # same tokens after another prefix


def test_cached_blocks_outlive_their_owner_and_are_evicted_least_recently_freed_first():
    a = BlockAllocator(4)
    x, y, z = a.allocate(3)
    a.publish(x, b"x")
    a.publish(y, b"y")
    a.free([x])
    a.free([y, z])
    assert a.num_free == 4 and a.num_used == 0 and a.num_cached == 2
    assert a.lookup(b"x") == x and a.lookup(b"y") == y
    assert x not in a.allocate(2)  # never-published blocks go first
    assert a.num_cached == 2
    assert a.allocate(1) == [x]  # then the least recently freed cached one, which is forgotten
    assert a.lookup(b"x") is None and a.hash_of(x) is None and a.lookup(b"y") == y
    assert a.allocate(1) == [y] and a.num_cached == 0
    with pytest.raises(ResourceExhausted):
        a.allocate(1)


def test_share_revives_a_cached_block_and_the_first_publisher_wins():
    a = BlockAllocator(3)
    (b,) = a.allocate(1)
    a.publish(b, b"h")
    a.free([b])
    assert a.refs(b) == 0 and a.num_free == 3
    a.share([b])  # a hit on an unowned cached block
    assert a.refs(b) == 1 and a.num_free == 2 and a.num_used == 1
    a.share([b])
    assert a.refs(b) == 2
    (c,) = a.allocate(1)
    a.publish(c, b"h")  # same content computed twice: the cache keeps the first
    assert a.lookup(b"h") == b and a.hash_of(c) is None
    a.free([c, b, b])
    assert a.num_free == 3 and a.num_cached == 1
    with pytest.raises(AssertionError):
        a.share([c])  # a plain free block holds nothing to share


def test_prompts_take_the_longest_cached_chain_and_decode_blocks_are_published():
    sched = Scheduler(_kv(32), max_num_seqs=8, max_num_batched_tokens=64)
    a = _seq("a", list(range(10)))
    sched.add(a)
    _step(sched, "prefill")  # 10 tokens: blocks 0-1 are full and published, block 2 is not
    assert a.num_cached == 0 and a.num_published == 2
    assert [sched.kv.allocator.hash_of(b) is not None for b in a.block_table] == [True, True, False]
    _step(sched, "decode")  # computes token 10 (1000)
    _step(sched, "decode")  # computes token 11 (1001): block 2 is full
    assert a.num_published == 3

    b = _seq("b", list(range(8)) + [50, 51, 52])  # shares 2 blocks with a
    c = _seq("c", list(range(10)) + [1000, 1001, 7])  # shares 3, the third filled while decoding
    sched.add(b)
    sched.add(c)
    _step(sched, "prefill")
    assert (b.num_cached, c.num_cached) == (8, 12)
    assert b.block_table[:2] == a.block_table[:2] and c.block_table[:3] == a.block_table[:3]
    assert sched.kv.allocator.refs(a.block_table[0]) == 3 and sched.kv.allocator.refs(a.block_table[2]) == 2
    assert (sched.prefix_queried_tokens, sched.prefix_hit_tokens) == (10 + 11 + 13, 8 + 12)

    for seq in (a, b, c):
        sched.finish(seq)
    assert sched.kv.allocator.num_used == 0 and sched.kv.allocator.num_cached == 3


def test_a_fully_cached_prompt_recomputes_its_last_block():
    sched = Scheduler(_kv(16), max_num_seqs=8, max_num_batched_tokens=64)
    first = _seq("first", list(range(8)))  # exactly two blocks
    sched.add(first)
    _step(sched, "prefill")
    shared = list(first.block_table[:2])
    sched.finish(first)

    again = _seq("again", list(range(8)))
    sched.add(again)
    _step(sched, "prefill")  # _step checks that nothing is written into a shared block
    # The last token's logits are needed, and its block stays this sequence's own: one block hit.
    assert again.num_cached == 4 and again.block_table[0] == shared[0] and again.block_table[1] != shared[1]

    longer = _seq("longer", list(range(9)))  # both blocks hit, the 9th token is computed
    sched.add(longer)
    _step(sched, "prefill")
    assert longer.num_cached == 8 and longer.block_table[:2] == shared


def test_custom_prefill_sequences_neither_hit_nor_publish():
    sched = Scheduler(_kv(16), max_num_seqs=8, max_num_batched_tokens=64)
    normal = _seq("normal", list(range(9)))
    sched.add(normal)
    _step(sched, "prefill")
    cached = sched.kv.allocator.num_cached
    blended = _seq("blended", list(range(9)), cache_prefix=False)  # approximate KV: not shareable
    sched.add(blended)
    _step(sched, "prefill")
    for _ in range(4):
        _step(sched, "decode")
    assert blended.num_computed == 13 and blended.num_cached == 0 and blended.num_published == 0
    assert not set(blended.block_table) & set(normal.block_table)
    assert sched.kv.allocator.num_cached == cached + 1  # normal's block filled while decoding; blended's none
    assert sched.prefix_queried_tokens == 9  # blended did not look the cache up


def test_prefix_caching_off_neither_hits_nor_publishes():
    sched = Scheduler(_kv(16), max_num_seqs=8, max_num_batched_tokens=64, prefix_caching=False)
    for rid in ("one", "two"):
        seq = _seq(rid, list(range(12)))
        sched.add(seq)
        _step(sched, "prefill")
        assert seq.num_cached == 0
    assert sched.kv.allocator.num_cached == 0 and sched.prefix_hit_tokens == sched.prefix_queried_tokens == 0


def test_eviction_under_pressure_takes_the_least_recently_used_tail_first():
    sched = Scheduler(_kv(6), max_num_seqs=8, max_num_batched_tokens=64)
    a = _seq("a", list(range(8)))
    sched.add(a)
    _step(sched, "prefill")  # 3 blocks, 2 published
    a_blocks = a.block_table[:2]
    sched.finish(a)
    b = _seq("b", list(range(50, 58)))
    sched.add(b)
    _step(sched, "prefill")
    sched.finish(b)  # 4 cached blocks, 2 plain free; released tail first: a1, a0, b1, b0
    assert sched.kv.allocator.num_cached == 4 and sched.kv.allocator.num_free == 6

    c = _seq("c", list(range(100, 111)))  # 11 tokens + 1: 3 blocks, so one cached block goes
    sched.add(c)
    _step(sched, "prefill")
    lookup = sched.kv.allocator.lookup
    assert lookup(a.block_hashes[1]) is None  # a's tail: the least recently freed
    assert lookup(a.block_hashes[0]) == a_blocks[0]
    assert [lookup(h) is not None for h in b.block_hashes] == [True, True]
    a2 = _seq("a2", list(range(9)))
    sched.add(a2)
    _step(sched, "prefill")  # a's head is still a hit
    assert a2.num_cached == 4 and a2.block_table[0] == a_blocks[0]


def test_cached_unowned_hits_are_counted_against_the_free_blocks():
    sched = Scheduler(_kv(4), max_num_seqs=8, max_num_batched_tokens=64)
    a = _seq("a", list(range(8)))
    sched.add(a)
    _step(sched, "prefill")
    sched.finish(a)  # all 4 blocks free, 2 of them cached
    x = _seq("x", [90, 91])
    sched.add(x)
    _step(sched, "prefill")  # x holds 1 block: 3 free, 2 of them the cached ones
    b = _seq("b", list(range(12)))  # hits both, then needs 2 more: only 1 is left once they are taken
    sched.add(b)
    batch = sched.schedule()
    assert batch is not None and not batch.is_prefill and batch.seqs == [x] and list(sched.waiting) == [b]
    assert sched.kv.allocator.num_free == 3  # b took nothing while it waits
    sched.finish(x)
    assert _step(sched, "prefill") == [b] and b.num_cached == 8


def test_rolling_back_into_a_shared_block_copies_it_and_a_sole_owner_unpublishes():
    kv = _kv(16)
    kv.k.normal_()
    kv.v.normal_()
    sched = Scheduler(kv, max_num_seqs=8, max_num_batched_tokens=64)
    a = _seq("a", list(range(12)))
    sched.add(a)
    _step(sched, "prefill")  # 3 blocks published
    b = _seq("b", list(range(12)) + [20, 21])
    sched.add(b)
    _step(sched, "prefill")
    assert b.block_table[:3] == a.block_table[:3]
    third = a.block_table[2]
    h = kv.allocator.hash_of(third)

    b.output_ids.clear()
    b.prompt_ids = b.prompt_ids[:10]  # rejected drafts: back to 10 tokens, inside the shared block
    sched.truncate(b, 10)
    own = b.block_table[2]
    assert own != third and kv.allocator.refs(own) == 1 and kv.allocator.hash_of(own) is None
    assert torch.equal(kv.k[:, :, own * 4 : own * 4 + 4], kv.k[:, :, third * 4 : third * 4 + 4])
    assert kv.allocator.refs(third) == 1 and kv.allocator.lookup(h) == third  # a's copy is untouched
    assert len(b.block_hashes) == 2 and b.num_published == 2 and b.num_computed == 10

    sched.truncate(a, 10)  # sole owner of a published block it will write again: forgotten
    assert a.block_table[2] == third and kv.allocator.lookup(h) is None and kv.allocator.hash_of(third) is None
