"""Two-stage search: Hamming candidates (k x oversample) -> int8 rescoring with the float query.

Metadata filters are applied to candidates before rescoring; when a filter drops too many, the
candidate pool grows (x4 each round) until k survive or the whole index has been scanned, so a
selective filter costs more candidates, never missing results a full scan would find.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragloom.errors import InvalidArgument
from ragloom.retrieval.index import VectorIndex
from ragloom.retrieval.quantize import binarize

# Default oversample (k x oversample Hamming candidates go to int8 rescoring). Measured with
# benchmarks/retrieval_scale.py --data perturbed: real all-MiniLM-L6-v2 embeddings of SciFact +
# MuSiQue plus covariance-shaped noise, perturbed SciFact test queries; recall@10 of this search
# vs exact float search (results/retrieval_scale-*-perturbed.json, benchmarks/README.md):
#   n = 6.4k (the real vectors):  oversample 4 -> 0.86, 10 -> 0.94
#   n = 100k:                     10 -> 0.86, 25 -> 0.93, 32 (this default) -> 0.95, 50 -> 0.97
#   n = 1M:                       25 -> 0.83, 50 -> 0.89, 100 -> 0.93 (IVF, nprobe 128: 0.91)
# At 1M, IVF nprobe 128 + oversample 100 still runs ~40x (batch 1) / ~50x (batch 64) the QPS of
# float flat search on the 2-core test box; rescoring 1,000 int8 rows is about half its time.
# The old fixed 4 (the HF blog's rescore_multiplier, tuned for nDCG on a small corpus) gave 0.51
# at 1M. The candidates needed for recall ~0.9 grow roughly like sqrt(n), hence
# 10 * sqrt(n / 10k) clipped to [10, 100]: 10 up to 10k vectors, ~32 at 100k, 100 from 1M on.
MIN_DEFAULT_OVERSAMPLE = 10
MAX_DEFAULT_OVERSAMPLE = 100


def default_oversample(n: int) -> int:
    """Candidates per wanted hit (k x this go to int8 rescoring) for an index of n vectors."""
    grown = round(MIN_DEFAULT_OVERSAMPLE * math.sqrt(max(n, 0) / 10_000))
    return int(min(MAX_DEFAULT_OVERSAMPLE, max(MIN_DEFAULT_OVERSAMPLE, grown)))


_OPERATORS = ("$eq", "$ne", "$in", "$nin")


@dataclass(frozen=True)
class Scored:
    slot: int
    score: float


def validate_filter(flt: Mapping[str, Any] | None) -> None:
    if flt is None:
        return
    if not isinstance(flt, Mapping):
        raise InvalidArgument(f"filter must be an object of metadata key -> value, got {type(flt).__name__}")
    for key, cond in flt.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"filter keys must be non-empty strings, got {key!r}")
        if isinstance(cond, Mapping):
            for op, val in cond.items():
                if op not in _OPERATORS:
                    raise InvalidArgument(f"filter on {key!r}: unknown operator {op!r}; supported: {_OPERATORS}")
                if op in ("$in", "$nin") and not isinstance(val, list | tuple):
                    raise InvalidArgument(f"filter on {key!r}: {op} needs a list, got {type(val).__name__}")


def matches(metadata: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """Equality on keys (a plain value), or {"$eq"|"$ne": v}, {"$in"|"$nin": [..]}; all must hold."""
    if not flt:
        return True
    for key, cond in flt.items():
        present = key in metadata
        value = metadata.get(key)
        if isinstance(cond, Mapping):
            for op, want in cond.items():
                if op == "$eq" and not (present and value == want):
                    return False
                if op == "$ne" and present and value == want:
                    return False
                if op == "$in" and not (present and value in want):
                    return False
                if op == "$nin" and present and value in want:
                    return False
        elif not (present and value == cond):
            return False
    return True


def search(
    index: VectorIndex,
    query: np.ndarray,
    k: int,
    oversample: int | None = None,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Scored]:
    """Top-k slots by int8-rescored inner product; `keep(slots) -> bool mask` filters candidates.
    `oversample` None = default_oversample(index.ntotal)."""
    if index.ntotal == 0:
        return []
    if oversample is None:
        oversample = default_oversample(index.ntotal)
    q = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
    codes = binarize(q)
    n = max(k, k * max(1, oversample))
    seen: set[int] = set()
    kept_slots: list[int] = []
    while True:
        _, ids = index.binary_search(codes, n)
        cand = np.array([s for s in ids[0] if s >= 0 and int(s) not in seen], dtype=np.int64)
        seen.update(int(s) for s in cand)
        if keep is not None and len(cand):
            cand = cand[np.asarray(keep(cand), dtype=bool)]
        kept_slots.extend(int(s) for s in cand)
        exhausted = n >= index.ntotal
        if keep is None or len(kept_slots) >= k * max(1, oversample) or exhausted:
            break
        n = min(index.ntotal, n * 4)
    if not kept_slots:
        return []
    slots = np.array(kept_slots, dtype=np.int64)
    scores = index.rescore(q, slots)
    top = np.argsort(-scores, kind="stable")[:k]
    return [Scored(int(slots[i]), float(scores[i])) for i in top]
