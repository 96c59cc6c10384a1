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

The machinery underneath works on *values* (sequences of Unicode code points, surrogates excluded), one
module per concept, all re-exported here:

- `charsets.py`: code-point sets (`CharSet`: sorted disjoint inclusive intervals) and named classes,
- `regex_ast.py`: a small regex AST (`Chars`, `Cat`, `Alt`, `Rep`) with simplifying constructors,
- `regex_parser.py`: ECMA-262 patterns (JSON Schema `pattern`), Python patterns and lark terminal regexes
  into that AST,
- `automata.py`: DFAs (subset construction, product, complement, minimization) and DFA -> regex (state
  elimination); the one regex-to-automaton builder, also behind `grammar.py`'s terminals,
- `regex_render.py`: regex text, raw or as the body of a JSON string literal in the engine's canonical
  escaping.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragloom.errors import GrammarError

from .automata import (
    DFA,
    complement,
    dfa_to_vre,
    minimize,
    product,
    to_dfa,
    vre_complement,
    vre_inter,
    vre_matcher,
    vre_minus,
    vre_with_length,
)

# The machinery lives in one module per concept; this module re-exports it (callers and tests use
# `regex.X`) and holds the two constraint builders.
from .charsets import (
    DIGIT,
    ECMA_LINE_TERMINATORS,
    ECMA_SPACE,
    MAX_CP,
    NOCHARS,
    PY_ASCII_SPACE,
    SURROGATES,
    UNIVERSE,
    WORD,
    CharSet,
    cs_complement,
    cs_contains,
    cs_inter,
    cs_minus,
    cs_norm,
    cs_of,
    cs_range,
    cs_size,
    cs_union,
)
from .regex_ast import (
    ANYCHAR,
    ANYSTR,
    EMPTY,
    EPS,
    Alt,
    Cat,
    Chars,
    PatternUnsupported,
    Rep,
    TooComplex,
    VRe,
    alt,
    cat,
    chars,
    finite_strings,
    is_empty_lang,
    length_range,
    lit,
    not_words,
    nullable,
    opt,
    rep,
    vre_size,
    words,
)
from .regex_parser import (
    parse_pattern,
)
from .regex_render import (
    JSON_SPECIAL,
    json_quote,
    json_string_regex,
    lark_literal,
    lark_regexp,
    render,
)

__all__ = [
    "regex_to_grammar",
    "choices_to_grammar",
    "nonempty",
    "CharSet",
    "cs_complement",
    "cs_contains",
    "cs_inter",
    "cs_minus",
    "cs_norm",
    "cs_of",
    "cs_range",
    "cs_size",
    "cs_union",
    "DIGIT",
    "ECMA_LINE_TERMINATORS",
    "ECMA_SPACE",
    "MAX_CP",
    "NOCHARS",
    "PY_ASCII_SPACE",
    "SURROGATES",
    "UNIVERSE",
    "WORD",
    "alt",
    "Alt",
    "ANYCHAR",
    "ANYSTR",
    "cat",
    "Cat",
    "chars",
    "Chars",
    "EMPTY",
    "EPS",
    "finite_strings",
    "is_empty_lang",
    "length_range",
    "lit",
    "not_words",
    "nullable",
    "opt",
    "PatternUnsupported",
    "rep",
    "Rep",
    "TooComplex",
    "VRe",
    "vre_size",
    "words",
    "json_quote",
    "JSON_SPECIAL",
    "json_string_regex",
    "lark_literal",
    "lark_regexp",
    "render",
    "parse_pattern",
    "complement",
    "DFA",
    "dfa_to_vre",
    "minimize",
    "product",
    "to_dfa",
    "vre_complement",
    "vre_inter",
    "vre_matcher",
    "vre_minus",
    "vre_with_length",
]

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
