from __future__ import annotations

import pytest
import torch

from ragloom.errors import InvalidArgument
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.sampler import SamplingRow, filter_top_k_top_p_min_p, sample


def row(params: SamplingParams, context=(), processors=(), seed: int | None = None) -> SamplingRow:
    gen = None
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
    return SamplingRow(params, list(context), [], list(processors), gen)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert sample(logits, [row(SamplingParams(temperature=0))] * 2) == [1, 0]


def test_top_k_keeps_k_best():
    out = filter_top_k_top_p_min_p(torch.tensor([1.0, 4.0, 3.0, 2.0]), top_k=2, top_p=1.0, min_p=0.0)
    assert torch.isinf(out[[0, 3]]).all() and torch.isfinite(out[[1, 2]]).all()


def test_top_p_keeps_smallest_covering_set():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = filter_top_k_top_p_min_p(probs.log(), top_k=0, top_p=0.75, min_p=0.0)
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()


def test_min_p_drops_unlikely():
    probs = torch.tensor([0.6, 0.3, 0.1])
    out = filter_top_k_top_p_min_p(probs.log(), top_k=0, top_p=1.0, min_p=0.25)
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2])


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    p = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sample(logits.clone(), [row(p, context=[0])]) == [1]


def test_logits_processor_masks():
    def only_two(_ids, logits):
        mask = torch.full_like(logits, float("-inf"))
        mask[2] = 0
        return logits + mask

    logits = torch.tensor([[5.0, 4.0, -3.0]])
    assert sample(logits, [row(SamplingParams(temperature=0), processors=[only_two])]) == [2]
    assert sample(logits, [row(SamplingParams(temperature=1.0), processors=[only_two], seed=0)]) == [2]


def test_seed_reproduces_and_differs():
    logits = torch.randn(1, 1000, generator=torch.Generator().manual_seed(1))
    p = SamplingParams(temperature=1.0)
    draws = lambda seed: [sample(logits.clone(), [r])[0] for r in [row(p, seed=seed)] for _ in range(20)]  # noqa: E731
    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"stop_token_ids": [10**9]}, "stop_token_ids"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(InvalidArgument, match=field):
        SamplingParams(**kwargs).validate(vocab_size=1000)
