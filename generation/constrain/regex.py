"""Regular languages for constrained decoding: regex and choices constraints, and the string machinery
that `jsonschema.py` builds its terminals with.

Two public constraint builders:

- `regex_to_grammar(pattern)`: a lark grammar (start rule `start`, one terminal, no `%ignore`) whose
  language is exactly the strings that fully match `pattern` (anchored, like outlines and xgrammar).
  The pattern uses Python `re` syntax with ASCII class semantics (`\\d` = [0-9], `\\w` = [A-Za-z0-9_],
  `\\s` = [ \\t\\n\\r\\f\\v]); `.` is any character but `\\n`. Unsupported constructs (lookarounds,
  backreferences, word boundaries, inline flags, possessive quantifiers, anchors anywhere but at the ends)
  raise `GrammarError` naming the construct.
- `choices_to_grammar(choices)`: exactly one of the given strings.

The machinery underneath works on *values* (sequences of Unicode code points, surrogates excluded):

- code-point sets (`CharSet`: sorted disjoint inclusive intervals),
- a small regex AST (`Chars`, `Cat`, `Alt`, `Rep`) with simplifying constructors,
- a parser for ECMA-262 patterns (JSON Schema `pattern`) and Python patterns into that AST,
- DFAs (subset construction, product, complement, minimization) and DFA -> regex (state elimination),
- rendering to regex text that Python `re`, lark and `interegular` all read the same way, either raw or
  as the body of a JSON string literal in the engine's canonical escaping (`json.dumps(ensure_ascii=False)`:
  only `"`, `\\` and control characters are escaped, with the short forms `\\b \\f \\n \\r \\t` and
  lowercase `\\u00xx` for the other controls), so that the text of a string token and its value correspond
  one to one.
"""

from __future__ import annotations

import bisect
import re as _re
from collections.abc import Iterable, Sequence

from ragloom.errors import GrammarError

MAX_CP = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)

# --------------------------------------------------------------------------------------------------
# Code-point sets
# --------------------------------------------------------------------------------------------------

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


class TooComplex(Exception):
    """A construction would exceed its size limit; callers turn this into a refusal."""


class PatternUnsupported(Exception):
    """A regex construct that cannot be expressed exactly; `.construct` names it."""

    def __init__(self, construct: str, message: str | None = None) -> None:
        super().__init__(message or f"unsupported regex construct: {construct}")
        self.construct = construct


# --------------------------------------------------------------------------------------------------
# Regex AST over code points
# --------------------------------------------------------------------------------------------------


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


class Cat(VRe):
    __slots__ = ("parts",)
    parts: tuple[VRe, ...]

    def __init__(self, parts: tuple[VRe, ...]) -> None:
        object.__setattr__(self, "parts", parts)

    def _key(self) -> tuple:
        return self.parts

    def __repr__(self) -> str:
        return f"Cat({self.parts!r})"


class Alt(VRe):
    __slots__ = ("parts",)
    parts: tuple[VRe, ...]

    def __init__(self, parts: tuple[VRe, ...]) -> None:
        object.__setattr__(self, "parts", parts)

    def _key(self) -> tuple:
        return self.parts

    def __repr__(self) -> str:
        return f"Alt({self.parts!r})"


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


# --------------------------------------------------------------------------------------------------
# Rendering to regex text (Python re / lark / interegular)
# --------------------------------------------------------------------------------------------------

# NB: a '"' is always written \x22 in regex text: lark's grammar loader turns a backslash-quote pair
# into a bare quote, which would break "\\" followed by '"'.
_JSON_SHORT = {
    0x08: r"\\b",
    0x0C: r"\\f",
    0x0A: r"\\n",
    0x0D: r"\\r",
    0x09: r"\\t",
    0x22: r"\\\x22",
    0x5C: r"\\\\",
}
JSON_SPECIAL = cs_norm([(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)])
_OUT_SPECIAL = set(".^$*+?()[]{}|\\/")
_IN_SPECIAL = set("\\]^-[/")
# interegular expands explicit ranges into sets of characters: keep the explicit part of a class small
_MAX_EXPLICIT = 70000


def _json_escape_regex(cp: int) -> str:
    """Regex text matching the canonical JSON escape of code point `cp` (a special)."""
    if cp in _JSON_SHORT:
        return _JSON_SHORT[cp]
    return r"\\u00" + f"{cp:02x}"


def _char_text(cp: int, inside: bool) -> str:
    c = chr(cp)
    if cp < 0x20 or 0x7F <= cp <= 0xA0 or cp == 0xAD or c == '"':
        return f"\\x{cp:02x}" if cp <= 0xFF else c
    if inside and c in _IN_SPECIAL:
        return "\\" + c
    if not inside and c in _OUT_SPECIAL:
        return "\\" + c
    if c == " " or c == "#":
        return c
    return c


def _class_text(cs: CharSet) -> str:
    """A character class (or single char) text for a non-empty set of plain characters."""
    if len(cs) == 1 and cs[0][0] == cs[0][1]:
        return _char_text(cs[0][0], inside=False)
    size = cs_size(cs)
    comp = cs_complement(cs)
    # the negated form would also admit surrogates, which never occur in text: harmless
    comp_size = cs_size(comp)
    if comp_size == 0:
        return r"[\s\S]"
    if size <= comp_size:
        if size > _MAX_EXPLICIT:
            raise TooComplex("character class too large")
        if cs == DIGIT:
            return r"\d"
        return "[" + _ranges_text(cs) + "]"
    if comp_size > _MAX_EXPLICIT:
        raise TooComplex("character class too large")
    return "[^" + _ranges_text(comp) + "]"


