"""Weight formats and their matmul kernels: GGUF blocks -> int4 / int8 packed weights, per device.

A linear's weight is stored in one of four formats, device-independent (this is what the model
cache holds):

- ``float32`` / ``bf16``: ``weight`` [N, K], dense.
- ``int8``: ``qweight`` int8 [N, K] and ``scale`` [N] (symmetric, per output channel).
- ``int4``: ``qweight`` uint8 [N, K/2] (two codes a byte, the even column in the low nibble),
  ``scale`` and ``zero`` [N, K/g] float32, one pair per group of g input columns; the value of
  code q is ``(q - 8) * scale + zero``, the convention of torch's int4 kernels (tinygemm).

GGUF Q4_0, Q4_1 and Q4_K blocks are 32-column groups of 4-bit codes with a scale and an offset,
so they map onto that int4 layout *exactly* (no requantization); the other GGUF types have more
bits than int4 and no per-group int8 kernel exists, so they are requantized from the dequantized
tensor (int8 per channel, or int4 groups of 32) and carry a small error (tests/unit/test_quant.py
reports it).

`QuantLinear` packs a stored weight for the device's kernel once, at load time:
CPU int4 -> ``_weight_int4pack_mm_for_cpu``; CUDA int4 -> tinygemm ``_weight_int4pack_mm`` (its own
packing, with inner k-tiles); CPU int8 -> ``_weight_int8pack_mm``; CUDA int8 -> dequantizing
matmul. The int kernels run with bf16 activations, on every CPU: with float32 or fp16 activations
they are 10-100x slower than float32 ``F.linear``, with bf16 they beat it at decode sizes both on
an AVX-512-bf16 CPU (3-8x at batch 1) and on an AVX2 CPU without native bf16 (1.2-3x at batch 1-8).

Large batches (prefill) are another matter: there the int kernels lose to a dense matmul (2x on
AVX2 at 128+ rows, 1.6x on AVX-512 bf16 for a 1,500-token prompt), so on CPU a linear given
`DENSE_ROWS` rows or more dequantizes its weight for that call and runs ``F.linear`` in
`dense_dtype()` (bf16 where the CPU has it natively, float32 otherwise). Below BLOCKED_ROWS_MAX
rows the weight is dequantized a cache-sized block of rows at a time beside its matmul (whole, it
cost as much as the matmul on short prompts); the weight never stays resident in dense form.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ragloom.errors import InvalidArgument, ModelError

Format = Literal["float32", "bf16", "int8", "int4"]
FORMATS: tuple[str, ...] = ("float32", "bf16", "int8", "int4")
GROUP_SIZE = 32  # GGUF's 4-bit blocks (Q4_0, Q4_1) and Q4_K's sub-blocks are 32 columns wide

# GGML type ids (gguf.GGMLQuantizationType) of the 4-bit blocks that map exactly onto int4 groups.
Q4_0, Q4_1, Q4_K = 2, 3, 12
EXACT_INT4_TYPES = frozenset({Q4_0, Q4_1, Q4_K})


# ---- GGUF blocks -> int4 groups (exact) ---------------------------------------------------------


@dataclass
class Int4Groups:
    """4-bit codes [N, K] (0..15) with float32 scale and zero [N, K/32]: value = (q-8)*scale + zero."""

    codes: np.ndarray
    scale: np.ndarray
    zero: np.ndarray


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[..., 16] bytes -> [..., 32] codes: low nibbles are elements 0-15, high nibbles 16-31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def gguf_int4_groups(raw: np.ndarray, ggml_type: int, cols: int) -> Int4Groups:
    """The exact int4 groups of a Q4_0 / Q4_1 / Q4_K tensor given as raw bytes [N, bytes per row]."""
    n = raw.shape[0]
    if ggml_type == Q4_0:  # 18 bytes: d, 16 bytes of codes; value = d * (q - 8)
        b = raw.reshape(n, cols // 32, 18)
        d = _f16(b[..., :2])[..., 0]
        codes = _nibbles(b[..., 2:])
        scale, zero = d, np.zeros_like(d)
    elif ggml_type == Q4_1:  # 20 bytes: d, m, codes; value = d * q + m = (q - 8) * d + (m + 8d)
        b = raw.reshape(n, cols // 32, 20)
        d, m = _f16(b[..., 0:2])[..., 0], _f16(b[..., 2:4])[..., 0]
        codes = _nibbles(b[..., 4:])
        scale, zero = d, m + 8 * d
    elif ggml_type == Q4_K:
        # 144 bytes per 256 columns: d, dmin, 12 bytes of 6-bit (sc, m) pairs for 8 sub-blocks,
        # 128 bytes of codes (each 32-byte run holds sub-block 2j in low and 2j+1 in high nibbles).
        # value = d*sc*q - dmin*m = (q - 8) * (d*sc) + (8*d*sc - dmin*m)
        b = raw.reshape(n, cols // 256, 144)
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])  # [n, blocks, 1]
        s = b[..., 4:16].astype(np.uint8)
        lo, hi, mix = s[..., 0:4], s[..., 4:8], s[..., 8:12]
        sc = np.concatenate([lo & 0x3F, (mix & 0x0F) | ((lo >> 2) & 0x30)], axis=-1).astype(np.float32)
        mn = np.concatenate([hi & 0x3F, (mix >> 4) | ((hi >> 2) & 0x30)], axis=-1).astype(np.float32)
        qs = b[..., 16:].reshape(n, cols // 256, 4, 32)
        codes = np.stack([qs & 0x0F, qs >> 4], axis=3)  # [n, blocks, 4, 2, 32]: sub-block 2j+h
        scale = (d * sc).reshape(n, -1)
        zero = (8 * d * sc - dmin * mn).reshape(n, -1)
    else:
        raise ModelError(f"GGML type {ggml_type} has no exact int4 mapping (only Q4_0, Q4_1, Q4_K)")
    return Int4Groups(codes.reshape(n, cols).astype(np.uint8), scale.reshape(n, -1), zero.reshape(n, -1))


# ---- requantization from a dequantized tensor ---------------------------------------------------


def requantize_int4(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> Int4Groups:
    """Asymmetric min/max 4-bit groups of a float weight [N, K] (for GGUF types wider than 4 bits)."""
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    codes = ((w - lo) / scale).round().clamp(0, 15)
    zero = lo + 8 * scale
    return Int4Groups(
        codes.reshape(n, k).to(torch.uint8).numpy(), scale[..., 0].numpy(), zero[..., 0].numpy()
    )


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 [N, K], float32 scale [N])."""
    w = weight.detach().float()
    scale = (w.abs().amax(-1) / 127).clamp_min(1e-12)
    return (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def int4_state(groups: Int4Groups) -> dict[str, torch.Tensor]:
    """Stored int4 tensors (see the module docstring) from groups."""
    codes = groups.codes
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return {
        "qweight": torch.from_numpy(np.ascontiguousarray(packed, dtype=np.uint8)),
        "scale": torch.from_numpy(np.ascontiguousarray(groups.scale, dtype=np.float32)),
        "zero": torch.from_numpy(np.ascontiguousarray(groups.zero, dtype=np.float32)),
    }


def unpack_int4(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The codes [N, K] (int32, 0..15) of stored int4 tensors."""
    q = state["qweight"]
    return torch.stack([q & 0x0F, q >> 4], dim=-1).reshape(q.shape[0], -1).to(torch.int32)


def dequantize_state(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The float32 weight [N, K] a stored weight stands for (what every kernel approximates)."""
    if "weight" in state:
        return state["weight"].float()
    if "zero" in state:
        codes = unpack_int4(state).float()
        n, k = codes.shape
        g = k // state["scale"].shape[1]
        w = (codes.view(n, -1, g) - 8) * state["scale"].float()[..., None] + state["zero"].float()[..., None]
        return w.reshape(n, k)
    return state["qweight"].float() * state["scale"].float()[:, None]


def stored_format(state: dict[str, torch.Tensor]) -> Format:
    if "zero" in state:
        return "int4"
    if "qweight" in state:
        return "int8"
    return "bf16" if state["weight"].dtype == torch.bfloat16 else "float32"


def convert(weight: torch.Tensor | None, fmt: Format, groups: Int4Groups | None = None) -> dict[str, torch.Tensor]:
    """A weight in `fmt`. `groups` are exact int4 groups (from GGUF Q4 blocks) used as-is for int4;
    without them int4 is requantized from `weight`."""
    if fmt == "int4":
        if groups is None:
            if weight is None:
                raise ModelError("int4 conversion needs the weight or its groups")
            groups = requantize_int4(weight)
        return int4_state(groups)
    if weight is None:
        raise ModelError(f"{fmt} conversion needs the dequantized weight")
    if fmt == "int8":
        q, s = quantize_int8(weight)
        return {"qweight": q, "scale": s}
    return {"weight": weight.detach().to(torch.bfloat16 if fmt == "bf16" else torch.float32).contiguous()}


# ---- kernels per device ------------------------------------------------------------------------


@functools.cache
def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 / AMX). Only dense matmuls care: bf16
    ``F.linear`` beats float32 with it and is 4-7x slower than float32 without it. oneDNN's own
    probe (``mkldnn._is_mkldnn_bf16_supported``) also answers yes on plain AVX-512, where bf16 is
    emulated: on such a Xeon a 512-row prefill linear ran at 55 GFLOP/s in bf16 and 233 in float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, p)()) for p in probes if hasattr(torch.cpu, p))
    except RuntimeError:
        return False


