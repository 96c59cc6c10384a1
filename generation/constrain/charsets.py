"""Code-point sets: sorted, disjoint, inclusive intervals (`CharSet`), their algebra, and the
ECMA-262 / Python character classes that regex patterns name (`\\d`, `\\w`, `\\s`)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)


CharSet = tuple[tuple[int, int], ...]


def cs_norm(ivs: Iterable[tuple[int, int]]) -> CharSet:
    """Sorted, merged, surrogate-free intervals."""
    out: list[list[int]] = []
    for lo, hi in sorted(ivs):
        if lo > hi:
            continue
        # cut out the surrogate block: never part of a value
        parts = []
        if lo < SURROGATES[0]:
            parts.append((lo, min(hi, SURROGATES[0] - 1)))
        if hi > SURROGATES[1]:
            parts.append((max(lo, SURROGATES[1] + 1), hi))
        for a, b in parts:
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
    return tuple((a, b) for a, b in out)


UNIVERSE: CharSet = cs_norm([(0, MAX_CP)])
NOCHARS: CharSet = ()


def cs_of(chars: str) -> CharSet:
    return cs_norm((ord(c), ord(c)) for c in chars)


def cs_range(lo: str | int, hi: str | int) -> CharSet:
    a = lo if isinstance(lo, int) else ord(lo)
    b = hi if isinstance(hi, int) else ord(hi)
    return cs_norm([(a, b)])


def cs_union(*sets: CharSet) -> CharSet:
    return cs_norm(iv for s in sets for iv in s)


def cs_complement(a: CharSet) -> CharSet:
    out = []
    prev = 0
    for lo, hi in a:
        if lo > prev:
            out.append((prev, lo - 1))
        prev = hi + 1
    if prev <= MAX_CP:
        out.append((prev, MAX_CP))
    return cs_norm(out)


def cs_inter(a: CharSet, b: CharSet) -> CharSet:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def cs_minus(a: CharSet, b: CharSet) -> CharSet:
    return cs_inter(a, cs_complement(b))


def cs_size(a: CharSet) -> int:
    return sum(hi - lo + 1 for lo, hi in a)


def cs_contains(a: CharSet, cp: int) -> bool:
    i = bisect.bisect_right(a, (cp, MAX_CP + 1)) - 1
    return i >= 0 and a[i][0] <= cp <= a[i][1]


# ECMA-262 character classes (JSON Schema patterns use ECMA-262 semantics).
DIGIT = cs_range("0", "9")
WORD = cs_union(cs_range("a", "z"), cs_range("A", "Z"), DIGIT, cs_of("_"))
ECMA_SPACE = cs_norm(
    [
        (9, 13),
        (0x20, 0x20),
        (0xA0, 0xA0),
        (0x1680, 0x1680),
        (0x2000, 0x200A),
        (0x2028, 0x2029),
        (0x202F, 0x202F),
        (0x205F, 0x205F),
        (0x3000, 0x3000),
        (0xFEFF, 0xFEFF),
    ]
)
PY_ASCII_SPACE = cs_of(" \t\n\r\f\v")
ECMA_LINE_TERMINATORS = cs_norm([(10, 10), (13, 13), (0x2028, 0x2029)])
