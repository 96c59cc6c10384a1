"""The KV cache the runner owns: per-layer tensors cut into fixed-size blocks.

Storage is one tensor per K and V shaped [layers, kv_heads, num_blocks * block_size, head_dim],
so a token's KV lives at a flat *slot* (block * block_size + offset) in every layer and head.
Head-major, because a run of consecutive blocks is then, for each head, one contiguous [tokens,
head_dim] matrix: decode attends over it in place (`view`), with no per-step copy, and matmul
reads it at full speed (1.5x faster than the same view of a token-major layout, measured).
The allocator hands out consecutive blocks where it can so that a sequence's KV is a few runs.

Sequences own lists of blocks (block tables); blocks are reference-counted so that several
sequences can share them, and a sequence can be truncated (speculative rollback).

Prefix caching (as vLLM's automatic prefix caching and nano-vllm): a full block whose KV is
computed is *published* under the hash of its token chain (`block_hash`). A published block whose
last owner frees it keeps its KV and stays findable; it is evicted, least recently freed first,
only when an allocation needs the room. Published blocks are immutable: only full blocks are
published and a sequence writes only into its own last, partial block.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

import torch

from ragloom.errors import ResourceExhausted
from ragloom.generation.runner.kv_quant import IntRun, KVStore, resolve_kv_dtype


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
        # Unowned blocks holding nothing worth keeping, as a byte map (1 = free): finding a run of
        # n consecutive free blocks is one bytes.find.
        self._free_map = bytearray(b"\x01") * num_blocks
        self._num_plain_free = num_blocks
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # published block -> its hash
        self._by_hash: dict[bytes, int] = {}  # and back
        # Published blocks nobody owns, oldest first: still hits, evicted when room is needed.
        self._evictable: OrderedDict[int, None] = OrderedDict()

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take, cached ones included."""
        return self._num_plain_free + len(self._evictable)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        """Published blocks, owned or not."""
        return len(self._hash_of)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def allocate(self, n: int, after: int | None = None, room: int = 0) -> list[int]:
        """n blocks, consecutive where possible: right after block `after` (a sequence growing),
        else a free run with `room` free blocks on both sides for this and the preceding sequence
        to grow into. Plain free blocks before cached ones, which may still be hit."""
        if n > self.num_free:
            raise ResourceExhausted(f"KV cache full: need {n} blocks, {self.num_free} free")
        blocks: list[int] = []
        if after is not None:
            b = after + 1
            while len(blocks) < n and b < self.num_blocks and self._free_map[b]:
                blocks.append(self._take(b))
                b += 1
        need = n - len(blocks)
        if need:
            start = self._free_map.find(b"\x01" * (room + need + room))
            start = start + room if start >= 0 else self._free_map.find(b"\x01" * need)
            if start >= 0:
                blocks += [self._take(b) for b in range(start, start + need)]
        while len(blocks) < n:
            if self._num_plain_free:
                blocks.append(self._take(self._free_map.find(b"\x01")))
            else:
                b, _ = self._evictable.popitem(last=False)
                self.unpublish(b)
                self._refs[b] = 1
                blocks.append(b)
        return blocks

    def _take(self, block: int) -> int:
        self._free_map[block] = 0
        self._num_plain_free -= 1
        self._refs[block] = 1
        return block

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
                    self._free_map[b] = 1
                    self._num_plain_free += 1

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
                 head_dim: int, dtype: torch.dtype, device: torch.device, kv_dtype: str = "auto",
                 key_channel_scale: torch.Tensor | None = None) -> None:
        """dtype: what attention computes in (the model's); kv_dtype: how KV is stored
        (kv_quant.py; auto = dtype); key_channel_scale [layers, kv_heads, head_dim]: equalizes
        the channels of integer keys (kv_quant.py; model.key_channel_scales)."""
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.format = resolve_kv_dtype(kv_dtype, dtype)
        shape = (num_layers, num_kv_heads, num_blocks * block_size, head_dim)
        # int4 stores values in 4 bits and keys in 8: keys quantized per token lose too much at
        # 4 bits (their outlier channels; KIVI quantizes them per channel instead), and greedy
        # answers changed on most prompts in our test.
        self.keys = KVStore("int8" if self.format == "int4" else self.format, *shape, dtype, device,
                            key_channel_scale)
        self.values = KVStore(self.format, *shape, dtype, device)
        self.allocator = BlockAllocator(num_blocks)

    @property
    def k(self) -> torch.Tensor:
        """The stored keys [layers, kv_heads, slots, head_dim] (codes, for a quantized format)."""
        return self.keys.codes

    @property
    def v(self) -> torch.Tensor:
        return self.values.codes

    @property
    def bytes(self) -> int:
        return self.keys.bytes + self.values.bytes

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / (self.num_blocks * self.block_size)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def reserve(self, block_table: list[int], num_tokens: int, room: int = 0) -> None:
        """Grow block_table in place so it holds num_tokens tokens, contiguously where it can;
        `room`: tokens the sequence may still grow by (kept free after a new run if possible)."""
        missing = self.blocks_for(num_tokens) - len(block_table)
        if missing > 0:
            after = block_table[-1] if block_table else None
            block_table.extend(self.allocator.allocate(missing, after, self.blocks_for(room)))

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
                self.copy_slots(dst, src)
                self.allocator.free([last])
                block_table[-1] = copy
            else:
                self.allocator.unpublish(last)

    def copy_slots(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """K and V of slots src -> slots dst, in every layer."""
        self.keys.copy_slots(dst, src)
        self.values.copy_slots(dst, src)

    def release(self, block_table: list[int]) -> None:
        # Tail first: a cached prompt's later blocks are evicted before the shared head blocks.
        self.allocator.free(block_table[::-1])
        block_table.clear()

    def slot_tensor(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        """Flat slot ids (block * block_size + offset) of token positions [start, end) of a
        sequence, on the cache's device."""
        bs = self.block_size
        table = torch.tensor(block_table[start // bs : -(-end // bs)], dtype=torch.long)
        flat = (table.view(-1, 1) * bs + torch.arange(bs)).view(-1)
        first = (start // bs) * bs
        return flat[start - first : end - first].to(self.k.device, non_blocking=True)

    def runs(self, block_table: list[int], start: int, end: int) -> list[tuple[int, int]]:
        """Token positions [start, end) of a sequence as runs of consecutive slots: (first slot,
        length) each. Consecutive blocks make one run."""
        bs = self.block_size
        out: list[tuple[int, int]] = []
        pos = start
        while pos < end:
            i = pos // bs
            j = i + 1
            while j * bs < end and block_table[j] == block_table[j - 1] + 1:
                j += 1
            stop = min(j * bs, end)
            out.append((block_table[i] * bs + pos % bs, stop - pos))
            pos = stop
        return out

    def view(self, layer: int, slot: int, length: int) -> tuple[torch.Tensor | IntRun, torch.Tensor | IntRun]:
        """K and V of a run of slots, [kv_heads, length, head_dim] each, for decode attention: in
        place (no copy) when stored in the model's dtype or as int8 (IntRun: codes and scales),
        else dequantized. Keys come divided by `key_scale(layer)` where the store equalizes
        channels: multiply the query by it."""
        return self.keys.run(layer, slot, length), self.values.run(layer, slot, length)

    def key_scale(self, layer: int) -> torch.Tensor | None:
        """[kv_heads, 1, head_dim] by which `view`'s keys are divided, or None."""
        scale = self.keys.channel_scale
        return None if scale is None else scale[layer]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [T, kv_heads, head_dim] at slots [T] of one layer."""
        self.keys.write(layer, slots, k)
        self.values.write(layer, slots, v)

    def write_layers(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v [layers, T, kv_heads, head_dim] at slots [T] of every layer."""
        for layer in range(k.shape[0]):
            self.write(layer, slots, k[layer], v[layer])

    def read(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of every layer at slots [T]: [layers, T, kv_heads, head_dim] each (a copy)."""
        layers = range(self.k.shape[0])
        k = torch.stack([self.keys.load(layer, slots) for layer in layers])
        v = torch.stack([self.values.load(layer, slots) for layer in layers])
        return k.transpose(1, 2), v.transpose(1, 2)

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V at slots [B, L] -> [B, L, kv_heads, head_dim] each (a copy; a strided view of
        a [B, kv_heads, L, head_dim] tensor, which is what attention wants)."""
        flat = slots.reshape(-1)
        k, v = self.keys.load(layer, flat), self.values.load(layer, flat)
        heads, dim = k.shape[0], k.shape[2]
        return (k.view(heads, *slots.shape, dim).permute(1, 2, 0, 3),
                v.view(heads, *slots.shape, dim).permute(1, 2, 0, 3))
