"""JSON Schema (draft 2020-12) -> lark grammar (LALR(1)) for constrained decoding.

`schema_to_grammar(schema)` returns a `JsonGrammar` whose lark text (start rule `start`) accepts exactly the
JSON texts that (a) validate against the schema and (b) are written in the engine's JSON form:

- every string is one terminal; its body uses the canonical escaping of `json.dumps(ensure_ascii=False)`
  (only `"`, `\\` and control characters escaped; `\\b \\f \\n \\r \\t` short forms, other controls as
  lowercase `\\u00xx`), so a string's text and its value correspond one to one and keywords such as
  `pattern`, `minLength` or `enum` are exact;
- every number is one terminal; numbers with bounds or `multipleOf` are written positionally (no exponent),
  other numbers may use any JSON number syntax;
- object properties come in the order the schema declares them (`properties` order, then names that are
  only in `required`), each at most once, and then the other properties;
- whitespace between tokens: one `%ignore`d terminal `[ \\t\\n\\r]{1,N}` (N = `max_whitespace`); the engine
  never lets two ignored tokens follow each other, so every gap is bounded. Compact output and output
  indented by 2 (up to the bound) are both accepted.

`canonical_dumps(instance, schema, indent=...)` writes an instance in that form (the conformance test and the
docs use it): declared properties first in declared order, then the rest in instance order; numbers with
an integral value as integers, other numbers positionally from their shortest repr.

Supported keywords (exactly): type, enum, const, properties, required, additionalProperties,
patternProperties (up to 4 patterns), propertyNames, minProperties (<= 1 when undeclared properties are
allowed: duplicate undeclared keys cannot be ruled out by a grammar), maxProperties, items, prefixItems,
minItems, maxItems, uniqueItems: false, contains/minContains/maxContains where the contains-schema can be
complemented, minLength, maxLength, pattern (ECMA-262 subset: no lookarounds, backreferences, word
boundaries or Unicode property escapes), format (see `FORMATS`), minimum, maximum, exclusiveMinimum,
exclusiveMaximum, multipleOf (exact digit automata up to a size limit), allOf (by intersection), anyOf (by
union), oneOf (when the branches can be made exclusive by complement or are provably disjoint), not and
if/then/else (when the schema involved can be complemented), $ref/$defs (local JSON pointers, anchors,
`$id`-relative references in the same document; recursion), dependentRequired and dependentSchemas (by case
split, small counts), unevaluatedProperties/unevaluatedItems when no anyOf/oneOf/if/not decides what is
evaluated. Annotations ($schema, $id, $comment, title, description, default, examples, deprecated,
readOnly, writeOnly, $anchor, content*) are ignored; unknown keywords are ignored with a warning; the draft
2019-09 `dependencies` is read as dependentRequired/dependentSchemas. Anything else that constrains is
refused with `UnsupportedKeyword` naming it (or dropped with a warning when `strict=False`): uniqueItems:
true, $dynamicRef, remote $ref, custom metaschemas, complements that cannot be expressed, alternatives
(anyOf/oneOf/enum/not/if/contains/dependent*) that LALR(1) or the lexer cannot tell apart. A schema no value
satisfies raises `UnsatisfiableSchema`.

Formats: `formats="assert"` asserts exactly date, ipv4, ipv6, uuid, uri, uri-reference, email (RFC 5321
dot-atom or quoted local part; domain of RFC 1123 labels or an IPv4/IPv6 literal), duration,
json-pointer and relative-json-pointer, and refuses hostname, idn-*, iri*, uri-template, regex, and
date-time/time (RFC 3339 leap seconds tie second 60 to the offset: an ~11k-state automaton).
`formats="subset"` accepts date-time/time without leap seconds (a sound subset: every accepted string is
valid). `formats="annotate"` ignores `format` (draft 2020-12's default vocabulary). Unknown formats are
annotations (a warning).

Grammar shape: one rule per distinct value set (identical subschemas share rules), object and array rules
as right-recursive chains (O(properties x count bound) rules), hash-consed helper rules. Grammars whose
values have at most one array and one object alternative are deterministic by construction; the others
are checked with lark's LALR analysis plus a lexer check (no two overlapping terminals acceptable in the
same parser state) and refused naming the keyword that introduced the alternatives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from functools import partial
from math import gcd
from typing import Any, Literal
from urllib.parse import unquote, urldefrag, urljoin

from ragloom.errors import CompileTimeout, GrammarError, UnsupportedKeyword

from . import regex as R
from .regex import ANYSTR, DFA, EMPTY, EPS, VRe, alt, cat, lit, rep

__all__ = ["JsonGrammar", "UnsatisfiableSchema", "schema_to_grammar", "canonical_dumps", "FORMATS"]


@dataclass
class JsonGrammar:
    grammar: str  # lark grammar text, start rule "start", LALR(1)
    warnings: list[str] = field(default_factory=list)  # one message per keyword dropped or ignored


# ==================================================================================================
# Internal error used while building: a keyword that cannot be expressed
# ==================================================================================================


class UnsatisfiableSchema(GrammarError):
    """The schema accepts no JSON value at all (e.g. `false`, an empty enum, contradictory keywords)."""


class _Refuse(Exception):
    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword
        self.message = message


ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$anchor",
        "$dynamicAnchor",
        "$vocabulary",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "$defs",
        "definitions",
    }
)

# keywords whose value is a schema / list of schemas / map of schemas (for $id and anchor discovery)
_SINGLE_KW = (
    "items",
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "additionalItems",
    "contentSchema",
)
_LIST_KW = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP_KW = ("$defs", "definitions", "properties", "patternProperties", "dependentSchemas")

KNOWN = frozenset(
    ANNOTATIONS
    | set(_SINGLE_KW)
    | set(_LIST_KW)
    | set(_MAP_KW)
    | {
        "type",
        "enum",
        "const",
        "required",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "format",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minContains",
        "maxContains",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "$ref",
        "$dynamicRef",
        "dependencies",
    }
)

_METASCHEMAS_2020 = frozenset(
    {"https://json-schema.org/draft/2020-12/schema", "http://json-schema.org/draft/2020-12/schema"}
)
_METASCHEMAS = _METASCHEMAS_2020 | frozenset(
    {
        "https://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft/2019-09/schema",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft-07/schema",
        "http://json-schema.org/draft-06/schema",
        "http://json-schema.org/draft-04/schema",
    }
)

_TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")

# ==================================================================================================
# Value-set model. A Node is the set of JSON values a (sub)schema accepts, per JSON type; children of
# arrays and objects are Keys (conjunctions of schema references), resolved lazily, so recursion is free.
# ==================================================================================================

# A Key is a frozenset of atoms: ("s", sid) a schema, ("c", json) a constant, ("n", Key) a complement.
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
        return True


@dataclass(frozen=True)
class StrSet:
    lang: VRe = ANYSTR
    minlen: int = 0
    maxlen: int | None = None


ALLSTR = StrSet()


@dataclass(frozen=True)
class ArrSet:
    prefix: tuple[Key, ...] = ()
    items: Key = TRUE
    min: int = 0
    max: int | None = None
    contains: Key | None = None  # the number of items matching it is in [cmin, cmax]
    cmin: int = 1
    cmax: int | None = None

    def elem(self, i: int) -> Key:
        return self.prefix[i] if i < len(self.prefix) else self.items


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


def _only(**kw: Any) -> Node:
    """ANY, with the given per-type parts replaced."""
    d: dict[str, Any] = dict(
        null=ANY.null, bools=ANY.bools, nums=ANY.nums, str=ANY.str, arrs=ANY.arrs, objs=ANY.objs
    )
    d.update(kw)
    return Node(**d)


# ==================================================================================================
# Numbers
# ==================================================================================================


def to_fraction(x: Any) -> Fraction:
    if isinstance(x, bool):
        raise TypeError("bool is not a number")
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        if x != x or x in (float("inf"), float("-inf")):
            raise ValueError("non-finite number")
        return Fraction(Decimal(repr(x)))
    if isinstance(x, Decimal):
        return Fraction(x)
    if isinstance(x, Fraction):
        return x
    raise TypeError(f"not a number: {x!r}")


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float, Decimal)) and not isinstance(x, bool)


def _dec_parts(x: Fraction) -> tuple[int, str]:
    """x >= 0 with a terminating decimal expansion -> (integer part, fraction digits without trailing 0s)."""
    ip = x.numerator // x.denominator
    rem = x - ip
    digits = []
    guard = 0
    while rem:
        rem *= 10
        d = rem.numerator // rem.denominator
        digits.append(str(d))
        rem -= d
        guard += 1
        if guard > 400:
            raise _Refuse("multipleOf", "number with a non-terminating or too long decimal expansion")
    return ip, "".join(digits)


_D = R.Chars(R.DIGIT)
_NZ = R.Chars(R.cs_range("1", "9"))


def _digit_set(a: int, b: int) -> VRe:
    return R.chars(R.cs_range(str(a), str(b))) if a <= b else EMPTY


def _same_len_range(lo: str, hi: str) -> VRe:
    if lo == hi:
        return lit(lo)
    if lo[0] == hi[0]:
        return cat(lit(lo[0]), _same_len_range(lo[1:], hi[1:]))
    n = len(lo) - 1
    if lo[1:] == "0" * n and hi[1:] == "9" * n:
        return cat(_digit_set(int(lo[0]), int(hi[0])), rep(_D, n, n))
    parts = [cat(lit(lo[0]), _same_len_range(lo[1:], "9" * n))]
    if int(hi[0]) - int(lo[0]) > 1:
        parts.append(cat(_digit_set(int(lo[0]) + 1, int(hi[0]) - 1), rep(_D, n, n)))
    parts.append(cat(lit(hi[0]), _same_len_range("0" * n, hi[1:])))
    return alt(*parts)


def int_range(a: int, b: int | None) -> VRe:
    """Canonical decimal integers (no sign, no leading zeros) with value in [a, b]; a >= 0."""
    a = max(a, 0)
    if b is not None and a > b:
        return EMPTY
    la = len(str(a))
    lb = len(str(b)) if b is not None else la
    parts = []
    for L in range(la, lb + 1):
        lo = max(a, 10 ** (L - 1) if L > 1 else 0)
        hi = min(b, 10**L - 1) if b is not None else 10**L - 1
        if lo <= hi:
            parts.append(_same_len_range(str(lo), str(hi)))
    if b is None:
        parts.append(cat(_NZ, rep(_D, la, None)))
    return alt(*parts)


def _frac(lo: str | None, lo_s: bool, hi: str | None, hi_s: bool) -> tuple[bool, VRe]:
    """Digit strings s (the fraction part, possibly empty) with lo <(=) 0.s <(=) hi.
    lo/hi: digits without trailing zeros ('' is zero) or None (unbounded). -> (empty ok, non-empty part)."""
    if lo == "" and not lo_s:
        lo = None
    if lo is None and hi is None:
        return True, rep(_D, 1, None)
    if hi is None and lo == "":
        return False, cat(rep(lit("0"), 0, None), _NZ, rep(_D, 0, None))
    if hi == "":
        if hi_s or lo is not None:
            return False, EMPTY
        return True, rep(lit("0"), 1, None)
    empty_ok = lo is None
    free: list[int] = []
    parts: list[VRe] = []
    for c in range(10):
        if lo is None:
            lstate: str | None = None  # free
        else:
            l0 = int(lo[0]) if lo else 0
            if c > l0:
                lstate = None
            elif c == l0:
                lstate = lo[1:] if lo else ""
            else:
                continue
        if hi is None:
            hstate: str | None = None
        else:
            h0 = int(hi[0])
            if c < h0:
                hstate = None
            elif c == h0:
                hstate = hi[1:]
            else:
                continue
        l_tight = lo is not None and lstate is not None
        h_tight = hi is not None and hstate is not None
        if not l_tight and not h_tight:
            free.append(c)
            continue
        e, ne = _frac(lstate if l_tight else None, lo_s, hstate if h_tight else None, hi_s)
        parts.append(cat(lit(str(c)), alt(EPS, ne) if e else ne))
    if free:
        # free digits are contiguous ranges
        runs: list[list[int]] = []
        for c in free:
            if runs and runs[-1][-1] == c - 1:
                runs[-1].append(c)
            else:
                runs.append([c])
        cs = R.cs_union(*(R.cs_range(str(r[0]), str(r[-1])) for r in runs))
        parts.append(cat(R.Chars(cs), rep(_D, 0, None)))
    return empty_ok, alt(*parts)


def _with_frac(ipart: VRe, fr: tuple[bool, VRe]) -> VRe:
    e, ne = fr
    tail = cat(lit("."), ne)
    return cat(ipart, alt(EPS, tail) if e else tail)


def _nonneg(L: Fraction, ls: bool, H: Fraction | None, hs: bool, kind: str) -> VRe:
    """Positional non-negative numbers x (no sign) with L <(=) x <(=) H."""
    if H is not None and (H < L or (H == L and (ls or hs))):
        return EMPTY
    LI, LF = _dec_parts(L)
    if H is not None:
        HI, HF = _dec_parts(H)
    if kind == "int":
        a = LI if (LF == "" and not ls) else LI + 1
        b = None if H is None else (HI if not (HF == "" and hs) else HI - 1)
        return int_range(a, b)
    nonint = kind == "nonint"

    def fr(lo: str | None, lo_s: bool, hi: str | None, hi_s: bool) -> tuple[bool, VRe]:
        if nonint and (lo is None or (lo == "" and not lo_s)):
            lo, lo_s = "", True
        return _frac(lo, lo_s, hi, hi_s)

    if H is None:
        return alt(
            _with_frac(lit(str(LI)), fr(LF, ls, None, False)),
            _with_frac(int_range(LI + 1, None), fr(None, False, None, False)),
        )
    if LI == HI:
        return _with_frac(lit(str(LI)), fr(LF, ls, HF, hs))
    return alt(
        _with_frac(lit(str(LI)), fr(LF, ls, None, False)),
        _with_frac(int_range(LI + 1, HI - 1), fr(None, False, None, False)),
        _with_frac(lit(str(HI)), fr(None, False, HF, hs)),
    )


JSON_NUMBER = R.parse_pattern(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", search=False)
JSON_INTEGER = R.parse_pattern(r"-?(?:0|[1-9][0-9]*)", search=False)


def number_range_vre(kind: str, lo: Fraction | None, lo_ex: bool, hi: Fraction | None, hi_ex: bool) -> VRe:
    if lo is None and hi is None:
        if kind == "num":
            return JSON_NUMBER
        if kind == "int":
            return JSON_INTEGER
    return positional_range_vre(kind, lo, lo_ex, hi, hi_ex)


def positional_range_vre(
    kind: str, lo: Fraction | None, lo_ex: bool, hi: Fraction | None, hi_ex: bool
) -> VRe:
    """Numbers without exponent, of the given kind, in the interval."""
    parts = []
    # x >= 0
    if hi is None or hi > 0 or (hi == 0 and not hi_ex):
        if lo is None or lo < 0:
            L, ls = Fraction(0), False
        else:
            L, ls = lo, lo_ex
        parts.append(_nonneg(L, ls, hi, hi_ex, kind))
    # x <= 0, written "-y"
    if lo is None or lo < 0 or (lo == 0 and not lo_ex):
        if hi is not None and hi <= 0:
            ylo, ylo_ex = -hi, hi_ex
        else:
            ylo, ylo_ex = Fraction(0), False
        yhi, yhi_ex = (None, False) if lo is None else (-lo, lo_ex)
        parts.append(cat(lit("-"), _nonneg(ylo, ylo_ex, yhi, yhi_ex, kind)))
    return alt(*parts)


def _mult_dfa(m: Fraction, integer: bool) -> DFA:
    """Positional numbers that are multiples of m (a terminating decimal)."""
    p, q = m.numerator, m.denominator
    a = b = 0
    while q % 2 == 0:
        q //= 2
        a += 1
    while q % 5 == 0:
        q //= 5
        b += 1
    if q != 1:
        raise _Refuse("multipleOf", f"multipleOf {m} is not a terminating decimal")
    s = max(a, b)
    M = p * 10**s // m.denominator
    if M * (s + 4) > 4000:
        raise _Refuse("multipleOf", f"multipleOf {float(m)!r} needs too large a digit automaton")
    atoms = [R.cs_of(str(d)) for d in range(10)] + [R.cs_of("-"), R.cs_of(".")]
    MINUS, DOT = 10, 11
    states: dict[tuple, int] = {}
    trans: list[dict[int, int]] = []
    finals: set[int] = set()

    def st(key: tuple) -> int:
        if key not in states:
            states[key] = len(trans)
            trans.append({})
        return states[key]

    start = st(("start",))
    neg = st(("neg",))
    work: list[tuple[Any, ...]] = [("start",), ("neg",)]
    trans[start][MINUS] = neg
    seen = set(work)

    def link(frm: tuple, sym: int, to: tuple) -> None:
        trans[st(frm)][sym] = st(to)
        if to not in seen:
            seen.add(to)
            work.append(to)

    while work:
        key: tuple[Any, ...] = work.pop()
        kind = key[0]
        if kind in ("start", "neg"):
            link(key, 0, ("zero",))
            for d in range(1, 10):
                link(key, d, ("int", d % M))
        elif kind in ("zero", "int"):
            r = 0 if kind == "zero" else key[1]
            if (r * 10**s) % M == 0:
                finals.add(st(key))
            if kind == "int":
                for d in range(10):
                    link(key, d, ("int", (r * 10 + d) % M))
            if not integer:
                link(key, DOT, ("dot", r))
        elif kind == "dot":
            r = key[1]
            if s == 0:
                link(key, 0, ("zeros", r, True))
            else:
                for d in range(10):
                    link(key, d, ("frac", 1, (r * 10 + d) % M))
        elif kind == "frac":
            j, r = key[1], key[2]
            if (r * 10 ** (s - j)) % M == 0:
                finals.add(st(key))
            if j < s:
                for d in range(10):
                    link(key, d, ("frac", j + 1, (r * 10 + d) % M))
            else:
                link(key, 0, ("zeros", r, True))
        elif kind == "zeros":
            r = key[1]
            if r % M == 0:
                finals.add(st(key))
            link(key, 0, key)
    return R.minimize(DFA(atoms, trans, finals))


def num_atom_vre(a: NumAtom) -> VRe:
    base = number_range_vre(a.kind, a.lo, a.lo_ex, a.hi, a.hi_ex)
    if a.mult is None or R.is_empty_lang(base):
        return base
    if a.lo is not None and a.lo == a.hi:
        return base if a.contains(a.lo) else EMPTY
    base = positional_range_vre(a.kind, a.lo, a.lo_ex, a.hi, a.hi_ex)
    d = R.product(R.to_dfa(base), _mult_dfa(a.mult, a.kind == "int"), "and")
    try:
        return R.dfa_to_vre(d, max_size=6000)
    except R.TooComplex:
        raise _Refuse(
            "multipleOf",
            f"multipleOf {float(a.mult)!r} combined with the other number constraints "
            "gives too large an expression",
        ) from None


def _atom_and(a: NumAtom, b: NumAtom) -> NumAtom | None:
    kinds = {a.kind, b.kind}
    if kinds == {"int", "nonint"}:
        return None
    kind = "int" if "int" in kinds else "nonint" if "nonint" in kinds else "num"
    lo, lo_ex = a.lo, a.lo_ex
    if b.lo is not None and (lo is None or b.lo > lo or (b.lo == lo and b.lo_ex)):
        lo, lo_ex = b.lo, b.lo_ex
    hi, hi_ex = a.hi, a.hi_ex
    if b.hi is not None and (hi is None or b.hi < hi or (b.hi == hi and b.hi_ex)):
        hi, hi_ex = b.hi, b.hi_ex
    if lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_ex or hi_ex))):
        return None
    mult = a.mult
    if b.mult is not None:
        if mult is None:
            mult = b.mult
        else:
            p1, q1, p2, q2 = mult.numerator, mult.denominator, b.mult.numerator, b.mult.denominator
            mult = Fraction(p1 * p2 // gcd(p1, p2), gcd(q1, q2))
    if mult is not None and kind == "int" and mult.denominator != 1 and mult.numerator == 1:
        mult = None  # every integer is a multiple of 1/k
    elif mult is not None and kind == "int" and mult.denominator != 1:
        mult = Fraction(mult.numerator)  # integer multiples of p/q are the multiples of p
    if mult is not None and mult == 1 and kind != "nonint":
        kind, mult = "int", None
    if mult is not None and mult.denominator == 1 and kind == "num":
        kind = "int"
    if mult is not None and mult.denominator == 1 and kind == "nonint":
        return None
    if kind == "int" and lo is not None and hi is not None:
        a_ = lo.numerator // lo.denominator + (1 if lo.denominator != 1 or lo_ex else 0)
        b_ = -((-hi.numerator) // hi.denominator) - (1 if hi.denominator != 1 or hi_ex else 0)
        if a_ > b_:
            return None
    if lo is not None and lo == hi:
        at = NumAtom("num", lo, False, hi, False, None)
        probe = NumAtom(kind, None, False, None, False, mult)
        return at if probe.contains(lo) else None
    return NumAtom(kind, lo, lo_ex, hi, hi_ex, mult)


def nums_and(xs: tuple[NumAtom, ...], ys: tuple[NumAtom, ...]) -> tuple[NumAtom, ...]:
    out = []
    for a in xs:
        for b in ys:
            c = _atom_and(a, b)
            if c is not None and c not in out:
                out.append(c)
    return _nums_simplify(tuple(out))


def _nums_simplify(xs: tuple[NumAtom, ...]) -> tuple[NumAtom, ...]:
    if any(a == NumAtom("num") for a in xs):
        return (NumAtom("num"),)
    return xs


def _atom_not(a: NumAtom) -> tuple[NumAtom, ...]:
    if a.mult is not None:
        raise _Refuse("multipleOf", "the complement of multipleOf cannot be expressed")
    out: list[NumAtom] = []
    if a.lo is not None:
        out.append(NumAtom("num", None, False, a.lo, not a.lo_ex))
    if a.hi is not None:
        out.append(NumAtom("num", a.hi, not a.hi_ex, None, False))
    if a.kind == "int":
        out.append(NumAtom("nonint"))
    elif a.kind == "nonint":
        out.append(NumAtom("int"))
    if a.lo is not None and a.lo == a.hi:
        # a point: the complement is everything else
        return (NumAtom("num", None, False, a.lo, True), NumAtom("num", a.lo, True, None, False))
    return tuple(out)


def nums_not(xs: tuple[NumAtom, ...]) -> tuple[NumAtom, ...]:
    acc: tuple[NumAtom, ...] = (NumAtom("num"),)
    for a in xs:
        acc = nums_and(acc, _atom_not(a))
        if len(acc) > 64:
            raise _Refuse("not", "complement of the number constraints is too large")
    return acc


# ==================================================================================================
# Formats (exact regular languages; see the notes for the simplifications that remain exact)
# ==================================================================================================


_DATE = (
    r"(?:[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    r"|[0-9]{4}-(?:0[13-9]|1[0-2])-(?:29|30)"
    r"|[0-9]{4}-(?:0[13578]|1[02])-31"
    r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
_TIME_NOLEAP = (
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)
# RFC 3986
_UNRES = r"[A-Za-z0-9\-._~]"
_PCT = r"%[0-9A-Fa-f]{2}"
_SUBD = r"[!$&'()*+,;=]"
_PCHAR = rf"(?:{_UNRES}|{_PCT}|{_SUBD}|[:@])"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_USERINFO = rf"(?:{_UNRES}|{_PCT}|{_SUBD}|:)*"
_IPVFUTURE = rf"[vV][0-9A-Fa-f]+\.(?:{_UNRES}|{_SUBD}|:)+"
_HOST = rf"(?:\[(?:{_IPV6}|{_IPVFUTURE})\]|{_IPV4}|(?:{_UNRES}|{_PCT}|{_SUBD})*)"
_AUTHORITY = rf"(?:{_USERINFO}@)?{_HOST}(?::[0-9]*)?"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_SEGMENT_NZ_NC = rf"(?:{_UNRES}|{_PCT}|{_SUBD}|@)+"
_PATH_ABEMPTY = rf"(?:/{_SEGMENT})*"
_PATH_ABSOLUTE = rf"/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"
_PATH_ROOTLESS = rf"{_SEGMENT_NZ}(?:/{_SEGMENT})*"
_PATH_NOSCHEME = rf"{_SEGMENT_NZ_NC}(?:/{_SEGMENT})*"
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_HIER = rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_PATH_ROOTLESS}|)"
_URI = rf"{_SCHEME}:{_HIER}(?:\?{_QUERY})?(?:#{_QUERY})?"
_RELATIVE = (
    rf"(?://{_AUTHORITY}{_PATH_ABEMPTY}|{_PATH_ABSOLUTE}|{_PATH_NOSCHEME}|)(?:\?{_QUERY})?(?:#{_QUERY})?"
)
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]"
# RFC 5321 sub-domain = Let-dig [Ldh-str] (the ABNF has no length limit; those are in section 4.5.3.1)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_EMAIL = (
    rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\")"
    rf"@(?:{_LABEL}(?:\.{_LABEL})*|\[{_IPV4}\]|\[IPv6:{_IPV6}\])"
)
_DUR_SEC = r"[0-9]+S"
_DUR_MIN = rf"[0-9]+M(?:{_DUR_SEC})?"
_DUR_HOUR = rf"[0-9]+H(?:{_DUR_MIN})?"
_DUR_TIME = rf"T(?:{_DUR_HOUR}|{_DUR_MIN}|{_DUR_SEC})"
_DUR_DAY = r"[0-9]+D"
_DUR_MONTH = rf"[0-9]+M(?:{_DUR_DAY})?"
_DUR_YEAR = rf"[0-9]+Y(?:{_DUR_MONTH})?"
_DUR_DATE = rf"(?:{_DUR_DAY}|{_DUR_MONTH}|{_DUR_YEAR})(?:{_DUR_TIME})?"
_DURATION = rf"P(?:{_DUR_DATE}|{_DUR_TIME}|[0-9]+W)"
_JSON_POINTER = r"(?:/(?:[^~/]|~[01])*)*"

_FORMAT_SOURCES: dict[str, Callable[[], str]] = {
    "date": lambda: _DATE,
    # seconds 00-59 only: the exact RFC 3339 language (leap second 60 only at 23:59 UTC, i.e. tied to the
    # offset) needs an ~11k-state automaton; "assert" refuses these two, "subset" uses this sound subset
    "time": lambda: _TIME_NOLEAP,
    "date-time": lambda: f"{_DATE}[Tt]{_TIME_NOLEAP}",
    "ipv4": lambda: _IPV4,
    "ipv6": lambda: _IPV6,
    "uuid": lambda: r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}",
    "uri": lambda: _URI,
    "uri-reference": lambda: f"(?:{_URI}|{_RELATIVE})",
    "email": lambda: _EMAIL,
    "duration": lambda: _DURATION,
    "json-pointer": lambda: _JSON_POINTER,
    "relative-json-pointer": lambda: rf"(?:0|[1-9][0-9]*)(?:#|{_JSON_POINTER})",
}
#: formats whose grammar language is a sound subset only (no leap seconds): formats="subset" allows them
_SUBSET_FORMATS = frozenset({"time", "date-time"})
#: formats asserted exactly under formats="assert"
FORMATS = tuple(f for f in _FORMAT_SOURCES if f not in _SUBSET_FORMATS)
#: known formats that cannot be asserted exactly: refused (or dropped with a warning)
_UNSUPPORTED_FORMATS = frozenset(
    {"hostname", "idn-hostname", "idn-email", "iri", "iri-reference", "uri-template", "regex"}
)
_format_cache: dict[str, VRe] = {}


def format_vre(name: str) -> VRe:
    if name not in _format_cache:
        _format_cache[name] = R.parse_pattern(_FORMAT_SOURCES[name](), search=False)
    return _format_cache[name]


# ==================================================================================================
# $id / $ref resolution within one document
# ==================================================================================================

_DEFAULT_BASE = "https://ragloom.invalid/schema.json"


def _join(base: str, ref: str) -> str:
    if ref.startswith("#"):
        return base.split("#")[0] + ref
    if ":" in ref.split("/")[0]:
        return ref
    return urljoin(base, ref)


class _Registry:
    def __init__(self, root: Any) -> None:
        self.resources: dict[str, Any] = {}
        self.anchors: dict[str, Any] = {}
        self.base_of: dict[int, str] = {}
        self.root_base = _DEFAULT_BASE
        self.resources[_DEFAULT_BASE] = root
        self._walk(root, _DEFAULT_BASE)

    def _walk(self, s: Any, base: str) -> None:
        if not isinstance(s, dict):
            return
        sid = s.get("$id")
        if isinstance(sid, str):
            base = urldefrag(_join(base, sid))[0]
            self.resources.setdefault(base, s)
        self.base_of[id(s)] = base
        for kw in ("$anchor", "$dynamicAnchor"):
            a = s.get(kw)
            if isinstance(a, str):
                self.anchors.setdefault(base + "#" + a, s)
        for k, v in s.items():
            if k in _MAP_KW and isinstance(v, dict):
                for vv in v.values():
                    self._walk(vv, base)
            elif k in _LIST_KW and isinstance(v, list):
                for vv in v:
                    self._walk(vv, base)
            elif k in _SINGLE_KW:
                self._walk(v, base)

    def base(self, s: Any, default: str) -> str:
        return self.base_of.get(id(s), default) if isinstance(s, dict) else default

    def resolve(self, ref: str, base: str) -> tuple[Any, str]:
        full = _join(base, ref)
        uri, frag = urldefrag(full)
        if uri not in self.resources:
            raise _Refuse(
                "$ref",
                f"$ref {ref!r} points outside this schema ({uri}); remote references are not supported",
            )
        doc = self.resources[uri]
        if not frag:
            target = doc
        elif frag.startswith("/"):
            target = doc
            cur_base = uri
            for raw in frag[1:].split("/"):
                seg = unquote(raw).replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and seg in target:
                    target = target[seg]
                elif isinstance(target, list) and seg.isdigit() and int(seg) < len(target):
                    target = target[int(seg)]
                else:
                    raise _Refuse("$ref", f"$ref {ref!r}: JSON pointer {frag!r} does not resolve")
                if (
                    isinstance(target, dict)
                    and isinstance(target.get("$id"), str)
                    and id(target) not in self.base_of
                ):
                    cur_base = urldefrag(_join(cur_base, target["$id"]))[0]
            return target, self.base_of.get(id(target), cur_base) if isinstance(target, dict) else cur_base
        else:
            target = self.anchors.get(uri + "#" + unquote(frag))
            if target is None:
                raise _Refuse("$ref", f"$ref {ref!r}: no anchor {frag!r}")
        return target, self.base(target, uri)


# ==================================================================================================
# The compiler: schema -> nodes -> grammar
# ==================================================================================================


def _canon_json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)


class _Compiler:
    def __init__(
        self,
        schema: Any,
        *,
        strict: bool,
        formats: str,
        deadline: float | None,
        dropped: frozenset[tuple[int, str]] = frozenset(),
        ignored: frozenset[str] = frozenset(),
    ) -> None:
        if not isinstance(schema, (dict, bool)):
            raise GrammarError("a JSON Schema must be an object or a boolean")
        self.root = schema
        self.strict = strict
        self.formats = formats
        self.deadline = deadline
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.reg = _Registry(schema)
        self._sids: dict[tuple[str, str], int] = {}
        self._schemas: list[tuple[Any, str]] = []
        self._canon_cache: dict[int, str] = {}
        self._consts: dict[str, Any] = {}
        self._node_memo: dict[Key, Node] = {}
        self._in_progress: set[Key] = set()
        self._dfa_cache: dict[VRe, DFA] = {}
        self.union_sites: list[tuple[int, str]] = []
        self._not_ok: set[Key] = set()
        self.dropped = dropped  # (sid, keyword) pairs dropped after an LALR conflict (strict=False)
        self.ignored = ignored  # keywords dropped everywhere after an emission-time refusal (strict=False)
        self.root_key = self.key_of(schema, self.reg.root_base)

    # ---------------------------------------------------------------- helpers
    def check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CompileTimeout(
                "compiling the JSON schema exceeded its time limit; simplify the schema "
                "(fewer anyOf/oneOf branches, smaller enums or patterns) or raise the limit"
            )

    def warn(self, msg: str) -> None:
        if msg not in self._warned:
            self._warned.add(msg)
            self.warnings.append(msg)

    def refuse(self, kw: str, msg: str) -> None:
        """Unsupported keyword: raise in strict mode, else record a warning (the caller drops it)."""
        if self.strict:
            raise UnsupportedKeyword(kw, f"unsupported JSON Schema keyword {kw!r}: {msg}")
        self.warn(f"dropped keyword {kw!r}: {msg}")

    def canon(self, s: Any) -> str:
        k = id(s)
        if k not in self._canon_cache:
            self._canon_cache[k] = _canon_json(s)
        return self._canon_cache[k]

    def key_of(self, schema: Any, base: str) -> Key:
        if schema is True:
            return TRUE
        if schema is False:
            return FALSE
        if isinstance(schema, dict):
            base = self.reg.base(schema, base)
            if not schema:
                return TRUE
        ck = (self.canon(schema), base)
        sid = self._sids.get(ck)
        if sid is None:
            sid = len(self._schemas)
            self._sids[ck] = sid
            self._schemas.append((schema, base))
        return frozenset({("s", sid)})

    def const_key(self, v: Any) -> Key:
        c = _canon_json(v)
        self._consts.setdefault(c, v)
        return frozenset({("c", c)})

    def dfa(self, x: VRe) -> DFA:
        d = self._dfa_cache.get(x)
        if d is None:
            d = R.to_dfa(x)
            self._dfa_cache[x] = d
        return d

    def lang_accepts(self, x: VRe, s: str) -> bool:
        if x == ANYSTR:
            return True
        return self.dfa(x).accepts(s)

    # ---------------------------------------------------------------- nodes
    def node(self, key: Key) -> Node:
        n = self._node_memo.get(key)
        if n is not None:
            return n
        if key == FALSE:
            return NONE
        if key in self._in_progress:
            raise _Refuse(
                "$ref",
                "a reference cycle that never descends into a property or an item "
                "(the schema refers to itself at the same place)",
            )
        self.check_deadline()
        self._in_progress.add(key)
        try:
            out = ANY
            for atom in sorted(key, key=repr):
                if atom[0] == "s":
                    part = self.schema_node(atom[1])
                elif atom[0] == "c":
                    part = self.const_node(self._consts[atom[1]])
                elif atom[0] == "n":
                    part = self.n_not(self.node(atom[1]), "not")
                else:
                    part = NONE
                out = self.n_and(out, part)
                if out.shallow_empty():
                    break
        finally:
            self._in_progress.discard(key)
        self._node_memo[key] = out
        return out

    def const_node(self, v: Any) -> Node:
        if v is None:
            return Node(null=True)
        if isinstance(v, bool):
            return Node(bools=frozenset({v}))
        if _is_num(v):
            x = to_fraction(v)
            return Node(nums=(NumAtom("num", x, False, x, False),))
        if isinstance(v, str):
            return Node(str=StrSet(lit(v)))
        if isinstance(v, list):
            return Node(arrs=(ArrSet(tuple(self.const_key(e) for e in v), FALSE, len(v), len(v)),))
        if isinstance(v, dict):
            props = tuple((k, self.const_key(e)) for k, e in v.items())
            return Node(objs=(ObjSet(props, frozenset(v), ((ANYSTR, FALSE),)),))
        raise GrammarError(f"not a JSON value: {v!r}")

    def schema_node(self, sid: int) -> Node:
        schema, base = self._schemas[sid]
        if not isinstance(schema, dict):
            raise GrammarError(f"a subschema must be an object or a boolean, got {schema!r}")
        node = ANY
        s = {k: v for k, v in schema.items() if k not in self.ignored} if self.ignored else schema

        def sub(v: Any) -> Key:
            return self.key_of(v, base)

        def dropped(kw: str) -> bool:
            return (sid, kw) in self.dropped

        def guard(kw: str, fn: Callable[[], Node]) -> Node | None:  # noqa: E306
            try:
                return fn()
            except _Refuse as e:
                self.refuse(e.keyword if e.keyword else kw, e.message)
                return None
            except R.TooComplex as e:
                self.refuse(kw, f"too complex to express exactly ({e})")
                return None

        for kw in s:
            if kw not in KNOWN:
                self.warn(f"ignored unknown keyword {kw!r} (not a JSON Schema 2020-12 keyword)")
        if "$schema" in s:
            ms = s["$schema"]
            if not isinstance(ms, str) or ms.rstrip("#") not in _METASCHEMAS:
                self.refuse(
                    "$schema",
                    f"unknown metaschema {ms!r}: only draft 2020-12 (and older drafts, read "
                    "with 2020-12 semantics) are supported",
                )
            elif ms.rstrip("#") not in _METASCHEMAS_2020:
                self.warn(f"$schema {ms!r} is read with draft 2020-12 semantics")
        if "$dynamicRef" in s:
            self.refuse("$dynamicRef", "dynamic references are not supported")

        # ---- type
        if "type" in s:
            t = s["type"]
            ts = [t] if isinstance(t, str) else t
            if not isinstance(ts, list) or any(x not in _TYPES for x in ts):
                raise GrammarError(f"invalid type {t!r}")
            node = self.n_and(node, self.type_node(set(ts)))
        if "const" in s:
            node = self.n_and(node, self.const_node(s["const"]))
        if "enum" in s:
            vals = s["enum"]
            if not isinstance(vals, list):
                raise GrammarError("enum must be an array")
            en = self.enum_node(vals)
            if len(en.objs) > 1 or len(en.arrs) > 1:
                self.union_sites.append((sid, "enum"))
            node = self.n_and(node, en)

        # ---- numbers
        nkw = [
            k for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf") if k in s
        ]
        if nkw:
            n = guard("multipleOf", lambda: self.number_node(s))
            if n is not None:
                node = self.n_and(node, n)

        # ---- strings
        if any(k in s for k in ("minLength", "maxLength", "pattern", "format")):
            n = self.string_node(s)
            if n is not None:
                node = self.n_and(node, n)

        # ---- arrays
        if any(
            k in s
            for k in (
                "items",
                "prefixItems",
                "minItems",
                "maxItems",
                "uniqueItems",
                "contains",
                "minContains",
                "maxContains",
            )
        ):
            n = self.array_node(s, sub, sid)
            if n is not None:
                node = self.n_and(node, n)

        # ---- objects
        if any(
            k in s
            for k in (
                "properties",
                "required",
                "additionalProperties",
                "patternProperties",
                "propertyNames",
                "minProperties",
                "maxProperties",
            )
        ):
            n = guard("patternProperties", lambda: self.object_node(s, sub))
            if n is not None:
                node = self.n_and(node, n)
        for kw in ("dependentRequired", "dependentSchemas"):
            if kw in s and not dropped(kw):
                n = guard(kw, partial(self.dependent_node, kw, s[kw], sub, sid))
                if n is not None:
                    node = self.n_and(node, n)
        if isinstance(s.get("dependencies"), dict) and not dropped("dependencies"):
            # draft 2019-09 and older: array values are dependentRequired, schema values dependentSchemas
            deps = s["dependencies"]
            req = {k: v for k, v in deps.items() if isinstance(v, list)}
            sch = {k: v for k, v in deps.items() if not isinstance(v, list)}
            for kw, part in (("dependentRequired", req), ("dependentSchemas", sch)):
                if part:
                    n = guard("dependencies", partial(self.dependent_node, kw, part, sub, sid))
                    if n is not None:
                        node = self.n_and(node, n)

        # ---- in-place applicators
        if "$ref" in s:
            ref = s["$ref"]
            if not isinstance(ref, str):
                raise GrammarError("$ref must be a string")
            n = guard("$ref", lambda: self.node(self.key_of(*self.reg.resolve(ref, base))))
            if n is not None:
                node = self.n_and(node, n)
        if "allOf" in s:
            for x in s["allOf"]:
                node = self.n_and(node, self.node(sub(x)))
        if "anyOf" in s and not dropped("anyOf"):
            branches = [self.node(sub(x)) for x in s["anyOf"]]
            if not branches:
                raise GrammarError("anyOf must not be empty")
            u = self.n_or_many(branches, sid, "anyOf")
            node = self.n_and(node, u)
        if "oneOf" in s and not dropped("oneOf"):
            n = guard("oneOf", lambda: self.one_of([self.node(sub(x)) for x in s["oneOf"]], sid))
            if n is not None:
                node = self.n_and(node, n)
        if "not" in s and not dropped("not"):
            n = guard("not", lambda: self.n_not(self.node(sub(s["not"])), "not"))
            if n is not None and (len(n.objs) > 1 or len(n.arrs) > 1):
                self.union_sites.append((sid, "not"))
            if n is not None:
                node = self.n_and(node, n)
        if "if" in s and ("then" in s or "else" in s) and not dropped("if"):
            n = guard("if", lambda: self.if_node(s, sub, sid))
            if n is not None:
                node = self.n_and(node, n)

        # ---- unevaluated*
        for kw in ("unevaluatedProperties", "unevaluatedItems"):
            if kw in s:
                n = guard(kw, partial(self.unevaluated, kw, s, sid, base, node))
                if n is not None:
                    node = n
        return node

    # ---------------------------------------------------------------- keyword groups
    def type_node(self, ts: set[str]) -> Node:
        nums: tuple[NumAtom, ...] = ()
        if "number" in ts:
            nums = (NumAtom("num"),)
        elif "integer" in ts:
            nums = (NumAtom("int"),)
        return Node(
            null="null" in ts,
            bools=frozenset({True, False}) if "boolean" in ts else frozenset(),
            nums=nums,
            str=ALLSTR if "string" in ts else None,
            arrs=(ARR_ANY,) if "array" in ts else (),
            objs=(OBJ_ANY,) if "object" in ts else (),
        )

    def enum_node(self, vals: list) -> Node:
        if not vals:
            return NONE
        null = any(v is None for v in vals)
        bools = frozenset(v for v in vals if isinstance(v, bool))
        nums = []
        for v in vals:
            if _is_num(v):
                x = to_fraction(v)
                at = NumAtom("num", x, False, x, False)
                if at not in nums:
                    nums.append(at)
        strs = [v for v in vals if isinstance(v, str)]
        arrs: list[ArrSet] = []
        objs: list[ObjSet] = []
        for v in vals:
            if isinstance(v, (list, dict)):
                n = self.const_node(v)
                arrs.extend(x for x in n.arrs if x not in arrs)
                objs.extend(x for x in n.objs if x not in objs)
        return Node(
            null, bools, tuple(nums), StrSet(R.words(strs)) if strs else None, tuple(arrs), tuple(objs)
        )

    def number_node(self, s: dict) -> Node:
        lo = hi = None
        lo_ex = hi_ex = False

        def num(kw: str) -> Fraction:
            v = s[kw]
            if not _is_num(v):
                raise GrammarError(f"{kw} must be a number")
            return to_fraction(v)

        if "minimum" in s:
            lo, lo_ex = num("minimum"), False
        if "exclusiveMinimum" in s:
            x = num("exclusiveMinimum")
            if lo is None or x >= lo:
                lo, lo_ex = x, True
        if "maximum" in s:
            hi, hi_ex = num("maximum"), False
        if "exclusiveMaximum" in s:
            x = num("exclusiveMaximum")
            if hi is None or x <= hi:
                hi, hi_ex = x, True
        mult = None
        if "multipleOf" in s:
            mult = num("multipleOf")
            if mult <= 0:
                raise GrammarError("multipleOf must be > 0")
        atom = _atom_and(NumAtom("num", lo, lo_ex, hi, hi_ex), NumAtom("num", mult=mult))
        nums = (atom,) if atom is not None else ()
        if atom is not None and atom.mult is not None:
            # fail early (and name the keyword) if the digit automaton is out of reach
            _mult_dfa(atom.mult, atom.kind == "int")
        return _only(nums=nums)

    def string_node(self, s: dict) -> Node | None:
        lang: VRe = ANYSTR
        minlen, maxlen = 0, None
        if "minLength" in s:
            minlen = int(s["minLength"])
        if "maxLength" in s:
            maxlen = int(s["maxLength"])
        if "pattern" in s:
            p = s["pattern"]
            if not isinstance(p, str):
                raise GrammarError("pattern must be a string")
            try:
                lang = R.parse_pattern(p)
            except R.PatternUnsupported as e:
                self.refuse("pattern", f"{e} (construct: {e.construct})")
            except R.TooComplex as e:
                self.refuse("pattern", f"pattern {p!r} is too complex ({e})")
        if "format" in s and self.formats != "annotate":
            f = s["format"]
            if f in _SUBSET_FORMATS and self.formats == "assert":
                self.refuse(
                    "format",
                    f"format {f!r}: the exact language (RFC 3339 leap seconds, valid only at "
                    "23:59:60 UTC and so tied to the offset) is too large an automaton; "
                    "formats='subset' accepts it without leap seconds",
                )
            elif f in _FORMAT_SOURCES:
                fl = format_vre(f)
                try:
                    lang = fl if lang == ANYSTR else R.vre_inter(lang, fl)
                except R.TooComplex:
                    self.refuse("format", f"format {f!r} combined with pattern is too complex")
            elif f in _UNSUPPORTED_FORMATS:
                self.refuse("format", f"format {f!r} cannot be asserted exactly by a grammar")
            else:
                self.warn(f"ignored unknown format {f!r} (formats are annotations unless known)")
        st = StrSet(lang, minlen, maxlen)
        return _only(str=self.str_norm(st))

    def str_norm(self, st: StrSet) -> StrSet | None:
        if st.maxlen is not None and st.minlen > st.maxlen:
            return None
        if R.is_empty_lang(st.lang):
            return None
        return st

    def array_node(self, s: dict, sub: Callable[[Any], Key], sid: int) -> Node | None:
        prefix: tuple[Key, ...] = ()
        if "prefixItems" in s:
            if not isinstance(s["prefixItems"], list):
                raise GrammarError("prefixItems must be an array")
            prefix = tuple(sub(x) for x in s["prefixItems"])
        items = TRUE
        if "items" in s:
            if isinstance(s["items"], list):
                self.refuse("items", "the array form of items is not draft 2020-12 (use prefixItems)")
            else:
                items = sub(s["items"])
        mn = int(s.get("minItems", 0))
        mx = int(s["maxItems"]) if "maxItems" in s else None
        if s.get("uniqueItems") is True:
            if not (mx is not None and mx <= 1):
                self.refuse("uniqueItems", "uniqueItems: true cannot be expressed by a context-free grammar")
        if mn > 2000:
            self.refuse("minItems", "minItems above 2000")
            mn = 0
        if mx is not None and mx > 2000:
            self.refuse("maxItems", "maxItems above 2000")
            mx = None
        if len(prefix) > 2000:
            self.refuse("prefixItems", "more than 2000 prefixItems")
            prefix = ()
        contains: Key | None = None
        cmin, cmax = 1, None
        if "contains" in s and (sid, "contains") not in self.dropped:
            try:
                contains, cmin, cmax = self.contains_parts(s, sub)
            except _Refuse as e:
                self.refuse(e.keyword, e.message)
                contains = None
        if contains is None:
            return _only(arrs=(ArrSet(prefix, items, mn, mx),))
        if contains == FALSE and cmin > 0:
            return _only(arrs=())
        self.union_sites.append((sid, "contains"))
        return _only(arrs=(ArrSet(prefix, items, mn, mx, contains, cmin, cmax),))

    def contains_parts(self, s: dict, sub: Callable[[Any], Key]) -> tuple[Key | None, int, int | None]:
        """contains/minContains/maxContains: counted in the grammar, item by item, as matching (the
        contains-schema) or not matching (its complement, which must be expressible)."""
        c = sub(s["contains"])
        cmin = int(s.get("minContains", 1))
        cmax = int(s["maxContains"]) if "maxContains" in s else None
        if cmax is not None and cmax < cmin:
            return FALSE, 1, None  # impossible: no array
        if cmin == 0 and cmax is None:
            return None, 1, None
        if max(cmin, cmax or 0) > 64:
            raise _Refuse("minContains" if cmin > 64 else "maxContains", "contains counts above 64")
        if c != TRUE and c != FALSE:
            try:
                self.check_complementable(c, "contains")
            except _Refuse as e:
                raise _Refuse("contains", e.message) from None
        return c, cmin, cmax

    def object_node(self, s: dict, sub: Callable[[Any], Key]) -> Node:
        props = s.get("properties", {})
        if not isinstance(props, dict):
            raise GrammarError("properties must be an object")
        req = s.get("required", [])
        if not isinstance(req, list):
            raise GrammarError("required must be an array")
        pats = s.get("patternProperties", {})
        if not isinstance(pats, dict):
            raise GrammarError("patternProperties must be an object")
        add = sub(s["additionalProperties"]) if "additionalProperties" in s else TRUE
        pat_items: list[tuple[VRe, Key]] = []
        for p, v in pats.items():
            try:
                pat_items.append((R.parse_pattern(p), sub(v)))
            except R.PatternUnsupported as e:
                raise _Refuse("patternProperties", f"{e} (construct: {e.construct})") from None
        if len(pat_items) > 4:
            raise _Refuse("patternProperties", "more than 4 patterns")
        # partition the undeclared names by the patterns they match
        rest: list[tuple[VRe, Key]] = []
        n = len(pat_items)
        for mask in range(1 << n):
            lang: VRe = ANYSTR
            child = TRUE
            for i, (pl, pk) in enumerate(pat_items):
                if mask >> i & 1:
                    lang = R.vre_inter(lang, pl)
                    child = k_and(child, pk)
                else:
                    lang = R.vre_minus(lang, pl)
                if R.is_empty_lang(lang):
                    lang = EMPTY
                    break
            if lang == EMPTY:
                continue
            rest.append((lang, child if mask else add))
        decl: list[tuple[str, Key]] = []
        for name, v in props.items():
            child = sub(v)
            for pl, pk in pat_items:
                if self.lang_accepts(pl, name):
                    child = k_and(child, pk)
            decl.append((name, child))
        names = [d[0] for d in decl]
        for name in req:
            if name not in names:
                decl.append((name, self.rest_child(tuple(rest), name)))
                names.append(name)
        nst: StrSet | None = None
        if "propertyNames" in s:
            pn = self.node(sub(s["propertyNames"]))
            nst = pn.str
            if nst is None:
                nst = StrSet(EMPTY)
        mn = int(s.get("minProperties", 0))
        mx = int(s["maxProperties"]) if "maxProperties" in s else None
        o = ObjSet(tuple(decl), frozenset(req), tuple(rest), nst, mn, mx)
        return _only(objs=self.obj_norm(o))

    def rest_child(self, rest: tuple[tuple[VRe, Key], ...], name: str) -> Key:
        for lang, child in rest:
            if self.lang_accepts(lang, name):
                return child
        return FALSE

    def obj_norm(self, o: ObjSet) -> tuple[ObjSet, ...]:
        """Drop impossible objects; filter declared names through propertyNames."""
        if o.max is not None and o.min > o.max:
            return ()
        if len(o.required) > (o.max if o.max is not None else len(o.required)):
            return ()
        if o.names is not None:
            props = []
            for name, child in o.props:
                ok = self.str_accepts(o.names, name)
                if not ok:
                    if name in o.required:
                        return ()
                    child = FALSE
                props.append((name, child))
            o = ObjSet(tuple(props), o.required, o.rest, o.names, o.min, o.max)
        for name, child in o.props:
            if child == FALSE and name in o.required:
                return ()
        return (o,)

    def str_accepts(self, st: StrSet, v: str) -> bool:
        if len(v) < st.minlen or (st.maxlen is not None and len(v) > st.maxlen):
            return False
        return self.lang_accepts(st.lang, v)

    def dependent_node(self, kw: str, deps: Any, sub: Callable[[Any], Key], sid: int) -> Node:
        """Case split on the trigger names: (name absent) or (name present and the dependency holds)."""
        if not isinstance(deps, dict):
            raise GrammarError(f"{kw} must be an object")
        items = list(deps.items())
        if len(items) > 3:
            raise _Refuse(kw, f"more than 3 {kw} entries")
        node = ANY
        for name, dep in items:
            absent = ObjSet(((name, FALSE),), frozenset(), ((ANYSTR, TRUE),))
            if kw == "dependentRequired":
                if not isinstance(dep, list):
                    raise GrammarError("dependentRequired values must be arrays")
                names = list(dict.fromkeys([name, *dep]))
                present = ObjSet(tuple((x, TRUE) for x in names), frozenset(names))
                present_node = _only(objs=(present,))
            else:
                pn = self.node(sub(dep))
                trig = _only(objs=(ObjSet(((name, TRUE),), frozenset([name])),))
                present_node = self.n_and(trig, pn)
            both = self.n_or_many([_only(objs=(absent,)), present_node], sid, kw)
            node = self.n_and(node, both)
        return node

    def one_of(self, branches: list[Node], sid: int) -> Node:
        if not branches:
            raise GrammarError("oneOf must not be empty")
        if len(branches) == 1:
            return branches[0]
        # provably disjoint branches: oneOf = anyOf
        disjoint = True
        for i in range(len(branches)):
            for j in range(i + 1, len(branches)):
                if not self.empty(self.n_and(branches[i], branches[j])):
                    disjoint = False
                    break
            if not disjoint:
                break
        if disjoint:
            return self.n_or_many(branches, sid, "oneOf")
        # otherwise: exactly one branch holds = OR_i (B_i AND NOT B_j for j != i)
        nots = [self.n_not(b, "oneOf") for b in branches]
        parts = []
        for i, b in enumerate(branches):
            x = b
            for j, nb in enumerate(nots):
                if j != i:
                    x = self.n_and(x, nb)
            parts.append(x)
        return self.n_or_many(parts, sid, "oneOf")

    def if_node(self, s: dict, sub: Callable[[Any], Key], sid: int) -> Node:
        cond = self.node(sub(s["if"]))
        then = self.node(sub(s["then"])) if "then" in s else ANY
        other = self.node(sub(s["else"])) if "else" in s else ANY
        if "else" not in s:
            # (C and T) or not C  ==  T or not C
            return self.n_or_many([then, self.n_not(cond, "if")], sid, "if")
        if "then" not in s:
            # (C) or (not C and E)  ==  C or E
            return self.n_or_many([cond, other], sid, "if")
        return self.n_or_many([self.n_and(cond, then), self.n_and(self.n_not(cond, "if"), other)], sid, "if")

    def unevaluated(self, kw: str, s: dict, sid: int, base: str, node: Node) -> Node:
        """unevaluatedProperties/Items when what is evaluated is static: only properties /
        patternProperties / additionalProperties (prefixItems / items / contains) of this schema and of
        schemas merged in by allOf and $ref; anyOf/oneOf/if/not/dependentSchemas anywhere in that set
        make it dynamic and are refused."""
        val = s[kw]
        child = self.key_of(val, base)
        ev = self._evaluated(s, base, kw, set())
        if kw == "unevaluatedProperties":
            if ev is True:
                return node
            names, pats = ev
            out: list[ObjSet] = []
            for o in node.objs:
                declared = {n for n, _ in o.props}
                extra = [n for n in names if n not in declared]
                props = list(o.props)
                for n in extra:
                    props.append((n, self.rest_child(o.rest, n)))
                evaluated_lang = alt(*pats) if pats else EMPTY
                rest = []
                for lang, ck in o.rest:
                    if pats:
                        inside = R.vre_inter(lang, evaluated_lang)
                        outside = R.vre_minus(lang, evaluated_lang)
                        if not R.is_empty_lang(inside):
                            rest.append((inside, ck))
                        if not R.is_empty_lang(outside):
                            rest.append((outside, k_and(ck, child)))
                    else:
                        rest.append((lang, k_and(ck, child)))
                # declared names that nothing evaluates (e.g. they come from a `not`) are unevaluated too
                props = [
                    (n, k if (n in names or any(self.lang_accepts(p, n) for p in pats)) else k_and(k, child))
                    for n, k in props
                ]
                o2 = ObjSet(tuple(props), o.required, tuple(rest), o.names, o.min, o.max)
                out.extend(self.obj_norm(o2))
            return Node(node.null, node.bools, node.nums, node.str, node.arrs, tuple(out))
        # unevaluatedItems: ev is True or the number of evaluated prefix positions
        if ev is True:
            return node
        npos = ev
        arrs = []
        for a in node.arrs:
            pre = list(a.prefix)
            while len(pre) < npos:
                pre.append(a.items)
            pre = [p if i < npos else k_and(p, child) for i, p in enumerate(pre)]
            arrs.append(ArrSet(tuple(pre), k_and(a.items, child), a.min, a.max))
        return Node(node.null, node.bools, node.nums, node.str, tuple(arrs), node.objs)

    def _evaluated(self, s: Any, base: str, kw: str, seen: set) -> Any:
        """Static evaluation: True (everything evaluated) or (names, patterns) / number of positions."""
        if s is True or s is False or not isinstance(s, dict):
            return (set(), []) if kw == "unevaluatedProperties" else 0
        if id(s) in seen:
            raise _Refuse(kw, f"{kw} over a recursive reference")
        seen = seen | {id(s)}
        base = self.reg.base(s, base)
        for dyn in ("anyOf", "oneOf", "if", "not", "dependentSchemas", "$dynamicRef"):
            if dyn in s and not (dyn == "not"):
                raise _Refuse(
                    kw, f"{kw} with {dyn} (which properties/items are evaluated depends on the instance)"
                )
        parts = []
        if "$ref" in s:
            t, tb = self.reg.resolve(s["$ref"], base)
            parts.append((t, tb))
        for x in s.get("allOf", []):
            parts.append((x, base))
        if kw == "unevaluatedProperties":
            if "additionalProperties" in s or (
                "unevaluatedProperties" in s and s is not None and seen and len(seen) > 1
            ):
                return True
            names = set(s.get("properties", {}))
            pats = []
            for p in s.get("patternProperties", {}):
                pats.append(R.parse_pattern(p))
            for t, tb in parts:
                sub = self._evaluated(t, tb, kw, seen)
                if sub is True:
                    return True
                names |= sub[0]
                pats.extend(sub[1])
            return names, pats
        if "items" in s or ("unevaluatedItems" in s and len(seen) > 1):
            return True
        if "contains" in s:
            raise _Refuse(kw, f"{kw} with contains")
        n = len(s.get("prefixItems", []))
        for t, tb in parts:
            sub = self._evaluated(t, tb, kw, seen)
            if sub is True:
                return True
            n = max(n, sub)
        return n

    # ---------------------------------------------------------------- node algebra
    def n_and(self, a: Node, b: Node) -> Node:
        if a is ANY or a == ANY:
            return b
        if b is ANY or b == ANY:
            return a
        self.check_deadline()
        st: StrSet | None = None
        if a.str is not None and b.str is not None:
            if a.str == ALLSTR:
                st = b.str
            elif b.str == ALLSTR:
                st = a.str
            else:
                try:
                    lang = (
                        a.str.lang
                        if b.str.lang == ANYSTR
                        else (b.str.lang if a.str.lang == ANYSTR else R.vre_inter(a.str.lang, b.str.lang))
                    )
                except R.TooComplex:
                    raise _Refuse(
                        "pattern", "the intersection of the string constraints is too complex"
                    ) from None
                mx = (
                    a.str.maxlen
                    if b.str.maxlen is None
                    else b.str.maxlen
                    if a.str.maxlen is None
                    else min(a.str.maxlen, b.str.maxlen)
                )
                st = self.str_norm(StrSet(lang, max(a.str.minlen, b.str.minlen), mx))
        arrs: list[ArrSet] = []
        for xa in a.arrs:
            for ya in b.arrs:
                za = self.arr_and(xa, ya)
                if za is not None and za not in arrs:
                    arrs.append(za)
        objs: list[ObjSet] = []
        for xo in a.objs:
            for yo in b.objs:
                for zo in self.obj_and(xo, yo):
                    if zo not in objs:
                        objs.append(zo)
        if len(arrs) * len(objs) > 4096 or len(arrs) > 256 or len(objs) > 256:
            raise _Refuse("allOf", "too many alternatives")
        return Node(
            a.null and b.null,
            a.bools & b.bools,
            nums_and(a.nums, b.nums),
            st,
            self.arr_prune(arrs),
            self.obj_prune(objs),
        )

    def arr_and(self, x: ArrSet, y: ArrSet) -> ArrSet | None:
        if x == ARR_ANY:
            return y
        if y == ARR_ANY:
            return x
        n = max(len(x.prefix), len(y.prefix))
        prefix = tuple(k_and(x.elem(i), y.elem(i)) for i in range(n))
        mn = max(x.min, y.min)
        mx = x.max if y.max is None else y.max if x.max is None else min(x.max, y.max)
        if mx is not None and mn > mx:
            return None
        c, cmin, cmax = x.contains, x.cmin, x.cmax
        if y.contains is not None:
            if c is None:
                c, cmin, cmax = y.contains, y.cmin, y.cmax
            elif c == y.contains:
                cmin = max(cmin, y.cmin)
                cmax = cmax if y.cmax is None else y.cmax if cmax is None else min(cmax, y.cmax)
                if cmax is not None and cmin > cmax:
                    return None
            else:
                raise _Refuse("contains", "two different contains constraints on the same array")
        return ArrSet(prefix, k_and(x.items, y.items), mn, mx, c, cmin, cmax)

    def obj_full_child(self, o: ObjSet, name: str) -> Key:
        for n, k in o.props:
            if n == name:
                return k
        return self.rest_child(o.rest, name)

    def obj_and(self, x: ObjSet, y: ObjSet) -> tuple[ObjSet, ...]:
        if x == OBJ_ANY:
            return (y,)
        if y == OBJ_ANY:
            return (x,)
        names = [n for n, _ in x.props] + [n for n, _ in y.props if n not in dict(x.props)]
        props = tuple((n, k_and(self.obj_full_child(x, n), self.obj_full_child(y, n))) for n in names)
        rest = []
        for la, ka in x.rest:
            for lb, kb in y.rest:
                lang = la if lb == ANYSTR else lb if la == ANYSTR else R.vre_inter(la, lb)
                if R.is_empty_lang(lang):
                    continue
                rest.append((lang, k_and(ka, kb)))
        if x.names is None:
            nst = y.names
        elif y.names is None:
            nst = x.names
        else:
            nn = self.n_and(_only(str=x.names), _only(str=y.names)).str
            nst = nn if nn is not None else StrSet(EMPTY)
        mn = max(x.min, y.min)
        mx = x.max if y.max is None else y.max if x.max is None else min(x.max, y.max)
        return self.obj_norm(ObjSet(props, x.required | y.required, tuple(rest), nst, mn, mx))

    def arr_prune(self, arrs: list[ArrSet]) -> tuple[ArrSet, ...]:
        if ARR_ANY in arrs:
            return (ARR_ANY,)
        out = []
        for a in arrs:
            if any(
                b is not a
                and self.arr_sub(a, b)
                and not (self.arr_sub(b, a) and arrs.index(b) > arrs.index(a))
                for b in arrs
            ):
                continue
            out.append(a)
        return tuple(out)

    def arr_sub(self, a: ArrSet, b: ArrSet) -> bool:
        """a is syntactically included in b."""
        if b.min > a.min:
            return False
        if b.contains is not None:
            if a.contains != b.contains or a.cmin < b.cmin:
                return False
            if b.cmax is not None and (a.cmax is None or a.cmax > b.cmax):
                return False
        if b.max is not None and (a.max is None or a.max > b.max):
            return False
        n = max(len(a.prefix), len(b.prefix))
        lim = a.max if a.max is not None else None
        for i in range(n):
            if lim is not None and i >= lim:
                break
            if not (b.elem(i) == TRUE or b.elem(i) == a.elem(i) or a.elem(i) == FALSE):
                return False
        if lim is None or lim > n:
            if not (b.items == TRUE or b.items == a.items or a.items == FALSE):
                return False
        return True

    def obj_prune(self, objs: list[ObjSet]) -> tuple[ObjSet, ...]:
        if OBJ_ANY in objs:
            return (OBJ_ANY,)
        out = []
        for i, a in enumerate(objs):
            if any(
                j != i and self.obj_sub(a, b) and not (self.obj_sub(b, a) and j > i)
                for j, b in enumerate(objs)
            ):
                continue
            out.append(a)
        return tuple(out)

    def obj_sub(self, a: ObjSet, b: ObjSet) -> bool:
        if not b.required <= a.required or b.min > a.min:
            return False
        if b.max is not None and (a.max is None or a.max > b.max):
            return False
        if b.names is not None and b.names != a.names:
            return False
        bd = dict(b.props)
        ad = dict(a.props)
        for n, k in b.props:
            ka = ad.get(n)
            if ka is None:
                ka = self.rest_child(a.rest, n)
            if not (k == TRUE or k == ka or ka == FALSE):
                return False
        for n, k in a.props:
            if n not in bd:
                kb = self.rest_child(b.rest, n)
                if not (kb == TRUE or kb == k or k == FALSE):
                    return False
        if b.rest != ((ANYSTR, TRUE),) and a.rest != b.rest:
            if not all(k == FALSE for _, k in a.rest):
                return False
        return True

    def n_or(self, a: Node, b: Node) -> Node:
        return self.n_or_many([a, b], -1, "anyOf")

    def n_or_many(self, branches: list[Node], sid: int, kw: str) -> Node:
        null = any(b.null for b in branches)
        bools = frozenset().union(*(b.bools for b in branches))
        nums: list[NumAtom] = []
        for b in branches:
            for a in b.nums:
                if a not in nums:
                    nums.append(a)
        strs = [b.str for b in branches if b.str is not None]
        st: StrSet | None
        if not strs:
            st = None
        elif any(x == ALLSTR for x in strs):
            st = ALLSTR
        elif len(set(strs)) == 1:
            st = strs[0]
        else:
            try:
                st = StrSet(alt(*(self.str_vre(x) for x in dict.fromkeys(strs))))
            except R.TooComplex:
                raise _Refuse(kw, "the union of the string constraints is too complex") from None
        arrs: list[ArrSet] = []
        objs: list[ObjSet] = []
        for b in branches:
            arrs.extend(x for x in b.arrs if x not in arrs)
            objs.extend(x for x in b.objs if x not in objs)
        arrs_t = self.arr_prune(arrs)
        objs_t = self.obj_prune(objs)
        if (len(arrs_t) > 1 or len(objs_t) > 1) and sid >= 0:
            self.union_sites.append((sid, kw))
        return Node(null, bools, _nums_simplify(tuple(nums)), st, arrs_t, objs_t)

    def str_vre(self, st: StrSet) -> VRe:
        return R.vre_with_length(st.lang, st.minlen, st.maxlen)

    def check_complementable(self, k: Key, kw: str) -> None:
        """Raise _Refuse unless the complement of k can be expressed. Recursive schemas are handled
        coinductively: a key already under check counts as complementable."""
        if k in self._not_ok:
            return
        self._not_ok.add(k)
        try:
            self.n_not(self.node(k), kw)
        except BaseException:
            self._not_ok.discard(k)
            raise

    def n_not(self, a: Node, kw: str) -> Node:
        """The complement of a node, where it can be expressed exactly."""
        self.check_deadline()
        if a.str is None:
            st: StrSet | None = ALLSTR
        elif a.str == ALLSTR:
            st = None
        else:
            try:
                st = self.str_norm(StrSet(R.vre_complement(self.str_vre(a.str))))
            except R.TooComplex:
                raise _Refuse(kw, "the complement of the string constraints is too complex") from None
        try:
            nums = nums_not(a.nums)
        except _Refuse as e:
            raise _Refuse(kw, e.message) from None
        arrs = self.arrs_not(a.arrs, kw)
        objs = self.objs_not(a.objs, kw)
        return Node(not a.null, frozenset({True, False}) - a.bools, nums, st, arrs, objs)

    def arrs_not(self, arrs: tuple[ArrSet, ...], kw: str) -> tuple[ArrSet, ...]:
        acc: list[ArrSet] = [ARR_ANY]
        for x in arrs:
            comp = self.arr_not(x, kw)
            acc = [z for p in acc for q in comp if (z := self.arr_and(p, q)) is not None]
            if len(acc) > 64:
                raise _Refuse(kw, "the complement of the array constraints is too large")
        return self.arr_prune(acc)

    def arr_not(self, x: ArrSet, kw: str) -> list[ArrSet]:
        if x == ARR_ANY:
            return []
        if x.contains is not None:
            raise _Refuse(kw, "the complement of contains cannot be expressed")
        out: list[ArrSet] = []
        if x.min > 0:
            out.append(ArrSet((), TRUE, 0, x.min - 1))
        if x.max is not None:
            out.append(ArrSet((), TRUE, x.max + 1, None))
        n = len(x.prefix)
        top = n if x.max is None else min(n, x.max)
        if x.items != TRUE and (x.max is None or x.max > n):
            if x.max is None:
                raise _Refuse(
                    kw, "the complement of an items constraint (some item fails) cannot be expressed"
                )
            top = x.max
        for i in range(top):
            e = x.elem(i)
            if e == TRUE:
                continue
            pre = tuple([TRUE] * i + [k_not(e)])
            self.check_complementable(e, kw)
            out.append(ArrSet(pre, TRUE, i + 1, None))
        return out

    def objs_not(self, objs: tuple[ObjSet, ...], kw: str) -> tuple[ObjSet, ...]:
        acc: list[ObjSet] = [OBJ_ANY]
        for x in objs:
            comp = self.obj_not(x, kw)
            acc = [z for p in acc for q in comp for z in self.obj_and(p, q)]
            if len(acc) > 64:
                raise _Refuse(kw, "the complement of the object constraints is too large")
        return self.obj_prune(acc)

    def obj_not(self, x: ObjSet, kw: str) -> list[ObjSet]:
        if x == OBJ_ANY:
            return []
        out: list[ObjSet] = []
        if x.names is not None or x.min > 1 or x.max is not None:
            raise _Refuse(
                kw, "the complement of propertyNames/minProperties/maxProperties cannot be expressed"
            )
        if x.min == 1:
            out.append(ObjSet((), frozenset(), ((ANYSTR, FALSE),)))
        if any(k != TRUE for _, k in x.rest):
            # "some undeclared property fails" would need an existential over the undeclared names
            raise _Refuse(kw, "the complement of additionalProperties/patternProperties cannot be expressed")
        for name in sorted(x.required, key=[n for n, _ in x.props].index):
            out.append(ObjSet(((name, FALSE),), frozenset(), ((ANYSTR, TRUE),)))
        for name, k in x.props:
            if k == TRUE:
                continue
            self.check_complementable(k, kw)
            out.append(ObjSet(((name, k_not(k)),), frozenset({name}), ((ANYSTR, TRUE),)))
        return out

    def empty(self, n: Node, depth: int = 3) -> bool:
        """Whether the node accepts no value (True only when provable)."""
        if n.null or n.bools or n.nums:
            return False
        if n.str is not None:
            if n.str.lang == ANYSTR:
                return False
            try:
                if not R.is_empty_lang(self.str_vre(n.str)):
                    return False
            except R.TooComplex:
                return False
        for a in n.arrs:
            if depth <= 0:
                return False
            if not any(self.key_empty(a.elem(i), depth - 1) for i in range(a.min)):
                return False
        for o in n.objs:
            if depth <= 0:
                return False
            d = dict(o.props)
            if not any(self.key_empty(d.get(r, TRUE), depth - 1) for r in o.required):
                return False
        return True

    def key_empty(self, k: Key, depth: int) -> bool:
        if k == FALSE:
            return True
        if k == TRUE:
            return False
        try:
            return self.empty(self.node(k), depth)
        except (_Refuse, UnsupportedKeyword):
            return False

    # ---------------------------------------------------------------- validation of values by nodes
    def accepts(self, key: Key, v: Any, depth: int = 0) -> bool:
        if depth > 200:
            return False
        n = self.node(key)
        if v is None:
            return n.null
        if isinstance(v, bool):
            return v in n.bools
        if _is_num(v):
            x = to_fraction(v)
            return any(a.contains(x) for a in n.nums)
        if isinstance(v, str):
            return n.str is not None and self.str_accepts(n.str, v)
        if isinstance(v, list):
            return any(self.arr_accepts(a, v, depth) for a in n.arrs)
        if isinstance(v, dict):
            return any(self.obj_accepts(o, v, depth) for o in n.objs)
        return False

    def arr_accepts(self, a: ArrSet, v: list, depth: int) -> bool:
        if len(v) < a.min or (a.max is not None and len(v) > a.max):
            return False
        if not all(self.accepts(a.elem(i), e, depth + 1) for i, e in enumerate(v)):
            return False
        if a.contains is not None:
            n = sum(1 for e in v if self.accepts(a.contains, e, depth + 1))
            if n < a.cmin or (a.cmax is not None and n > a.cmax):
                return False
        return True

    def obj_accepts(self, o: ObjSet, v: dict, depth: int) -> bool:
        if len(v) < o.min or (o.max is not None and len(v) > o.max):
            return False
        if not o.required <= set(v):
            return False
        if o.names is not None and not all(self.str_accepts(o.names, k) for k in v):
            return False
        d = dict(o.props)
        for k, e in v.items():
            child = d[k] if k in d else self.rest_child(o.rest, k)
            if not self.accepts(child, e, depth + 1):
                return False
        return True


# ==================================================================================================
# Grammar emission
# ==================================================================================================


class _Emitter:
    def __init__(self, comp: _Compiler, max_whitespace: int) -> None:
        self.c = comp
        self.max_ws = max_whitespace
        self.rules: dict[str, list[list[str]]] = {}
        self.terms: dict[tuple[str, str], str] = {}  # (kind, text) -> name
        self.term_lang: dict[str, tuple[str, VRe]] = {}  # name -> ("str"|"num", value/text language)
        self.term_text: dict[str, tuple[str, str]] = {}
        self._helper: dict[tuple, str] = {}
        self.class_of: dict[Key, int] = {}
        self.nodes: dict[Key, Node] = {}
        self._str_terms: dict[StrSet, str | None] = {}
        self._num_terms: dict[tuple[NumAtom, ...], str | None] = {}

    # ---- terminals
    def term(self, kind: str, text: str, cls: str, lang: VRe) -> str:
        k = (kind, text)
        if k not in self.terms:
            name = f"{'K' if cls == 'key' else 'S' if cls == 'str' else 'N'}{len(self.terms)}"
            self.terms[k] = name
            self.term_text[name] = k
            self.term_lang[name] = ("num" if cls == "num" else "str", lang)
        return self.terms[k]

    def str_term(self, st: StrSet, cls: str = "str") -> str | None:
        key = (st, cls)
        if key in self._str_terms:  # type: ignore[comparison-overlap]
            return self._str_terms[key]  # type: ignore[index]
        try:
            x = self.c.str_vre(st)
        except R.TooComplex:
            raise _Refuse("maxLength", "length bounds combined with a pattern are too complex") from None
        name: str | None
        if R.is_empty_lang(x):
            name = None
        else:
            words = R.finite_strings(x, 1)
            if words is not None and len(words) == 1:
                name = self.term("lit", R.json_quote(words[0]), cls, x)
            else:
                name = self.term("re", R.json_string_regex(x), cls, x)
        self._str_terms[key] = name  # type: ignore[index]
        return name

    def num_term(self, nums: tuple[NumAtom, ...]) -> str | None:
        if nums in self._num_terms:
            return self._num_terms[nums]
        x = alt(*(num_atom_vre(a) for a in nums)) if nums else EMPTY
        name: str | None
        if R.is_empty_lang(x):
            name = None
        else:
            words = R.finite_strings(x, 1)
            if words is not None and len(words) == 1:
                name = self.term("lit", words[0], "num", x)
            else:
                name = self.term("re", R.render(x), "num", x)
        self._num_terms[nums] = name
        return name

    def key_term(self, name: str) -> str:
        return self.term("lit", R.json_quote(name), "key", lit(name))

    # ---- phase 1: reachable nodes
    def collect(self) -> None:
        work = [self.c.root_key]
        seen = {self.c.root_key}
        while work:
            self.c.check_deadline()
            k = work.pop()
            n = self.c.node(k)
            self.nodes[k] = n
            for ch in self.children(n):
                if ch not in seen and ch != FALSE:
                    seen.add(ch)
                    work.append(ch)

    def children(self, n: Node) -> list[Key]:
        out = []
        for a in n.arrs:
            ks = list(a.prefix) + [a.items]
            out.extend(ks)
            if a.contains is not None:
                for k in ks:
                    out.append(k_and(k, a.contains))
                    out.append(k_and(k, k_not(a.contains)))
        for o in n.objs:
            out.extend(k for _, k in o.props)
            out.extend(k for _, k in o.rest)
        return out

    # ---- phase 2: merge nodes with the same structure (bisimulation)
    def partition(self) -> None:
        keys = list(self.nodes)
        scal: dict[Key, tuple] = {}
        for k in keys:
            n = self.nodes[k]
            st = self.str_term(n.str) if n.str is not None else None
            nt = self.num_term(n.nums)
            scal[k] = (n.null, tuple(sorted(n.bools)), st, nt)
        cls = {k: 0 for k in keys}

        def ck(k: Key) -> int:
            return -1 if k == FALSE else cls[k]

        ncls = 1
        while True:
            sigs: dict[tuple, int] = {}
            new = {}
            for k in keys:
                n = self.nodes[k]
                sig = (
                    scal[k],
                    tuple(
                        (
                            tuple(ck(p) for p in a.prefix),
                            ck(a.items),
                            a.min,
                            a.max,
                            None
                            if a.contains is None
                            else (
                                tuple(ck(k_and(p, a.contains)) for p in (*a.prefix, a.items)),
                                tuple(ck(k_and(p, k_not(a.contains))) for p in (*a.prefix, a.items)),
                                a.cmin,
                                a.cmax,
                            ),
                        )
                        for a in n.arrs
                    ),
                    tuple(
                        (
                            tuple((nm, ck(c), nm in o.required) for nm, c in o.props),
                            tuple((lg, ck(c)) for lg, c in o.rest),
                            o.names,
                            o.min,
                            o.max,
                        )
                        for o in n.objs
                    ),
                )
                new[k] = sigs.setdefault(sig, len(sigs))
            if len(sigs) == ncls:
                cls = new
                break
            cls, ncls = new, len(sigs)
        self.class_of = cls

    # ---- phase 3: rules
    def vname(self, k: Key) -> str | None:
        if k == FALSE:
            return None
        return f"v{self.class_of[k]}"

    def emit(self) -> None:
        done: set[int] = set()
        for k, n in self.nodes.items():
            c = self.class_of[k]
            if c in done:
                continue
            done.add(c)
            self.c.check_deadline()
            alts: list[list[str]] = []
            if n.null:
                alts.append(['"null"'])
            if True in n.bools:
                alts.append(['"true"'])
            if False in n.bools:
                alts.append(['"false"'])
            nt = self.num_term(n.nums)
            if nt:
                alts.append([nt])
            if n.str is not None:
                stt = self.str_term(n.str)
                if stt:
                    alts.append([stt])
            for a in n.arrs:
                r = self.array_rule(a)
                if r:
                    alts.append([r])
            for o in n.objs:
                r = self.object_rule(o)
                if r:
                    alts.append([r])
            self.rules[f"v{c}"] = alts

    def helper(self, key: tuple, build: Callable[[str], list[list[str]]]) -> str:
        name = self._helper.get(key)
        if name is None:
            name = f"h{len(self._helper)}"
            self._helper[key] = name
            self.rules[name] = build(name)
        return name

    def elem_options(self, a: ArrSet, k: Key) -> tuple[tuple[str, int], ...]:
        """(rule, count increment) choices for an item constrained by k (split by `contains`)."""
        if a.contains is None:
            v = self.vname(k)
            return ((v, 0),) if v else ()
        opts = []
        m = self.vname(k_and(k, a.contains))
        if m:
            opts.append((m, 1))
        nm = self.vname(k_and(k, k_not(a.contains)))
        if nm:
            opts.append((nm, 0))
        return tuple(opts)

    def array_limits(self, a: ArrSet) -> tuple[int | None, int]:
        """(effective maxItems, number of explicit positions)."""
        mx = a.max
        K = len(a.prefix)
        for i in range(K):
            if a.prefix[i] == FALSE:
                mx = i if mx is None else min(mx, i)
                break
        if a.items == FALSE:
            mx = K if mx is None else min(mx, K)
        limit = max(K, a.min) if mx is None else mx
        return mx, limit

    def array_rule(self, a: ArrSet) -> str | None:
        mx, limit = self.array_limits(a)
        if mx is not None and a.min > mx:
            return None
        if limit > 2000:
            raise _Refuse("maxItems" if mx is not None else "minItems", "array length bounds above 2000")
        pos = [self.elem_options(a, a.elem(i)) for i in range(limit)]
        tail = self.elem_options(a, a.items) if mx is None else ()
        counting = a.contains is not None
        cmin = a.cmin if counting else 0
        cmax = a.cmax if counting else None
        cap = (cmax if cmax is not None else cmin) if counting else 0

        def step(c: int, dc: int) -> int | None:
            c2 = c + dc
            if cmax is not None:
                return c2 if c2 <= cmax else None
            return min(c2, cap)

        def rest(i: int, c: int) -> str:
            # after i items, c of them matching `contains`
            key = ("arr", tuple(pos[i:]), tail, max(a.min - i, 0), c, cmin, cmax)

            def build(name: str) -> list[list[str]]:
                alts: list[list[str]] = []
                if i >= a.min and c >= cmin:
                    alts.append([])
                opts = pos[i] if i < limit else tail
                for v, dc in opts:
                    c2 = step(c, dc)
                    if c2 is not None:
                        alts.append(['","', v, rest(min(i + 1, limit), c2)])
                return alts

            return self.helper(key, build)

        def build_arr(name: str) -> list[list[str]]:
            alts: list[list[str]] = []
            if a.min == 0 and cmin == 0:
                alts.append(['"["', '"]"'])
            opts = pos[0] if limit > 0 else tail
            for v, dc in opts:
                c2 = step(0, dc)
                if c2 is not None:
                    alts.append(['"["', v, rest(min(1, limit), c2), '"]"'])
            return alts

        return self.helper(("array", tuple(pos), tail, a.min, cmin, cmax), build_arr)

    def object_rule(self, o: ObjSet) -> str | None:
        c = self.c
        declared = [(n, k) for n, k in o.props if k != FALSE]
        decl_names = [n for n, _ in o.props]
        # the other names: each region of the partition, minus the declared names, within propertyNames
        rest_alts: list[tuple[str, str]] = []
        for lang, k in o.rest:
            if k == FALSE:
                continue
            lg = (
                lang
                if not decl_names
                else (R.not_words(decl_names) if lang == ANYSTR else R.vre_minus(lang, R.words(decl_names)))
            )
            st = StrSet(lg)
            if o.names is not None:
                inter = c.n_and(_only(str=st), _only(str=o.names)).str
                if inter is None:
                    continue
                st = inter
            t = self.str_term(st, "key")
            v = self.vname(k)
            if t is not None and v is not None:
                rest_alts.append((t, v))
        mn, mx = o.min, o.max
        if rest_alts and mn > 1:
            raise _Refuse(
                "minProperties",
                "minProperties above 1 with undeclared properties allowed (a grammar "
                "cannot rule out duplicate names)",
            )
        cap = max(mn, mx if mx is not None else 0, 1)
        if cap > 64:
            raise _Refuse("maxProperties", "property count bounds above 64")
        items = [(self.key_term(n), self.vname(k), n in o.required) for n, k in declared]
        rest_rule = None
        if rest_alts:
            rk = ("restkv", tuple(rest_alts))
            rest_rule = self.helper(rk, lambda name: [[t, '":"', v] for t, v in rest_alts])

        def state(i: int, cnt: int) -> str:
            key = ("obj", tuple(items[i:]), rest_rule, cnt, mn, mx)

            def build(name: str) -> list[list[str]]:
                alts: list[list[str]] = []
                sep = ['","'] if cnt > 0 else []
                nxt = min(cnt + 1, cap)
                if i < len(items):
                    kt, v, req = items[i]
                    if v is not None and (mx is None or cnt < mx):
                        alts.append(sep + [kt, '":"', v, state(i + 1, nxt)])
                    if not req:
                        alts.append([state(i + 1, cnt)])
                    return alts
                if cnt >= mn:
                    alts.append([])
                if rest_rule is not None and (mx is None or cnt < mx):
                    alts.append(sep + [rest_rule, state(i, nxt)])
                return alts

            return self.helper(key, build)

        for _kt, v, req in items:
            if req and v is None:
                return None
        return self.helper(
            ("object", tuple(items), rest_rule, mn, mx), lambda name: [['"{"', state(0, 0), '"}"']]
        )

    # ---- output
    def prune(self) -> None:
        """Drop alternatives that use rules deriving no string at all."""
        productive: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, alts in self.rules.items():
                if name in productive:
                    continue
                for a in alts:
                    if all(not _is_rule(s) or s in productive for s in a):
                        productive.add(name)
                        changed = True
                        break
        for name in list(self.rules):
            if name not in productive:
                del self.rules[name]
        for name, alts in self.rules.items():
            self.rules[name] = [a for a in alts if all(not _is_rule(s) or s in productive for s in a)]
        # unreachable rules
        root = self.vname(self.c.root_key)
        reach = set()
        stack = [root] if root in self.rules else []
        while stack:
            r = stack.pop()
            if r in reach:
                continue
            reach.add(r)
            for a in self.rules[r]:
                stack.extend(s for s in a if _is_rule(s) and s not in reach)
        for name in list(self.rules):
            if name not in reach:
                del self.rules[name]

    def text(self) -> str:
        root = self.vname(self.c.root_key)
        if root not in self.rules:
            raise UnsatisfiableSchema("the schema accepts no JSON value (its keywords contradict each other)")
        used_terms: set[str] = set()
        lines = [f"start: {root}"]
        for name, alts in self.rules.items():
            body = " | ".join(" ".join(a) for a in alts)
            lines.append(f"{name}: {body}")
            for a in alts:
                used_terms.update(s for s in a if s[:1].isupper())
        for name in sorted(used_terms, key=lambda t: int(t[1:])):
            kind, text = self.term_text[name]
            lines.append(f"{name}: {R.lark_literal(text) if kind == 'lit' else R.lark_regexp(text)}")
        if self.max_ws > 0:
            lines.append(f"WS: /[ \\t\\n\\r]{{1,{self.max_ws}}}/")
            lines.append("%ignore WS")
        return "\n".join(lines) + "\n"


def _is_rule(sym: str) -> bool:
    return sym[:1].islower()


# ==================================================================================================
# LALR check and lexer-collision check
# ==================================================================================================


def _lalr_states(text: str) -> list[set[str]]:
    """Terminal sets acceptable in each LALR state; raises lark's GrammarError on conflicts."""
    from lark.common import ParserConf
    from lark.load_grammar import load_grammar
    from lark.parsers.lalr_analysis import LALR_Analyzer

    g, _ = load_grammar(text, "<jsonschema>", [], False)
    terminals, rules, _ignore = g.compile(["start"], set())
    conf = ParserConf(rules, {}, ["start"])
    an = LALR_Analyzer(conf)
    an.compute_lalr()
    term_names = {t.name for t in terminals}
    return [{a for a in actions if a in term_names} for actions in an.parse_table.states.values()]