def dense_dtype() -> torch.dtype:
    """The dtype of a CPU linear's dequantized large-batch (prefill) path."""
    return torch.bfloat16 if cpu_bf16_supported() else torch.float32


# Rows from which a CPU int linear dequantizes and runs dense (see the module docstring).
DENSE_ROWS = 128
# Weight elements dequantized per block of the dense path (QuantLinear.dense_matmul): 2 MB of
# float32, which stays in cache between the dequantization and its matmul.
DEQUANT_BLOCK = 1 << 19
BLOCKED_ROWS_MAX = 384


@dataclass(frozen=True)
class Kernel:
    """How a stored format runs on a device: the kernel and the dtype its activations take."""

    name: Literal["dense", "int4-cpu", "int4-tinygemm", "int8-cpu", "int8-dequant"]
    compute_dtype: torch.dtype
    inner_k_tiles: int = 0  # tinygemm only


def tinygemm_inner_k_tiles(n: int, k: int, group_size: int) -> int | None:
    """Tinygemm's k-tiling for an [N, K] weight, or None where its shape rules exclude it
    (N a multiple of 8, K of 16 * inner_k_tiles, group size 32..256)."""
    if n % 8 or group_size not in (32, 64, 128, 256) or k % group_size:
        return None
    return next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)


def choose_kernel(fmt: Format, device: torch.device, n: int, k: int, group_size: int = GROUP_SIZE,
                  cuda_capability: tuple[int, int] | None = None) -> Kernel:
    """The kernel for a stored weight on `device`. `cuda_capability` overrides the probe (tests)."""
    if fmt == "float32":
        return Kernel("dense", torch.float32)
    if fmt == "bf16":
        return Kernel("dense", torch.bfloat16)
    if device.type == "cuda":
        if fmt == "int4":
            cap = cuda_capability or torch.cuda.get_device_capability(device)
            tiles = tinygemm_inner_k_tiles(n, k, group_size)
            if cap >= (8, 0) and tiles is not None:  # tinygemm needs Ampere or newer
                return Kernel("int4-tinygemm", torch.bfloat16, tiles)
            raise ModelError(f"int4 weights [{n}, {k}] do not fit torch's CUDA int4 kernel on sm{cap[0]}{cap[1]}; "
                             "use --weights bf16")
        return Kernel("int8-dequant", torch.bfloat16)
    if device.type != "cpu":
        raise ModelError(f"no weight kernels for device {device}")
    return Kernel("int4-cpu" if fmt == "int4" else "int8-cpu", torch.bfloat16)


