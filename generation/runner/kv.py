"""The KV cache the runner owns: per-layer tensors cut into fixed-size blocks.

Storage is one tensor per K and V shaped [layers, num_blocks * block_size, kv_heads, head_dim],
so a token's KV lives at a flat *slot* (block * block_size + offset) in every layer. Sequences
own lists of blocks (block tables); blocks are reference-counted so that several sequences can
share them, and a sequence can be truncated (speculative rollback).

Prefix caching (as vLLM's automatic prefix caching and nano-vllm): a full block whose KV is
computed is *published* under the hash of its token chain (`block_hash`). A published block whose
last owner frees it keeps its KV and stays findable; it is evicted, least recently freed first,
only when an allocation needs the room. Published blocks are immutable: only full blocks are
published and a sequence writes only into its own last, partial block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

import torch

from ragloom.errors import ResourceExhausted


def block_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    """Identity of a full block's KV: its tokens and, through the parent's hash, every token before
    them (positions included). SHA-256 rather than Python's hash(): ints and tuples hash the same in
    every process, so crafted prompts could collide and read another request's KV."""
    h = hashlib.sha256(parent or b"")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockAllocator:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))  # unowned, nothing worth keeping
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # published block -> its hash
        self._by_hash: dict[bytes, int] = {}  # and back
        # Published blocks nobody owns, oldest first: still hits, evicted when room is needed.
        self._evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take, cached ones included."""
        return len(self._free) + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Published blocks, owned or not."""
        return len(self._hash_of)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise ResourceExhausted(f"KV cache full: need {n} blocks, {self.num_free} free")
        blocks = []
        for _ in range(n):
            if self._free:  # plain free blocks first: a cached one may still be hit
                b = self._free.popleft()
            else:
                b, _ = self._evictable.popitem(last=False)
                self.unpublish(b)
            self._refs[b] = 1
            blocks.append(b)
        return blocks

    def share(self, blocks: list[int]) -> None:
        """One more owner of each block; an unowned cached block comes back from the evictable set."""
        for b in blocks:
            if self._refs[b] == 0:
                assert b in self._evictable, f"sharing free block {b}"
                del self._evictable[b]
            self._refs[b] += 1

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            assert self._refs[b] > 0, f"double free of block {b}"
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if b in self._hash_of:
                    self._evictable[b] = None  # most recently freed: evicted last
                else:
                    self._free.append(b)

    def lookup(self, h: bytes) -> int | None:
        return self._by_hash.get(h)

    def hash_of(self, block: int) -> bytes | None:
        """The hash a block is published under; None if it is not."""
        return self._hash_of.get(block)

    def publish(self, block: int, h: bytes) -> None:
        """Make an owned, full, computed block findable under h. If another block already holds
        the same content (two sequences prefilled the same prompt together), that one stays."""
        assert self._refs[block] > 0, f"publishing free block {block}"
        if h not in self._by_hash and block not in self._hash_of:
            self._hash_of[block] = h
            self._by_hash[h] = block

    def unpublish(self, block: int) -> None:
        """Forget a block's hash (its content is about to change). The block is owned, or was
        just taken from the evictable set."""
        h = self._hash_of.pop(block, None)
        if h is not None:
            del self._by_hash[h]


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
        """Shrink block_table in place to what num_tokens tokens need (e.g. rejected drafts).

        Dropped blocks keep their published KV (it is still right for its token chain). The last
        kept block is written again if it is now partial, so it must be this sequence's alone and
        unpublished: a shared one is copied first."""
        keep = self.blocks_for(num_tokens)
        if len(block_table) > keep:
            self.allocator.free(block_table[keep:][::-1])
            del block_table[keep:]
        if block_table and num_tokens % self.block_size:
            last = block_table[-1]
            if self.allocator.refs(last) > 1:
                (copy,) = self.allocator.allocate(1)
                src = torch.arange(last * self.block_size, (last + 1) * self.block_size, device=self.k.device)
                dst = src + (copy - last) * self.block_size
                self.k[:, dst] = self.k[:, src]
                self.v[:, dst] = self.v[:, src]
                self.allocator.free([last])
                block_table[-1] = copy
            else:
                self.allocator.unpublish(last)

    def release(self, block_table: list[int]) -> None:
        # Tail first: a cached prompt's later blocks are evicted before the shared head blocks.
        self.allocator.free(block_table[::-1])
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
