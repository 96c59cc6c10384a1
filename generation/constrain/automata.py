"""DFAs over code points: built from the regex AST (`to_dfa`, and `dfa_tables` for dense tables: the one
regex-to-automaton builder, `grammar.py`'s terminals use it too), product, complement, minimization, and
back to a regex (state elimination).

Small expressions go through a Thompson NFA and the subset construction. Long counted repetitions
(a JSON string of maxLength 8192: thousands of copies of its character-or-escape automaton) are put
together from their parts' automata instead, with numpy, in time and memory linear in the result.
The long loops call `deadline.check()`, so a compile time limit stops them."""

from __future__ import annotations

import bisect
import re as _re
from collections.abc import Hashable, Iterable, Sequence
from typing import Generic, TypeVar

import numpy as np

from .charsets import MAX_CP, NOCHARS, SURROGATES, UNIVERSE, CharSet, cs_contains, cs_minus, cs_norm, cs_union
from .deadline import check
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
_MAX_DFA = 20000  # states of a subset or product construction, and of a DFA handed to the algebra
# Dense tables put together from parts (a JSON string of maxLength 8192 is ~57,000 states by 11
# atoms): at most this many cells, 16 MiB of int32.
_MAX_CELLS = 1 << 22
_DIRECT_MIN = 100  # NFA states up to which _subset is about as quick (and its DFA is minimal)
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
        if not k & 255:
            check()
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
        if not len(eps) & 1023:
            check()
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


def _nfa_size(x: VRe, memo: dict[VRe, int]) -> int:
    """The number of states _nfa(x) builds (it unrolls counted repetitions)."""
    got = memo.get(x)
    if got is None:
        if isinstance(x, Chars):
            got = 2
        elif isinstance(x, (Cat, Alt)):
            got = 2 + sum(_nfa_size(p, memo) for p in x.parts)
        elif isinstance(x, Rep):
            got = 2 + _nfa_size(x.x, memo) * (x.lo + (1 if x.hi is None else x.hi - x.lo))
        else:
            raise TypeError(x)
        memo[x] = got
    return got


class _Atoms:
    """The atoms of one expression (see _partition), and the atoms each of its character sets is made of."""

    def __init__(self, x: VRe) -> None:
        labels: list[CharSet] = []
        seen: set[int] = set()
        stack = [x]
        while stack:
            y = stack.pop()
            if id(y) in seen:
                continue
            seen.add(id(y))
            if isinstance(y, Chars):
                if y.cs:
                    labels.append(y.cs)
            elif isinstance(y, (Cat, Alt)):
                stack.extend(y.parts)
            elif isinstance(y, Rep):
                stack.append(y.x)
        labels = list(dict.fromkeys(labels))
        self.atoms, members = _partition(labels)
        self._members = dict(zip(labels, members))

    def of(self, cs: CharSet) -> list[int]:
        return self._members[cs]


def _subset(x: VRe, atoms: _Atoms) -> DFA:
    """Thompson NFA, subset construction, minimization: the general builder (its DFA is minimal)."""
    eps, edges, start, end = _nfa(x)

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
        check()
        cur = order[k]
        if end in cur:
            finals.add(k)
        moves: dict[int, set[int]] = {}
        for s in cur:
            for cs, t in edges[s]:
                for a in atoms.of(cs):
                    moves.setdefault(a, set()).add(t)
        for a, targets in moves.items():
            trans[k][a] = states.number(closure(targets))
        k += 1
    return minimize(DFA(atoms.atoms, trans, finals))


class Table:
    """A trimmed DFA as a dense table: every state is reachable from state 0 and can reach a final
    state (no states at all: the empty language)."""

    __slots__ = ("trans", "finals")

    def __init__(self, trans: np.ndarray, finals: np.ndarray) -> None:
        self.trans = trans  # int32 [states, atoms]; -1 = dead
        self.finals = finals  # bool [states]

    @property
    def n(self) -> int:
        return len(self.finals)

    @classmethod
    def of(cls, d: DFA, num_atoms: int) -> Table:
        trans = np.full((d.n, num_atoms), -1, np.int32)
        for q, row in enumerate(d.trans):
            for a, t in row.items():
                trans[q, a] = t
        finals = np.zeros(d.n, bool)
        finals[sorted(d.finals)] = True
        return cls(trans, finals)

    def dfa(self, atoms: list[CharSet]) -> DFA:
        trans: list[dict[int, int]] = [{} for _ in range(self.n)]
        qs, cols = np.nonzero(self.trans >= 0)
        for q, a, t in zip(qs.tolist(), cols.tolist(), self.trans[qs, cols].tolist()):
            trans[q][a] = t
        return DFA(atoms, trans, set(np.nonzero(self.finals)[0].tolist()))


def _cells_check(states: int, num_atoms: int) -> None:
    if states * max(num_atoms, 1) > _MAX_CELLS:
        raise TooComplex("automaton too large")


