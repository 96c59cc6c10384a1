"""Formats of the live KV cache: dense floats, or int8 / int4 codes quantized per token.

`KVStore` holds one of K or V for every layer, head-major like kv.py's cache:
[layers, kv_heads, slots, head_dim] (codes; int4 packs two a byte), with per-token parameters
[layers, kv_heads, slots, groups] beside them.

- ``float32`` / ``bf16`` / ``fp16``: the values themselves (bf16/fp16 halve float32's bytes).
- ``int8``: symmetric, one scale per token and head: 64 + 4 bytes a head_dim-64 token-head
  instead of 256 in float32 (3.8x the tokens per GiB).
- ``int4``: asymmetric, a scale and a minimum per group of 32 channels of a token and head: 32 +
  16 bytes a token-head (5.3x). The cache's ``int4`` format uses it for values only and keeps
  keys in int8 (4.4x the tokens of float32 per GiB overall): keys quantized per token at 4 bits
  changed the greedy answer of most test prompts.

Quantizing each token on its own, as it is written, keeps every other part of the runner as it
is: a token's codes never change afterwards, so prefix sharing, block copies, rollback and the
blend splice need nothing new. A gathered batch (prefill, batched decode) reads dequantized
copies. Decode over runs reads int8 codes where they lie (`IntRun`): scores come from an int8 x
int8 matmul of the query's own int8 codes with the keys' (`torch._int_mm`, VNNI where the CPU has
it), scaled afterwards; values are weighted by the probabilities times their scales. int4 runs
are dequantized.

Keys have outlier channels (Qwen2's k bias puts a few channels 10-100x above the rest), and a
per-token scale set by them leaves the other channels a few levels. So an integer key store may
*equalize channels*: it quantizes k / c per token, with c a fixed per-layer, per-head, per-channel
scale (`key_channel_scales` in model.py estimates it from the weights), and decodes k as codes *
scale * c. Attention over a run multiplies the query by c instead (q . k = (q * c) . (k / c)),
so the decode path pays one [heads, head_dim] multiply for it. Measured on real prefill keys
(`benchmarks/kv_formats.py`), the relative error of the attention output with int8 keys falls from
0.027 (worst layer 0.24) to 0.015 (0.06) on Qwen2.5-Coder-1.5B.

KIVI instead quantizes keys per channel over groups of tokens, plus a full-precision window for
each sequence's unfinished group. With the cache's 16-token blocks as the groups, its per-channel
scale and minimum cost as many bytes as the 4-bit codes save (int4 keys + float32 parameters = 64
bytes a head_dim-64 token-head, as int8 keys with a per-token scale), and its attention error
(0.042 on Qwen, 0.055 on SmolLM2) is 2.5-3x the equalized int8 keys'. So keys stay int8 here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ragloom.errors import InvalidArgument

KV_DTYPES: tuple[str, ...] = ("auto", "float32", "bf16", "fp16", "int8", "int4")
FLOAT_FORMATS = {"float32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT4_GROUP = 32


def resolve_kv_dtype(kv_dtype: str, dtype: torch.dtype) -> str:
    """`auto` -> the model's own dtype (what attention computes in)."""
    if kv_dtype not in KV_DTYPES:
        raise InvalidArgument(f"unknown kv_dtype {kv_dtype!r}; choose from {', '.join(KV_DTYPES)}")
    if kv_dtype != "auto":
        return kv_dtype
    return {torch.float32: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


class IntRun(NamedTuple):
    """A run of int8 KV as stored: codes [kv_heads, n, head_dim] (a view into the cache) and the
    per-token scale [kv_heads, n, 1]; the values are codes * scale. Decode attention takes runs in
    this form and keeps the scale out of the big tensors (model.attend_runs)."""

    codes: torch.Tensor
    scale: torch.Tensor


class KVStore:
    def __init__(self, fmt: str, num_layers: int, num_kv_heads: int, num_slots: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, channel_scale: torch.Tensor | None = None) -> None:
        """channel_scale [layers, kv_heads, head_dim]: equalize channels (integer formats only; see
        the module docstring)."""
        self.format = fmt
        self.dtype = dtype  # what `load` returns
        # [layers, kv_heads, 1, head_dim], to broadcast over a run's tokens
        self.channel_scale: torch.Tensor | None = None
        if channel_scale is not None and fmt not in FLOAT_FORMATS:
            if tuple(channel_scale.shape) != (num_layers, num_kv_heads, head_dim):
                raise InvalidArgument(f"channel_scale {tuple(channel_scale.shape)} does not fit "
                                      f"[{num_layers}, {num_kv_heads}, {head_dim}]")
            self.channel_scale = channel_scale.to(device, torch.float32).unsqueeze(2).contiguous()
        shape = (num_layers, num_kv_heads, num_slots, head_dim)
        self.scale: torch.Tensor | None = None
        self.zero: torch.Tensor | None = None
        if fmt in FLOAT_FORMATS:
            self.codes = torch.zeros(shape, dtype=FLOAT_FORMATS[fmt], device=device)
        elif fmt == "int8":
            self.codes = torch.zeros(shape, dtype=torch.int8, device=device)
            self.scale = torch.zeros(*shape[:3], 1, device=device)
        elif fmt == "int4":
            if head_dim % INT4_GROUP:
                raise InvalidArgument(f"kv_dtype int4 needs a head_dim divisible by {INT4_GROUP}, not {head_dim}")
            self.codes = torch.zeros(*shape[:3], head_dim // 2, dtype=torch.uint8, device=device)
            self.scale = torch.zeros(*shape[:3], head_dim // INT4_GROUP, device=device)
            self.zero = torch.zeros_like(self.scale)
        else:
            raise InvalidArgument(f"unknown kv format {fmt!r}")

    @property
    def parts(self) -> list[torch.Tensor]:
        """Every tensor indexed by slot along dim 2 (codes, then parameters)."""
        return [t for t in (self.codes, self.scale, self.zero) if t is not None]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts)

    def write(self, layer: int, slots: torch.Tensor, x: torch.Tensor) -> None:
        """Store x [T, kv_heads, head_dim] at slots [T] of one layer."""
        x = x.transpose(0, 1)
        if self.channel_scale is not None:
            x = x.float() / self.channel_scale[layer]
        for part, value in zip(self.parts, self._encode(x)):
            part[layer].index_copy_(1, slots, value)

    def load(self, layer: int, index: slice | torch.Tensor, equalized: bool = False) -> torch.Tensor:
        """Slots `index` (a slice: a view where the format allows; a tensor: gathered) of one
        layer: [kv_heads, n, head_dim] in `dtype`. `equalized`: leave the values divided by the
        channel scale (the caller multiplies its query by `channel_scale[layer]` instead)."""
        if isinstance(index, slice):
            parts = [p[layer, :, index] for p in self.parts]
        else:
            parts = [p[layer].index_select(1, index) for p in self.parts]
        x = self._decode(parts)
        if self.channel_scale is not None and not equalized:
            x = x * self.channel_scale[layer].to(x.dtype)
        return x

    def run(self, layer: int, start: int, length: int) -> torch.Tensor | IntRun:
        """Slots [start, start + length) of one layer for decode attention, without copies where
        the format allows: the stored tensor itself (float formats), an IntRun (int8; keys stay
        divided by the channel scale), else dequantized."""
        index = slice(start, start + length)
        if self.format == "int8":
            assert self.scale is not None
            return IntRun(self.codes[layer, :, index], self.scale[layer, :, index])
        return self.load(layer, index, equalized=True)

    def copy_slots(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        for part in self.parts:
            part[:, :, dst] = part[:, :, src]

    # ---- formats ---------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[heads, T, d] values -> the parts' contents for those slots."""
        if self.format in FLOAT_FORMATS:
            return [x.to(self.codes.dtype)]
        x = x.float()
        if self.format == "int8":  # few ops: this runs for every layer at every decode step
            scale = torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True).div_(127).clamp_min_(1e-12)
            return [torch.div(x, scale).round_().to(torch.int8), scale]  # |x / scale| <= 127 by construction
        g = x.unflatten(-1, (-1, INT4_GROUP))  # [heads, T, groups, 32]
        lo, hi = g.amin(-1), g.amax(-1)
        scale = (hi - lo) / 15
        q = ((g - lo.unsqueeze(-1)) / scale.clamp_min(1e-12).unsqueeze(-1)).round_().clamp_(0, 15).to(torch.uint8)
        packed = q[..., : INT4_GROUP // 2] | (q[..., INT4_GROUP // 2 :] << 4)  # element i and i + 16 of a group
        return [packed.flatten(-2), scale, lo]

    def _decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        codes = parts[0]
        if self.format in FLOAT_FORMATS:
            return codes.to(self.dtype)
        # int codes times float32 parameters: one pass, promoting as it goes (half the time of
        # converting the codes first).
        if self.format == "int8":
            return torch.mul(codes, parts[1]).to(self.dtype)
        b = codes.unflatten(-1, (-1, INT4_GROUP // 2))
        q = torch.cat([b & 15, b >> 4], -1)  # [heads, n, groups, 32]
        return torch.mul(q, parts[1].unsqueeze(-1)).add_(parts[2].unsqueeze(-1)).flatten(-2).to(self.dtype)
