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
blend splice need nothing new. (KIVI quantizes keys per channel over groups of tokens, which suits
keys' outlier channels better at 2-4 bits, but needs a full-precision window for each sequence's
unfinished group; not done.) Attention reads dequantized copies: a gathered batch, or a run.
"""

from __future__ import annotations

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


class KVStore:
    def __init__(self, fmt: str, num_layers: int, num_kv_heads: int, num_slots: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.format = fmt
        self.dtype = dtype  # what `load` returns
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
        for part, value in zip(self.parts, self._encode(x.transpose(0, 1))):
            part[layer].index_copy_(1, slots, value)

    def load(self, layer: int, index: slice | torch.Tensor) -> torch.Tensor:
        """Slots `index` (a slice: a view where the format allows; a tensor: gathered) of one
        layer: [kv_heads, n, head_dim] in `dtype`."""
        if isinstance(index, slice):
            parts = [p[layer, :, index] for p in self.parts]
        else:
            parts = [p[layer].index_select(1, index) for p in self.parts]
        return self._decode(parts)

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
