"""The compiler: schema -> value-set nodes (`schema_values.py`), keyword by keyword, with the algebra
(and, or, not, emptiness, membership) those keywords need."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from fractions import Fraction
from functools import partial
from typing import Any

from ragloom.errors import CompileTimeout, GrammarError, UnsupportedKeyword

from . import regex as R
from .deadline import check as check_compile_limit
from .regex import ANYSTR, DFA, EMPTY, VRe, alt, lit
from .schema_formats import FORMAT_SOURCES, SUBSET_FORMATS, UNSUPPORTED_FORMATS, format_vre
from .schema_keywords import KNOWN, METASCHEMAS, METASCHEMAS_2020, TYPES
from .schema_numbers import atom_and, is_num, mult_dfa, nums_and, nums_not, nums_simplify, to_fraction
from .schema_refs import Registry
from .schema_unevaluated import unevaluated
from .schema_unique import value_id
from .schema_values import (
    ALLSTR,
    ANY,
    ARR_ANY,
    FALSE,
    NONE,
    OBJ_ANY,
    TRUE,
    ArrSet,
    Key,
    Node,
    NumAtom,
    ObjSet,
    Refuse,
    StrSet,
    k_and,
    k_not,
    only,
)


def _canon_json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)


#: different contains schemas on one array (each item splits into 2^n cases)
MAX_CONTAINS = 3


class Compiler:
    def __init__(
        self,
        schema: Any,
        *,
        strict: bool,
        formats: str,
        deadline: float | None,
        dropped: frozenset[tuple[int, str]] = frozenset(),
        ignored: frozenset[str] = frozenset(),
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(schema, (dict, bool)):
            raise GrammarError("a JSON Schema must be an object or a boolean")
        self.root = schema
        self.strict = strict
        self.formats = formats
        self.deadline = deadline
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.reg = Registry(schema, resources)
        self._sids: dict[tuple[str, str, tuple[str, ...]], int] = {}
        self._schemas: list[tuple[Any, str, tuple[str, ...]]] = []
        self._canon_cache: dict[int, str] = {}
        self._consts: dict[str, Any] = {}
        self._node_memo: dict[Key, Node] = {}
        self._value_nodes: dict[Node, int] = {}  # value sets registered by node_key
        self._value_list: list[Node] = []
        self._in_progress: set[Key] = set()
        self._dfa_cache: dict[VRe, DFA] = {}
        self.union_sites: list[tuple[int, str]] = []
        self._not_ok: set[Key] = set()
        self.dropped = dropped  # (sid, keyword) pairs dropped after an LALR conflict (strict=False)
        self.ignored = ignored  # keywords dropped everywhere after an emission-time refusal (strict=False)
        self.root_key = self.key_of(schema, self.reg.root_base)

    # ---------------------------------------------------------------- helpers
    def check_deadline(self) -> None:
        check_compile_limit()  # compile_constraint's limit, whose message names it
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise CompileTimeout(
                "compiling the JSON schema exceeded its time limit; simplify the schema "
                "(fewer anyOf/oneOf branches, smaller enums or patterns) or raise the limit",
                metadata={"part": "the JSON schema"},
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

    def key_of(self, schema: Any, base: str, scope: tuple[str, ...] = ()) -> Key:
        """The key of a subschema, evaluated with `base` as its base URI and `scope` as the dynamic scope
        (the resources entered on the way to it that define a `$dynamicAnchor`, outermost first: all a
        `$dynamicRef` below it needs; empty when the document has no `$dynamicRef`)."""
        if schema is True:
            return TRUE
        if schema is False:
            return FALSE
        if isinstance(schema, dict) and not schema:
            return TRUE
        base, scope = self.enter(schema, base, scope)
        ck = (self.canon(schema), base, scope)
        sid = self._sids.get(ck)
        if sid is None:
            sid = len(self._schemas)
            self._sids[ck] = sid
            self._schemas.append((schema, base, scope))
        return frozenset({("s", sid)})

    def enter(self, schema: Any, base: str, scope: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """The base URI and dynamic scope inside `schema` (entered from `base` / `scope`)."""
        base = self.reg.base(schema, base)
        if not self.reg.has_dynamic_ref:
            return base, ()
        if base in self.reg.dyn_resources and base not in scope:
            scope = (*scope, base)
        return base, scope

    def const_key(self, v: Any) -> Key:
        c = _canon_json(v)
        self._consts.setdefault(c, v)
        return frozenset({("c", c)})

    def node_key(self, n: Node) -> Key:
        """A key for a value set built directly (e.g. one item value of a uniqueItems array)."""
        i = self._value_nodes.get(n)
        if i is None:
            i = len(self._value_list)
            self._value_nodes[n] = i
            self._value_list.append(n)
        return frozenset({("v", i)})

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
            raise Refuse(
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
                elif atom[0] == "v":
                    part = self._value_list[atom[1]]
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
        if is_num(v):
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
        schema, base, scope = self._schemas[sid]
        if not isinstance(schema, dict):
            raise GrammarError(f"a subschema must be an object or a boolean, got {schema!r}")
        node = ANY
        s = {k: v for k, v in schema.items() if k not in self.ignored} if self.ignored else schema

        def sub(v: Any) -> Key:
            return self.key_of(v, base, scope)

        def dropped(kw: str) -> bool:
            return (sid, kw) in self.dropped

        def guard(kw: str, fn: Callable[[], Node]) -> Node | None:  # noqa: E306
            try:
                return fn()
            except Refuse as e:
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
            if not isinstance(ms, str) or ms.rstrip("#") not in METASCHEMAS:
                self.refuse(
                    "$schema",
                    f"unknown metaschema {ms!r}: only draft 2020-12 (and older drafts, read "
                    "with 2020-12 semantics) are supported",
                )
            elif ms.rstrip("#") not in METASCHEMAS_2020:
                self.warn(f"$schema {ms!r} is read with draft 2020-12 semantics")

        # ---- type
        if "type" in s:
            t = s["type"]
            ts = [t] if isinstance(t, str) else t
            if not isinstance(ts, list) or any(x not in TYPES for x in ts):
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
            n = guard("$ref", lambda: self.node(self.key_of(*self.reg.resolve(ref, base), scope)))
            if n is not None:
                node = self.n_and(node, n)
        if "$dynamicRef" in s:
            dref = s["$dynamicRef"]
            if not isinstance(dref, str):
                raise GrammarError("$dynamicRef must be a string")
            n = guard(
                "$dynamicRef",
                lambda: self.node(self.key_of(*self.reg.resolve_dynamic(dref, base, scope), scope)),
            )
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
            if kw in s and not dropped(kw):
                n = guard(kw, partial(unevaluated, self, kw, s, base, scope, sid, node))
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
            if is_num(v):
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
            if not is_num(v):
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
        atom = atom_and(NumAtom("num", lo, lo_ex, hi, hi_ex), NumAtom("num", mult=mult))
        nums = (atom,) if atom is not None else ()
        if atom is not None and atom.mult is not None:
            # fail early (and name the keyword) if the digit automaton is out of reach
            mult_dfa(atom.mult, atom.kind == "int")
        return only(nums=nums)

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
            if f in SUBSET_FORMATS and self.formats == "assert":
                self.refuse("format", f"format {f!r}: {SUBSET_FORMATS[f]}")
            elif f in FORMAT_SOURCES:
                fl = format_vre(f)
                try:
                    lang = fl if lang == ANYSTR else R.vre_inter(lang, fl)
                except R.TooComplex:
                    self.refuse("format", f"format {f!r} combined with pattern is too complex")
            elif f in UNSUPPORTED_FORMATS:
                self.refuse("format", f"format {f!r} cannot be asserted exactly by a grammar")
            else:
                self.warn(f"ignored unknown format {f!r} (formats are annotations unless known)")
        st = StrSet(lang, minlen, maxlen)
        return only(str=self.str_norm(st))

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
        # uniqueItems: exact when the items range over few values (the emitter enumerates the sets of
        # values used so far, `schema_unique.py`) and refused there otherwise
        unique = (
            s.get("uniqueItems") is True
            and not (mx is not None and mx <= 1)
            and (sid, "uniqueItems") not in self.dropped
        )
        if unique:
            self.union_sites.append((sid, "uniqueItems"))
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
            except Refuse as e:
                self.refuse(e.keyword, e.message)
                contains = None
        if contains is None:
            return only(arrs=(ArrSet(prefix, items, mn, mx, unique=unique),))
        if contains == FALSE and cmin > 0:
            return only(arrs=())
        self.union_sites.append((sid, "contains"))
        return only(arrs=(ArrSet(prefix, items, mn, mx, ((contains, cmin, cmax),), unique),))

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
            raise Refuse("minContains" if cmin > 64 else "maxContains", "contains counts above 64")
        if c != TRUE and c != FALSE:
            try:
                self.check_complementable(c, "contains")
            except Refuse as e:
                raise Refuse("contains", e.message) from None
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
                raise Refuse("patternProperties", f"{e} (construct: {e.construct})") from None
        if len(pat_items) > 4:
            raise Refuse("patternProperties", "more than 4 patterns")
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
        return only(objs=self.obj_norm(o))

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
            raise Refuse(kw, f"more than 3 {kw} entries")
        node = ANY
        for name, dep in items:
            absent = ObjSet(((name, FALSE),), frozenset(), ((ANYSTR, TRUE),))
            if kw == "dependentRequired":
                if not isinstance(dep, list):
                    raise GrammarError("dependentRequired values must be arrays")
                names = list(dict.fromkeys([name, *dep]))
                present = ObjSet(tuple((x, TRUE) for x in names), frozenset(names))
                present_node = only(objs=(present,))
            else:
                pn = self.node(sub(dep))
                trig = only(objs=(ObjSet(((name, TRUE),), frozenset([name])),))
                present_node = self.n_and(trig, pn)
            both = self.n_or_many([only(objs=(absent,)), present_node], sid, kw)
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
        # the two cases are kept disjoint (C and T, not C and E): overlapping object or array alternatives
        # would make the grammar ambiguous, where disjoint ones are usually told apart by a key or a value
        if "then" not in s:
            try:
                return self.n_or_many([cond, self.n_and(self.n_not(cond, "if"), other)], sid, "if")
            except Refuse:
                return self.n_or_many([cond, other], sid, "if")  # C or E: the same set, no complement
        return self.n_or_many([self.n_and(cond, then), self.n_and(self.n_not(cond, "if"), other)], sid, "if")

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
                    raise Refuse(
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
            raise Refuse("allOf", "too many alternatives")
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
        counts = dict((c, (lo, hi)) for c, lo, hi in x.counts)
        for c, lo, hi in y.counts:
            if c in counts:
                lo0, hi0 = counts[c]
                lo, hi = max(lo, lo0), hi if hi0 is None else hi0 if hi is None else min(hi, hi0)
                if hi is not None and lo > hi:
                    return None
            counts[c] = (lo, hi)
        if len(counts) > MAX_CONTAINS:
            # each item is split by the schemas it matches: 2^n item cases and n counters
            raise Refuse("contains", f"more than {MAX_CONTAINS} different contains constraints on one array")
        merged = tuple(sorted(((c, lo, hi) for c, (lo, hi) in counts.items()), key=repr))
        return ArrSet(prefix, k_and(x.items, y.items), mn, mx, merged, x.unique or y.unique)

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
            nn = self.n_and(only(str=x.names), only(str=y.names)).str
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
        if b.unique and not a.unique and not (a.max is not None and a.max <= 1):
            return False
        a_counts = {c: (lo, hi) for c, lo, hi in a.counts}
        for c, lo, hi in b.counts:
            if c not in a_counts or a_counts[c][0] < lo:
                return False
            ahi = a_counts[c][1]
            if hi is not None and (ahi is None or ahi > hi):
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
                raise Refuse(kw, "the union of the string constraints is too complex") from None
        arrs: list[ArrSet] = []
        objs: list[ObjSet] = []
        for b in branches:
            arrs.extend(x for x in b.arrs if x not in arrs)
            objs.extend(x for x in b.objs if x not in objs)
        arrs_t = self.arr_prune(arrs)
        objs_t = self.obj_prune(objs)
        if (len(arrs_t) > 1 or len(objs_t) > 1) and sid >= 0:
            self.union_sites.append((sid, kw))
        return Node(null, bools, nums_simplify(tuple(nums)), st, arrs_t, objs_t)

    def str_vre(self, st: StrSet) -> VRe:
        return R.vre_with_length(st.lang, st.minlen, st.maxlen)

    def check_complementable(self, k: Key, kw: str) -> None:
        """Raise Refuse unless the complement of k can be expressed. Recursive schemas are handled
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
                raise Refuse(kw, "the complement of the string constraints is too complex") from None
        try:
            nums = nums_not(a.nums)
        except Refuse as e:
            raise Refuse(kw, e.message) from None
        arrs = self.arrs_not(a.arrs, kw)
        objs = self.objs_not(a.objs, kw)
        return Node(not a.null, frozenset({True, False}) - a.bools, nums, st, arrs, objs)

    def arrs_not(self, arrs: tuple[ArrSet, ...], kw: str) -> tuple[ArrSet, ...]:
        acc: list[ArrSet] = [ARR_ANY]
        for x in arrs:
            comp = self.arr_not(x, kw)
            acc = [z for p in acc for q in comp if (z := self.arr_and(p, q)) is not None]
            if len(acc) > 64:
                raise Refuse(kw, "the complement of the array constraints is too large")
        return self.arr_prune(acc)

    def arr_not(self, x: ArrSet, kw: str) -> list[ArrSet]:
        if x == ARR_ANY:
            return []
        if x.unique:
            raise Refuse(kw, "the complement of uniqueItems (two equal items) cannot be expressed")
        if x.counts:
            # not (base and every count in range) = not base, or some count below / above its range
            out = self.arr_not(replace(x, counts=()), kw)
            for c, lo, hi in x.counts:
                if lo > 0:
                    out.append(ArrSet((), TRUE, 0, None, ((c, 0, lo - 1),)))
                if hi is not None:
                    out.append(ArrSet((), TRUE, 0, None, ((c, hi + 1, None),)))
            return out
        out = []
        if x.min > 0:
            out.append(ArrSet((), TRUE, 0, x.min - 1))
        if x.max is not None:
            out.append(ArrSet((), TRUE, x.max + 1, None))
        n = len(x.prefix)
        top = n if x.max is None else min(n, x.max)
        if x.items != TRUE and (x.max is None or x.max > n):
            if x.max is None:
                raise Refuse(
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
                raise Refuse(kw, "the complement of the object constraints is too large")
        return self.obj_prune(acc)

    def obj_not(self, x: ObjSet, kw: str) -> list[ObjSet]:
        if x == OBJ_ANY:
            return []
        out: list[ObjSet] = []
        if x.names is not None:
            raise Refuse(kw, "the complement of propertyNames (some name outside it) cannot be expressed")
        if x.max is not None and x.max > 0:
            # more than max properties: a count of undeclared names that duplicates could fake
            raise Refuse(kw, "the complement of maxProperties cannot be expressed")
        if x.min > 0:
            out.append(ObjSet((), frozenset(), ((ANYSTR, TRUE),), None, 0, x.min - 1))
        if x.max == 0:
            out.append(ObjSet((), frozenset(), ((ANYSTR, TRUE),), None, 1, None))
        if any(k != TRUE for _, k in x.rest):
            # "some undeclared property fails" would need an existential over the undeclared names
            raise Refuse(kw, "the complement of additionalProperties/patternProperties cannot be expressed")
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
        except (Refuse, UnsupportedKeyword):
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
        if is_num(v):
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
        for c, lo, hi in a.counts:
            n = sum(1 for e in v if self.accepts(c, e, depth + 1))
            if n < lo or (hi is not None and n > hi):
                return False
        if a.unique and len({value_id(e) for e in v}) < len(v):
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
