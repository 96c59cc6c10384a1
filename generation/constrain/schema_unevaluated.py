"""`unevaluatedProperties` / `unevaluatedItems` by case split on what is evaluated.

Which properties (items) count as evaluated depends on which in-place subschemas pass: an `anyOf`
branch's `properties` only evaluate when that branch holds, `if` only contributes when it passes, and so
on. The schema is split into cases `(condition, evaluated)`, and the keyword restricts the undeclared
properties (later items) of each case: the result is the union over the cases of
`node AND condition AND unevaluated(rest outside evaluated)`.

The cases keep two invariants for every instance x of the schema, whose actual evaluated set is E(x):
every case whose condition holds for x evaluates a subset of E(x) (so no case admits more than the
keyword allows), and some case holds for x and evaluates exactly E(x) (so none is missing). Because a
larger evaluated set only weakens the restriction, many splits need no complement: an `anyOf` branch or a
`dependentSchemas` entry contributes "passes, evaluates its part" next to "evaluates nothing", and `if`
without an informative `else` needs only "if and then pass" next to "nothing". Only `if` with an `else`
that evaluates something needs the complement of `if`, and `oneOf` relies on its own exclusivity (the
node already requires exactly one branch). Recursion through `$ref` into the keyword's own scope refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations
from typing import TYPE_CHECKING, Any

from . import regex as R
from .regex import EMPTY, VRe, alt
from .schema_values import ANY, FALSE, TRUE, Key, Node, ObjSet, Refuse, k_and, k_not, only

if TYPE_CHECKING:
    from .schema_compiler import Compiler

#: cases per unevaluated* keyword
MAX_CASES = 64
#: anyOf branches that evaluate something (their subsets are enumerated)
MAX_ANY_OF = 6


@dataclass(frozen=True)
class Evaluated:
    """What one case evaluates: every property/item (`all`), or names and patterns (properties), or the
    first `npos` positions and the items matching a `contains` schema (items)."""

    all: bool = False
    names: frozenset[str] = frozenset()
    pats: tuple[VRe, ...] = ()
    npos: int = 0
    contains: tuple[Key, ...] = ()

    def __or__(self, o: Evaluated) -> Evaluated:
        return Evaluated(
            self.all or o.all,
            self.names | o.names,
            self.pats + tuple(p for p in o.pats if p not in self.pats),
            max(self.npos, o.npos),
            self.contains + tuple(k for k in o.contains if k not in self.contains),
        )

    def empty(self) -> bool:
        return not (self.all or self.names or self.pats or self.npos or self.contains)


NOTHING = Evaluated()
Case = tuple[Node, Evaluated]  # condition (ANY: none), what is evaluated when it holds


def unevaluated(
    c: Compiler, kw: str, s: dict, base: str, scope: tuple[str, ...], sid: int, node: Node
) -> Node:
    """The node restricted by `s[kw]` (unevaluatedProperties or unevaluatedItems)."""
    child = c.key_of(s[kw], base, scope)
    if child == TRUE:
        return node
    cases = _Cases(c, kw).of(s, base, scope, frozenset(), top=True)
    parts = []
    for cond, ev in cases:
        n = c.n_and(node, cond)
        if not n.shallow_empty():
            parts.append(_restrict(c, kw, n, ev, child))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return Node()
    return c.n_or_many(parts, sid, kw)


class _Cases:
    def __init__(self, c: Compiler, kw: str) -> None:
        self.c = c
        self.kw = kw

    def of(
        self, s: Any, base: str, scope: tuple[str, ...], seen: frozenset[int], top: bool = False
    ) -> list[Case]:
        if not isinstance(s, dict):
            return [(ANY, NOTHING)]
        if id(s) in seen:
            raise Refuse(self.kw, f"{self.kw} over a recursive reference")
        seen = seen | {id(s)}
        c = self.c
        base, scope = c.enter(s, base, scope)
        acc: list[Case] = [(ANY, self.static(s, base, scope, top))]

        def sub(x: Any) -> list[Case]:
            return self.of(x, base, scope, seen)

        def node(x: Any) -> Node:
            return c.node(c.key_of(x, base, scope))

        parts: list[list[Case]] = []
        if "$ref" in s:
            t, tb = c.reg.resolve(s["$ref"], base)
            parts.append(self.of(t, tb, scope, seen))
        if "$dynamicRef" in s:
            t, tb = c.reg.resolve_dynamic(s["$dynamicRef"], base, scope)
            parts.append(self.of(t, tb, scope, seen))
        for x in s.get("allOf", []):
            parts.append(sub(x))
        if "anyOf" in s:
            parts.append(self.any_of([(node(x), sub(x)) for x in s["anyOf"]]))
        if "oneOf" in s:
            # the node requires exactly one branch: a case of branch i holds only when i is that branch
            parts.append([case for x in s["oneOf"] for case in self.guard(node(x), sub(x))])
        if "if" in s:
            parts.append(self.if_then_else(s, node, sub))
        deps = dict(s.get("dependentSchemas", {}))
        if isinstance(s.get("dependencies"), dict):
            deps.update({k: v for k, v in s["dependencies"].items() if not isinstance(v, list)})
        for name, d in deps.items():
            present = only(objs=(ObjSet(((name, TRUE),), frozenset([name])),))
            parts.append([(ANY, NOTHING), *self.guard(c.n_and(present, node(d)), sub(d))])
        # `not` contributes nothing: its subschema's annotations are dropped
        for p in parts:
            acc = self.product(acc, self.simplify(p))
        return acc

    def static(self, s: dict, base: str, scope: tuple[str, ...], top: bool) -> Evaluated:
        """What this schema's own keywords evaluate (they apply whenever the schema passes)."""
        if self.kw == "unevaluatedProperties":
            if "additionalProperties" in s or (not top and "unevaluatedProperties" in s):
                return Evaluated(all=True)
            pats = []
            for p in s.get("patternProperties", {}):
                try:
                    pats.append(R.parse_pattern(p))
                except R.PatternUnsupported as e:
                    raise Refuse("patternProperties", f"{e} (construct: {e.construct})") from None
            return Evaluated(names=frozenset(s.get("properties", {})), pats=tuple(pats))
        if "items" in s or (not top and "unevaluatedItems" in s):
            return Evaluated(all=True)
        # the items that match `contains` are evaluated by it
        cont = (self.c.key_of(s["contains"], base, scope),) if "contains" in s else ()
        return Evaluated(npos=len(s.get("prefixItems", [])), contains=cont)

    def guard(self, cond: Node, cases: list[Case]) -> list[Case]:
        out = []
        for cc, ev in cases:
            n = self.c.n_and(cond, cc)
            if not n.shallow_empty():
                out.append((n, ev))
        return out

    def simplify(self, cases: list[Case]) -> list[Case]:
        # a part that evaluates nothing in every case adds no information
        if all(ev.empty() for _, ev in cases):
            return [(ANY, NOTHING)]
        return cases

    def product(self, xs: list[Case], ys: list[Case]) -> list[Case]:
        out = []
        for cx, ex in xs:
            for cy, ey in ys:
                n = self.c.n_and(cx, cy)
                if not n.shallow_empty():
                    out.append((n, ex | ey))
        if len(out) > MAX_CASES:
            raise Refuse(self.kw, f"{self.kw} needs more than {MAX_CASES} cases of what is evaluated")
        return out

    def any_of(self, branches: list[tuple[Node, list[Case]]]) -> list[Case]:
        """Any subset of the branches may pass: 'these pass' for every nonempty subset of the branches
        that evaluate something, next to 'nothing' (the node requires one branch to pass anyway)."""
        informative = [(n, cs) for n, cs in branches if not all(ev.empty() for _, ev in cs)]
        if len(informative) > MAX_ANY_OF:
            raise Refuse(self.kw, f"{self.kw} with more than {MAX_ANY_OF} anyOf branches that evaluate")
        out: list[Case] = [(ANY, NOTHING)]
        for r in range(1, len(informative) + 1):
            for subset in combinations(informative, r):
                acc: list[Case] = [(ANY, NOTHING)]
                for n, cs in subset:
                    acc = self.product(acc, self.guard(n, cs))
                out.extend(acc)
                if len(out) > MAX_CASES:
                    raise Refuse(self.kw, f"{self.kw} needs more than {MAX_CASES} cases of what is evaluated")
        return out

    def if_then_else(self, s: dict, node: Any, sub: Any) -> list[Case]:
        cond = node(s["if"])
        passes = self.guard(cond, sub(s["if"]))
        if "then" in s:
            passes = self.product(passes, self.guard(node(s["then"]), sub(s["then"])))
        other = (
            self.simplify(self.guard(node(s["else"]), sub(s["else"]))) if "else" in s else [(ANY, NOTHING)]
        )
        if all(ev.empty() for _, ev in other):
            # when `if` fails nothing is evaluated: 'nothing' is a sound case whenever the schema holds
            return [*passes, (ANY, NOTHING)]
        try:
            fails = self.c.n_not(cond, "if")
        except Refuse as e:
            raise Refuse(self.kw, f"{self.kw} with if/else: {e.message}") from None
        return [*passes, *self.guard(fails, other)]


