"""One forward step's layout: which tokens run, where their KV goes, what each query may see.

Linear layers run on the flat list of new tokens [T] of all sequences. Attention runs per
*group* of sequences:

- decode (one new token each): each sequence's keys are read in place from the paged cache, run
  by run of consecutive blocks (`runs`), with no copy; or, for many short sequences, where one
  batched kernel beats a loop over sequences, gathered into a padded [B, Lk] grid;
- prefill (several new tokens each, chunks included): a padded [B, Lq] x [B, Lk] grid gathered
  from the cache with a causal mask; a prompt's queries amortize the copy;
- verify (speculative decoding: a sequence's last token and a draft tree, speculative/tree.py):
  each sequence's queries together over its keys in place, the draft rows masked to their
  ancestors.

A step may mix both (chunked prefill runs prompt chunks beside decodes). Everything here is
computed once per step and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ragloom.generation.runner.kv import KVCache
from ragloom.generation.runner.speculative.tree import DraftTree

# Decode reads keys in place (a loop over sequences, a few small matmuls each) when the batch is a
# single sequence, or when the mean context is long enough that copying it costs more than the
# loop; else gathers. A table with more runs than MAX_RUNS (a fragmented cache) is gathered too.
IN_PLACE_MIN_CONTEXT = 512
MAX_RUNS = 8
# A sequence's last run is read up to a multiple of KEY_TILE slots (within its last block; the keys
# past its end are masked): CPU matmul rounds a score the same whatever the number of keys beyond
# it only when that number is a multiple of its 16-column tile, so a decode and a verify row over
# the same keys (verify reads a few more) get bit-identical scores (model.attend_runs).
KEY_TILE = 16


def may_attend(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """Which keys each query may see (bool, broadcast of the two position tensors): causal, and
    within the sliding window when the model has one. The one rule for the runner's steps and
    for blending (cache/blend.py)."""
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= q_pos - k_pos < sliding_window
    return mask


@dataclass
class AttentionGroup:
    """Sequences attended together, and how their keys are read."""

    rows: torch.Tensor | None  # [t] rows of T holding this group's queries; None: all of T, in order
    batch_size: int
    max_query_len: int
    q_index: torch.Tensor | None  # [t] row of each query in the padded [B * Lq] grid; None: Lq == 1
    gather_slots: torch.Tensor | None  # [B, Lk] slots to gather (padding -> any slot); None: in place
    mask: torch.Tensor | None  # [B, 1, Lq, Lk] bool, True = may attend; None: every query sees every key
    runs: list[list[tuple[int, int]]] | None  # per sequence, (first slot, length) read in place
    keys: list[int] | None = None  # in place: per sequence, how many of its runs' slots are its keys
    # verify, in place: per sequence, which of its new rows each of them sees ([n, n] bool)
    visible: list[torch.Tensor] | None = None


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] new tokens of all sequences, concatenated
    positions: torch.Tensor  # [T] their positions in their sequences
    slot_mapping: torch.Tensor  # [T] flat KV slot each new token is written to
    groups: list[AttentionGroup]
    logits_indices: torch.Tensor  # [N] indices into T whose logits are wanted

    @classmethod
    def build(
        cls,
        new_tokens: list[list[int]],  # per sequence: the tokens to run
        starts: list[int],  # per sequence: position of its first new token (= tokens already cached)
        block_tables: list[list[int]],  # per sequence: blocks holding positions [0, start + len(new))
        kv: KVCache,
        logits_per_seq: list[int],  # per sequence: how many trailing positions need logits (0: none)
        sliding_window: int | None = None,
        verify: list[DraftTree | None] | None = None,  # per sequence: the draft its new tokens end with
    ) -> ForwardBatch:
        """`verify` marks speculative verification: such a sequence's new tokens are its last token
        and then the draft tree's nodes, each at the position of its depth and attending its
        ancestors (siblings share a position)."""
        device = kv.k.device
        q_lens = [len(t) for t in new_tokens]
        offsets = [0]
        for n in q_lens:
            offsets.append(offsets[-1] + n)
        trees = verify or [None] * len(q_lens)

        input_ids = [t for toks in new_tokens for t in toks]
        positions = [p for s, n, tree in zip(starts, q_lens, trees)
                     for p in (range(s, s + n) if tree is None else [s] + [s + d for d in tree.depths])]
        slot_mapping = torch.cat([kv.slot_tensor(bt, s, s + n) for bt, s, n in zip(block_tables, starts, q_lens)])
        logits_indices = [i for off, n, want in zip(offsets[1:], q_lens, logits_per_seq) for i in range(off - want, off)]

        decode = [b for b, n in enumerate(q_lens) if n == 1 and trees[b] is None]
        verifying = [b for b, tree in enumerate(trees) if tree is not None]
        prefill = [b for b, n in enumerate(q_lens) if n > 1 and trees[b] is None]
        groups = []
        for members, build in ((decode, _decode_group), (verifying, _verify_group), (prefill, _prefill_group)):
            if members:
                group = build([starts[b] for b in members], [q_lens[b] for b in members],
                              [block_tables[b] for b in members], kv, sliding_window,
                              [trees[b] for b in members])
                if len(members) < len(q_lens):
                    rows = [r for b in members for r in range(offsets[b], offsets[b + 1])]
                    group.rows = _long(rows, device)
                groups.append(group)

        return cls(
            input_ids=_long(input_ids, device),
            positions=_long(positions, device),
            slot_mapping=slot_mapping,
            groups=groups,
            logits_indices=_long(logits_indices, device),
        )


def _long(x: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.long).to(device, non_blocking=True)


def _first_key(kv_len: int, sliding_window: int | None) -> int:
    return 0 if sliding_window is None else max(0, kv_len - sliding_window)


def _decode_group(starts: list[int], q_lens: list[int], tables: list[list[int]], kv: KVCache,
                  sliding_window: int | None, trees: list[DraftTree | None]) -> AttentionGroup:
    kv_lens = [s + 1 for s in starts]
    firsts = [_first_key(n, sliding_window) for n in kv_lens]
    if len(starts) == 1 or sum(n - f for n, f in zip(kv_lens, firsts)) >= IN_PLACE_MIN_CONTEXT * len(starts):
        runs = [_tiled_runs(kv, t, f, n) for t, f, n in zip(tables, firsts, kv_lens)]
        if all(len(r) <= MAX_RUNS for r in runs):
            return AttentionGroup(None, len(starts), 1, None, None, None, runs,
                                  [n - f for n, f in zip(kv_lens, firsts)])
    return _gathered(starts, q_lens, tables, kv, sliding_window)


def _verify_group(starts: list[int], q_lens: list[int], tables: list[list[int]], kv: KVCache,
                  sliding_window: int | None, trees: list[DraftTree | None]) -> AttentionGroup:
    """Each sequence's root and draft rows as one multi-query attention over its keys in place."""
    visible = []
    for s, n, tree in zip(starts, q_lens, trees):
        assert tree is not None and n == 1 + len(tree)
        if sliding_window is not None and s + n > sliding_window:
            raise ValueError("a draft must not reach past the sliding window (the engine does not draft there)")
        visible.append(tree.visible().to(kv.k.device, non_blocking=True))
    runs = [_tiled_runs(kv, t, 0, s + n) for t, s, n in zip(tables, starts, q_lens)]
    if all(len(r) <= MAX_RUNS for r in runs):
        return AttentionGroup(None, len(starts), max(q_lens), None, None, None, runs,
                              [s + n for s, n in zip(starts, q_lens)], visible)
    return _gathered(starts, q_lens, tables, kv, sliding_window, visible)


