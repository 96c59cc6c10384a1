"""The chunk-KV codec: round trips per bit width, ragged groups, entropy coding, corruption, decode_into."""

from __future__ import annotations

import pytest
import torch

from ragloom.cache.codec import (
    HEADER_BYTES,
    CodecConfig,
    CorruptEntry,
    decode,
    decode_into,
    encode,
    encoded_info,
    stats,
)
from ragloom.errors import InvalidArgument, RagloomError

L, H, D = 4, 3, 16


def kv(tokens: int, seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-like data: keys with per-channel offsets and a few outlier channels, values centred."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(L, 1, H, D, generator=g) * 2
    offsets[..., 3] *= 10  # an outlier channel, as real keys have
    k = torch.randn(L, tokens, H, D, generator=g) + offsets
    v = torch.randn(L, tokens, H, D, generator=g) * 0.5
    return k.to(dtype), v.to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fp16_passthrough_is_exact_to_fp16():
    k, v = kv(37)
    k2, v2 = decode(encode(k, v, CodecConfig(bits=16)))
    assert k2.dtype == torch.float32 and k2.shape == k.shape
    assert torch.equal(k2, k.half().float()) and torch.equal(v2, v.half().float())
    # bfloat16 is stored as bfloat16: lossless
    kb, vb = kv(37, dtype=torch.bfloat16)
    kb2, vb2 = decode(encode(kb, vb, CodecConfig(bits=16)))
    assert kb2.dtype == torch.bfloat16 and torch.equal(kb2, kb) and torch.equal(vb2, vb)


def test_error_shrinks_with_bits_and_sizes_follow_the_bit_width():
    k, v = kv(96)
    errs, sizes = {}, {}
    for bits in (2, 4, 8, 16):
        blob = encode(k, v, CodecConfig(bits=bits, group_size=32))
        k2, v2 = decode(blob)
        errs[bits] = (rel(k2, k), rel(v2, v))
        sizes[bits] = len(blob)
    for a, b in ((2, 4), (4, 8), (8, 16)):
        assert errs[b][0] < errs[a][0] / 3 and errs[b][1] < errs[a][1] / 3, errs
    assert errs[8][0] < 0.01 and errs[8][1] < 0.01
    assert errs[4][0] < 0.1 and errs[4][1] < 0.1
    assert errs[2][0] < 0.5 and errs[2][1] < 0.5
    n = k.numel() + v.numel()
    # packed codes + fp16 scale and minimum per group (k: 32 tokens of one channel; v: 32 of a token's
    # H*D = 48 channels, so two groups per token, the second one ragged)
    groups = L * (96 // 32) * H * D + L * 96 * 2
    for bits in (8, 4, 2):
        params = 2 * 2 * groups
        assert sizes[bits] == HEADER_BYTES + n * bits // 8 + params
    assert sizes[16] == HEADER_BYTES + n * 2


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("tokens,group", [(1, 32), (31, 32), (33, 32), (70, 32), (5, 7), (64, 128), (50, 48)])
def test_ragged_groups_stay_within_half_a_step(bits, tokens, group):
    """Token counts and channel counts (H*D = 48) not divisible by the group: every element's error is
    at most half its group's quantization step, so a padded group does not widen its range. (Slack:
    the minimum is stored in float16, rounded down, which can widen a step by ulp(min) / qmax.)"""
    k, v = kv(tokens, seed=tokens)
    k2, v2 = decode(encode(k, v, CodecConfig(bits=bits, group_size=group)))
    qmax = (1 << bits) - 1
    # keys: groups of `group` tokens per (layer, head, channel)
    pad = -tokens % group
    kp = torch.cat([k, k[:, -1:].expand(L, pad, H, D)], 1).unflatten(1, (-1, group))
    step_k = ((kp.amax(2) - kp.amin(2)) / qmax).repeat_interleave(group, 1)[:, :tokens]
    assert ((k2 - k).abs() <= step_k / 2 * 1.01 + k.abs() * 2**-10 / qmax + 1e-5).all()
    # values: groups of `group` channels within each token
    C = H * D
    vf = v.reshape(L, tokens, C)
    padc = -C % group
    vp = torch.cat([vf, vf[..., -1:].expand(L, tokens, padc)], 2).unflatten(2, (-1, group))
    step_v = ((vp.amax(3) - vp.amin(3)) / qmax).repeat_interleave(group, 2)[..., :C]
    assert ((v2.reshape(L, tokens, C) - vf).abs() <= step_v / 2 * 1.01 + vf.abs() * 2**-10 / qmax + 1e-5).all()


def test_constant_groups_and_empty_chunks():
    k = torch.full((2, 40, 1, 8), 3.25)
    v = torch.zeros(2, 40, 1, 8)
    for bits in (8, 4, 2):
        k2, v2 = decode(encode(k, v, CodecConfig(bits=bits)))
        assert torch.equal(k2, k) and torch.equal(v2, v)
    for bits in (16, 8, 2):
        k0, v0 = decode(encode(k[:, :0], v[:, :0], CodecConfig(bits=bits)))
        assert k0.shape == (2, 0, 1, 8) and v0.shape == (2, 0, 1, 8)


def test_large_magnitudes_fall_back_to_fp32_parameters():
    k, v = kv(20)
    k = k * 1e4  # minima beyond float16's range
    k2, _ = decode(encode(k, v, CodecConfig(bits=8)))
    assert torch.isfinite(k2).all() and rel(k2, k) < 0.01
    assert encoded_info(encode(k, v, CodecConfig(bits=8))).scale_dtype == torch.float32


def test_non_finite_kv_is_refused():
    k, v = kv(8)
    k[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidArgument):
        encode(k, v, CodecConfig(bits=4))


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_entropy_coding_is_lossless_on_top(bits):
    k, v = kv(64)
    plain = encode(k, v, CodecConfig(bits=bits, entropy=False))
    packed = encode(k, v, CodecConfig(bits=bits, entropy=True))
    a, b = decode(plain), decode(packed)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert encoded_info(packed).config.entropy and not encoded_info(plain).config.entropy
    # quantized codes of gaussian data carry some redundancy; zlib must not blow up the size
    assert len(packed) <= len(plain) * 1.01


def test_header_describes_the_blob():
    k, v = kv(45, dtype=torch.bfloat16)
    info = encoded_info(encode(k, v, CodecConfig(bits=4, group_size=16, entropy=True)))
    assert info.dtype == torch.bfloat16 and info.k_shape == (L, 45, H, D) and info.v_shape == (L, 45, H, D)
    assert info.config == CodecConfig(bits=4, group_size=16, entropy=True)
    k2, v2 = decode(encode(k, v, CodecConfig(bits=4)))
    assert k2.dtype == torch.bfloat16
    assert decode(encode(k, v, CodecConfig(bits=4)), dtype=torch.float32)[0].dtype == torch.float32


@pytest.mark.parametrize("entropy", [False, True])
def test_corruption_is_detected(entropy):
    k, v = kv(33)
    blob = encode(k, v, CodecConfig(bits=4, entropy=entropy))
    for pos in (0, 10, HEADER_BYTES - 1, HEADER_BYTES + 5, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptEntry):
            decode(bytes(bad))
    for cut in (0, 3, HEADER_BYTES - 1, HEADER_BYTES, len(blob) - 1):
        with pytest.raises(CorruptEntry):
            decode(blob[:cut])
    with pytest.raises(CorruptEntry):
        decode(blob + b"\0")
    with pytest.raises(CorruptEntry, match="magic"):
        decode(b"XXXX" + blob[4:])
    assert issubclass(CorruptEntry, RagloomError)


def test_decode_into_slices_and_slots():
    k, v = kv(21)
    blob = encode(k, v, CodecConfig(bits=8))
    ref_k, ref_v = decode(blob)
    # a contiguous range of a [layers, slots, heads, dim] cache (a view)
    cache_k, cache_v = torch.zeros(L, 64, H, D), torch.zeros(L, 64, H, D)
    decode_into(blob, cache_k[:, 10:31], cache_v[:, 10:31])
    assert torch.equal(cache_k[:, 10:31], ref_k) and torch.equal(cache_v[:, 10:31], ref_v)
    assert not cache_k[:, :10].any() and not cache_k[:, 31:].any()
    # scattered slots (a block table), in the cache's own dtype
    cache_k = torch.zeros(L, 64, H, D, dtype=torch.bfloat16)
    cache_v = torch.zeros(L, 64, H, D, dtype=torch.bfloat16)
    slots = torch.tensor([48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 0, 1, 2, 3, 4])
    decode_into(blob, cache_k, cache_v, slots=slots)
    assert torch.equal(cache_k[:, slots], ref_k.bfloat16()) and torch.equal(cache_v[:, slots], ref_v.bfloat16())
    assert not cache_k[:, 5:48].any()
    with pytest.raises(InvalidArgument):
        decode_into(blob, cache_k, cache_v, slots=slots[:5])
    with pytest.raises(InvalidArgument):
        decode_into(blob, torch.zeros(L, 20, H, D), torch.zeros(L, 20, H, D))


def test_stats_reports_sizes_and_errors():
    k, v = kv(64)
    s = stats(k, v, CodecConfig(bits=4, group_size=32))
    assert s["tokens"] == 64
    assert s["fp16_bytes_per_token"] == 2 * L * H * D * 2
    assert 3.0 < s["ratio_vs_fp16"] < 4.0
    assert 0 < s["k"]["rel_l2"] < 0.1 and 0 < s["v"]["max_abs"]
    assert s["encode_us_per_token"] > 0 and s["decode_us_per_token"] > 0
    s16 = stats(k, v, CodecConfig(bits=16))
    assert s16["ratio_vs_fp16"] == pytest.approx(1.0, abs=0.01)


def test_bad_config_and_inputs():
    with pytest.raises(InvalidArgument):
        CodecConfig(bits=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        CodecConfig(group_size=0)
    k, v = kv(4)
    with pytest.raises(InvalidArgument):
        encode(k[0], v[0])
    with pytest.raises(InvalidArgument):
        encode(k, v[:, :3])
    with pytest.raises(InvalidArgument):
        encode(k.int(), v.int())


def test_decoded_blob_into_the_runners_kv_blocks():
    """A decoded blob into a real KVCache through its block table (blocks out of order, a partial
    last block)."""
    from ragloom.generation.runner.kv import KVCache

    cache = KVCache(L, num_blocks=8, block_size=4, num_kv_heads=H, head_dim=D, dtype=torch.float32,
                    device=torch.device("cpu"))
    table: list[int] = []
    cache.allocator.allocate(2)  # someone else's blocks
    cache.reserve(table, 14)
    k, v = kv(14)
    blob = encode(k, v, CodecConfig(bits=4, group_size=8))
    ref_k, ref_v = decode(blob)
    slots = cache.slot_tensor(table, 0, 14)
    cache.write_layers(slots, *decode(blob))
    for layer in range(L):
        got_k, got_v = cache.gather(layer, slots.view(1, -1))
        assert torch.equal(got_k[0], ref_k[layer]) and torch.equal(got_v[0], ref_v[layer])
    assert not cache.k[:, :, :8].any()  # the other blocks are untouched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    k, v = kv(77)
    for bits in (16, 8, 4, 2):
        cfg = CodecConfig(bits=bits, group_size=32)
        cpu_blob = encode(k, v, cfg)
        gpu_blob = encode(k.cuda(), v.cuda(), cfg)
        k_cpu, v_cpu = decode(cpu_blob)
        k_gpu, v_gpu = decode(gpu_blob, device="cuda")
        assert k_gpu.is_cuda
        # identical up to rounding-mode differences of a few codes
        assert rel(k_gpu.cpu(), k_cpu) < 1e-3 * 2 ** (8 - min(bits, 8)) and rel(v_gpu.cpu(), v_cpu) < 1e-3 * 2 ** (8 - min(bits, 8))
        cache = torch.zeros(L, 128, H, D, device="cuda", dtype=torch.bfloat16)
        cache_v = torch.zeros_like(cache)
        slots = torch.arange(100, 23, -1, device="cuda")
        decode_into(cpu_blob, cache, cache_v, slots=slots)
        assert torch.equal(cache[:, slots].cpu(), k_cpu.bfloat16())
