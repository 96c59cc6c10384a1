"""A small regex AST over code points (`Chars`, `Cat`, `Alt`, `Rep`) with simplifying constructors,
and the questions asked of it directly (nullable, length range, emptiness, finite languages, tries).

Values are sequences of Unicode code points, surrogates excluded."""

from __future__ import annotations

from collections.abc import Iterable

from .charsets import UNIVERSE, CharSet, cs_minus, cs_of, cs_size, cs_union


class TooComplex(Exception):
    """A construction would exceed its size limit; callers turn this into a refusal."""


class PatternUnsupported(Exception):
    """A regex construct that cannot be expressed exactly; `.construct` names it."""

    def __init__(self, construct: str, message: str | None = None) -> None:
        super().__init__(message or f"unsupported regex construct: {construct}")
        self.construct = construct


class VRe:
    """A regex node. Immutable; equality is structural, hashes are cached (trees get hashed a lot)."""

    __slots__ = ("_h",)
    _h: int

    def _key(self) -> tuple:
        raise NotImplementedError

    def __hash__(self) -> int:
        try:
            return self._h
        except AttributeError:
            h = hash((type(self).__name__, self._key()))
            object.__setattr__(self, "_h", h)
            return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not type(self):
            return False
        return hash(self) == hash(other) and self._key() == other._key()  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VRe nodes are immutable")


class Chars(VRe):
    __slots__ = ("cs",)
    cs: CharSet

    def __init__(self, cs: CharSet) -> None:
        object.__setattr__(self, "cs", cs)

    def _key(self) -> tuple:
        return self.cs

    def __repr__(self) -> str:
        return f"Chars({self.cs!r})"


class _Parts(VRe):
    """A node made of a sequence of nodes; Cat and Alt differ only in what the sequence means (and
    equality tells them apart by type)."""

    __slots__ = ("parts",)
    parts: tuple[VRe, ...]

    def __init__(self, parts: tuple[VRe, ...]) -> None:
        object.__setattr__(self, "parts", parts)

    def _key(self) -> tuple:
        return self.parts

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parts!r})"


class Cat(_Parts):
    """Concatenation."""

    __slots__ = ()


class Alt(_Parts):
    """Alternation."""

    __slots__ = ()


class Rep(VRe):
    __slots__ = ("x", "lo", "hi")
    x: VRe
    lo: int
    hi: int | None

    def __init__(self, x: VRe, lo: int, hi: int | None) -> None:
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)

    def _key(self) -> tuple:
        return (self.x, self.lo, self.hi)

    def __repr__(self) -> str:
        return f"Rep({self.x!r}, {self.lo}, {self.hi})"


EPS: VRe = Cat(())
EMPTY: VRe = Alt(())
ANYCHAR: VRe = Chars(UNIVERSE)
ANYSTR: VRe = Rep(ANYCHAR, 0, None)


def chars(cs: CharSet) -> VRe:
    return Chars(cs) if cs else EMPTY


def lit(s: str) -> VRe:
    return cat(*(Chars(((ord(c), ord(c)),)) for c in s))


def _as_rep(x: VRe) -> tuple[VRe, int, int | None]:
    if isinstance(x, Rep):
        return x.x, x.lo, x.hi
    return x, 1, 1


def cat(*xs: VRe) -> VRe:
    parts: list[VRe] = []
    for x in xs:
        if x == EMPTY:
            return EMPTY
        for y in x.parts if isinstance(x, Cat) else (x,):
            if parts:
                # x{a,b} x{c,d} = x{a+c,b+d}
                bx, a, b = _as_rep(parts[-1])
                by, c, d = _as_rep(y)
                if bx == by and not isinstance(bx, Cat):
                    parts[-1] = rep(bx, a + c, None if b is None or d is None else b + d)
                    continue
            parts.append(y)
    if len(parts) == 1:
        return parts[0]
    return Cat(tuple(parts))


def alt(*xs: VRe) -> VRe:
    parts: list[VRe] = []
    seen: set[VRe] = set()
    cs: CharSet | None = None
    for x in xs:
        items = x.parts if isinstance(x, Alt) else (x,)
        for y in items:
            if isinstance(y, Chars):
                cs = y.cs if cs is None else cs_union(cs, y.cs)
                continue
            if y not in seen:
                seen.add(y)
                parts.append(y)
    if cs is not None:
        parts.insert(0, Chars(cs))
    if EPS in seen and len(parts) > 1:
        rest = [p for p in parts if p != EPS]
        if all(nullable(p) for p in rest):
            parts = rest
    if len(parts) == 1:
        return parts[0]
    return Alt(tuple(parts))


def rep(x: VRe, lo: int, hi: int | None) -> VRe:
    if hi is not None and hi < lo:
        return EMPTY
    if x == EMPTY:
        return EPS if lo == 0 else EMPTY
    if x == EPS or hi == 0:
        return EPS
    if lo == 1 and hi == 1:
        return x
    if isinstance(x, Rep) and x.hi is None and x.lo <= 1 and hi is None:
        # (x*)* = x*, (x+)+ = x+, (x+)* = x*, (x*)+ = x*
        return Rep(x.x, min(x.lo, lo), None)
    if isinstance(x, Rep) and x.lo == 0 and x.hi == 1 and lo == 0:
        # (x?){0,n} = x{0,n}
        return Rep(x.x, 0, hi)
    return Rep(x, lo, hi)