def _check_collisions(em: _Emitter, states: list[set[str]]) -> tuple[str, str] | None:
    c = em.c
    cache: dict[tuple[str, str], bool] = {}
    for acc in states:
        ts = sorted(t for t in acc if t in em.term_lang)
        if len(ts) < 2:
            continue
        for i in range(len(ts)):
            for j in range(i + 1, len(ts)):
                a, b = ts[i], ts[j]
                ca, la = em.term_lang[a]
                cb, lb = em.term_lang[b]
                if ca != cb:
                    continue
                pair = (a, b)
                if pair not in cache:
                    ka, ta = em.term_text[a]
                    kb, tb = em.term_text[b]
                    if ka == "lit" and kb == "lit":
                        cache[pair] = False
                    else:
                        try:
                            cache[pair] = not R.product(c.dfa(la), c.dfa(lb), "and").is_empty()
                        except R.TooComplex:
                            cache[pair] = True
                if cache[pair]:
                    return pair
    return None


# ==================================================================================================
# Public API
# ==================================================================================================


#: run the LALR/lexer-collision check even for grammars that are deterministic by construction (tests)
ALWAYS_CHECK_LALR = False


def _load(schema: dict | bool | str) -> Any:
    if isinstance(schema, str):
        try:
            return json.loads(schema)
        except json.JSONDecodeError as e:
            raise GrammarError(f"the JSON schema is not valid JSON: {e}") from None
    return schema