def _ranges_text(cs: CharSet) -> str:
    out = []
    for lo, hi in cs:
        if lo == hi:
            out.append(_char_text(lo, True))
        elif hi == lo + 1:
            out.append(_char_text(lo, True) + _char_text(hi, True))
        else:
            out.append(_char_text(lo, True) + "-" + _char_text(hi, True))
    return "".join(out)


_ATOM, _CAT, _ALT = 2, 1, 0


def render(x: VRe, json_body: bool = False) -> str:
    """Regex text for x; with `json_body`, for the canonical JSON-escaped text of x's strings."""
    text, _ = _render(x, json_body)
    return text


def _render(x: VRe, jb: bool) -> tuple[str, int]:
    if isinstance(x, Chars):
        if not x.cs:
            raise ValueError("cannot render the empty language")
        if not jb:
            return _class_text(x.cs), _ATOM
        plain = cs_minus(x.cs, JSON_SPECIAL)
        specials = cs_inter(x.cs, JSON_SPECIAL)
        opts = []
        if plain:
            opts.append(_class_text(plain))
        sp = [cp for lo, hi in specials for cp in range(lo, hi + 1)]
        short = [cp for cp in sp if cp in _JSON_SHORT]
        longs = [cp for cp in sp if cp not in _JSON_SHORT]
        if len(short) == 1:
            opts.append(_JSON_SHORT[short[0]])
        elif short:
            letters = {0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t", 0x22: "\\x22", 0x5C: "\\\\"}
            opts.append("\\\\[" + "".join(letters[c] for c in short) + "]")
        if longs:
            groups = []
            for hi_digit in (0, 1):
                lows = [c & 15 for c in longs if c >> 4 == hi_digit]
                if not lows:
                    continue
                if len(lows) == 16:
                    groups.append(f"{hi_digit}[0-9a-f]")
                elif len(lows) == 1:
                    groups.append(f"{hi_digit}{lows[0]:x}")
                else:
                    groups.append(f"{hi_digit}[" + "".join(f"{d:x}" for d in lows) + "]")
            opts.append("\\\\u00" + (groups[0] if len(groups) == 1 else "(?:" + "|".join(groups) + ")"))
        if len(opts) == 1:
            return opts[0], (_ATOM if not specials else _CAT)
        return "(?:" + "|".join(opts) + ")", _ATOM
    if isinstance(x, Cat):
        if not x.parts:
            return "", _CAT
        out = []
        for p in x.parts:
            t, prec = _render(p, jb)
            out.append(t if prec >= _CAT else "(?:" + t + ")")
        return "".join(out), _CAT
    if isinstance(x, Alt):
        if not x.parts:
            raise ValueError("cannot render the empty language")
        has_eps = any(p == EPS for p in x.parts)
        rest = [p for p in x.parts if p != EPS]
        if has_eps:
            if len(rest) == 1:
                t0, prec0 = _render(rest[0], jb)
                t = t0 if prec0 == _ATOM else "(?:" + t0 + ")"
            else:
                t = "(?:" + "|".join(_render(p, jb)[0] for p in rest) + ")"
            return t + "?", _CAT
        texts = [_render(p, jb)[0] for p in rest]
        return "|".join(texts), _ALT
    if isinstance(x, Rep):
        t, prec = _render(x.x, jb)
        if prec < _ATOM:
            t = "(?:" + t + ")"
        lo, hi = x.lo, x.hi
        if hi is None:
            q = "*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}"
        elif lo == 0 and hi == 1:
            q = "?"
        elif lo == hi:
            q = f"{{{lo}}}"
        else:
            q = f"{{{lo},{hi}}}"
        return t + q, _CAT
    raise TypeError(x)


def json_string_regex(x: VRe) -> str:
    """Regex text of a whole JSON string token (quotes included) whose value is in x."""
    t, prec = _render(x, True) if x != EPS else ("", _CAT)
    return r"\x22" + (t if prec >= _CAT else "(?:" + t + ")") + r"\x22"


def json_quote(s: str) -> str:
    """The canonical JSON text of string s (json.dumps with ensure_ascii=False)."""
    out = ['"']
    for c in s:
        cp = ord(c)
        if cp == 0x22:
            out.append('\\"')
        elif cp == 0x5C:
            out.append("\\\\")
        elif cp < 0x20:
            short = {0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}.get(cp)
            out.append(short or f"\\u{cp:04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def lark_literal(text: str) -> str:
    """A lark string literal matching `text` exactly."""
    out = ['"']
    for c in text:
        cp = ord(c)
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif cp < 0x20 or cp == 0x7F:
            out.append(f"\\x{cp:02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def lark_regexp(regex_text: str) -> str:
    """A lark /regexp/ literal (the text already escapes '/')."""
    return "/" + regex_text + "/"


# --------------------------------------------------------------------------------------------------
# Pattern parsing (ECMA-262 for JSON Schema, Python for the regex constraint)
# --------------------------------------------------------------------------------------------------

_BOL = object()
_EOL = object()


class _Parser:
    def __init__(self, src: str, flavor: str) -> None:
        self.s = src
        self.i = 0
        self.flavor = flavor  # "ecma" or "python"
        self.depth = 0

    # --- helpers
    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.s[j] if j < len(self.s) else None

    def eat(self, c: str) -> bool:
        if self.s.startswith(c, self.i):
            self.i += len(c)
            return True
        return False

    def fail(self, msg: str) -> PatternUnsupported:
        return PatternUnsupported("syntax", f"invalid regex {self.s!r}: {msg} at position {self.i}")

    # --- grammar
    def parse_top(self) -> list[tuple[bool, bool, VRe]]:
        """Top-level alternatives as (anchored at start, anchored at end, body)."""
        alts = []
        while True:
            items = self.sequence(top=True)
            bol = eol = False
            while items and items[0] is _BOL:
                items.pop(0)
                bol = True
            while items and items[-1] is _EOL:
                items.pop()
                eol = True
            # a leading $ or trailing ^ with nothing between still pins the ends
            if any(it is _BOL or it is _EOL for it in items):
                if all(it is _BOL or it is _EOL for it in items):
                    # e.g. "^$": anchors only; the body is empty
                    bol = bol or any(it is _BOL for it in items)
                    eol = eol or any(it is _EOL for it in items)
                    items = []
                else:
                    raise PatternUnsupported(
                        "anchor",
                        f"anchors ^/$ are only supported at the start/end of a "
                        f"top-level alternative (pattern {self.s!r})",
                    )
            alts.append((bol, eol, cat(*items)))
            if not self.eat("|"):
                break
        if self.i != len(self.s):
            raise self.fail("unbalanced parenthesis")
        return alts

    def disjunction(self) -> VRe:
        opts = [self.cat_items(self.sequence(top=False))]
        while self.eat("|"):
            opts.append(self.cat_items(self.sequence(top=False)))
        return alt(*opts)

    def cat_items(self, items: list) -> VRe:
        for it in items:
            if it is _BOL or it is _EOL:
                raise PatternUnsupported(
                    "anchor",
                    f"anchors ^/$ are only supported at the start/end of a "
                    f"top-level alternative (pattern {self.s!r})",
                )
        return cat(*items)

    def sequence(self, top: bool) -> list:
        items: list = []
        while True:
            c = self.peek()
            if c is None or c == "|" or c == ")":
                return items
            if c == "^":
                self.i += 1
                items.append(_BOL)
                continue
            if c == "$":
                self.i += 1
                items.append(_EOL)
                continue
            if self.flavor == "python" and self.s.startswith("\\A", self.i):
                self.i += 2
                items.append(_BOL)
                continue
            if self.flavor == "python" and self.s.startswith("\\Z", self.i):
                self.i += 2
                items.append(_EOL)
                continue
            atom = self.atom()
            atom = self.quantifier(atom)
            items.append(atom)

    def quantifier(self, atom: VRe) -> VRe:
        while True:
            c = self.peek()
            if c == "*":
                self.i += 1
                lo, hi = 0, None
            elif c == "+":
                self.i += 1
                lo, hi = 1, None
            elif c == "?":
                self.i += 1
                lo, hi = 0, 1
            elif c == "{":
                m = _re.match(r"\{(\d+)(,(\d*))?\}", self.s[self.i :])
                if not m and self.flavor == "python":
                    m = _re.match(r"\{()(,(\d+))\}", self.s[self.i :])
                if not m:
                    return atom  # a literal '{', read by the next atom
                lo = int(m.group(1) or 0)
                if m.group(2) is None:
                    hi = lo
                else:
                    hi = int(m.group(3)) if m.group(3) else None
                if hi is not None and hi < lo:
                    raise self.fail("numbers out of order in {} quantifier")
                if lo > 10000 or (hi is not None and hi > 10000):
                    raise TooComplex("repetition count too large")
                self.i += m.end()
            else:
                return atom
            if self.eat("?"):
                pass  # lazy: same language
            elif self.peek() == "+" and self.flavor == "python":
                raise PatternUnsupported("possessive quantifier")
            atom = rep(atom, lo, hi)
            if self.peek() in ("*", "+", "?") or (
                self.peek() == "{" and _re.match(r"\{\d+(,\d*)?\}", self.s[self.i :])
            ):
                raise self.fail("nothing to repeat")

    def atom(self) -> VRe:
        c = self.peek()
        assert c is not None
        if c == "(":
            self.i += 1
            self.depth += 1
            if self.depth > 200:
                raise TooComplex("regex nested too deeply")
            if self.eat("?"):
                if self.eat(":"):
                    pass
                elif (
                    self.s.startswith("=", self.i)
                    or self.s.startswith("!", self.i)
                    or self.s.startswith("<=", self.i)
                    or self.s.startswith("<!", self.i)
                ):
                    raise PatternUnsupported(
                        "lookaround", f"lookaround assertions are not supported (pattern {self.s!r})"
                    )
                elif self.eat("P<") or self.eat("<"):
                    m = _re.match(r"[A-Za-z_][A-Za-z0-9_]*>", self.s[self.i :])
                    if not m:
                        raise self.fail("bad group name")
                    self.i += m.end()
                elif self.s.startswith("P=", self.i):
                    raise PatternUnsupported(
                        "backreference", f"backreferences are not supported (pattern {self.s!r})"
                    )
                else:
                    raise PatternUnsupported(
                        "inline flags",
                        f"inline flags / extension groups are not supported (pattern {self.s!r})",
                    )
            inner = self.disjunction()
            if not self.eat(")"):
                raise self.fail("missing )")
            self.depth -= 1
            return inner
        if c == "[":
            self.i += 1
            return chars(self.char_class())
        if c == ".":
            self.i += 1
            if self.flavor == "ecma":
                return Chars(cs_minus(UNIVERSE, ECMA_LINE_TERMINATORS))
            return Chars(cs_minus(UNIVERSE, cs_of("\n")))
        if c == "\\":
            self.i += 1
            return chars(self.escape(in_class=False))
        if c in "*+?":
            raise self.fail("nothing to repeat")
        if c == "{" and self.flavor == "ecma" and _re.match(r"\{\d+(,\d*)?\}", self.s[self.i :]):
            raise self.fail("nothing to repeat")
        if c == ")":
            raise self.fail("unbalanced parenthesis")
        self.i += 1
        return lit(c) if not (0xD800 <= ord(c) <= 0xDFFF) else self._surrogate_char(ord(c))

    def _surrogate_char(self, cp: int) -> VRe:
        raise PatternUnsupported("surrogate", f"lone surrogate in pattern {self.s!r}")

    def escape(self, in_class: bool) -> CharSet:
        c = self.peek()
        if c is None:
            raise self.fail("trailing backslash")
        self.i += 1
        if c == "d":
            return DIGIT
        if c == "D":
            return cs_minus(UNIVERSE, DIGIT)
        if c == "w":
            return WORD
        if c == "W":
            return cs_minus(UNIVERSE, WORD)
        if c == "s":
            return ECMA_SPACE if self.flavor == "ecma" else PY_ASCII_SPACE
        if c == "S":
            return cs_minus(UNIVERSE, ECMA_SPACE if self.flavor == "ecma" else PY_ASCII_SPACE)
        if c in "tnvfr":
            return cs_of({"t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r"}[c])
        if c == "b":
            if in_class:
                return cs_of("\b")
            raise PatternUnsupported(
                "word boundary", f"\\b word boundaries are not supported (pattern {self.s!r})"
            )
        if c == "B":
            raise PatternUnsupported("word boundary", f"\\B is not supported (pattern {self.s!r})")
        if c == "a" and self.flavor == "python":
            return cs_of("\a")
        if c == "0" and not (self.peek() or "").isdigit():
            return cs_of("\0")
        if c.isdigit():
            if self.flavor == "python" and c == "0":
                m = _re.match(r"[0-7]{0,2}", self.s[self.i :])
                assert m
                self.i += m.end()
                return cs_norm([(int("0" + m.group(0), 8),) * 2])
            if in_class and self.flavor == "ecma":
                raise self.fail("invalid class escape")
            raise PatternUnsupported(
                "backreference", f"backreferences are not supported (pattern {self.s!r})"
            )
        if c == "k" and self.peek() == "<":
            raise PatternUnsupported(
                "backreference", f"backreferences are not supported (pattern {self.s!r})"
            )
        if c == "c" and self.flavor == "ecma":
            n = self.peek()
            if n is not None and n.isascii() and n.isalpha():
                self.i += 1
                return cs_norm([(ord(n) % 32, ord(n) % 32)])
            raise self.fail("invalid \\c escape")
        if c == "x":
            m = _re.match(r"[0-9a-fA-F]{2}", self.s[self.i :])
            if not m:
                raise self.fail("invalid \\x escape")
            self.i += 2
            cp = int(m.group(0), 16)
            return cs_norm([(cp, cp)])
        if c == "u":
            if self.peek() == "{" and self.flavor == "ecma":
                m = _re.match(r"\{([0-9a-fA-F]{1,6})\}", self.s[self.i :])
                if not m:
                    raise self.fail("invalid \\u{} escape")
                self.i += m.end()
                cp = int(m.group(1), 16)
            else:
                m = _re.match(r"[0-9a-fA-F]{4}", self.s[self.i :])
                if not m:
                    raise self.fail("invalid \\u escape")
                self.i += 4
                cp = int(m.group(0), 16)
                if 0xD800 <= cp <= 0xDBFF:
                    m2 = _re.match(r"\\u(d[c-f][0-9a-f]{2})", self.s[self.i :], _re.I)
                    if not m2:
                        raise PatternUnsupported("surrogate", f"lone surrogate escape in pattern {self.s!r}")
                    self.i += m2.end()
                    low = int(m2.group(1), 16)
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                elif 0xDC00 <= cp <= 0xDFFF:
                    raise PatternUnsupported("surrogate", f"lone surrogate escape in pattern {self.s!r}")
            if cp > MAX_CP:
                raise self.fail("code point out of range")
            return cs_norm([(cp, cp)])
        if c == "U" and self.flavor == "python":
            m = _re.match(r"[0-9a-fA-F]{8}", self.s[self.i :])
            if not m:
                raise self.fail("invalid \\U escape")
            self.i += 8
            cp = int(m.group(0), 16)
            return cs_norm([(cp, cp)])
        if c in "pP":
            raise PatternUnsupported(
                "unicode property",
                f"\\{c}{{...}} Unicode property escapes are not supported (pattern {self.s!r})",
            )
        if c.isascii() and c.isalnum():
            raise PatternUnsupported(f"\\{c}", f"unsupported escape \\{c} (pattern {self.s!r})")
        return cs_norm([(ord(c), ord(c))])

    def char_class(self) -> CharSet:
        negate = self.eat("^")
        items: list[CharSet] = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.fail("unterminated character class")
            if c == "]" and not (first and self.flavor == "python"):
                self.i += 1
                break
            first = False
            lo_set = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", None):
                self.i += 1
                hi_set = self.class_atom()
                if (
                    len(lo_set) != 1
                    or lo_set[0][0] != lo_set[0][1]
                    or len(hi_set) != 1
                    or hi_set[0][0] != hi_set[0][1]
                ):
                    if self.flavor == "ecma":
                        # Annex B: a class escape in a range makes '-' literal
                        items.extend([lo_set, cs_of("-"), hi_set])
                        continue
                    raise self.fail("bad character range")
                a, b = lo_set[0][0], hi_set[0][0]
                if a > b:
                    raise self.fail("bad character range")
                items.append(cs_norm([(a, b)]))
            else:
                items.append(lo_set)
        s = cs_union(*items) if items else NOCHARS
        return cs_minus(UNIVERSE, s) if negate else s

    def class_atom(self) -> CharSet:
        c = self.peek()
        assert c is not None
        if c == "\\":
            self.i += 1
            if self.peek() == "-":
                self.i += 1
                return cs_of("-")
            return self.escape(in_class=True)
        self.i += 1
        if 0xD800 <= ord(c) <= 0xDFFF:
            raise PatternUnsupported("surrogate", f"lone surrogate in pattern {self.s!r}")
        return cs_norm([(ord(c), ord(c))])


def parse_pattern(pattern: str, *, flavor: str = "ecma", search: bool = True) -> VRe:
    """The language of `pattern`: with `search`, the strings in which it matches somewhere (JSON Schema's
    unanchored semantics); otherwise the strings it matches fully (anchors at the ends are allowed)."""
    p = _Parser(pattern, flavor)
    try:
        alts = p.parse_top()
    except RecursionError:
        raise TooComplex("regex nested too deeply") from None
    out = []
    for bol, eol, body in alts:
        if search:
            out.append(cat(EPS if bol else ANYSTR, body, EPS if eol else ANYSTR))
        else:
            out.append(body)
    return alt(*out)


# --------------------------------------------------------------------------------------------------
# Automata
# --------------------------------------------------------------------------------------------------

_MAX_NFA = 60000
_MAX_DFA = 20000


def _partition(sets: Sequence[CharSet]) -> tuple[list[CharSet], list[list[int]]]:
    """Split the universe into atoms (maximal sets of characters that every input set treats alike).
    Returns the atoms and, for every input set, the indices of the atoms it is made of."""
    points: set[int] = {0, MAX_CP + 1}
    for s in sets:
        for lo, hi in s:
            points.add(lo)
            points.add(hi + 1)
    bounds = sorted(points)
    # signature of each elementary interval: the input sets containing it
    sig_of: dict[tuple[int, ...], int] = {}
    atom_ivs: list[list[tuple[int, int]]] = []
    members: list[list[int]] = [[] for _ in sets]
    elem_sigs: list[list[int]] = [[] for _ in range(len(bounds) - 1)]
    for k, s in enumerate(sets):
        for lo, hi in s:
            a = bisect.bisect_left(bounds, lo)
            b = bisect.bisect_left(bounds, hi + 1)
            for e in range(a, b):
                elem_sigs[e].append(k)
    for e in range(len(bounds) - 1):
        sig = tuple(elem_sigs[e])
        lo, hi = bounds[e], bounds[e + 1] - 1
        if lo > hi or (lo >= SURROGATES[0] and hi <= SURROGATES[1]):
            continue
        key: tuple[int, ...] = sig
        idx = sig_of.get(key)
        if idx is None:
            idx = len(atom_ivs)
            sig_of[key] = idx
            atom_ivs.append([])
            for k in sig:
                members[k].append(idx)
        atom_ivs[idx].append((lo, hi))
    atoms = [cs_norm(ivs) for ivs in atom_ivs]
    return atoms, members


class DFA:
    """A DFA over code points. Atoms are disjoint char sets covering the universe; `trans[s]` maps an atom
    index to the next state (missing = dead). State 0 is the start."""

    __slots__ = ("atoms", "trans", "finals", "_lookup")

    def __init__(self, atoms: list[CharSet], trans: list[dict[int, int]], finals: set[int]) -> None:
        self.atoms = atoms
        self.trans = trans
        self.finals = set(finals)
        self._lookup: tuple[list[int], list[int]] | None = None

    @property
    def n(self) -> int:
        return len(self.trans)

    def atom_of(self, cp: int) -> int:
        if self._lookup is None:
            starts, ids = [], []
            for i, a in enumerate(self.atoms):
                for lo, _hi in a:
                    starts.append(lo)
                    ids.append(i)
            order = sorted(range(len(starts)), key=starts.__getitem__)
            self._lookup = ([starts[j] for j in order], [ids[j] for j in order])
        lstarts, lids = self._lookup
        k = bisect.bisect_right(lstarts, cp) - 1
        if k < 0:
            return -1
        ai = lids[k]
        return ai if cs_contains(self.atoms[ai], cp) else -1

    def accepts(self, s: str) -> bool:
        st = 0
        if not self.trans:
            return False
        for c in s:
            a = self.atom_of(ord(c))
            if a < 0:
                return False
            nxt = self.trans[st].get(a)
            if nxt is None:
                return False
            st = nxt
        return st in self.finals

    def is_empty(self) -> bool:
        if not self.trans:
            return True
        seen = {0}
        stack = [0]
        while stack:
            s = stack.pop()
            if s in self.finals:
                return False
            for t in self.trans[s].values():
                if t not in seen:
                    seen.add(t)
                    stack.append(t)
        return True


def _nfa(x: VRe) -> tuple[list[list[int]], list[list[tuple[CharSet, int]]], int, int]:
    eps: list[list[int]] = []
    edges: list[list[tuple[CharSet, int]]] = []

    def new() -> int:
        if len(eps) > _MAX_NFA:
            raise TooComplex("automaton too large")
        eps.append([])
        edges.append([])
        return len(eps) - 1

    def build(x: VRe) -> tuple[int, int]:
        s, e = new(), new()
        if isinstance(x, Chars):
            if x.cs:
                edges[s].append((x.cs, e))
        elif isinstance(x, Cat):
            cur = s
            for p in x.parts:
                a, b = build(p)
                eps[cur].append(a)
                cur = b
            eps[cur].append(e)
        elif isinstance(x, Alt):
            for p in x.parts:
                a, b = build(p)
                eps[s].append(a)
                eps[b].append(e)
        elif isinstance(x, Rep):
            cur = s
            for _ in range(x.lo):
                a, b = build(x.x)
                eps[cur].append(a)
                cur = b
            if x.hi is None:
                a, b = build(x.x)
                eps[cur].append(a)
                eps[b].append(cur)
                eps[cur].append(e)
            else:
                eps[cur].append(e)
                for _ in range(x.hi - x.lo):
                    a, b = build(x.x)
                    eps[cur].append(a)
                    cur = b
                    eps[cur].append(e)
        else:
            raise TypeError(x)
        return s, e

    s, e = build(x)
    return eps, edges, s, e


def to_dfa(x: VRe) -> DFA:
    eps, edges, start, end = _nfa(x)
    labels: list[CharSet] = []
    label_idx: dict[CharSet, int] = {}
    for es in edges:
        for cs, _ in es:
            if cs not in label_idx:
                label_idx[cs] = len(labels)
                labels.append(cs)
    atoms, members = _partition(labels)

    def closure(states: Iterable[int]) -> frozenset[int]:
        out = set(states)
        stack = list(out)
        while stack:
            s = stack.pop()
            for t in eps[s]:
                if t not in out:
                    out.add(t)
                    stack.append(t)
        return frozenset(out)

    init = closure([start])
    index = {init: 0}
    order = [init]
    trans: list[dict[int, int]] = [{}]
    finals: set[int] = set()
    k = 0
    while k < len(order):
        cur = order[k]
        if end in cur:
            finals.add(k)
        moves: dict[int, set[int]] = {}
        for s in cur:
            for cs, t in edges[s]:
                for a in members[label_idx[cs]]:
                    moves.setdefault(a, set()).add(t)
        for a, targets in moves.items():
            nxt = closure(targets)
            j = index.get(nxt)
            if j is None:
                if len(order) >= _MAX_DFA:
                    raise TooComplex("automaton too large")
                j = len(order)
                index[nxt] = j
                order.append(nxt)
                trans.append({})
            trans[k][a] = j
        k += 1
    return minimize(DFA(atoms, trans, finals))


def _refine(d1: DFA, d2: DFA) -> tuple[list[CharSet], list[int], list[int]]:
    atoms, _ = _partition(list(d1.atoms) + list(d2.atoms))
    m1, m2 = [], []
    for a in atoms:
        probe = a[0][0]
        m1.append(d1.atom_of(probe) if d1.atoms else -1)
        m2.append(d2.atom_of(probe) if d2.atoms else -1)
    return atoms, m1, m2


def product(d1: DFA, d2: DFA, mode: str) -> DFA:
    """Intersection ("and"), union ("or") or difference ("minus") of two DFAs."""
    atoms, m1, m2 = _refine(d1, d2)
    DEAD = -1
    start = (0 if d1.trans else DEAD, 0 if d2.trans else DEAD)
    index = {start: 0}
    order = [start]
    trans: list[dict[int, int]] = [{}]
    finals: set[int] = set()

    def final(p: tuple[int, int]) -> bool:
        f1 = p[0] != DEAD and p[0] in d1.finals
        f2 = p[1] != DEAD and p[1] in d2.finals
        if mode == "and":
            return f1 and f2
        if mode == "or":
            return f1 or f2
        return f1 and not f2

    k = 0
    while k < len(order):
        p = order[k]
        if final(p):
            finals.add(k)
        for ai in range(len(atoms)):
            q1 = d1.trans[p[0]].get(m1[ai], DEAD) if p[0] != DEAD and m1[ai] >= 0 else DEAD
            q2 = d2.trans[p[1]].get(m2[ai], DEAD) if p[1] != DEAD and m2[ai] >= 0 else DEAD
            if mode == "and" and (q1 == DEAD or q2 == DEAD):
                continue
            if mode != "and" and q1 == DEAD and (mode == "minus" or q2 == DEAD):
                continue
            q = (q1, q2)
            j = index.get(q)
            if j is None:
                if len(order) >= _MAX_DFA:
                    raise TooComplex("automaton too large")
                j = len(order)
                index[q] = j
                order.append(q)
                trans.append({})
            trans[k][ai] = j
        k += 1
    return minimize(DFA(atoms, trans, finals))


def complement(d: DFA) -> DFA:
    atoms = list(d.atoms)
    covered = cs_union(*atoms) if atoms else NOCHARS
    rest = cs_minus(UNIVERSE, covered)
    if rest:
        atoms.append(rest)
    n = max(d.n, 1)
    dead = n
    trans: list[dict[int, int]] = []
    for s in range(n):
        row = {}
        for a in range(len(atoms)):
            row[a] = d.trans[s].get(a, dead) if s < d.n else dead
        trans.append(row)
    trans.append({a: dead for a in range(len(atoms))})
    finals = {s for s in range(n + 1) if not (s < d.n and s in d.finals)}
    return minimize(DFA(atoms, trans, finals))


def minimize(d: DFA) -> DFA:
    """Trim (reachable and co-reachable states only) and merge equivalent states (Moore)."""
    if not d.trans:
        return d
    # reachable
    reach = {0}
    stack = [0]
    while stack:
        s = stack.pop()
        for t in d.trans[s].values():
            if t not in reach:
                reach.add(t)
                stack.append(t)
    # co-reachable
    rev: dict[int, set[int]] = {}
    for s in reach:
        for t in d.trans[s].values():
            rev.setdefault(t, set()).add(s)
    live = {f for f in d.finals if f in reach}
    stack = list(live)
    while stack:
        s = stack.pop()
        for p in rev.get(s, ()):
            if p not in live:
                live.add(p)
                stack.append(p)
    if 0 not in live:
        return DFA(list(d.atoms), [], set())
    states = sorted(live)
    cls = {s: (1 if s in d.finals else 0) for s in states}
    while True:
        sigs: dict[tuple, int] = {}
        new = {}
        for s in states:
            sig = (cls[s], tuple(sorted((a, cls[t]) for a, t in d.trans[s].items() if t in live)))
            new[s] = sigs.setdefault(sig, len(sigs))
        if len(sigs) == len(set(cls.values())):
            cls = new
            break
        cls = new
    # renumber with the start first, in BFS order
    order: dict[int, int] = {}
    queue = [cls[0]]
    order[cls[0]] = 0
    rep_of: dict[int, int] = {}
    for s in states:
        rep_of.setdefault(cls[s], s)
    k = 0
    while k < len(queue):
        c = queue[k]
        s = rep_of[c]
        for a in sorted(d.trans[s]):
            t = d.trans[s][a]
            if t in live and cls[t] not in order:
                order[cls[t]] = len(queue)
                queue.append(cls[t])
        k += 1
    trans: list[dict[int, int]] = [dict() for _ in queue]
    finals = set()
    for c, i in order.items():
        s = rep_of[c]
        if s in d.finals:
            finals.add(i)
        for a, t in d.trans[s].items():
            if t in live:
                trans[i][a] = order[cls[t]]
    return DFA(list(d.atoms), trans, finals)


def dfa_to_vre(d: DFA, max_size: int = 4000) -> VRe:
    """State elimination. Raises TooComplex when the expression grows beyond `max_size` nodes."""
    if not d.trans or not d.finals:
        return EMPTY
    n = d.n
    S, F = n, n + 1
    out_e: dict[int, dict[int, VRe]] = {i: {} for i in range(n + 2)}
    in_e: dict[int, dict[int, VRe]] = {i: {} for i in range(n + 2)}

    def add(p: int, q: int, r: VRe) -> None:
        old = out_e[p].get(q)
        new = r if old is None else alt(old, r)
        out_e[p][q] = new
        in_e[q][p] = new

    for s in range(n):
        by_target: dict[int, list[CharSet]] = {}
        for a, t in d.trans[s].items():
            by_target.setdefault(t, []).append(d.atoms[a])
        for t, sets in by_target.items():
            add(s, t, Chars(cs_union(*sets)))
    add(S, 0, EPS)
    for f in d.finals:
        add(f, F, EPS)
    remaining = set(range(n))
    total = 0
    while remaining:
        q = min(remaining, key=lambda s: (len(in_e[s]) - (s in in_e[s])) * (len(out_e[s]) - (s in out_e[s])))
        remaining.discard(q)
        loop = out_e[q].pop(q, None)
        in_e[q].pop(q, None)
        star = rep(loop, 0, None) if loop is not None else EPS
        preds = list(in_e[q].items())
        succs = list(out_e[q].items())
        for p, _rp in preds:
            del out_e[p][q]
        for r, _ in succs:
            del in_e[r][q]
        for p, rp in preds:
            for r, rr in succs:
                e = cat(rp, star, rr)
                add(p, r, e)
                total = vre_size(out_e[p][r])
                if total > max_size:
                    raise TooComplex("expression too large")
        in_e[q].clear()
        out_e[q].clear()
    return out_e[S].get(F, EMPTY)


def vre_inter(a: VRe, b: VRe, max_size: int = 4000) -> VRe:
    if a == ANYSTR:
        return b
    if b == ANYSTR:
        return a
    fa = finite_strings(a, 2000)
    if fa is not None:
        db = to_dfa(b)
        return words(w for w in fa if db.accepts(w))
    fb = finite_strings(b, 2000)
    if fb is not None:
        da = to_dfa(a)
        return words(w for w in fb if da.accepts(w))
    return dfa_to_vre(product(to_dfa(a), to_dfa(b), "and"), max_size)


def vre_minus(a: VRe, b: VRe, max_size: int = 4000) -> VRe:
    fb = finite_strings(b, 2000)
    if a == ANYSTR and fb is not None:
        return not_words(fb)
    fa = finite_strings(a, 2000)
    if fa is not None:
        db = to_dfa(b)
        return words(w for w in fa if not db.accepts(w))
    return dfa_to_vre(product(to_dfa(a), to_dfa(b), "minus"), max_size)


def vre_complement(a: VRe, max_size: int = 4000) -> VRe:
    return vre_minus(ANYSTR, a, max_size)


def vre_with_length(x: VRe, lo: int, hi: int | None, max_size: int = 4000) -> VRe:
    """x restricted to strings of length lo..hi (code points)."""
    if lo == 0 and hi is None:
        return x
    if x == ANYSTR:
        return rep(ANYCHAR, lo, hi)
    a, b = length_range(x)
    if a >= lo and (hi is None or (b is not None and b <= hi)):
        return x
    fx = finite_strings(x, 5000)
    if fx is not None:
        return words(w for w in fx if len(w) >= lo and (hi is None or len(w) <= hi))
    if hi is not None and hi > 2000 or lo > 2000:
        raise TooComplex("length bound too large to combine with a pattern")
    return vre_inter(x, rep(ANYCHAR, lo, hi), max_size)


def vre_matcher(x: VRe) -> _re.Pattern[str]:
    """A compiled Python regex that fullmatches exactly the strings of x (for checks and tests)."""
    return _re.compile(render(x), _re.DOTALL)


# --------------------------------------------------------------------------------------------------
# The regex and choices constraints
# --------------------------------------------------------------------------------------------------


def _check_interegular(regex_text: str) -> None:
    import interegular

    try:
        interegular.parse_pattern(regex_text).to_fsm()
    except Exception as e:  # interegular raises several kinds
        raise GrammarError(f"regex {regex_text!r} cannot be turned into an automaton: {e}") from None


def nonempty(x: VRe) -> VRe:
    """x without the empty string."""
    if not nullable(x):
        return x
    if isinstance(x, Cat):
        # first part nonempty then rest, or first part empty and rest nonempty
        if not x.parts:
            return EMPTY
        head, tail = x.parts[0], cat(*x.parts[1:])
        return alt(cat(nonempty(head), tail), nonempty(tail))
    if isinstance(x, Alt):
        return alt(*(nonempty(p) for p in x.parts))
    if isinstance(x, Rep):
        inner = nonempty(x.x)
        if x.hi is None:
            return cat(inner, rep(x.x, max(x.lo - 1, 0), None))
        return cat(inner, rep(x.x, max(x.lo - 1, 0), x.hi - 1))
    raise TypeError(x)


def regex_to_grammar(pattern: str) -> str:
    """A lark grammar whose language is exactly the strings that fully match `pattern`."""
    if not isinstance(pattern, str):
        raise GrammarError("regex constraint must be a string")
    try:
        x = parse_pattern(pattern, flavor="python", search=False)
    except PatternUnsupported as e:
        raise GrammarError(f"regex {pattern!r}: {e} (construct: {e.construct})") from None
    except TooComplex as e:
        raise GrammarError(f"regex {pattern!r} is too complex: {e}") from None
    if is_empty_lang(x):
        raise GrammarError(f"regex {pattern!r} matches nothing")
    body = nonempty(x)
    lines = []
    if is_empty_lang(body):
        raise GrammarError(f"regex {pattern!r} only matches the empty string, which cannot be a constraint")
    text = render(body)
    _check_interegular(text)
    lines.append("start: REGEX" + ("?" if nullable(x) else ""))
    lines.append("REGEX: " + lark_regexp(text))
    return "\n".join(lines) + "\n"


def choices_to_grammar(choices: Sequence[str]) -> str:
    """A lark grammar accepting exactly one of `choices` (literal terminals)."""
    if isinstance(choices, str) or not isinstance(choices, Sequence):
        raise GrammarError("choices must be a list of strings")
    if not choices:
        raise GrammarError("choices must not be empty")
    if any(not isinstance(c, str) for c in choices):
        raise GrammarError("every choice must be a string")
    if len(set(choices)) != len(choices):
        dup = next(c for c in choices if choices.count(c) > 1)
        raise GrammarError(f"duplicate choice {dup!r}")
    alts = []
    lines = []
    empty = False
    for i, c in enumerate(choices):
        if c == "":
            empty = True
            continue
        name = f"CHOICE_{i}"
        lines.append(f"{name}: {lark_literal(c)}")
        alts.append(name)
    if not alts:
        raise GrammarError("the only choice is the empty string, which cannot be a constraint")
    start = "start: " + " | ".join(alts) + (" | " if empty else "")
    return start + "\n" + "\n".join(lines) + "\n"