def aligned(t: torch.Tensor) -> torch.Tensor:
    """`t` at a 64-byte-aligned address (a copy if it is not). Tensors read from safetensors can
    sit at any offset of the file, and `_weight_int8pack_mm` segfaults on such a weight (seen with
    Qwen2.5-Coder-1.5B's qkv at an address = 56 mod 64); torch's own allocations are aligned."""
    return t if t.data_ptr() % 64 == 0 else t.clone()


def tinygemm_layout(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stored int4 codes as CUDA tinygemm's packing step takes them: uint8 [N, K/2] with the even
    column in the *high* nibble (the stored layout and the CPU kernel's input have it low)."""
    codes = unpack_int4(state)
    return ((codes[:, 0::2] << 4) | codes[:, 1::2]).to(torch.uint8)


class QuantLinear(nn.Module):
    """y = x W^T (+ b) for a weight in any stored format, packed once for the device's kernel.
    Inputs and outputs keep the model's dtype; only the kernel sees its compute dtype."""

    weight: torch.Tensor | None  # dense kernels
    qweight: torch.Tensor | None  # int kernels, packed for the device
    scales: torch.Tensor | None  # int8: [N]; int4: [K/g, N, 2] (scale, zero)
    codes: torch.Tensor | None  # int4 on CPU: the stored uint8 [N, K/2], for the dense path
    bias: torch.Tensor | None

    def __init__(self, state: dict[str, torch.Tensor], device: torch.device,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                 kernel: Kernel | None = None) -> None:
        """`kernel` overrides `choose_kernel` (tests: the exact float32-activation int4 kernel)."""
        super().__init__()
        self.format: Format = stored_format(state)
        q = state.get("qweight", state.get("weight"))
        assert q is not None
        self.out_features = q.shape[0]
        self.in_features = q.shape[1] * (2 if self.format == "int4" else 1)
        group = self.in_features // state["scale"].shape[1] if self.format == "int4" else GROUP_SIZE
        self.group_size = group
        self.kernel = kernel or choose_kernel(self.format, device, self.out_features, self.in_features, group)
        act = self.kernel.compute_dtype
        for buffer in ("weight", "qweight", "scales", "codes", "bias"):
            self.register_buffer(buffer, None)
        name = self.kernel.name
        if name == "dense":
            self.register_buffer("weight", aligned(state["weight"].to(device, act).contiguous()))
        elif name in ("int8-cpu", "int8-dequant"):
            self.register_buffer("qweight", aligned(state["qweight"].to(device).contiguous()))
            self.register_buffer("scales", aligned(state["scale"].to(device, act).contiguous()))
        else:
            # [K/g, N, 2]; .contiguous() matters: the kernels ignore strides and read garbage.
            sz = torch.stack([state["scale"], state["zero"]], dim=-1).transpose(0, 1)
            self.register_buffer("scales", aligned(sz.to(device, act).contiguous()))
            if name == "int4-cpu":
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(state).to(device), 1)
                # The packed layout is the kernel's private business; the dense path reads these.
                self.register_buffer("codes", state["qweight"].to(device).contiguous())
            else:
                packed = torch.ops.aten._convert_weight_to_int4pack(
                    tinygemm_layout(state).to(device), self.kernel.inner_k_tiles)
            self.register_buffer("qweight", packed)
        if bias is not None:
            self.register_buffer("bias", bias.to(device, out_dtype))
        self.out_dtype = out_dtype

    def dequantized(self, dtype: torch.dtype, start: int = 0, stop: int | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows start:stop of the weight [N, K] in `dtype`, from the CPU int kernels' buffers (the
        dense path), written into `out` (at least that many rows) when given."""
        assert self.scales is not None
        stop = self.out_features if stop is None else stop
        n, k, g = stop - start, self.in_features, self.group_size
        w = torch.empty(n, k, dtype=dtype, device=self.scales.device) if out is None else out[:n]
        if self.kernel.name == "int8-cpu":
            assert self.qweight is not None
            return torch.mul(self.qweight[start:stop], self.scales[start:stop, None].to(dtype), out=w)
        assert self.codes is not None
        codes = self.codes[start:stop]
        pairs = w.view(n, k // 2, 2)  # the even column is the low nibble
        pairs[..., 0] = codes & 0x0F
        pairs[..., 1] = codes >> 4
        # (q - 8) * scale + zero, from the values the int4 kernel uses (its scales and zeros);
        # the -8 goes into the zero, a [N, K/g] tensor, instead of a pass over the weight.
        sz = self.scales[:, start:stop].float().transpose(0, 1)  # [n, K/g, 2]
        scale = sz[..., :1].contiguous()
        zero = (sz[..., 1:] - 8 * scale).contiguous()
        return w.view(n, k // g, g).mul_(scale).add_(zero).view(n, k)

    def dense_matmul(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x [M, K] times the dequantized weight, in `dtype` [M, N]: the weight is dequantized
        DEQUANT_BLOCK elements at a time into one buffer that stays in cache for its matmul.
        Dequantizing the whole weight first cost as much as the matmul itself at a few hundred
        rows (two passes over a float weight in memory); blocked, a 256-row gate/up projection
        of Qwen2.5-1.5B took 68 ms instead of 162. From BLOCKED_ROWS_MAX rows on, one matmul over
        the whole dequantized weight is faster again (1,536 rows: 403 ms against 505)."""
        if x.shape[0] >= BLOCKED_ROWS_MAX:
            return F.linear(x.to(dtype), self.dequantized(dtype))
        n, k = self.out_features, self.in_features
        rows = max(16, DEQUANT_BLOCK // k)
        buf = torch.empty(min(rows, n), k, dtype=dtype, device=x.device)
        xt = x.to(dtype).t()
        yt = torch.empty(n, x.shape[0], dtype=dtype, device=x.device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            torch.mm(self.dequantized(dtype, start, stop, buf), xt, out=yt[start:stop])
        return yt.t().contiguous()

    def float_weight(self) -> torch.Tensor | None:
        """The weight [N, K] in float32 (a copy for packed formats); None where the packed layout
        cannot be read back (CUDA tinygemm keeps no codes)."""
        if self.kernel.name == "dense":
            assert self.weight is not None
            return self.weight.float()
        if self.kernel.name == "int8-dequant":
            assert self.qweight is not None and self.scales is not None
            return self.qweight.float() * self.scales.float()[:, None]
        if self.kernel.name == "int4-tinygemm":
            return None
        return self.dequantized(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        name = self.kernel.name
        if name in ("int4-cpu", "int8-cpu") and x.numel() >= DENSE_ROWS * shape[-1]:
            y = self.dense_matmul(x.reshape(-1, shape[-1]), dense_dtype())
            y = y.to(self.out_dtype).reshape(*shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        x2 = x.reshape(-1, shape[-1]).to(self.kernel.compute_dtype)
        if name == "dense":
            assert self.weight is not None
            y = F.linear(x2, self.weight)
        elif name == "int4-cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales)
        elif name == "int4-tinygemm":
            y = torch.ops.aten._weight_int4pack_mm(x2, self.qweight, self.group_size, self.scales)
        elif name == "int8-cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:
            assert self.qweight is not None and self.scales is not None
            y = F.linear(x2, self.qweight.to(x2.dtype)) * self.scales
        y = y.to(self.out_dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.format} via {self.kernel.name}"


class QuantEmbedding(nn.Module):
    """Token embedding rows from a dense or int8 table (the int8 table may be shared with a tied
    LM head, which is where it pays: the head reads the whole table every decode step)."""

    table: torch.Tensor

    def __init__(self, state: dict[str, torch.Tensor], device: torch.device, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.format = stored_format(state)
        if self.format == "int4":
            raise InvalidArgument("embedding tables are stored dense or int8, not int4")
        self.row_scale: torch.Tensor | None
        self.register_buffer("table", (state["qweight"] if self.format == "int8" else state["weight"]).to(device))
        int8 = self.format == "int8"
        self.register_buffer("row_scale", state["scale"].to(device, torch.float32) if int8 else None)
        self.out_dtype = out_dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.table).to(self.out_dtype)
        if self.row_scale is not None:
            rows = rows * self.row_scale[ids].unsqueeze(-1).to(self.out_dtype)
        return rows


def parse_format(value: str) -> Format:
    if value not in FORMATS:
        raise InvalidArgument(f"unknown weight format {value!r}; choose one of auto, {', '.join(FORMATS)}")
    return value  # type: ignore[return-value]