def opt(x: VRe) -> VRe:
    return rep(x, 0, 1)


def nullable(x: VRe) -> bool:
    if isinstance(x, Chars):
        return False
    if isinstance(x, Cat):
        return all(nullable(p) for p in x.parts)
    if isinstance(x, Alt):
        return any(nullable(p) for p in x.parts)
    if isinstance(x, Rep):
        return x.lo == 0 or nullable(x.x)
    raise TypeError(x)


def length_range(x: VRe) -> tuple[int, int | None]:
    """(min, max) length of the strings of x; for EMPTY (no strings) returns (0, 0)."""
    if isinstance(x, Chars):
        return (1, 1)
    if isinstance(x, Cat):
        lo, hi_c = 0, 0
        hi: int | None = hi_c
        for p in x.parts:
            a, b = length_range(p)
            lo += a
            hi = None if hi is None or b is None else hi + b
        return lo, hi
    if isinstance(x, Alt):
        if not x.parts:
            return (0, 0)
        rs = [length_range(p) for p in x.parts]
        lo = min(r[0] for r in rs)
        his = [r[1] for r in rs]
        return lo, (None if any(h is None for h in his) else max(his))  # type: ignore[type-var]
    if isinstance(x, Rep):
        a, b = length_range(x.x)
        rhi: int | None = None if x.hi is None or b is None else b * x.hi
        if b == 0:
            rhi = 0
        return a * x.lo, rhi
    raise TypeError(x)


def is_empty_lang(x: VRe) -> bool:
    if isinstance(x, Chars):
        return not x.cs
    if isinstance(x, Cat):
        return any(is_empty_lang(p) for p in x.parts)
    if isinstance(x, Alt):
        return all(is_empty_lang(p) for p in x.parts)
    if isinstance(x, Rep):
        return x.lo > 0 and is_empty_lang(x.x)
    raise TypeError(x)


def finite_strings(x: VRe, limit: int = 10000) -> list[str] | None:
    """All strings of x when x is a finite language of at most `limit` strings (else None)."""
    if isinstance(x, Chars):
        if cs_size(x.cs) > limit:
            return None
        return [chr(c) for lo, hi in x.cs for c in range(lo, hi + 1)]
    if isinstance(x, Cat):
        acc = [""]
        for p in x.parts:
            sub = finite_strings(p, limit)
            if sub is None or len(acc) * len(sub) > limit:
                return None
            acc = [a + b for a in acc for b in sub]
        return acc
    if isinstance(x, Alt):
        out: list[str] = []
        for p in x.parts:
            sub = finite_strings(p, limit)
            if sub is None:
                return None
            out.extend(sub)
            if len(out) > limit:
                return None
        return list(dict.fromkeys(out))
    if isinstance(x, Rep):
        if x.hi is None:
            return [""] if is_empty_lang(x.x) or finite_strings(x.x, 1) == [""] else None
        sub = finite_strings(x.x, limit)
        if sub is None:
            return None
        out = []
        cur = [""]
        for k in range(x.hi + 1):
            if k >= x.lo:
                out.extend(cur)
            if k == x.hi:
                break
            if len(cur) * len(sub) > limit:
                return None
            cur = [a + b for a in cur for b in sub]
            if len(out) > limit:
                return None
        return list(dict.fromkeys(out))
    raise TypeError(x)


def vre_size(x: VRe) -> int:
    if isinstance(x, Chars):
        return 1
    if isinstance(x, (Cat, Alt)):
        return 1 + sum(vre_size(p) for p in x.parts)
    if isinstance(x, Rep):
        return 1 + vre_size(x.x)
    raise TypeError(x)


def words(ws: Iterable[str]) -> VRe:
    """The finite language `ws`, factored as a trie (compact regexes for large enums)."""
    trie: dict = {}
    END = ""
    for w in ws:
        node = trie
        for c in w:
            node = node.setdefault(c, {})
        node[END] = True

    def build(node: dict) -> VRe:
        alts = []
        for c, child in node.items():
            if c == END:
                continue
            alts.append(cat(lit(c), build(child)))
        body = alt(*alts) if alts else EMPTY
        if END in node:
            return opt(body) if alts else EPS
        return body

    return build(trie)


def not_words(ws: Iterable[str]) -> VRe:
    """Every string except the ones in `ws` (a finite set): the proper prefixes of the words that are not
    words themselves, or a deviation from the trie (a known prefix, then a character that leaves it)
    followed by anything. Linear in the trie, with a single "anything" tail."""
    trie: dict = {}
    END = ""
    for w in ws:
        node = trie
        for c in w:
            node = node.setdefault(c, {})
        node[END] = True

    prefixes: list[str] = []

    def collect(node: dict, path: str) -> None:
        if END not in node:
            prefixes.append(path)
        for c, child in node.items():
            if c != END:
                collect(child, path + c)

    def deviate(node: dict) -> VRe:
        kids = [c for c in node if c != END]
        alts: list[VRe] = []
        others = cs_minus(UNIVERSE, cs_of("".join(kids)))
        if others:
            alts.append(Chars(others))
        for c in kids:
            alts.append(cat(lit(c), deviate(node[c])))
        return alt(*alts)

    collect(trie, "")
    return alt(words(prefixes), cat(deviate(trie), ANYSTR))