def _tiled_runs(kv: KVCache, table: list[int], first: int, end: int) -> list[tuple[int, int]]:
    """kv.runs of positions [first, end), the last run lengthened to a multiple of KEY_TILE where
    its last block has the slots (see KEY_TILE)."""
    runs = kv.runs(table, first, end)
    slot, n = runs[-1]
    tiled = -(-n // KEY_TILE) * KEY_TILE
    block_end = ((slot + n - 1) // kv.block_size + 1) * kv.block_size
    if slot + tiled <= block_end:
        runs[-1] = (slot, tiled)
    return runs


def _prefill_group(starts: list[int], q_lens: list[int], tables: list[list[int]], kv: KVCache,
                   sliding_window: int | None, trees: list[DraftTree | None]) -> AttentionGroup:
    return _gathered(starts, q_lens, tables, kv, sliding_window)


def _gathered(starts: list[int], q_lens: list[int], tables: list[list[int]], kv: KVCache,
              sliding_window: int | None, visible: list[torch.Tensor] | None = None) -> AttentionGroup:
    """`visible`: per sequence, which of its new rows each new row sees (draft trees) instead of
    the causal rule among them."""
    device = kv.k.device
    batch = len(starts)
    kv_lens = [s + n for s, n in zip(starts, q_lens)]
    lq, lk = max(q_lens), max(kv_lens)
    slots = torch.zeros(batch, lk, dtype=torch.long, device=device)  # padding reads slot 0, masked
    for b, (table, n) in enumerate(zip(tables, kv_lens)):
        slots[b, :n] = kv.slot_tensor(table, 0, n)
    q_index = [b * lq + i for b, n in enumerate(q_lens) for i in range(n)]

    # Query i of sequence b sits at position starts[b] + i; padded query rows get position 0
    # so their softmax stays finite (they are dropped afterwards).
    q_pos = torch.zeros(batch, lq, dtype=torch.long)
    for b, (s, n) in enumerate(zip(starts, q_lens)):
        q_pos[b, :n] = torch.arange(s, s + n)
    k_pos = torch.arange(lk)
    mask = may_attend(q_pos.unsqueeze(-1), k_pos.view(1, 1, lk), sliding_window)
    mask &= k_pos.view(1, 1, lk) < torch.tensor(kv_lens).view(batch, 1, 1)
    for b, (s, n, vis) in enumerate(zip(starts, q_lens, visible or [])):
        mask[b, :n, s : s + n] = vis.cpu()
    return AttentionGroup(
        rows=None,
        batch_size=batch,
        max_query_len=lq,
        q_index=None if lq == 1 else _long(q_index, device),
        gather_slots=slots,
        # A lone sequence's decode step sees all its keys: SDPA without a mask is faster.
        mask=None if lq == 1 and bool(mask.all()) else mask.unsqueeze(1).to(device, non_blocking=True),
        runs=None,
    )
