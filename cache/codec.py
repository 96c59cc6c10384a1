"""KV compression for storage and transfer of chunk KV (KIVI-style quantization, optional entropy coding).

A chunk's KV is a pair of tensors ``k, v`` shaped ``[num_layers, num_tokens, num_kv_heads, head_dim]``
(the runner's layout; K post-RoPE). ``encode`` turns them into one self-describing blob, ``decode``
turns a blob back into tensors on any device, and ``decode_into`` writes straight into preallocated
tensors such as the runner's KV cache slots.

Modes (``CodecConfig.bits``):

- ``16``: passthrough at 16 bits: float16 for float32/float16 sources, bfloat16 kept as bfloat16
  (lossless for it). This is the baseline the compression ratios are measured against.
- ``8`` / ``4`` / ``2``: asymmetric min/max uniform quantization as in KIVI. **Keys per channel**:
  every ``group_size`` consecutive tokens of one layer share a scale and a minimum for each
  (head, channel). **Values per token**: every ``group_size`` consecutive channels of one token
  (heads * head_dim flattened) share a scale and a minimum. Codes are packed densely (8 bits: one
  per byte, 4 bits: two, 2 bits: four; planar, see ``_pack``); scales and minima are float16
  (float32 only when the data does not fit float16's range), the minimum rounded down and the scale
  up so the grid still covers the group (error <= half a step). A last, short group is padded by
  repeating its last element, so it gets exactly the range of its own values; padding is dropped
  before packing.

``entropy=True`` adds lossless zlib coding of the payload (the standard library; ``zstandard`` is
not a dependency). The whole blob carries a CRC32 of its header and payload, so a flipped byte,
a truncated or over-long blob, or a blob that is not ours raises ``CorruptEntry``.

Blob layout (little endian)::

    header  magic "RLKV", version, source dtype, bits, entropy, scale dtype, payload dtype,
            group_size, k shape (4 x u32), v shape (4 x u32), raw payload length, stored
            payload length, crc32(header without crc + stored payload)
    payload (zlib-compressed when entropy) of, in order:
            bits 16: k values, v values (payload dtype)
            else:    k scales, k minima, v scales, v minima (scale dtype), k codes, v codes (packed)

Everything is vectorized torch and runs where the tensors are (CPU or CUDA); only the packed bytes
cross to the host.
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Literal

import torch

from ragloom.errors import InvalidArgument, RagloomError

__all__ = [
    "CodecConfig",
    "CorruptEntry",
    "decode",
    "decode_into",
    "encode",
    "encoded_info",
    "stats",
]

MAGIC = b"RLKV"
VERSION = 1

_HEADER = struct.Struct("<4sBBBBBBxxI4I4IQQ")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size

_DTYPES: dict[int, torch.dtype] = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16}
_DTYPE_CODES = {dt: code for code, dt in _DTYPES.items()}
_ENTROPY_NONE, _ENTROPY_ZLIB = 0, 1
_ZLIB_LEVEL = 6
_FP16_SAFE = 60000.0  # beyond this, scales/minima are stored in float32 instead of float16


class CorruptEntry(RagloomError):
    """A stored KV blob is damaged or not a KV blob (bad magic, checksum mismatch, truncated)."""


@dataclass(frozen=True)
class CodecConfig:
    bits: Literal[16, 8, 4, 2] = 8
    group_size: int = 32
    entropy: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (16, 8, 4, 2):
            raise InvalidArgument(f"codec bits must be 16, 8, 4 or 2, not {self.bits!r}")
        if not isinstance(self.group_size, int) or not 1 <= self.group_size <= 65536:
            raise InvalidArgument(f"codec group_size must be an integer in [1, 65536], not {self.group_size!r}")


# ---- packing -------------------------------------------------------------------------------------
# Sub-byte codes are packed planar: with p = 8 // bits codes per byte and the codes padded to p * n,
# byte j holds codes j, n + j, 2n + j, ... in its low to high bits. Every step is then an
# elementwise op on contiguous tensors.


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (any shape, values < 2**bits) -> flat uint8 bytes."""
    flat = codes.reshape(-1)
    if bits == 8:
        return flat
    per = 8 // bits
    pad = -flat.numel() % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    planes = flat.view(per, -1)
    out = planes[0].clone()
    for i in range(1, per):
        out |= planes[i] << (i * bits)
    return out


