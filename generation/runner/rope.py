"""Rotary position embeddings with the config's scaling (default, linear, llama3, dynamic)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ragloom.errors import ModelError


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "dynamic":
        # Dynamic NTK grows theta with the context; at or below the original length it is the
        # default, which is the regime served here (max_model_len defaults to the original length).
        return inv
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        low_wavelen, high_wavelen = old_len / low, old_len / high
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        return torch.where(mid, (1 - smooth) * inv / factor + smooth * inv, scaled)
    raise ModelError(f"RoPE scaling {kind!r} is not supported (supported: default, linear, dynamic, llama3)")


class RotaryEmbedding:
    """Precomputed cos/sin tables; apply() rotates q and k at arbitrary positions."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        inv = inverse_frequencies(head_dim, theta, scaling)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv)
        # HF's rotate_half layout: the first and second halves of each head form the pairs. The
        # sine table carries rotate_half's sign (first half negated), so that apply_rotary is a
        # roll and two multiplies: per-op overhead is most of a small model's decode step.
        self.cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(device=device, dtype=dtype)
        self.sin = torch.cat([-angles.sin(), angles.sin()], dim=-1).to(device=device, dtype=dtype)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin for positions [T], shaped [T, 1, head_dim] to broadcast over heads.
        Negating the sine rotates by the opposite angle, as with a plain sine table."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos, sin from RotaryEmbedding.tables. HF's x * cos +
    rotate_half(x) * sin, where rotate_half(x) = cat(-x2, x1) = roll(x, half) with the sign in sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)
