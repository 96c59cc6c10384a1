"""Quantizer properties, and the torch popcount kernel against faiss' Hamming distances."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from ragloom.retrieval.gpu import TorchBinaryFlat, hamming_distances, hamming_topk
from ragloom.retrieval.quantize import Int8Quantizer, ItqRotation, ResidualBinarizer, binarize, hamming


def _unit(n: int, d: int = 64, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_binarize_is_sign_packed_msb_first():
    x = np.array([[1.0, -1, 0.5, -0.1, 0, 2, -3, 4] * 2], dtype=np.float32)
    codes = binarize(x)
    assert codes.dtype == np.uint8 and codes.shape == (1, 2)
    assert codes[0, 0] == 0b10100101  # 0 is not > 0, so bit 4 is clear
    assert (np.unpackbits(codes, axis=1).astype(bool) == (x > 0)).all()
    with pytest.raises(ValueError):
        binarize(np.ones((1, 12)))


def test_hamming_reference_matches_faiss_flat():
    x, q = binarize(_unit(300)), binarize(_unit(7, seed=1))
    ref = hamming(q, x)
    index = faiss.IndexBinaryFlat(64)
    index.add(x)
    d, i = index.search(q, 300)
    assert (np.sort(ref, axis=1) == d).all()
    assert (np.take_along_axis(ref, i, axis=1) == d).all()


def test_int8_roundtrip_error_is_within_half_a_step():
    x = _unit(500, 32)
    q = Int8Quantizer.fit(x)
    codes = q.encode(x)
    assert codes.dtype == np.int8 and codes.min() == -128 and codes.max() == 127  # full range used
    assert (np.abs(q.decode(codes) - x) <= q.step / 2 + 1e-6).all()
    # scores() is the inner product with the dequantized rows.
    qs = _unit(3, 32, seed=5)
    assert np.allclose(q.scores(qs, codes), qs @ q.decode(codes).T, atol=1e-4)


def test_int8_small_calibration_is_symmetric_and_clips_outliers():
    x = _unit(5, 16)
    q = Int8Quantizer.fit(x)
    assert np.allclose(q.lo, q.lo[0]) and q.lo[0] < 0
    far = np.full((1, 16), 100.0, np.float32)
    assert (q.encode(far) == 127).all()


def test_itq_is_orthogonal_and_lowers_binarization_error():
    # Anisotropic data: a random rotation of axis-scaled gaussians.
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2000, 32)) * np.linspace(3, 0.1, 32)).astype(np.float32)
    itq = ItqRotation.fit(x, iterations=30)
    assert np.allclose(itq.rotation @ itq.rotation.T, np.eye(32), atol=1e-4)

    def err(v: np.ndarray) -> float:
        return float(np.linalg.norm(np.sign(v) - v))

    v = x - itq.mean
    r0, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    assert err(itq.apply(x)) < err((v @ r0).astype(np.float32))


def test_residual_levels_reduce_reconstruction_error_and_weight_hamming():
    x = _unit(1000, 64)
    errors = []
    for levels in (1, 2, 3):
        rb = ResidualBinarizer.fit(x, levels=levels)
        errors.append(float(np.linalg.norm(rb.decode(rb.level_codes(x)) - x)))
    assert errors[0] > errors[1] > errors[2]
    rb = ResidualBinarizer.fit(x, levels=2)
    codes = rb.encode(x[:50])
    assert codes.shape == (50, 3 * 64 // 8)  # level 0 twice, level 1 once
    l0, l1 = (np.packbits(b, axis=1) for b in rb.level_codes(x[:50]))
    assert (hamming(codes[:5], codes) == 2 * hamming(l0[:5], l0) + hamming(l1[:5], l1)).all()


def test_torch_popcount_equals_faiss_hamming_on_cpu_tensors():
    x = binarize(_unit(1000, 384, seed=2))
    q = binarize(_unit(9, 384, seed=3))
    index = faiss.IndexBinaryFlat(384)
    index.add(x)
    fd, _ = index.search(q, 1000)
    full = hamming_distances(torch.from_numpy(q), torch.from_numpy(x)).numpy()
    assert (np.sort(full, axis=1) == fd).all()
    assert (full == hamming(q, x)).all()
    # Chunked top-k (small chunks forced) returns faiss' distances and consistent rows.
    import ragloom.retrieval.gpu as gpu

    old = gpu._MAX_ELEMENTS
    gpu._MAX_ELEMENTS = 9 * 48 * 100  # 100 rows per chunk -> 10 chunks merged
    try:
        d, i = hamming_topk(torch.from_numpy(q), torch.from_numpy(x), 20)
    finally:
        gpu._MAX_ELEMENTS = old
    assert (d.numpy() == fd[:, :20]).all()
    assert (np.take_along_axis(full, i.numpy(), axis=1) == d.numpy()).all()
    ids = np.arange(1000, dtype=np.int64) * 7
    td, ti = TorchBinaryFlat(x, ids, device="cpu").search(q, 5)
    assert (td == fd[:, :5]).all() and (ti % 7 == 0).all()