def schema_to_grammar(
    schema: dict | bool | str,
    *,
    strict: bool = True,
    max_whitespace: int = 16,
    formats: Literal["assert", "subset", "annotate"] = "assert",
    deadline: float | None = None,
) -> JsonGrammar:
    """Compile a JSON Schema to a lark grammar (see the module docstring for the exact language)."""
    if formats not in ("assert", "subset", "annotate"):
        raise GrammarError("formats must be 'assert', 'subset' or 'annotate'")
    if max_whitespace < 0:
        raise GrammarError("max_whitespace must be >= 0")
    doc = _load(schema)
    if doc is False:
        raise UnsatisfiableSchema("the schema `false` accepts no JSON value")
    dropped: frozenset[tuple[int, str]] = frozenset()
    ignored: frozenset[str] = frozenset()
    notes: list[str] = []
    for _attempt in range(12):
        comp = _Compiler(
            doc, strict=strict, formats=formats, deadline=deadline, dropped=dropped, ignored=ignored
        )
        try:
            em = _Emitter(comp, max_whitespace)
            em.collect()
            em.partition()
            em.emit()
            em.prune()
            text = em.text()
        except _Refuse as e:
            if strict or e.keyword in ignored:
                raise UnsupportedKeyword(
                    e.keyword, f"unsupported JSON Schema keyword {e.keyword!r}: {e.message}"
                ) from None
            # strict=False: drop the keyword everywhere and try again
            ignored = ignored | {e.keyword}
            notes.append(f"dropped keyword {e.keyword!r}: {e.message}")
            continue
        except R.TooComplex as e:
            raise GrammarError(f"the schema is too complex to compile: {e}") from None
        except RecursionError:
            raise GrammarError("the schema is nested too deeply") from None
        problem: str | None = None
        if not comp.union_sites and not ALWAYS_CHECK_LALR:
            # without alternative arrays/objects the grammar is deterministic by construction: every value
            # position has one terminal per JSON type, and key terminals are disjoint (declared names are
            # cut out of the other regions). The engine builds the LALR tables anyway.
            return JsonGrammar(text, notes + [w for w in comp.warnings if w not in notes])
        comp.check_deadline()
        try:
            states = _lalr_states(text)
            pair = _check_collisions(em, states)
            if pair is not None:
                problem = (
                    f"two alternatives overlap in a way the grammar cannot tell apart ({pair[0]}/{pair[1]})"
                )
        except Exception as e:  # lark.exceptions.GrammarError on LALR conflicts
            if type(e).__module__.startswith("lark"):
                problem = f"the alternatives are not LALR(1)-distinguishable ({str(e).splitlines()[0]})"
            else:
                raise
        if problem is None:
            return JsonGrammar(text, notes + [w for w in comp.warnings if w not in notes])
        sites = [s for s in comp.union_sites if s not in dropped]
        kws = list(dict.fromkeys(k for _sid, k in sites)) or ["anyOf"]
        kw = kws[0]
        if strict or not sites:
            also = f" (alternatives also come from {', '.join(kws[1:])})" if len(kws) > 1 else ""
            raise UnsupportedKeyword(kw, f"unsupported JSON Schema keyword {kw!r}: {problem}{also}")
        dropped = dropped | frozenset(sites)
        for k in dict.fromkeys(k for _sid, k in sites):
            notes.append(f"dropped keyword {k!r}: {problem}")
    raise GrammarError("the schema could not be compiled even after dropping the unsupported keywords")


