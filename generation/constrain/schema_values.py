"""The value-set model. A `Node` is the set of JSON values a (sub)schema accepts, per JSON type; children
of arrays and objects are `Key`s (conjunctions of schema references), resolved lazily, so recursion is
free. Also the two ways building stops: `Refuse` (a keyword that cannot be expressed) and
`UnsatisfiableSchema` (no value at all)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ragloom.errors import GrammarError

from .regex import ANYSTR, VRe


class UnsatisfiableSchema(GrammarError):
    """The schema accepts no JSON value at all (e.g. `false`, an empty enum, contradictory keywords)."""


class Refuse(Exception):
    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword
        self.message = message


# ==================================================================================================
# Value-set model. A Node is the set of JSON values a (sub)schema accepts, per JSON type; children of
# arrays and objects are Keys (conjunctions of schema references), resolved lazily, so recursion is free.
# ==================================================================================================

# A Key is a frozenset of atoms: ("s", sid) a schema, ("c", json) a constant, ("n", Key) a complement,
# ("v", i) a value set registered with the compiler (`Compiler.node_key`).
Key = frozenset
TRUE: Key = frozenset()
FALSE: Key = frozenset({("f",)})


def k_and(*keys: Key) -> Key:
    out: set = set()
    for k in keys:
        if k == FALSE:
            return FALSE
        out |= k
    return frozenset(out)


def k_not(k: Key) -> Key:
    if k == TRUE:
        return FALSE
    if k == FALSE:
        return TRUE
    if len(k) == 1:
        (a,) = k
        if a[0] == "n":
            return a[1]
    return frozenset({("n", k)})


@dataclass(frozen=True)
class NumAtom:
    kind: str  # "num" | "int" | "nonint"
    lo: Fraction | None = None
    lo_ex: bool = False
    hi: Fraction | None = None
    hi_ex: bool = False
    mult: Fraction | None = None
    nmult: tuple[Fraction, ...] = ()  # not a multiple of any of these (the complement of multipleOf)

    def contains(self, x: Fraction) -> bool:
        if self.kind == "int" and x.denominator != 1:
            return False
        if self.kind == "nonint" and x.denominator == 1:
            return False
        if self.lo is not None and (x < self.lo or (self.lo_ex and x == self.lo)):
            return False
        if self.hi is not None and (x > self.hi or (self.hi_ex and x == self.hi)):
            return False
        if self.mult is not None and (x / self.mult).denominator != 1:
            return False
        if any((x / m).denominator == 1 for m in self.nmult):
            return False
        return True


@dataclass(frozen=True)
class StrSet:
    lang: VRe = ANYSTR
    minlen: int = 0
    maxlen: int | None = None


ALLSTR = StrSet()


# (contains schema, min, max): the number of items matching the schema is in [min, max]
Count = tuple[Key, int, int | None]


@dataclass(frozen=True)
class ArrSet:
    prefix: tuple[Key, ...] = ()
    items: Key = TRUE
    min: int = 0
    max: int | None = None
    counts: tuple[Count, ...] = ()  # contains/minContains/maxContains, one per distinct contains schema
    unique: bool = False  # uniqueItems: no two items equal (emitted by enumerating finite item domains)

    def elem(self, i: int) -> Key:
        return self.prefix[i] if i < len(self.prefix) else self.items


def count_split(k: Key, counts: tuple[Count, ...]) -> list[tuple[Key, tuple[int, ...]]]:
    """An item key split by which contains schemas the item matches: (key, 1/0 per count)."""
    out: list[tuple[Key, tuple[int, ...]]] = [(k, ())]
    for c, _lo, _hi in counts:
        out = [(k_and(kk, c), (*h, 1)) for kk, h in out] + [(k_and(kk, k_not(c)), (*h, 0)) for kk, h in out]
    return out


@dataclass(frozen=True)
class ObjSet:
    props: tuple[tuple[str, Key], ...] = ()  # declared names in order, with the full child constraint
    required: frozenset[str] = frozenset()
    rest: tuple[tuple[VRe, Key], ...] = ((ANYSTR, TRUE),)  # partition of the other key names
    names: StrSet | None = None  # propertyNames (string part)
    min: int = 0
    max: int | None = None

    def declared(self) -> dict[str, Key]:
        return dict(self.props)


ARR_ANY = ArrSet()
OBJ_ANY = ObjSet()


@dataclass(frozen=True)
class Node:
    null: bool = False
    bools: frozenset[bool] = frozenset()
    nums: tuple[NumAtom, ...] = ()
    str: StrSet | None = None
    arrs: tuple[ArrSet, ...] = ()
    objs: tuple[ObjSet, ...] = ()

    def shallow_empty(self) -> bool:
        return not (self.null or self.bools or self.nums or self.str is not None or self.arrs or self.objs)


ANY = Node(True, frozenset({True, False}), (NumAtom("num"),), ALLSTR, (ARR_ANY,), (OBJ_ANY,))
NONE = Node()


def only(**kw: Any) -> Node:
    """ANY, with the given per-type parts replaced."""
    d: dict[str, Any] = dict(
        null=ANY.null, bools=ANY.bools, nums=ANY.nums, str=ANY.str, arrs=ANY.arrs, objs=ANY.objs
    )
    d.update(kw)
    return Node(**d)
