"""Pattern parsing into the regex AST: ECMA-262 (JSON Schema `pattern`), Python (the regex constraint)
and lark (a lark terminal's regex: Python syntax plus the scoped flag groups lark writes)."""

from __future__ import annotations

import re as _re

from .charsets import (
    DIGIT,
    ECMA_LINE_TERMINATORS,
    ECMA_SPACE,
    MAX_CP,
    NOCHARS,
    PY_ASCII_SPACE,
    UNIVERSE,
    WORD,
    CharSet,
    cs_complement,
    cs_contains,
    cs_minus,
    cs_norm,
    cs_of,
    cs_size,
    cs_union,
)
from .regex_ast import (
    ANYCHAR,
    ANYSTR,
    EPS,
    Chars,
    PatternUnsupported,
    TooComplex,
    VRe,
    alt,
    cat,
    chars,
    lit,
    rep,
)

_BOL = object()
_EOL = object()
_MAX_CASED = 70000  # (?i:...) closes a class over case one character at a time


def _case_partners(cp: int) -> str:
    """The other-case forms of a character that are single characters (what (?i:...) adds)."""
    ch = chr(cp)
    return "".join(v for v in (ch.lower(), ch.upper()) if len(v) == 1 and v != ch)


class _Parser:
    def __init__(self, src: str, flavor: str) -> None:
        self.s = src
        self.i = 0
        # "ecma" (JSON Schema), "python" (the regex constraint) or "lark" (a lark terminal's regex:
        # Python syntax plus the scoped flag groups lark writes for "..."i and /.../is)
        self.flavor = "python" if flavor == "lark" else flavor
        self.scoped_flags = flavor == "lark"
        self.icase = False  # inside (?i:...)
        self.dotall = False  # inside (?s:...)
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
            saved = self.icase, self.dotall
            if self.eat("?"):
                if self.eat(":"):
                    pass
                elif self.scoped_flags and (m := _re.match(r"([is]+):", self.s[self.i :])):
                    self.i += m.end()
                    self.icase = self.icase or "i" in m.group(1)
                    self.dotall = self.dotall or "s" in m.group(1)
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
            self.icase, self.dotall = saved
            return inner
        if c == "[":
            self.i += 1
            return chars(self.char_class())
        if c == ".":
            self.i += 1
            if self.dotall:
                return ANYCHAR
            if self.flavor == "ecma":
                return Chars(cs_minus(UNIVERSE, ECMA_LINE_TERMINATORS))
            return Chars(cs_minus(UNIVERSE, cs_of("\n")))
        if c == "\\":
            self.i += 1
            return chars(self._cased(self.escape(in_class=False)))
        if c in "*+?":
            raise self.fail("nothing to repeat")
        if c == "{" and self.flavor == "ecma" and _re.match(r"\{\d+(,\d*)?\}", self.s[self.i :]):
            raise self.fail("nothing to repeat")
        if c == ")":
            raise self.fail("unbalanced parenthesis")
        self.i += 1
        if 0xD800 <= ord(c) <= 0xDFFF:
            return self._surrogate_char(ord(c))
        return chars(self._cased(cs_of(c))) if self.icase else lit(c)

    def _cased(self, cs: CharSet) -> CharSet:
        """cs, and inside (?i:...) also the other case of each of its characters."""
        if not self.icase:
            return cs
        if cs_size(cs) <= _MAX_CASED:
            return cs_union(cs, *(cs_of(_case_partners(cp)) for lo, hi in cs for cp in range(lo, hi + 1)))
        # a large set (\\W, [^...]): a character outside it gets in when a case partner is in it
        rest = cs_complement(cs)
        if cs_size(rest) > _MAX_CASED:
            raise TooComplex("case-insensitive character class too large")
        out = [cp for lo, hi in rest for cp in range(lo, hi + 1)
               if any(not cs_contains(rest, ord(v)) for v in _case_partners(cp))]
        return cs_union(cs, cs_norm((cp, cp) for cp in out))

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
        s = self._cased(cs_union(*items)) if items else NOCHARS
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