def _repeat(body: Table, lo: int, hi: int | None) -> Table | None:
    """body{lo,hi} as copies of body chained end to start: counted repetition in O(copies) numpy
    work instead of a subset construction over the unrolled NFA. Exact when no word of body is a
    proper prefix of another (its final states have no way out), as with a JSON string's
    characters and escapes; otherwise None (the ends of copies would be ambiguous)."""
    if body.n == 0 or body.finals[0] or (body.trans[body.finals] >= 0).any():
        return None
    body = _fresh_start(body)  # a copy's start is where the previous copy ended
    inner = ~body.finals  # the states of one copy: its final state is the next copy's start
    m = int(inner.sum())
    copies = lo + 1 if hi is None else hi
    _cells_check(copies * m + 1, body.trans.shape[1])
    loc = np.cumsum(inner) - 1  # body state -> its index in a copy (the start stays 0)
    t = body.trans[inner]
    rel = np.where(t < 0, -1, np.where(body.finals[t], m, loc[t]))  # m: the next copy's start
    offsets = (np.arange(copies, dtype=np.int32) * m)[:, None, None]
    trans = np.where(rel < 0, -1, rel + offsets).reshape(copies * m, -1).astype(np.int32)
    if hi is None:  # the last copy is a loop: its ends lead back to its own start
        last = trans[lo * m :]
        last[last == copies * m] = lo * m
        finals = np.zeros(copies * m, bool)
    else:  # after the last copy nothing may follow
        trans = np.vstack([trans, np.full((1, trans.shape[1]), -1, np.int32)])
        finals = np.zeros(copies * m + 1, bool)
    finals[lo * m :: m] = True
    return Table(trans, finals)


def _fresh_start(t: Table) -> Table:
    """t with a start state that no move comes back to (a copy of the start, where one does):
    then being at the start means having read nothing."""
    if t.n == 0 or not (t.trans == 0).any():
        return t
    shifted = np.where(t.trans < 0, -1, t.trans + 1).astype(np.int32)
    return Table(np.vstack([shifted[:1], shifted]), np.concatenate([t.finals[:1], t.finals]))


def _optional(body: Table) -> Table:
    """body or nothing."""
    if body.n == 0:
        return Table(np.full((1, body.trans.shape[1]), -1, np.int32), np.ones(1, bool))
    t = _fresh_start(body)
    return Table(t.trans, np.concatenate([[True], t.finals[1:]]))


def _concat(a: Table, b: Table) -> Table | None:
    """a then b, where a final state of a meets the start of b: exact when b's first characters
    never continue a at those states, so that every character says which side it belongs to;
    otherwise None."""
    if a.n == 0 or b.n == 0:
        return Table(np.zeros((0, a.trans.shape[1]), np.int32), np.zeros(0, bool))
    ends = np.nonzero(a.finals)[0]
    first = b.trans[0] >= 0
    if (a.trans[ends][:, first] >= 0).any():
        return None
    if (b.trans == 0).any():  # b's start is re-entered: keep it
        shift, bt, bf = a.n, b.trans, b.finals
    else:  # only a's final states lead to b's first moves
        shift, bt, bf = a.n - 1, b.trans[1:], b.finals[1:]
    _cells_check(a.n + len(bf), a.trans.shape[1])
    moved = np.where(bt < 0, -1, bt + shift)
    trans = np.vstack([a.trans, moved]).astype(np.int32)
    start_row = np.where(b.trans[0] < 0, -1, b.trans[0] + shift)
    trans[np.ix_(ends, np.nonzero(first)[0])] = start_row[first]
    finals = np.concatenate([a.finals & bool(b.finals[0]), bf])
    return Table(trans, finals)


def _build(x: VRe, atoms: _Atoms, memo: dict[VRe, int]) -> Table:
    """x's automaton: small expressions through _subset (minimal); large concatenations and
    counted repetitions put together from their parts' automata where that is exact (`_concat`,
    `_repeat`), else through _subset too (which refuses what grows too large)."""
    check()
    num_atoms = len(atoms.atoms)
    if _nfa_size(x, memo) > _DIRECT_MIN:
        got: Table | None = None
        if isinstance(x, Cat) and x.parts:
            got = _build(x.parts[0], atoms, memo)
            for p in x.parts[1:]:
                got = _concat(got, _build(p, atoms, memo))
                if got is None:
                    break
        elif isinstance(x, Rep):
            body = _build(x.x, atoms, memo)
            got = _optional(body) if x.hi == 1 else _repeat(body, x.lo, x.hi)
        if got is not None:
            return got
    return Table.of(_subset(x, atoms), num_atoms)


def dfa_tables(x: VRe) -> tuple[list[CharSet], Table]:
    """The atoms and a trimmed deterministic automaton of x (minimal unless it was put together
    from parts: a long counted repetition, which a minimization would not shrink much)."""
    atoms = _Atoms(x)
    return atoms.atoms, _build(x, atoms, {})


def to_dfa(x: VRe) -> DFA:
    """The minimal DFA of x."""
    atoms = _Atoms(x)
    memo: dict[VRe, int] = {}
    if _nfa_size(x, memo) <= _DIRECT_MIN:
        return _subset(x, atoms)
    table = _build(x, atoms, memo)
    if table.n > _MAX_DFA:  # minimizing and the algebra on it cost Python time per state
        raise TooComplex("automaton too large")
    return minimize(table.dfa(atoms.atoms))


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
        check()
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
        check()
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
    check()
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
        check()
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
