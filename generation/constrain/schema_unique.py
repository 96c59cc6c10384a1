"""`uniqueItems: true`, exactly, for arrays whose items range over a few values.

A context-free grammar cannot compare two arbitrary items, but when every item position takes one of
finitely many values it can remember which values are already used: the array's rules are indexed by
that set (an item may be any value outside it), so the grammar accepts exactly the arrays with pairwise
distinct items. Item domains are enumerated from the value-set nodes: null, booleans, number points,
bounded integer ranges or multiples, finite string languages, and fixed-shape arrays/objects of such
values. Values are compared under JSON equality (1 == 1.0, true != 1, objects whatever their key
order), and each enumerated value gets its own one-value node (`Compiler.node_key`), so every text the
grammar accepts for it denotes that value. An infinite or large domain, or too many sets (the grammar
grows with 2^values), refuses `uniqueItems`.
"""

from __future__ import annotations

from collections.abc import Hashable
from decimal import Decimal, localcontext
from fractions import Fraction
from itertools import combinations, product
from math import comb
from typing import TYPE_CHECKING, Any

from . import regex as R
from .regex import ANYSTR, lit
from .schema_numbers import is_num, to_fraction
from .schema_values import FALSE, ArrSet, Key, Node, NumAtom, ObjSet, Refuse, StrSet

if TYPE_CHECKING:
    from .schema_compiler import Compiler
    from .schema_emitter import Emitter

#: distinct values one item position may take
MAX_VALUES = 16
#: sets of used values (one grammar rule each) per array: the LALR tables grow with them (~2 ms each)
MAX_STATES = 64
#: integer ranges scanned for their members at most this wide
_MAX_SCAN = 100_000

# (identity under JSON equality, key of the one-value node, the value as Python data)
Value = tuple[Hashable, Key, Any]


def value_id(v: Any) -> Hashable:
    """An identity for a JSON value such that two values are equal under JSON Schema iff ids are equal."""
    if v is None:
        return ("null",)
    if isinstance(v, bool):
        return ("bool", v)
    if is_num(v) or isinstance(v, Fraction):
        return ("num", to_fraction(v))
    if isinstance(v, str):
        return ("str", v)
    if isinstance(v, list):
        return ("arr", tuple(value_id(e) for e in v))
    if isinstance(v, dict):
        return ("obj", frozenset((k, value_id(e)) for k, e in v.items()))
    raise TypeError(f"not a JSON value: {v!r}")


def _py_num(x: Fraction) -> int | Decimal:
    if x.denominator == 1:
        return int(x)
    with localcontext() as ctx:
        ctx.prec = 200  # terminating decimals (every number a schema can name) divide exactly
        return Decimal(x.numerator) / Decimal(x.denominator)


