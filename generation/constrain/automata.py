"""DFAs over code points: subset construction from the regex AST (`to_dfa`, the one regex-to-automaton
builder: `grammar.py`'s terminals use it too), product, complement, minimization, and back to a regex
(state elimination)."""

from __future__ import annotations

import bisect
import re as _re
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from .charsets import MAX_CP, NOCHARS, SURROGATES, UNIVERSE, CharSet, cs_contains, cs_minus, cs_norm, cs_union
from .regex_ast import (
    ANYCHAR,
    ANYSTR,
    EMPTY,
    EPS,
    Alt,
    Cat,
    Chars,
    Rep,
    TooComplex,
    VRe,
    alt,
    cat,
    finite_strings,
    length_range,
    not_words,
    rep,
    vre_size,
    words,
)
from .regex_render import render

_MAX_NFA = 60000
_MAX_DFA = 20000
K = TypeVar("K", bound=Hashable)


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


class _States(Generic[K]):
    """The states a construction (subset, product) finds, numbered in the order found (the start is
    0), each with its row of transitions; at most _MAX_DFA of them."""

    def __init__(self, start: K) -> None:
        self.index: dict[K, int] = {start: 0}
        self.order: list[K] = [start]
        self.trans: list[dict[int, int]] = [{}]

    def number(self, key: K) -> int:
        j = self.index.get(key)
        if j is None:
            if len(self.order) >= _MAX_DFA:
                raise TooComplex("automaton too large")
            j = len(self.order)
            self.index[key] = j
            self.order.append(key)
            self.trans.append({})
        return j


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

    states = _States(closure([start]))
    order, trans = states.order, states.trans
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
            trans[k][a] = states.number(closure(targets))
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
    states = _States(start)
    order, trans = states.order, states.trans
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
            trans[k][ai] = states.number((q1, q2))
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


def _coarsest_partition(d: DFA, states: list[int], live: set[int]) -> dict[int, int]:
    """Hopcroft's partition refinement: the block of each live state in the coarsest partition
    that respects acceptance and transitions, in O(n log n) splits (Moore's rounds are quadratic on
    the long chains that bounded repetitions such as `{0,200}` build). The missing transitions go
    to an implicit dead state in a block of its own, which is never needed as a splitter."""
    inv: dict[tuple[int, int], list[int]] = {}
    for s in states:
        for a, t in d.trans[s].items():
            if t in live:
                inv.setdefault((a, t), []).append(s)
    atoms = sorted({a for a, _ in inv})
    blocks = [b for b in ([s for s in states if s in d.finals], [s for s in states if s not in d.finals]) if b]
    block_of = {s: i for i, b in enumerate(blocks) for s in b}
    members = [set(b) for b in blocks]
    work = set(range(len(members)))
    while work:
        splitter = list(members[work.pop()])
        for a in atoms:
            hit: dict[int, set[int]] = {}
            for t in splitter:
                for s in inv.get((a, t), ()):
                    hit.setdefault(block_of[s], set()).add(s)
            for b, inside in hit.items():
                if len(inside) == len(members[b]):
                    continue
                outside = members[b] - inside
                small, large = (inside, outside) if len(inside) <= len(outside) else (outside, inside)
                members[b] = large
                members.append(small)
                new = len(members) - 1
                for s in small:
                    block_of[s] = new
                # b keeps the larger part: if b waits as a splitter, both parts must; if not, the
                # smaller part suffices (splitting by b and by it gives the larger part's split)
                work.add(new)
    return block_of


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
    cls = _coarsest_partition(d, states, live)
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
