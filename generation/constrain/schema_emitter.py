"""Grammar emission: value-set nodes -> lark rules and terminals (one rule per distinct value set,
right-recursive chains for arrays and objects, hash-consed helpers), and the LALR / lexer-collision
check for grammars that are not deterministic by construction."""

from __future__ import annotations

from collections.abc import Callable

from . import regex as R
from .regex import ANYSTR, EMPTY, VRe, alt, lit
from .schema_compiler import Compiler
from .schema_numbers import num_atom_vre
from .schema_unique import UniqueArray, Values, unique_array_rule
from .schema_values import (
    FALSE,
    ArrSet,
    Key,
    Node,
    NumAtom,
    ObjSet,
    Refuse,
    StrSet,
    UnsatisfiableSchema,
    count_split,
    only,
)


class Emitter:
    def __init__(self, comp: Compiler, max_whitespace: int) -> None:
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
        self._values = Values(comp)
        self._unique: dict[ArrSet, UniqueArray] = {}
        self.unique_composite = False  # some uniqueItems array has array/object values (LALR check)

    def unique(self, a: ArrSet) -> UniqueArray:
        """The enumerated item domains of a uniqueItems array (refuses uniqueItems when infinite)."""
        u = self._unique.get(a)
        if u is None:
            u = UniqueArray(self._values, a, self.array_limits(a)[0])
            self._unique[a] = u
            self.unique_composite = self.unique_composite or u.composite
        return u

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
            raise Refuse("maxLength", "length bounds combined with a pattern are too complex") from None
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
            if a.unique:
                out.extend(self.unique(a).keys())
            if a.counts:
                out.extend(kk for k in ks for kk, _hits in count_split(k, a.counts))
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
                            a.unique,
                            tuple((lo, hi) for _c, lo, hi in a.counts),
                            tuple(
                                tuple((ck(kk), h) for kk, h in count_split(p, a.counts))
                                for p in ((*a.prefix, a.items) if a.counts else ())
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

    def elem_options(self, a: ArrSet, k: Key) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """(rule, count increments) choices for an item constrained by k (split by each `contains`)."""
        opts = []
        for kk, hits in count_split(k, a.counts):
            v = self.vname(kk)
            if v:
                opts.append((v, hits))
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
        if a.unique:
            return unique_array_rule(self, a, self.unique(a))
        mx, limit = self.array_limits(a)
        if mx is not None and a.min > mx:
            return None
        if limit > 2000:
            raise Refuse("maxItems" if mx is not None else "minItems", "array length bounds above 2000")
        pos = [self.elem_options(a, a.elem(i)) for i in range(limit)]
        tail = self.elem_options(a, a.items) if mx is None else ()
        bounds = tuple((lo, hi) for _c, lo, hi in a.counts)
        zero = tuple(0 for _ in bounds)

        def step(c: tuple[int, ...], dc: tuple[int, ...]) -> tuple[int, ...] | None:
            # counts above the maximum fail; without a maximum they are capped at the minimum
            out = []
            for x, d, (lo, hi) in zip(c, dc, bounds, strict=True):
                x += d
                if hi is not None and x > hi:
                    return None
                out.append(x if hi is not None else min(x, lo))
            return tuple(out)

        def enough(c: tuple[int, ...]) -> bool:
            return all(x >= lo for x, (lo, _hi) in zip(c, bounds, strict=True))

        def rest(i: int, c: tuple[int, ...]) -> str:
            # after i items, c[j] of them matching the j-th `contains`
            key = ("arr", tuple(pos[i:]), tail, max(a.min - i, 0), c, bounds)

            def build(name: str) -> list[list[str]]:
                alts: list[list[str]] = []
                if i >= a.min and enough(c):
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
            if a.min == 0 and enough(zero):
                alts.append(['"["', '"]"'])
            opts = pos[0] if limit > 0 else tail
            for v, dc in opts:
                c2 = step(zero, dc)
                if c2 is not None:
                    alts.append(['"["', v, rest(min(1, limit), c2), '"]"'])
            return alts

        return self.helper(("array", tuple(pos), tail, a.min, bounds), build_arr)

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
                inter = c.n_and(only(str=st), only(str=o.names)).str
                if inter is None:
                    continue
                st = inter
            t = self.str_term(st, "key")
            v = self.vname(k)
            if t is not None and v is not None:
                rest_alts.append((t, v))
        mn, mx = o.min, o.max
        # the required names always count; if the undeclared ones must make up 2 or more, a repeated
        # undeclared name (which a grammar cannot rule out) could fake the count
        if rest_alts and mn - sum(1 for n, _ in declared if n in o.required) > 1:
            raise Refuse(
                "minProperties",
                "minProperties more than 1 above the number of required properties, with undeclared "
                "properties allowed (a grammar cannot rule out duplicate names)",
            )
        cap = max(mn, mx if mx is not None else 0, 1)
        if cap > 64:
            raise Refuse("maxProperties", "property count bounds above 64")
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


def lalr_states(text: str) -> list[set[str]]:
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


def check_collisions(em: Emitter, states: list[set[str]]) -> tuple[str, str] | None:
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