def _unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    if bits == 8:
        return packed[:count]
    per = 8 // bits
    mask = (1 << bits) - 1
    out = torch.empty(per, packed.numel(), dtype=torch.uint8, device=packed.device)
    for i in range(per):
        torch.bitwise_and(packed >> (i * bits) if i else packed, mask, out=out[i])
    return out.view(-1)[:count]


def _packed_bytes(count: int, bits: int) -> int:
    return -(-count * bits // 8)


# ---- quantization --------------------------------------------------------------------------------


def _grouped(x: torch.Tensor, dim: int, group: int) -> torch.Tensor:
    """Pad dim of x to a multiple of group by repeating its last element, then split it into
    (num_groups, group). A ragged last group thus keeps exactly its own min and max."""
    n = x.shape[dim]
    pad = -n % group
    if pad:
        last = x.narrow(dim, n - 1, 1)
        x = torch.cat([x, last.expand(*x.shape[:dim], pad, *x.shape[dim + 1 :])], dim=dim)
    return x.unflatten(dim, (-1, group))


def _fit_params(
    mn: torch.Tensor, mx: torch.Tensor, qmax: int, scale_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and scale as stored (scale_dtype), rounded so that the stored grid
    [mn_s, mn_s + qmax * scale_s] still covers [mn, mx]: quantizing against the stored values keeps
    the error within half a step instead of adding the rounding error of the minimum."""
    mn_s = mn.to(scale_dtype)
    mn_s = torch.where(mn_s.float() > mn, torch.nextafter(mn_s, torch.full_like(mn_s, -torch.inf)), mn_s)
    scale = (mx - mn_s.float()) / qmax
    scale_s = scale.to(scale_dtype)
    scale_s = torch.where(
        scale_s.float() < scale, torch.nextafter(scale_s, torch.full_like(scale_s, torch.inf)), scale_s
    )
    return mn_s, scale_s


def _codes(g: torch.Tensor, mn_s: torch.Tensor, scale_s: torch.Tensor, bits: int) -> torch.Tensor:
    """g: float32 groups; mn_s/scale_s broadcastable to g. Codes as uint8, same shape as g."""
    scale = scale_s.float()
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return g.sub(mn_s.float()).mul_(inv).round_().clamp_(0, (1 << bits) - 1).to(torch.uint8)


def _dequant(codes: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor, dim: int, group: int) -> torch.Tensor:
    """codes: uint8, grouping axis `dim` of length N; scale/mn: the same shape but ceil(N / group)
    along dim. -> float32 like codes. Full groups broadcast their parameters; a ragged tail group
    is done apart, so nothing is gathered or padded."""
    out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
    n = codes.shape[dim]
    full = n // group
    scale, mn = scale.float(), mn.float()
    if full:
        o = out.narrow(dim, 0, full * group).unflatten(dim, (full, group))
        c = codes.narrow(dim, 0, full * group).unflatten(dim, (full, group))
        torch.mul(c, scale.narrow(dim, 0, full).unsqueeze(dim + 1), out=o)
        o.add_(mn.narrow(dim, 0, full).unsqueeze(dim + 1))
    tail = n - full * group
    if tail:
        o = out.narrow(dim, full * group, tail)
        torch.mul(codes.narrow(dim, full * group, tail), scale.narrow(dim, full, 1), out=o)
        o.add_(mn.narrow(dim, full, 1))
    return out


def _k_param_shape(shape, group: int) -> tuple[int, ...]:
    L, T, H, D = shape
    return (L, -(-T // group), H, D)


def _v_param_shape(shape, group: int) -> tuple[int, ...]:
    L, T, H, D = shape
    return (L, T, -(-(H * D) // group))


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# ---- encode / decode -----------------------------------------------------------------------------


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _check_kv(k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise InvalidArgument(f"{name} must be a tensor [layers, tokens, kv_heads, head_dim]")
        if t.dtype not in _DTYPE_CODES:
            raise InvalidArgument(f"{name} has dtype {t.dtype}; the codec takes float32, float16 or bfloat16")
    if k.shape[:2] != v.shape[:2]:
        raise InvalidArgument(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ in layers or tokens")
    if k.dtype != v.dtype or k.device != v.device:
        raise InvalidArgument("k and v must share dtype and device")


def encode(k: torch.Tensor, v: torch.Tensor, config: CodecConfig | None = None) -> bytes:
    """Compress one chunk's K and V ([layers, tokens, kv_heads, head_dim] each) into a blob."""
    config = config or CodecConfig()
    _check_kv(k, v)
    bits, group = config.bits, config.group_size
    src = _DTYPE_CODES[k.dtype]
    if bits == 16:
        payload_dtype = torch.bfloat16 if k.dtype == torch.bfloat16 else torch.float16
        parts = [_as_bytes(k.to(payload_dtype)), _as_bytes(v.to(payload_dtype))]
        scale_dtype = torch.float16
    else:
        payload_dtype = torch.uint8
        scale_dtype = torch.float16
        parts = []
        L, T, H, D = k.shape
        if T:
            # keys: groups of `group` tokens per (layer, head, channel): [L, ng, group, H, D]
            gk = _grouped(k.float(), 1, group)
            # values: groups of `group` channels of each token: [L, T, ngc, group]
            gv = _grouped(v.float().reshape(L, T, -1), 2, group)
            kmn, kmx = gk.amin(2, keepdim=True), gk.amax(2, keepdim=True)
            vmn, vmx = gv.amin(3, keepdim=True), gv.amax(3, keepdim=True)
            # non-finite values show in the (much smaller) minima and maxima: NaN and inf propagate
            lo_hi = torch.stack([torch.minimum(kmn.amin(), vmn.amin()), torch.maximum(kmx.amax(), vmx.amax())])
            lo, hi = (float(x) for x in lo_hi.cpu())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise InvalidArgument("KV contains inf or NaN; it cannot be quantized")
            if max(-lo, hi) > _FP16_SAFE:
                scale_dtype = torch.float32
            qmax = (1 << bits) - 1
            kmn_s, ks_s = _fit_params(kmn, kmx, qmax, scale_dtype)
            vmn_s, vs_s = _fit_params(vmn, vmx, qmax, scale_dtype)
            kc = _codes(gk, kmn_s, ks_s, bits).flatten(1, 2)[:, :T]  # padding dropped
            vc = _codes(gv, vmn_s, vs_s, bits).flatten(2, 3)[:, :, : H * D]
            parts = [
                _as_bytes(ks_s.squeeze(2)),
                _as_bytes(kmn_s.squeeze(2)),
                _as_bytes(vs_s.squeeze(3)),
                _as_bytes(vmn_s.squeeze(3)),
                _pack(kc, bits),
                _pack(vc, bits),
            ]
    raw = torch.cat(parts).cpu().numpy().tobytes() if parts else b""
    stored = zlib.compress(raw, _ZLIB_LEVEL) if config.entropy else raw
    header = _HEADER.pack(
        MAGIC, VERSION, src, bits, _ENTROPY_ZLIB if config.entropy else _ENTROPY_NONE,
        _DTYPE_CODES[scale_dtype], _DTYPE_CODES.get(payload_dtype, 0), group,
        *k.shape, *v.shape, len(raw), len(stored),
    )
    crc = zlib.crc32(stored, zlib.crc32(header))
    return b"".join([header, _CRC.pack(crc), stored])


@dataclass(frozen=True)
class EncodedInfo:
    """What a blob's header says (after its checksum was verified)."""

    dtype: torch.dtype
    config: CodecConfig
    k_shape: tuple[int, int, int, int]
    v_shape: tuple[int, int, int, int]
    scale_dtype: torch.dtype
    payload_dtype: torch.dtype | None
    raw_bytes: int
    stored_bytes: int

    @property
    def num_tokens(self) -> int:
        return self.k_shape[1]


def _parse(blob: bytes | bytearray | memoryview) -> tuple[EncodedInfo, memoryview]:
    mv = memoryview(blob).cast("B")
    if len(mv) < HEADER_BYTES:
        raise CorruptEntry(f"KV blob truncated: {len(mv)} bytes, shorter than its {HEADER_BYTES}-byte header")
    (magic, version, src, bits, entropy, scale_code, payload_code, group, *dims, raw_len, stored_len) = _HEADER.unpack_from(mv)
    if magic != MAGIC:
        raise CorruptEntry(f"not a KV blob (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise CorruptEntry(f"KV blob version {version} is not supported (this codec reads version {VERSION})")
    if len(mv) != HEADER_BYTES + stored_len:
        raise CorruptEntry(f"KV blob is {len(mv)} bytes, its header says {HEADER_BYTES + stored_len} (truncated?)")
    (crc,) = _CRC.unpack_from(mv, _HEADER.size)
    stored = mv[HEADER_BYTES:]
    if zlib.crc32(stored, zlib.crc32(mv[: _HEADER.size])) != crc:
        raise CorruptEntry("KV blob checksum mismatch (the entry is damaged)")
    # From here on the header is what the encoder wrote; these checks guard against encoder bugs.
    if bits not in (16, 8, 4, 2) or entropy not in (_ENTROPY_NONE, _ENTROPY_ZLIB) or src not in _DTYPES \
            or scale_code not in _DTYPES or (bits == 16 and payload_code not in _DTYPES):
        raise CorruptEntry(f"KV blob header has unknown fields (bits={bits}, entropy={entropy}, dtype={src})")
    info = EncodedInfo(
        dtype=_DTYPES[src],
        config=CodecConfig(bits=bits, group_size=group, entropy=entropy == _ENTROPY_ZLIB),  # type: ignore[arg-type]
        k_shape=tuple(dims[:4]),  # type: ignore[arg-type]
        v_shape=tuple(dims[4:]),  # type: ignore[arg-type]
        scale_dtype=_DTYPES[scale_code],
        payload_dtype=_DTYPES[payload_code] if bits == 16 else None,
        raw_bytes=raw_len,
        stored_bytes=stored_len,
    )
    return info, stored


def encoded_info(blob: bytes | bytearray | memoryview) -> EncodedInfo:
    """The header of a blob (verifies the checksum; raises CorruptEntry)."""
    return _parse(blob)[0]


def _segments(info: EncodedInfo) -> list[tuple[tuple[int, ...], torch.dtype | None, int]]:
    """(shape, dtype or None for packed codes, byte length) of each payload part, in order."""
    bits = info.config.bits
    if bits == 16:
        pd = info.payload_dtype
        assert pd is not None
        return [(info.k_shape, pd, _numel(info.k_shape) * 2), (info.v_shape, pd, _numel(info.v_shape) * 2)]
    if info.num_tokens == 0:
        return []
    g = info.config.group_size
    es = torch.empty((), dtype=info.scale_dtype).element_size()
    kp, vp = _k_param_shape(info.k_shape, g), _v_param_shape(info.v_shape, g)
    kn, vn = _numel(kp) * es, _numel(vp) * es
    return [
        (kp, info.scale_dtype, kn), (kp, info.scale_dtype, kn),
        (vp, info.scale_dtype, vn), (vp, info.scale_dtype, vn),
        (info.k_shape, None, _packed_bytes(_numel(info.k_shape), bits)),
        (info.v_shape, None, _packed_bytes(_numel(info.v_shape), bits)),
    ]


def _decode_float(blob, device: torch.device | str | None) -> tuple[EncodedInfo, torch.Tensor, torch.Tensor]:
    """Decode to (float32 for quantized, payload dtype for 16-bit) tensors on device."""
    info, stored = _parse(blob)
    raw: bytes | memoryview
    if info.config.entropy:
        try:
            raw = zlib.decompress(stored)
        except zlib.error as e:
            raise CorruptEntry(f"KV blob payload does not decompress: {e}") from e
    else:
        raw = stored
    if len(raw) != info.raw_bytes:
        raise CorruptEntry(f"KV blob payload is {len(raw)} bytes, its header says {info.raw_bytes}")
    segs = _segments(info)
    if sum(n for _, _, n in segs) != len(raw):
        raise CorruptEntry("KV blob payload length does not match its shapes")
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not segs or not raw:
        empty_k = torch.empty(info.k_shape, dtype=torch.float32, device=device)
        return info, empty_k, torch.empty(info.v_shape, dtype=torch.float32, device=device)
    # one host->device copy of the whole payload; bytearray makes the buffer writable for torch
    buf = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(device)
    parts, off = [], 0
    for shape, dt, n in segs:
        seg = buf[off : off + n]
        off += n
        parts.append(seg if dt is None else seg.view(dt).view(shape))
    if info.config.bits == 16:
        return info, parts[0], parts[1]
    ks, km, vs, vm, kc, vc = parts
    bits, g = info.config.bits, info.config.group_size
    k = _dequant(_unpack(kc, bits, _numel(info.k_shape)).view(info.k_shape), ks, km, 1, g)
    L, T, H, D = info.v_shape
    v = _dequant(_unpack(vc, bits, _numel(info.v_shape)).view(L, T, H * D), vs, vm, 2, g).view(info.v_shape)
    return info, k, v


def decode(blob: bytes | bytearray | memoryview, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob -> (k, v) on device (default CPU) in dtype (default: the dtype that was encoded).
    Raises CorruptEntry for a damaged blob."""
    info, k, v = _decode_float(blob, device)
    dtype = dtype or info.dtype
    return k.to(dtype), v.to(dtype)


def decode_into(blob: bytes | bytearray | memoryview, k_out: torch.Tensor, v_out: torch.Tensor,
                slots: torch.Tensor | None = None) -> None:
    """Decode straight into preallocated tensors, in their dtype and on their device.

    Without ``slots``, ``k_out``/``v_out`` are [layers, tokens, kv_heads, head_dim] targets (e.g.
    ``kv.k[:, a:b]``, a view). With ``slots`` (a 1-D index tensor of length tokens) they are the
    whole token-major cache tensors [layers, num_slots, kv_heads, head_dim] and token i goes to slot
    ``slots[i]`` in every layer (one ``index_copy_`` along the slot axis)."""
    info, k, v = _decode_float(blob, k_out.device)
    for name, out, src in (("k", k_out, k), ("v", v_out, v)):
        if slots is None:
            if tuple(out.shape) != tuple(src.shape):
                raise InvalidArgument(f"decode_into: {name} target {tuple(out.shape)} != stored {tuple(src.shape)}")
            out.copy_(src)
        else:
            if slots.dim() != 1 or slots.numel() != src.shape[1]:
                raise InvalidArgument(f"decode_into: {slots.numel()} slots for {src.shape[1]} stored tokens")
            if out.dim() != 4 or out.shape[0] != src.shape[0] or out.shape[2:] != src.shape[2:]:
                raise InvalidArgument(f"decode_into: {name} cache {tuple(out.shape)} does not fit stored {tuple(src.shape)}")
            out.index_copy_(1, slots.to(device=out.device, dtype=torch.long), src.to(out.dtype))


# ---- measurement ---------------------------------------------------------------------------------


def _errors(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    ref, got = ref.float(), got.float()
    diff = got - ref
    norm = ref.norm()
    return {
        "rel_l2": float(diff.norm() / norm) if norm > 0 else float(diff.norm()),
        "max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
    }


def stats(k: torch.Tensor, v: torch.Tensor, config: CodecConfig | None = None) -> dict:
    """Encode and decode once: sizes, compression against float16 and reconstruction errors."""
    config = config or CodecConfig()
    sync = torch.cuda.synchronize if k.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    blob = encode(k, v, config)
    t1 = time.perf_counter()
    k2, v2 = decode(blob, device=k.device, dtype=k.dtype)
    sync()
    t2 = time.perf_counter()
    tokens = max(k.shape[1], 1)
    fp16_bytes = (k.numel() + v.numel()) * 2
    return {
        "bits": config.bits,
        "group_size": config.group_size,
        "entropy": config.entropy,
        "tokens": k.shape[1],
        "bytes": len(blob),
        "bytes_per_token": len(blob) / tokens,
        "fp16_bytes_per_token": fp16_bytes / tokens,
        "ratio_vs_fp16": fp16_bytes / len(blob),
        "k": _errors(k, k2),
        "v": _errors(v, v2),
        "encode_us_per_token": (t1 - t0) * 1e6 / tokens,
        "decode_us_per_token": (t2 - t1) * 1e6 / tokens,
    }
