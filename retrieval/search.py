"""Two-stage search: Hamming candidates (k x oversample) -> int8 rescoring with the float query.

Metadata filters are applied to candidates before rescoring; when a filter drops too many, the
candidate pool grows (x4 each round) until k survive or the whole index has been scanned, so a
selective filter costs more candidates, never missing results a full scan would find.

Grouped search (each document once, as its best chunk: SearchRequest.group_by_document) grows
the pool the same way until it holds k distinct groups, so a long document whose chunks fill the
top of the ranking does not leave fewer than k documents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
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
    """InvalidArgument (field "filter") unless flt is a filter `matches` understands."""
    if flt is None:
        return
    if not isinstance(flt, Mapping):
        raise InvalidArgument(
            f"filter must be an object of metadata key -> value, got {type(flt).__name__}", field="filter"
        )
    for key, cond in flt.items():
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"filter keys must be non-empty strings, got {key!r}", field="filter")
        if isinstance(cond, Mapping):
            for op, val in cond.items():
                if op not in _OPERATORS:
                    raise InvalidArgument(
                        f"filter on {key!r}: unknown operator {op!r}; supported: {_OPERATORS}", field="filter"
                    )
                if op in ("$in", "$nin") and not isinstance(val, list | tuple):
                    raise InvalidArgument(
                        f"filter on {key!r}: {op} needs a list, got {type(val).__name__}", field="filter"
                    )


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
    group: Callable[[np.ndarray], Sequence[Hashable]] | None = None,
) -> list[Scored]:
    """Top-k slots by int8-rescored inner product, best first. `oversample` None =
    default_oversample(index.ntotal).

    keep(slots) -> bool mask filters candidates. group(slots) -> a key per slot (its document)
    makes the result the best slot of each of the k best groups, ranked by that slot's score.

    The candidate pool (Hamming top-n, rescored) grows x4 a round until it holds `oversample`
    candidates per slot of the ranking down to the k-th result, or the index has no more to give.
    Without a filter or groups that depth is k, so one round of k x oversample candidates; a
    filter that drops candidates, or groups whose best slots lie deep (a long document whose
    chunks crowd the top), make it search deeper, so k results come back whenever the index holds
    k that pass (as an exhaustive search would find them), never fewer."""
    if index.ntotal == 0:
        return []
    if oversample is None:
        oversample = default_oversample(index.ntotal)
    per_hit = max(1, oversample)
    q = np.ascontiguousarray(np.atleast_2d(query), dtype=np.float32)
    codes = binarize(q)
    n = max(k, k * per_hit)
    seen: set[int] = set()
    pool_slots: list[np.ndarray] = []
    pool_scores: list[np.ndarray] = []
    while True:
        _, ids = index.binary_search(codes, n)
        found = [int(s) for s in ids[0] if s >= 0]
        cand = np.array([s for s in found if s not in seen], dtype=np.int64)
        seen.update(int(s) for s in cand)
        if keep is not None and len(cand):
            cand = cand[np.asarray(keep(cand), dtype=bool)]
        if len(cand):  # only the new candidates are rescored; earlier rounds' scores stand
            pool_slots.append(cand)
            pool_scores.append(index.rescore(q, cand))
        slots = np.concatenate(pool_slots) if pool_slots else np.zeros(0, np.int64)
        scores = np.concatenate(pool_scores) if pool_scores else np.zeros(0, np.float32)
        order = np.argsort(-scores, kind="stable")
        picked, depth = _ranked(slots, order, k, group)
        # the index has no more to give: every vector was asked for, or fewer came back than asked
        # (an IVF index returns only what its probed lists hold, and asking for more does not change that)
        exhausted = n >= index.ntotal or len(found) < min(n, index.ntotal)
        if exhausted or (depth is not None and len(slots) >= depth * per_hit):
            return [Scored(int(slots[i]), float(scores[i])) for i in picked]
        n = min(index.ntotal, n * 4)


def _ranked(
    slots: np.ndarray, order: np.ndarray, k: int, group: Callable[[np.ndarray], Sequence[Hashable]] | None
) -> tuple[list[int], int | None]:
    """The positions (into slots) of the top k results in score order, and the depth of the
    ranking they take: how many slots, best first, down to the k-th result (None: fewer than k)."""
    if group is None:
        top = [int(i) for i in order[:k]]
        return top, (k if len(top) == k else None)
    picked: list[int] = []
    groups: set[Hashable] = set()
    step = max(64, k)  # keys are looked up a block at a time, only as deep as the ranking needs
    for start in range(0, len(order), step):
        block = order[start : start + step]
        for offset, (i, key) in enumerate(zip(block, group(slots[block]))):
            if key in groups:
                continue
            groups.add(key)
            picked.append(int(i))
            if len(picked) == k:
                return picked, start + offset + 1
    return picked, None
