"""Rendering a regex AST to regex text that Python `re`, lark and `regex_parser` (the \"lark\" flavor,
which builds `grammar.py`'s terminal automata) all read the same way: either raw, or as the body of a
JSON string literal in the engine's canonical escaping (`json.dumps(ensure_ascii=False)`: only `\"`, `\\\\`
and control characters are escaped, with the short forms `\\b \\f \\n \\r \\t` and lowercase `\\u00xx` for
the other controls), so that the text of a string token and its value correspond one to one."""

from __future__ import annotations

from .charsets import DIGIT, CharSet, cs_complement, cs_inter, cs_minus, cs_norm, cs_size
from .regex_ast import EPS, Alt, Cat, Chars, Rep, TooComplex, VRe

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
# grammar.py lists a terminal's explicit characters one by one: keep the explicit part of a class small
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
