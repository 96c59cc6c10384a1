"""Vector codes for the two-stage search: binary codes for candidates, int8 for rescoring.

- `binarize`: sign bit per dimension, packed 8 per byte (384-d -> 48 B, 32x smaller than float32).
- `ResidualBinarizer`: BEBR-style recurrent binarization without the learned MLP: level 0 is
  sign(x - mean), level l+1 is sign of the residual after subtracting the per-dimension scaled
  reconstruction of levels 0..l. Codes are concatenated; level l is repeated 2**(L-1-l) times so
  plain Hamming distance over the concatenation equals the weighted sum 2*h0 + h1 (faiss binary
  indexes know only unweighted Hamming).
- `ItqRotation`: Iterative Quantization (Gong & Lazebnik) rotation fitted on the collection.
- `Int8Quantizer`: per-dimension [min, max] calibrated on the collection, 255 steps (as
  sentence-transformers' `quantize_embeddings`), dequantized against a float query for rescoring.

What the measurements kept (benchmarks/retrieval_quality.py, BEIR SciFact test, 300 queries,
all-MiniLM-L6-v2 384-d, top 100, oversample 4 = 400 candidates rescored; nDCG@10 / Recall@100):

    float flat                0.6451 / 0.9250   (published ~0.645)
    int8 (float query)        0.6460 / 0.9250
    binary (sign)             0.5881 / 0.8783   48 B/vector
    binary + int8 rescore     0.6460 / 0.9217   <- the collection index: 100.1% of float nDCG@10
    centered sign + rescore   0.6412 / 0.9167   (centering alone hurts: 0.5758 binary-only)
    ITQ binary                0.5903 / 0.8960   (+0.2 pt nDCG over sign, but after rescoring
    ITQ + rescore             0.6460 / 0.9233    identical nDCG, +0.0016 recall: not worth a
                                                 fitted state that must be refit as data changes)
    residual 2-level          0.5619 / 0.8617   144 B/vector; weighted Hamming of centered
    residual 2-level+rescore  0.6460 / 0.9200    residual codes is *worse* than plain sign codes
    sentence-transformers     0.6228 / 0.9060   (ubinary + rescore with float query . bits)

So: plain sign codes + int8 rescoring with the float query is the default and the only path the
collection index uses; ITQ and residual codes stay here for experiments and the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# sentence-transformers warns below this; per-dimension ranges from fewer rows are noise.
MIN_CALIBRATION_ROWS = 100


def binarize(x: np.ndarray) -> np.ndarray:
    """(n, d) float -> (n, d/8) uint8; bit = x > 0, big-endian within a byte (np.packbits)."""
    x = np.atleast_2d(np.asarray(x))
    if x.shape[1] % 8:
        raise ValueError(f"binary codes need a dimension divisible by 8, got {x.shape[1]}")
    return np.packbits(x > 0, axis=1)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact pairwise Hamming distances between packed codes (na, nb) -> int32; the reference."""
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)
    return table[a[:, None, :] ^ b[None, :, :]].sum(axis=2, dtype=np.int32)


@dataclass
class ItqRotation:
    """x -> (x - mean) @ rotation; the rotation minimizes the binarization error on the data."""

    mean: np.ndarray
    rotation: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, iterations: int = 50, seed: int = 0) -> ItqRotation:
        x = np.asarray(x, dtype=np.float32)
        mean = x.mean(axis=0)
        v = x - mean
        rng = np.random.default_rng(seed)
        r, _ = np.linalg.qr(rng.standard_normal((x.shape[1], x.shape[1])))
        for _ in range(iterations):
            b = np.where(v @ r > 0, 1.0, -1.0).astype(np.float32)
            # Orthogonal Procrustes: R = argmin ||B - V R||, R orthogonal.
            u, _, wt = np.linalg.svd(v.T @ b)
            r = u @ wt
        return cls(mean.astype(np.float32), r.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) @ self.rotation).astype(np.float32)


@dataclass
class ResidualBinarizer:
    """Multi-bit binary codes: sign, then sign of the scaled residual, `levels` times."""

    mean: np.ndarray
    scales: list[np.ndarray] = field(default_factory=list)  # per level, per dimension
    weighted: bool = True

    @classmethod
    def fit(cls, x: np.ndarray, levels: int = 2, center: bool = True, weighted: bool = True) -> ResidualBinarizer:
        x = np.asarray(x, dtype=np.float32)
        mean = x.mean(axis=0) if center else np.zeros(x.shape[1], np.float32)
        r = x - mean
        scales = []
        for _ in range(levels):
            s = np.where(r > 0, 1.0, -1.0).astype(np.float32)
            # Least-squares scale per dimension for r ~ a * sign(r) is mean |r|.
            a = np.abs(r).mean(axis=0).astype(np.float32)
            scales.append(a)
            r = r - a * s
        return cls(mean.astype(np.float32), scales, weighted)

    @property
    def levels(self) -> int:
        return len(self.scales)

    def level_codes(self, x: np.ndarray) -> list[np.ndarray]:
        r = np.asarray(x, dtype=np.float32) - self.mean
        out = []
        for a in self.scales:
            s = r > 0
            out.append(s)
            r = r - a * np.where(s, 1.0, -1.0).astype(np.float32)
        return out

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Packed concatenated codes; with `weighted`, level l appears 2**(L-1-l) times."""
        parts = []
        for level, bits in enumerate(self.level_codes(np.atleast_2d(x))):
            parts.extend([bits] * (2 ** (self.levels - 1 - level) if self.weighted else 1))
        return np.packbits(np.concatenate(parts, axis=1), axis=1)

    def decode(self, x_codes: list[np.ndarray]) -> np.ndarray:
        rec = np.broadcast_to(self.mean, (x_codes[0].shape[0], self.mean.shape[0])).copy()
        for a, bits in zip(self.scales, x_codes):
            rec += a * np.where(bits, 1.0, -1.0)
        return rec


@dataclass
class Int8Quantizer:
    """Per-dimension affine int8: code = round((x - lo) / step) - 128, step = (hi - lo) / 255."""

    lo: np.ndarray
    step: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Int8Quantizer:
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if x.shape[0] >= MIN_CALIBRATION_ROWS:
            lo, hi = x.min(axis=0), x.max(axis=0)
        else:
            # Too few rows for per-dimension ranges: one symmetric range for every dimension,
            # widened so later rows rarely clip (the index recalibrates as the collection grows).
            m = float(np.abs(x).max()) * 1.5 if x.size else 1.0
            m = max(m, 1e-3)
            lo = np.full(x.shape[1], -m, np.float32)
            hi = np.full(x.shape[1], m, np.float32)
        step = np.maximum((hi - lo) / 255.0, 1e-8).astype(np.float32)
        return cls(lo.astype(np.float32), step)

    def encode(self, x: np.ndarray) -> np.ndarray:
        q = np.rint((np.asarray(x, dtype=np.float32) - self.lo) / self.step) - 128.0
        return np.clip(q, -128, 127).astype(np.int8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.lo + (codes.astype(np.float32) + 128.0) * self.step

    def scores(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Inner products of float queries (nq, d) with dequantized codes (n, d) -> (nq, n),
        without materializing the dequantized matrix twice: q.lo + (q*step).(c+128)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        c = codes.astype(np.float32) + 128.0
        return (q @ self.lo)[:, None] + (q * self.step) @ c.T

    def to_dict(self) -> dict:
        return {"lo": self.lo.tolist(), "step": self.step.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Int8Quantizer:
        return cls(np.asarray(d["lo"], np.float32), np.asarray(d["step"], np.float32))
