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
patternProperties (up to 4 patterns), propertyNames, minProperties (when undeclared properties are
allowed, at most 1 above the number of required names: a grammar cannot rule out a repeated undeclared
key, which would fake the count), maxProperties, items, prefixItems, minItems, maxItems, uniqueItems
(false; true when the items range over few values: null, booleans, number points or small integer
ranges, finite string sets, fixed-shape arrays/objects of those, at most 64 sets of used values, see
`schema_unique.py`), contains/minContains/maxContains where the contains-schema can be complemented,
minLength, maxLength, pattern (ECMA-262 subset: no lookarounds, backreferences, word boundaries or Unicode
property escapes), format (see below), minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf
(exact digit automata up to a size limit), allOf (by intersection), anyOf (by union), oneOf (when the
branches can be made exclusive by complement or are provably disjoint), not (complements of types,
ranges, multipleOf, patterns, contains, minProperties, required/properties), if/then/else (as the
disjoint cases "if and then" / "not if and else", so `if` must be complementable; discriminators such as
a const/enum property or a type usually are), $ref/$defs (JSON pointers, anchors, `$id`-relative
references in the same document or in `resources`; recursion), $dynamicRef (resolved along the dynamic
scope, which the compiler tracks statically per subschema), dependentRequired and dependentSchemas (by
case split, small counts), unevaluatedProperties/unevaluatedItems (by case split on which anyOf/oneOf/
if/dependentSchemas branches pass, see `schema_unevaluated.py`). Annotations ($schema, $id, $comment,
title, description, default, examples, deprecated, readOnly, writeOnly, $anchor, content*) are ignored;
unknown keywords are ignored with a warning; the draft 2019-09 `dependencies` is read as
dependentRequired/dependentSchemas. Anything else that constrains is refused with `UnsupportedKeyword`
naming it (or dropped with a warning when `strict=False`): uniqueItems over large or infinite item
domains, $ref to documents not given in `resources`, custom metaschemas, complements that cannot be
expressed, alternatives (anyOf/oneOf/enum/not/if/contains/dependent*/unevaluated*) that LALR(1) or the
lexer cannot tell apart. A schema no value satisfies raises `UnsatisfiableSchema`.

Formats: `formats="assert"` asserts exactly date, ipv4, ipv6, uuid, uri, uri-reference, email (RFC 5321
dot-atom or quoted local part; domain of RFC 1123 labels or an IPv4/IPv6 literal), duration,
json-pointer and relative-json-pointer, and refuses the others below and regex. `formats="subset"` also
accepts sound subsets (every accepted string is valid) of: date-time/time without leap seconds (RFC 3339
ties second 60 to the offset: an ~11k-state automaton); hostname and idn-hostname as ASCII RFC 1123 names
without A-labels ("xn--": their validity is Punycode and IDNA2008) in shapes within the 253-character
total; idn-email with any non-ASCII local part and such a domain; iri, iri-reference and uri-template
(RFC 3987, RFC 6570) with Basic Multilingual Plane characters (the supplementary-plane classes are too
large for the engine's terminals). `formats="annotate"` ignores `format` (draft 2020-12's default
vocabulary). Unknown formats are annotations (a warning).

Grammar shape: one rule per distinct value set (identical subschemas share rules), object and array rules
as right-recursive chains (O(properties x count bound) rules), hash-consed helper rules. Grammars whose
values have at most one array and one object alternative are deterministic by construction; the others
are checked with lark's LALR analysis plus a lexer check (no two overlapping terminals acceptable in the
same parser state) and refused naming the keyword that introduced the alternatives.

Modules, one concept each (this one is the public face and the driver): `schema_keywords.py` (keyword
tables), `schema_values.py` (the value-set model), `schema_numbers.py` (numeric ranges and multipleOf as
digit languages), `schema_formats.py` (formats), `schema_refs.py` ($id/$ref/$dynamicRef resolution),
`schema_compiler.py` (schema -> value sets), `schema_unevaluated.py` (unevaluated* by case split),
`schema_unique.py` (uniqueItems by enumerating item values), `schema_emitter.py` (value sets -> grammar
text, and the LALR/lexer check); regular languages come from `regex.py`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ragloom.errors import GrammarError, UnsupportedKeyword

from . import regex as R
from .schema_compiler import Compiler
from .schema_emitter import Emitter, check_collisions, lalr_states
from .schema_formats import FORMATS
from .schema_numbers import int_range, is_num, positional_range_vre
from .schema_values import Key, Node, NumAtom, Refuse, UnsatisfiableSchema, k_and, k_not

# `int_range`, `positional_range_vre` and `NumAtom` stay importable from here for existing callers.
__all__ = [
    "JsonGrammar",
    "UnsatisfiableSchema",
    "schema_to_grammar",
    "canonical_dumps",
    "FORMATS",
    "int_range",
    "positional_range_vre",
    "NumAtom",
]


@dataclass
class JsonGrammar:
    grammar: str  # lark grammar text, start rule "start", LALR(1)
    warnings: list[str] = field(default_factory=list)  # one message per keyword dropped or ignored


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
    resources: Mapping[str, Any] | None = None,
) -> JsonGrammar:
    """Compile a JSON Schema to a lark grammar (see the module docstring for the exact language).

    `resources` maps URIs to other schema documents that `$ref` may point to (nothing is fetched)."""
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
        comp = Compiler(
            doc,
            strict=strict,
            formats=formats,
            deadline=deadline,
            dropped=dropped,
            ignored=ignored,
            resources=resources,
        )
        try:
            em = Emitter(comp, max_whitespace)
            em.collect()
            em.partition()
            em.emit()
            em.prune()
            text = em.text()
        except Refuse as e:
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
        # a uniqueItems array of scalars chooses among distinct terminals (one per value) at every step
        checked = [s for s in comp.union_sites if s[1] != "uniqueItems" or em.unique_composite]
        if not checked and not ALWAYS_CHECK_LALR:
            # without alternative arrays/objects the grammar is deterministic by construction: every value
            # position has one terminal per JSON type, and key terminals are disjoint (declared names are
            # cut out of the other regions). The engine builds the LALR tables anyway.
            return JsonGrammar(text, notes + [w for w in comp.warnings if w not in notes])
        comp.check_deadline()
        try:
            states = lalr_states(text)
            pair = check_collisions(em, states)
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


def canonical_dumps(
    instance: Any,
    schema: dict | bool | str,
    *,
    indent: int | None = None,
    resources: Mapping[str, Any] | None = None,
) -> str:
    """The engine's canonical JSON text for `instance` under `schema` (see the module docstring)."""
    doc = _load(schema)
    comp: Compiler | None
    root: Key | None
    try:
        comp = Compiler(doc, strict=False, formats="annotate", deadline=None, resources=resources)
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
        elif is_num(v):
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
                if arr is not None and ek is not None and comp is not None:
                    # the grammar splits the items into matching / not matching each `contains`
                    for c, _lo, _hi in arr.counts:
                        try:
                            hit = comp.accepts(c, e)
                        except Exception:
                            hit = False
                        ek = k_and(ek, c if hit else k_not(c))
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
