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
    assert kv.slots(table, 3, 6) == [table[0] * 4 + 3, table[1] * 4, table[1] * 4 + 1]
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

    small = LLMEngine(EngineSettings(device="cpu", kv_cache_tokens=64, block_size=8, max_num_seqs=4))
    prompts = ["One two three four five", "The sky is", "Rivers flow to the", "Cats and dogs are"]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    squeezed = small.generate(prompts, params)
    assert small.scheduler.num_preemptions > 0
    alone = [small.generate([p], params)[0] for p in prompts]
    assert [c.token_ids for c in squeezed] == [c.token_ids for c in alone]
    assert small.kv.allocator.num_used == 0