def _k_or(*keys: Key) -> Key:
    if any(k == TRUE for k in keys):
        return TRUE
    ks = [k for k in keys if k != FALSE]
    if not ks:
        return FALSE
    if len(ks) == 1:
        return ks[0]
    return k_not(k_and(*(k_not(k) for k in ks)))


def _restrict(c: Compiler, kw: str, node: Node, ev: Evaluated, child: Key) -> Node:
    if ev.all:
        return node
    if kw == "unevaluatedProperties":
        out: list[ObjSet] = []
        pats = ev.pats
        evaluated_lang = alt(*pats) if pats else EMPTY
        for o in node.objs:
            declared = {n for n, _ in o.props}
            props = list(o.props) + [
                (n, c.rest_child(o.rest, n)) for n in sorted(ev.names) if n not in declared
            ]
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
                (n, k if (n in ev.names or any(c.lang_accepts(p, n) for p in pats)) else k_and(k, child))
                for n, k in props
            ]
            out.extend(c.obj_norm(ObjSet(tuple(props), o.required, tuple(rest), o.names, o.min, o.max)))
        return Node(node.null, node.bools, node.nums, node.str, node.arrs, tuple(out))
    # unevaluatedItems: positions from npos on are unevaluated unless they match a contains schema
    limit = _k_or(child, *ev.contains)
    arrs = []
    for a in node.arrs:
        pre = list(a.prefix)
        while len(pre) < ev.npos:
            pre.append(a.items)
        pre = [p if i < ev.npos else k_and(p, limit) for i, p in enumerate(pre)]
        arrs.append(replace(a, prefix=tuple(pre), items=k_and(a.items, limit)))
    return Node(node.null, node.bools, node.nums, node.str, tuple(arrs), node.objs)
