"""One forward step's layout: which tokens run, where their KV goes, what each query may see.

Linear layers run on the flat list of new tokens [T]; attention runs per sequence on a padded
[B, Lq] x [B, Lk] grid gathered from the paged cache. Everything here is computed once per step
and shared by all layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def may_attend(q_pos: torch.Tensor, k_pos: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """Which keys each query may see (bool, broadcast of the two position tensors): causal, and
    within the sliding window when the model has one. The one rule for the runner's steps and
    for blending (cache/blend.py)."""
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= q_pos - k_pos < sliding_window
    return mask


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor  # [T] new tokens of all sequences, concatenated
    positions: torch.Tensor  # [T] their positions in their sequences
    slot_mapping: torch.Tensor  # [T] flat KV slot each new token is written to
    q_index: torch.Tensor | None  # [T] row of each new token in the padded [B * Lq] grid; None: Lq == 1
    gather_slots: torch.Tensor  # [B, Lk] KV slots each sequence attends over (padding -> any slot)
    mask: torch.Tensor | None  # [B, 1, Lq, Lk] bool, True = may attend; None: every query sees every key
    logits_indices: torch.Tensor  # [N] indices into T whose logits are wanted
    batch_size: int
    max_query_len: int

    @classmethod
    def build(
        cls,
        new_tokens: list[list[int]],  # per sequence: the tokens to run
        starts: list[int],  # per sequence: position of its first new token (= tokens already cached)
        slots: list[list[int]],  # per sequence: KV slots of positions [0, start + len(new))
        logits_per_seq: list[int],  # per sequence: how many trailing positions need logits
        device: torch.device,
        sliding_window: int | None = None,
    ) -> ForwardBatch:
        batch = len(new_tokens)
        q_lens = [len(t) for t in new_tokens]
        kv_lens = [s + n for s, n in zip(starts, q_lens)]
        lq, lk = max(q_lens), max(kv_lens)

        input_ids = [t for toks in new_tokens for t in toks]
        positions = [p for s, n in zip(starts, q_lens) for p in range(s, s + n)]
        slot_mapping = [sl for s, n, seq_slots in zip(starts, q_lens, slots) for sl in seq_slots[s : s + n]]
        gather = [seq_slots + [0] * (lk - len(seq_slots)) for seq_slots in slots]
        q_index = [b * lq + i for b, n in enumerate(q_lens) for i in range(n)]
        logits_indices: list[int] = []
        offset = 0
        for n, want in zip(q_lens, logits_per_seq):
            logits_indices += range(offset + n - want, offset + n)
            offset += n

        # Query i of sequence b sits at position starts[b] + i; padded query rows get position 0
        # so their softmax stays finite (they are dropped afterwards).
        q_pos = torch.zeros(batch, lq, dtype=torch.long)
        for b, (s, n) in enumerate(zip(starts, q_lens)):
            q_pos[b, :n] = torch.arange(s, s + n)
        k_pos = torch.arange(lk)
        mask = may_attend(q_pos.unsqueeze(-1), k_pos.view(1, 1, lk), sliding_window)
        mask &= k_pos.view(1, 1, lk) < torch.tensor(kv_lens).view(batch, 1, 1)

        def t(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.long).to(device, non_blocking=True)

        return cls(
            input_ids=t(input_ids),
            positions=t(positions),
            slot_mapping=t(slot_mapping),
            q_index=None if lq == 1 else t(q_index),
            gather_slots=torch.tensor(gather, dtype=torch.long).to(device, non_blocking=True),
            # A lone sequence's decode step sees all its keys: SDPA without a mask is faster.
            mask=None if lq == 1 and bool(mask.all()) else mask.unsqueeze(1).to(device, non_blocking=True),
            logits_indices=t(logits_indices),
            batch_size=batch,
            max_query_len=lq,
        )
