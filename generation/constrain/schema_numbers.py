"""Numbers: exact decimal readings of numeric keywords, ranges (`minimum`, `exclusiveMaximum`, ...) and
`multipleOf` as regular languages of positional digits, and the algebra of numeric atoms (and, not)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from math import gcd
from typing import Any

from . import regex as R
from .regex import DFA, EMPTY, EPS, VRe, alt, cat, lit, rep
from .schema_values import NumAtom, Refuse


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


def is_num(x: Any) -> bool:
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
            raise Refuse("multipleOf", "number with a non-terminating or too long decimal expansion")
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


def mult_dfa(m: Fraction, integer: bool) -> DFA:
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
        raise Refuse("multipleOf", f"multipleOf {m} is not a terminating decimal")
    s = max(a, b)
    M = p * 10**s // m.denominator
    if M * (s + 4) > 4000:
        raise Refuse("multipleOf", f"multipleOf {float(m)!r} needs too large a digit automaton")
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
    if (a.mult is None and not a.nmult) or R.is_empty_lang(base):
        return base
    if a.lo is not None and a.lo == a.hi:
        return base if a.contains(a.lo) else EMPTY
    base = positional_range_vre(a.kind, a.lo, a.lo_ex, a.hi, a.hi_ex)
    d = R.to_dfa(base)
    if a.mult is not None:
        d = R.product(d, mult_dfa(a.mult, a.kind == "int"), "and")
    for m in a.nmult:
        # every positional text of a multiple of m (integer or not) is removed
        d = R.minimize(R.product(d, mult_dfa(m, False), "minus"))
    try:
        return R.dfa_to_vre(d, max_size=6000)
    except R.TooComplex:
        m = a.mult if a.mult is not None else a.nmult[0]
        raise Refuse(
            "multipleOf" if a.mult is not None else "not",
            f"multipleOf {float(m)!r} combined with the other number constraints gives too large an expression",
        ) from None


def atom_and(a: NumAtom, b: NumAtom) -> NumAtom | None:
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
    nmult = _nmult(kind, a.nmult + b.nmult, mult)
    if nmult is None:
        return None
    if kind == "int" and lo is not None and hi is not None:
        a_ = lo.numerator // lo.denominator + (1 if lo.denominator != 1 or lo_ex else 0)
        b_ = -((-hi.numerator) // hi.denominator) - (1 if hi.denominator != 1 or hi_ex else 0)
        if a_ > b_:
            return None
    if lo is not None and lo == hi:
        at = NumAtom("num", lo, False, hi, False, None)
        probe = NumAtom(kind, None, False, None, False, mult, nmult)
        return at if probe.contains(lo) else None
    return NumAtom(kind, lo, lo_ex, hi, hi_ex, mult, nmult)


def _nmult(kind: str, ms: tuple[Fraction, ...], mult: Fraction | None) -> tuple[Fraction, ...] | None:
    """The excluded multiples, normalized (None: nothing is left)."""
    out: list[Fraction] = []
    for m in ms:
        if kind == "int":
            m = Fraction(m.numerator)  # an integer is a multiple of p/q iff it is one of p
        if m == 1 and kind == "int":
            return None  # every integer is a multiple of 1
        if mult is not None and (mult / m).denominator == 1:
            return None  # every multiple of `mult` is one of m
        if m not in out:
            out.append(m)
    return tuple(sorted(out))


def nums_and(xs: tuple[NumAtom, ...], ys: tuple[NumAtom, ...]) -> tuple[NumAtom, ...]:
    out = []
    for a in xs:
        for b in ys:
            c = atom_and(a, b)
            if c is not None and c not in out:
                out.append(c)
    return nums_simplify(tuple(out))


def nums_simplify(xs: tuple[NumAtom, ...]) -> tuple[NumAtom, ...]:
    if any(a == NumAtom("num") for a in xs):
        return (NumAtom("num"),)
    return xs


def _atom_not(a: NumAtom) -> tuple[NumAtom, ...]:
    out: list[NumAtom] = []
    # not a multiple of `mult`, or a multiple of one of the excluded ones
    if a.mult is not None:
        out.append(NumAtom("num", nmult=(a.mult,)))
    out.extend(NumAtom("num", mult=m) for m in a.nmult)
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
            raise Refuse("not", "complement of the number constraints is too large")
    return acc
