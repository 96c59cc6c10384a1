"""Turns one step's logits into one token per sequence.

Order (as in vLLM/HF): repetition penalty -> logits processors (constraints) -> temperature ->
top-k -> top-p -> min-p -> draw. Greedy rows take the argmax after penalty and processors.
Seeded rows draw from their own generator, so a seed reproduces its output whatever else runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ragloom.generation.runner.params import SamplingParams

# (token ids generated so far, logits row [vocab]) -> logits row. Constraint masks plug in here.
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass
class SamplingRow:
    params: SamplingParams
    context_ids: list[int]  # prompt + output, for the repetition penalty
    output_ids: list[int]
    processors: Sequence[LogitsProcessor]
    generator: torch.Generator | None


def apply_repetition_penalty(logits: torch.Tensor, token_ids: list[int], penalty: float) -> None:
    if penalty == 1.0 or not token_ids:
        return
    ids = torch.tensor(sorted(set(token_ids)), device=logits.device)
    seen = logits[ids]
    logits[ids] = torch.where(seen > 0, seen / penalty, seen * penalty)


def filter_top_k_top_p_min_p(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """logits [V] (already temperature-scaled) with the excluded tokens at -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already cover top_p (the first always stays)
        drop = (cum - sorted_logits.softmax(-1)) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return logits


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> list[int]:
    """logits [B, V] float32, one row per sequence -> B token ids."""
    plain_greedy = all(
        r.params.greedy and r.params.repetition_penalty == 1.0 and not r.processors for r in rows
    )
    if plain_greedy:  # the common fast path: one argmax for the whole batch
        return logits.argmax(-1).tolist()
    tokens: list[int] = []
    for row_logits, row in zip(logits, rows):
        p = row.params
        apply_repetition_penalty(row_logits, row.context_ids, p.repetition_penalty)
        for proc in row.processors:
            row_logits = proc(row.output_ids, row_logits)
        if p.greedy:
            tokens.append(int(row_logits.argmax()))
            continue
        row_logits = filter_top_k_top_p_min_p(row_logits / p.temperature, p.top_k, p.top_p, p.min_p)
        probs = row_logits.softmax(-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens
