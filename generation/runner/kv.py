"""The KV cache the runner owns: per-layer tensors cut into fixed-size blocks.

Storage is one tensor per K and V shaped [layers, num_blocks * block_size, kv_heads, head_dim],
so a token's KV lives at a flat *slot* (block * block_size + offset) in every layer. Sequences
own lists of blocks (block tables); blocks are reference-counted so later work (prefix sharing,
stored chunk KV) can share them, and a sequence can be truncated (speculative rollback).
"""

from __future__ import annotations

from collections import deque

import torch

from ragloom.errors import ResourceExhausted


class BlockAllocator:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise ResourceExhausted(f"KV cache full: need {n} blocks, {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def share(self, blocks: list[int]) -> None:
        for b in blocks:
            assert self._refs[b] > 0, f"sharing free block {b}"
            self._refs[b] += 1

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            assert self._refs[b] > 0, f"double free of block {b}"
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free.append(b)


class KVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.allocator = BlockAllocator(num_blocks)

    @property
    def bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def reserve(self, block_table: list[int], num_tokens: int) -> None:
        """Grow block_table in place so it holds num_tokens tokens."""
        missing = self.blocks_for(num_tokens) - len(block_table)
        if missing > 0:
            block_table.extend(self.allocator.allocate(missing))

    def truncate(self, block_table: list[int], num_tokens: int) -> None:
        """Shrink block_table in place to what num_tokens tokens need (e.g. rejected drafts)."""
        keep = self.blocks_for(num_tokens)
        if len(block_table) > keep:
            self.allocator.free(block_table[keep:])
            del block_table[keep:]

    def release(self, block_table: list[int]) -> None:
        self.allocator.free(block_table)
        block_table.clear()

    def slots(self, block_table: list[int], start: int, end: int) -> list[int]:
        """Flat slot ids of token positions [start, end) of a sequence."""
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, end)]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at slots [B, L] -> [B, L, kv_heads, head_dim] each."""
        flat = slots.reshape(-1)
        shape = (*slots.shape, *self.k.shape[2:])
        return self.k[layer].index_select(0, flat).view(shape), self.v[layer].index_select(0, flat).view(shape)