# ==================================================================================================
# Canonical serialization
# ==================================================================================================


def _num_text(v: Any) -> str:
    """Integral values as integers, others positionally, both from the shortest repr of a float (the
    same decimal reading the compiler gives to numeric keywords)."""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("JSON has no NaN or infinity")
        d = Decimal(repr(v))
    else:
        d = Decimal(v)
    if d == d.to_integral_value():
        return str(int(d))
    t = format(d, "f")
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return t


def canonical_dumps(instance: Any, schema: dict | bool | str, *, indent: int | None = None) -> str:
    """The engine's canonical JSON text for `instance` under `schema` (see the module docstring)."""
    doc = _load(schema)
    comp: _Compiler | None
    root: Key | None
    try:
        comp = _Compiler(doc, strict=False, formats="annotate", deadline=None)
        root = comp.root_key
    except Exception:
        comp, root = None, None

    def node_of(k: Key | None) -> Node | None:
        if comp is None or k is None:
            return None
        try:
            return comp.node(k)
        except Exception:
            return None

    out: list[str] = []
    nl = indent is not None

    def emit(v: Any, k: Key | None, depth: int) -> None:
        if v is None:
            out.append("null")
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        elif _is_num(v):
            out.append(_num_text(v))
        elif isinstance(v, str):
            out.append(R.json_quote(v))
        elif isinstance(v, list):
            if not v:
                out.append("[]")
                return
            n = node_of(k)
            arr = None
            if n is not None and comp is not None:
                arr = next((a for a in n.arrs if comp.arr_accepts(a, v, 0)), n.arrs[0] if n.arrs else None)
            out.append("[")
            for i, e in enumerate(v):
                if i:
                    out.append(",")
                if nl:
                    out.append("\n" + " " * (indent * (depth + 1)))  # type: ignore[operator]
                ek = arr.elem(i) if arr is not None else None
                if arr is not None and ek is not None and arr.contains is not None and comp is not None:
                    # the grammar splits the items into matching / not matching `contains`
                    try:
                        hit = comp.accepts(arr.contains, e)
                    except Exception:
                        hit = False
                    ek = k_and(ek, arr.contains if hit else k_not(arr.contains))
                emit(e, ek, depth + 1)
            if nl:
                out.append("\n" + " " * (indent * depth))  # type: ignore[operator]
            out.append("]")
        elif isinstance(v, dict):
            if not v:
                out.append("{}")
                return
            n = node_of(k)
            obj = None
            if n is not None and comp is not None:
                obj = next((o for o in n.objs if comp.obj_accepts(o, v, 0)), None)
                if obj is None:
                    obj = next((o for o in n.objs if o.required <= set(v)), n.objs[0] if n.objs else None)
            order = []
            if obj is not None:
                order = [name for name, _ in obj.props if name in v]
            order += [name for name in v if name not in order]
            out.append("{")
            for i, name in enumerate(order):
                if i:
                    out.append(",")
                if nl:
                    out.append("\n" + " " * (indent * (depth + 1)))  # type: ignore[operator]
                out.append(R.json_quote(name))
                out.append(": " if nl else ":")
                child = comp.obj_full_child(obj, name) if (obj is not None and comp is not None) else None
                emit(v[name], child, depth + 1)
            if nl:
                out.append("\n" + " " * (indent * depth))  # type: ignore[operator]
            out.append("}")
        else:
            raise TypeError(f"not a JSON value: {v!r}")

    emit(instance, root, 0)
    return "".join(out)