def _points(a: NumAtom, cap: int) -> list[Fraction] | None:
    """The members of a bounded atom of integers or of multiples of some step, or None when unbounded,
    too many, or dense (non-integers without multipleOf)."""
    if a.lo is None or a.hi is None:
        return None
    if a.lo == a.hi:
        return [a.lo] if a.contains(a.lo) else []
    step = a.mult if a.mult is not None else Fraction(1) if a.kind == "int" else None
    if step is None:
        return None
    lo = -((-a.lo / step).numerator // (a.lo / step).denominator)  # ceil(lo / step)
    hi = (a.hi / step).numerator // (a.hi / step).denominator  # floor(hi / step)
    if hi - lo > _MAX_SCAN:
        return None
    out = []
    for i in range(lo, hi + 1):
        if a.contains(i * step):
            out.append(i * step)
            if len(out) > cap:
                return None
    return out


class Values:
    """Enumerates the values of keys (memoized per key), or None for infinite / too large sets."""

    def __init__(self, comp: Compiler, cap: int = MAX_VALUES) -> None:
        self.c = comp
        self.cap = cap
        self._memo: dict[Key, list[Value] | None] = {}

    def of(self, key: Key, depth: int = 0) -> list[Value] | None:
        if key == FALSE:
            return []
        if key in self._memo:
            return self._memo[key]
        if depth > 8:
            return None
        self._memo[key] = None  # a recursive value set is infinite
        out = self.node(self.c.node(key), depth)
        self._memo[key] = out
        return out

    def node(self, n: Node, depth: int) -> list[Value] | None:
        c = self.c
        out: dict[tuple[Hashable, Key], Any] = {}

        def add(vid: Hashable, node: Node, py: Any) -> bool:
            out.setdefault((vid, c.node_key(node)), py)
            return len({v for v, _ in out}) <= self.cap

        if n.null and not add(("null",), Node(null=True), None):
            return None
        for b in sorted(n.bools):
            if not add(("bool", b), Node(bools=frozenset({b})), b):
                return None
        for a in n.nums:
            pts = _points(a, self.cap)
            if pts is None:
                return None
            for x in pts:
                if not add(("num", x), Node(nums=(NumAtom("num", x, False, x, False),)), _py_num(x)):
                    return None
        if n.str is not None:
            if n.str.lang == ANYSTR:
                return None
            try:
                words = R.finite_strings(c.str_vre(n.str), self.cap)
            except R.TooComplex:
                return None
            if words is None:
                return None
            for w in words:
                if not add(("str", w), Node(str=StrSet(lit(w))), w):
                    return None
        for arr in n.arrs:
            vals = self.arrays(arr, depth)
            if vals is None:
                return None
            for vid, node, py in vals:
                if not add(vid, node, py):
                    return None
        for obj in n.objs:
            vals = self.objects(obj, depth)
            if vals is None:
                return None
            for vid, node, py in vals:
                if not add(vid, node, py):
                    return None
        return [(vid, key, py) for (vid, key), py in out.items()]

    def arrays(self, a: ArrSet, depth: int) -> list[tuple[Hashable, Node, Any]] | None:
        hi = a.max
        if a.items == FALSE:
            hi = len(a.prefix) if hi is None else min(hi, len(a.prefix))
        if hi is None:
            return None
        out: list[tuple[Hashable, Node, Any]] = []
        for length in range(a.min, hi + 1):
            doms = []
            for i in range(length):
                d = self.of(a.elem(i), depth + 1)
                if d is None:
                    return None
                doms.append(d)
            size = 1
            for d in doms:
                size *= len(d)
            if size > self.cap * 4:
                return None
            for combo in product(*doms):
                ids = [v[0] for v in combo]
                py = [v[2] for v in combo]
                if a.unique and len(set(ids)) < len(ids):
                    continue
                if not all(_in(sum(1 for e in py if self.c.accepts(c, e)), lo, hi) for c, lo, hi in a.counts):
                    continue
                node = Node(arrs=(ArrSet(tuple(v[1] for v in combo), FALSE, length, length),))
                out.append((("arr", tuple(ids)), node, py))
        return out

    def objects(self, o: ObjSet, depth: int) -> list[tuple[Hashable, Node, Any]] | None:
        if any(k != FALSE for _, k in o.rest):
            return None  # other names allowed: infinitely many objects
        names = [(n, k) for n, k in o.props if k != FALSE]
        if not o.required <= {n for n, _ in names}:
            return []  # a required name that cannot occur: no object
        optional = [n for n, _ in names if n not in o.required]
        if len(optional) > 8:
            return None
        out: list[tuple[Hashable, Node, Any]] = []
        for r in range(len(optional) + 1):
            for extra in combinations(optional, r):
                chosen = [(n, k) for n, k in names if n in o.required or n in extra]
                if len(chosen) < o.min or (o.max is not None and len(chosen) > o.max):
                    continue
                doms = []
                for _, k in chosen:
                    d = self.of(k, depth + 1)
                    if d is None:
                        return None
                    doms.append(d)
                for combo in product(*doms):
                    props = tuple((n, v[1]) for (n, _), v in zip(chosen, combo, strict=True))
                    node = Node(objs=(ObjSet(props, frozenset(n for n, _ in chosen), ((ANYSTR, FALSE),)),))
                    vid = ("obj", frozenset((n, v[0]) for (n, _), v in zip(chosen, combo, strict=True)))
                    py = {n: v[2] for (n, _), v in zip(chosen, combo, strict=True)}
                    out.append((vid, node, py))
                    if len(out) > self.cap * 4:
                        return None
        return out


class UniqueArray:
    """The item domains of one uniqueItems array and its length bound."""

    def __init__(self, values: Values, a: ArrSet, mx: int | None) -> None:
        self.a = a
        k = len(a.prefix)
        tail: list[Value] = []
        if a.items != FALSE and (mx is None or mx > k):
            t = values.of(a.items)
            if t is None:
                raise Refuse("uniqueItems", _too_many("items"))
            tail = t
        tail_ids = {v[0] for v in tail}
        bound = k + len(tail_ids)
        self.length = bound if mx is None else min(mx, bound)
        self.doms: list[list[Value]] = []
        for i in range(min(self.length, k)):
            d = values.of(a.prefix[i])
            if d is None:
                raise Refuse("uniqueItems", _too_many(f"prefixItems[{i}]"))
            self.doms.append(d)
        self.tail = tail
        universe = {v[0] for d in (*self.doms, tail) for v in d}
        self.composite = any(isinstance(v, tuple) and v[0] in ("arr", "obj") for v in universe)
        states = sum(comb(len(universe), i) for i in range(self.length + 1))
        if states > MAX_STATES:
            raise Refuse(
                "uniqueItems",
                f"{len(universe)} distinct item values make {states} sets of used values "
                f"(at most {MAX_STATES})",
            )
        # which contains schemas each value matches (so the counts follow from the set of used values)
        self.hits: dict[Hashable, tuple[int, ...]] = {}
        for d in (*self.doms, tail):
            for vid, _k, py in d:
                if vid not in self.hits:
                    self.hits[vid] = tuple(int(values.c.accepts(c, py)) for c, _lo, _hi in a.counts)

    def dom(self, i: int) -> list[Value]:
        return self.doms[i] if i < len(self.doms) else self.tail

    def keys(self) -> list[Key]:
        return [k for d in (*self.doms, self.tail) for _, k, _ in d]


def _in(n: int, lo: int, hi: int | None) -> bool:
    return lo <= n and (hi is None or n <= hi)


def _too_many(where: str) -> str:
    return (
        f"uniqueItems needs the {where} values enumerated, and they are infinitely many or more than "
        f"{MAX_VALUES} (a grammar cannot compare two arbitrary items)"
    )


def unique_array_rule(em: Emitter, a: ArrSet, u: UniqueArray) -> str | None:
    """The array rule: states are the sets of values used so far (the count of items is their size)."""
    a = u.a
    bounds = tuple((lo, hi) for _c, lo, hi in a.counts)
    sig = (
        "uniq",
        tuple(tuple((v[0], em.vname(v[1])) for v in d) for d in u.doms),
        tuple((v[0], em.vname(v[1])) for v in u.tail),
        a.min,
        u.length,
        tuple(sorted(u.hits.items(), key=repr)),
        bounds,
    )

    def hits(s: frozenset) -> list[int]:
        return [sum(u.hits[v][j] for v in s) for j in range(len(bounds))]

    def too_many(s: frozenset) -> bool:
        return any(hi is not None and n > hi for n, (_lo, hi) in zip(hits(s), bounds, strict=True))

    def enough(s: frozenset) -> bool:
        return all(n >= lo for n, (lo, _hi) in zip(hits(s), bounds, strict=True))

    def options(used: frozenset) -> list[tuple[str, frozenset]]:
        i = len(used)
        if i >= u.length:
            return []
        out = []
        for vid, key, _py in u.dom(i):
            if vid in used:
                continue
            nxt = used | {vid}
            if too_many(nxt):
                continue
            v = em.vname(key)
            if v is not None:
                out.append((v, nxt))
        return out

    def rest(used: frozenset) -> str:
        def build(name: str) -> list[list[str]]:
            alts: list[list[str]] = []
            if len(used) >= a.min and enough(used):
                alts.append([])
            for v, nxt in options(used):
                alts.append(['","', v, rest(nxt)])
            return alts

        return em.helper((*sig, tuple(sorted(used, key=repr))), build)

    def build_arr(name: str) -> list[list[str]]:
        alts: list[list[str]] = []
        if a.min == 0 and enough(frozenset()):
            alts.append(['"["', '"]"'])
        for v, nxt in options(frozenset()):
            alts.append(['"["', v, rest(nxt), '"]"'])
        return alts

    return em.helper((*sig, "array"), build_arr)
