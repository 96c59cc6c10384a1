"""A lark grammar as a character-level matcher: lark's LALR(1) tables + one DFA per terminal.

Lexing is contextual and maximal-munch, like lark's contextual lexer: a lexeme's candidates are
the terminals the parser can shift at its start (plus the %ignore'd ones); the lexeme goes on
while any candidate can take the next character; when none can, the highest-priority candidate
that is complete (lark priority, then string literals before regexes, then the longer pattern)
is fed to the parser and the next lexeme starts with that character. An ignored terminal may not
follow another one directly: that is what bounds whitespace (`%ignore WS` with WS = /[ \\n]{1,8}/
allows at most 8 characters between two terminals); nor may it come before the first terminal
or after the last (a model would happily pad its output with newlines until max_tokens).

Every state the matcher can reach is a viable prefix: terminal DFAs are pruned to states that can
still accept, and "can the parser shift T" is decided by running LALR's reductions, not by the
state's lookahead set (LALR merges lookaheads and may reduce before it notices an error).

Not supported: Earley-only (ambiguous or non-LALR(1)) grammars, which lark reports as conflicts;
regex features regex_parser.py cannot read (lookarounds, backreferences, inline flags other than
lark's scoped (?i:...) and (?s:...)); terminals that can run into each other in the grammar (a+
followed by a+), which lark's own lexer cannot split either. Terminal automata come from
automata.py, the same builder that jsonschema.py uses (literal alternations take a linear fast path).
Token-level masks are built on top of this in masks.py.

Word boundaries: a grammar that declares `%declare WORD_BOUNDARY` (sql.py's) does not let a lexeme
that may end with a word character (letter, digit, `_`) be followed directly by a word character:
`SELECTname` or `5AND` would lex as two tokens here but as one identifier in a database's lexer.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import lark
import numpy as np
from lark.exceptions import LarkError
from lark.lexer import Lexer, PatternStr, TerminalDef
from lark.load_grammar import load_grammar

from ragloom.errors import GrammarError

from . import deadline
from .automata import dfa_tables
from .charsets import cs_size
from .regex_ast import PatternUnsupported, TooComplex
from .regex_parser import parse_pattern

END = "$END"
_WORD_BOUNDARY = re.compile(r"^%declare\b[^\n]*\bWORD_BOUNDARY\b", re.M)
_MISSING = object()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A parser state is the LALR state stack; a lexer state is the live (terminal, dfa state) pairs.
Stack = tuple[int, ...]
Cands = tuple[tuple[int, int], ...]
State = tuple[Stack, Cands]  # empty Cands = no lexeme started yet (only before the first char)
# An LR(0) kernel item: (symbols before the dot, rule origin, symbols after the dot)
Item = tuple[int, str, tuple[str, ...]]
_INF = float("inf")
# What closing a cut-off input pays, on top of its characters, for each terminal of negative lark
# priority: such a terminal is the grammar's fallback (sql.py's aliases and CTE names, which nothing in
# the schema backs), and `WHERE na` should close as the column `name`, not as the shorter `na.x`.
FALLBACK_COST = 32


def is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


@dataclass
class TerminalDFA:
    """A terminal's DFA over character classes, pruned to states that can still reach accept."""

    name: str
    trans: np.ndarray  # int32 [states, classes]; -1 = dead
    accepting: np.ndarray  # bool [states]
    class_of: dict[str, int]  # char -> class; any other char -> other_class
    other_class: int
    class_chars: list[frozenset[str] | None]  # the chars of each class; None = "any other char"
    priority: int
    is_literal: bool
    width: int  # pattern length, the last tie-break

    def step(self, q: int, ch: str) -> int:
        return int(self.trans[q, self.class_of.get(ch, self.other_class)])

    def may_end_with_word_char(self) -> bool:
        for cls, chars in enumerate(self.class_chars):  # None = other chars, which may be letters
            if chars is None or any(is_word_char(c) for c in chars):
                targets = self.trans[:, cls]
                if self.accepting[targets[targets >= 0]].any():
                    return True
        return False

    @classmethod
    def literal(cls, name: str, text: str, priority: int) -> TerminalDFA:
        chars = sorted(set(text))
        class_of = {c: i for i, c in enumerate(chars)}
        trans = np.full((len(text) + 1, len(chars) + 1), -1, np.int32)
        for i, c in enumerate(text):
            trans[i, class_of[c]] = i + 1
        accepting = np.zeros(len(text) + 1, bool)
        accepting[-1] = True
        return cls(name, trans, accepting, class_of, len(chars), [frozenset(c) for c in chars] + [None],
                   priority, True, len(text))

    @classmethod
    def regex(cls, name: str, pattern: str, priority: int) -> TerminalDFA:
        try:
            shown = _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", pattern)  # lark's patterns hold raw ones
            with deadline.part(f"terminal {name} /{shown}/"):
                trans, accepting, class_of, other, class_chars = _regex_tables(pattern)
        except ValueError as e:
            raise GrammarError(f"terminal {name}: regex /{pattern}/ {e}") from e.__cause__
        return cls(name, trans, accepting, class_of, other, class_chars, priority, False, len(pattern))


Tables = tuple[np.ndarray, np.ndarray, dict[str, int], int, list[frozenset[str] | None]]
_SPECIAL = set("()[]{}|*+?.^$\\")


def _literal_alternatives(pattern: str) -> list[list[tuple[str, bool]]] | None:
    """The alternatives of a regex that lark wrote for an alternation of (case-insensitive) strings,
    `(?:(?i:author)\\.(?i:name)|book)`, as (character, ignore case) sequences; None for any other regex."""
    body = pattern[3:-1] if pattern.startswith("(?:") and pattern.endswith(")") else pattern
    alts: list[list[tuple[str, bool]]] = [[]]
    ci = False
    i = 0
    while i < len(body):
        c = body[i]
        if not ci and body.startswith("(?i:", i):
            ci, i = True, i + 4
        elif ci and c == ")":
            ci, i = False, i + 1
        elif not ci and c == "|":
            alts.append([])
            i += 1
        elif c == "\\" and i + 1 < len(body) and not body[i + 1].isalnum():  # re.escape'd
            alts[-1].append((body[i + 1], ci))
            i += 2
        elif c in _SPECIAL or (ci and not c.isascii()):  # classes, groups, non-ASCII case folding
            return None
        else:
            alts[-1].append((c, ci))
            i += 1
    return None if ci or not all(alts) else alts


def _alternation_tables(alts: list[list[tuple[str, bool]]]) -> Tables:
    """DFA tables for alternatives of literal characters: subset construction over the positions,
    linear in their total length. The general builder (`_vre_tables`) gives the same language, but
    parses, builds an NFA and minimizes: ten times slower on sql.py's per-schema name terminals."""
    start = frozenset((i, 0) for i in range(len(alts)))
    states = {start: 0}
    rows: list[dict[str, frozenset[tuple[int, int]]]] = []
    todo = deque([start])
    while todo:
        if not len(rows) & 1023:
            deadline.check()
        cur = todo.popleft()
        moves: dict[str, set[tuple[int, int]]] = {}
        for i, pos in cur:
            if pos < len(alts[i]):
                ch, ci = alts[i][pos]
                for c in {ch.lower(), ch.upper()} if ci else {ch}:
                    moves.setdefault(c, set()).add((i, pos + 1))
        row = {c: frozenset(nxt) for c, nxt in moves.items()}
        for nxt in row.values():
            if nxt not in states:
                states[nxt] = len(states)
                todo.append(nxt)
        rows.append(row)
    chars = sorted({c for row in rows for c in row})
    class_of = {c: k for k, c in enumerate(chars)}
    trans = np.full((len(states), len(chars) + 1), -1, np.int32)
    for q, row in enumerate(rows):
        for c, nxt in row.items():
            trans[q, class_of[c]] = states[nxt]
    accepting = np.zeros(len(states), bool)
    for st, q in states.items():
        accepting[q] = any(pos == len(alts[i]) for i, pos in st)
    return trans, accepting, class_of, len(chars), [frozenset(c) for c in chars] + [None]


# Cached by pattern: grammars built per request (one per schema, sql.py) share most of their terminals,
# and a long bounded string (`{0,200}` of JSON characters) takes tenths of a second. Never written to.
@lru_cache(maxsize=2048)
def _regex_tables(pattern: str) -> Tables:
    alts = _literal_alternatives(pattern)
    tables = _alternation_tables(alts) if alts is not None else _vre_tables(pattern)
    tables[0].setflags(write=False)
    tables[1].setflags(write=False)
    return tables


_MAX_EXPLICIT_CHARS = 200_000  # characters listed in class_of; all others share one class


def _vre_tables(pattern: str) -> Tables:
    """Tables from regex.py's own automaton (`automata.dfa_tables`: parse with Python syntax and
    lark's scoped flags, then subset construction and minimization, or counted repetition put
    together directly); then one character class per distinct transition column, the largest of
    them left implicit ("any other char")."""
    try:
        atoms, table = dfa_tables(parse_pattern(pattern, flavor="lark", search=False))
    except (PatternUnsupported, TooComplex) as e:
        raise ValueError(f"is not supported ({e})") from e
    if not table.n:
        raise ValueError("matches nothing")
    if table.finals[0]:
        raise ValueError("matches the empty string")
    deadline.check()
    # one column per atom, plus one (all dead) for the atoms no transition uses; equal columns are
    # one class (found by their bytes: np.unique(axis=1) sorts, 10x slower on long tables)
    cols = np.vstack([table.trans.T, np.full((1, table.n), -1, np.int32)])
    first: dict[bytes, int] = {}
    class_of_col = np.array([first.setdefault(col.tobytes(), len(first)) for col in cols])
    trans = cols[np.unique(class_of_col, return_index=True)[1]].T
    sizes = np.zeros(trans.shape[1], np.int64)
    for a, atom in enumerate(atoms):
        sizes[class_of_col[a]] += cs_size(atom)
    other = int(np.argmax(sizes))
    if int(sizes.sum() - sizes[other]) > _MAX_EXPLICIT_CHARS:
        raise ValueError("is not supported (its character classes are too large)")
    members: list[set[str]] = [set() for _ in range(trans.shape[1])]
    for a, atom in enumerate(atoms):
        k = int(class_of_col[a])
        if k != other:
            members[k].update(chr(cp) for lo, hi in atom for cp in range(lo, hi + 1))
    class_of = {c: k for k, chars in enumerate(members) for c in chars}
    class_chars: list[frozenset[str] | None] = [None if k == other else frozenset(m) for k, m in enumerate(members)]
    return np.ascontiguousarray(trans, np.int32), table.finals, class_of, other, class_chars


class _NoLexer(Lexer):
    """lark wants a lexer; the Grammar is its own. lark's contextual lexer would build one lexer per
    parser state and check every pair of regex terminals for collisions (with interegular, when it
    happens to be installed: seconds for the SQL grammars), only to warn about overlaps that the Grammar resolves by priority."""

    def __init__(self, conf: Any) -> None:
        pass

    def lex(self, lexer_state: Any, parser_state: Any) -> Any:
        raise NotImplementedError


class Grammar:
    """A compiled lark grammar: parser tables, terminal DFAs, and char-level matching."""

    def __init__(self, terminals: list[TerminalDef], ignore_tokens: list[str], table: Any, text: str,
                 rules: list[tuple[str, tuple[str, ...]]] | None = None) -> None:
        self.text = text
        self.rules = rules or []  # (origin, expansion) in BNF, for closing cut-off input
        self.key = hashlib.sha256(text.encode()).hexdigest()
        self.terminals: list[TerminalDFA] = []
        for t in terminals:
            p = t.pattern
            if isinstance(p, PatternStr) and not p.flags:
                dfa = TerminalDFA.literal(t.name, p.value, t.priority)
            else:
                dfa = TerminalDFA.regex(t.name, p.to_regexp(), t.priority)
            self.terminals.append(dfa)
        self.index = {t.name: i for i, t in enumerate(self.terminals)}
        self.word_boundaries = bool(_WORD_BOUNDARY.search(text))
        self.ends_word = [self.word_boundaries and t.may_end_with_word_char() for t in self.terminals]
        self.ignored = frozenset(self.index[n] for n in ignore_tokens if n in self.index)
        # lower rank wins when several candidates complete at the same character
        ranked = sorted(range(len(self.terminals)), key=lambda i: (
            -self.terminals[i].priority, not self.terminals[i].is_literal, -self.terminals[i].width, i))
        self.rank = [0] * len(self.terminals)
        for r, i in enumerate(ranked):
            self.rank[i] = r
        self.actions: dict[int, dict[str, tuple[bool, Any]]] = {}
        for state, row in table.states.items():
            self.actions[state] = {
                sym: (True, arg) if action.name == "Shift" else (False, (arg.origin.name, len(arg.expansion)))
                for sym, (action, arg) in row.items()
            }
        start = "start" if "start" in table.start_states else next(iter(table.start_states))
        self.initial: State = ((table.start_states[start],), ())
        self.end_state: int = table.end_states[start]
        self._feed: dict[tuple[Stack, str], Stack | None] = {}
        self._acceptable: dict[Stack, tuple[tuple[int, ...], bool]] = {}
        self._next_chars: dict[State, frozenset[str] | None] = {}
        self._kernel_items: dict[int, list[Item]] | None = None
        self._min_yield: dict[str, tuple[int, tuple[str, ...]]] | None = None

    @classmethod
    def from_lark(cls, text: str) -> Grammar:
        try:
            rules_only, _ = load_grammar(text, "<grammar>", [], False)
            terminals, rules, ignore_tokens = rules_only.compile(["start"], set())
            # LALR tables depend on the rules alone: grammars that differ only in their terminals'
            # patterns (sql.py's, one per schema) share them, and building them takes ~0.5 s.
            key = hashlib.sha256(repr([
                (r.origin.name, [s.name for s in r.expansion], r.options.priority) for r in rules
            ]).encode()).hexdigest()
            with _CACHE_LOCK:
                table = _TABLES.get(key)
            if table is None:
                # lark cannot be interrupted: the time limit is checked before and after it, and
                # its tables are cached even when the limit passed meanwhile (a retry reuses them)
                deadline.check()
                with deadline.part("its LALR(1) parser tables"):
                    table = lark.Lark(text, parser="lalr", lexer=_NoLexer, start="start").parser.parser.parser.parse_table
                    with _CACHE_LOCK:
                        _TABLES[key] = table
                        while len(_TABLES) > 64:
                            _TABLES.popitem(last=False)
                    deadline.check()
        except LarkError as e:
            raise GrammarError(f"grammar does not compile as LALR(1) lark: {e}") from e
        bnf = [(r.origin.name, tuple(x.name for x in r.expansion)) for r in rules]
        return cls(terminals, ignore_tokens, table, text, bnf)

    # ---- parser --------------------------------------------------------------------------------

    def feed(self, stack: Stack, sym: str) -> Stack | None:
        """The stack after shifting terminal `sym` (reductions included); None if it cannot shift."""
        key = (stack, sym)
        cached = self._feed.get(key, _MISSING)  # one lookup: another thread may clear the cache
        if cached is not _MISSING:
            return cached  # type: ignore[return-value]
        s = list(stack)
        result: Stack | None = None
        while True:
            act = self.actions[s[-1]].get(sym)
            if act is None:
                break
            shift, arg = act
            if shift:
                s.append(arg)
                result = tuple(s)
                break
            origin, size = arg
            if size:
                del s[-size:]
            goto = self.actions[s[-1]].get(origin)
            if goto is None:
                break
            s.append(goto[1])
            if sym == END and s[-1] == self.end_state:
                result = tuple(s)
                break
        if len(self._feed) > 200_000:
            self._feed.clear()
        self._feed[key] = result
        return result

    def acceptable(self, stack: Stack) -> tuple[tuple[int, ...], bool]:
        """(terminals the parser can shift now, whether the input may end here)."""
        got = self._acceptable.get(stack)
        if got is None:
            row = self.actions[stack[-1]]
            terms = tuple(sorted(self.index[s] for s in row if s in self.index and self.feed(stack, s) is not None))
            got = (terms, END in row and self.feed(stack, END) is not None)
            if len(self._acceptable) > 200_000:
                self._acceptable.clear()
            self._acceptable[stack] = got
        return got

    def start_cands(self, stack: Stack, after_ignored: bool) -> Cands:
        terms = self.acceptable(stack)[0]
        # Ignored terminals (whitespace) only between two terminals: never after one (bounded),
        # before the first, or after the last, where they would only waste tokens.
        edge = stack == self.initial[0] or not terms
        ignored = () if after_ignored or edge else tuple(sorted(self.ignored))
        return tuple((t, 0) for t in sorted(set(terms) | set(ignored)))

    def completed(self, cands: Cands) -> int | None:
        """The terminal the current lexeme is if it ends here, or None."""
        done = [t for t, q in cands if self.terminals[t].accepting[q]]
        return min(done, key=self.rank.__getitem__) if done else None

    def _ends_word(self, cands: Cands) -> bool:
        """Word boundaries: the lexeme ending here may end with a word character."""
        t = self.completed(cands)
        return t is not None and self.ends_word[t]

    def complete(self, stack: Stack, cands: Cands) -> tuple[Stack, bool] | None:
        """End the current lexeme: (stack after feeding it, whether it was ignored), or None."""
        t = self.completed(cands)
        if t is None:
            return None
        if t in self.ignored:
            return stack, True
        after = self.feed(stack, self.terminals[t].name)
        return (after, False) if after is not None else None

    # ---- characters ----------------------------------------------------------------------------

    def step(self, state: State, ch: str) -> State | None:
        stack, cands = state
        after_ignored = False
        if cands:
            nxt = tuple((t, q2) for t, q in cands if (q2 := self.terminals[t].step(q, ch)) >= 0)
            if nxt:
                return stack, nxt
            done = self.complete(stack, cands)
            if done is None or (is_word_char(ch) and self._ends_word(cands)):
                return None
            stack, after_ignored = done
        nxt = tuple((t, q2) for t, q in self.start_cands(stack, after_ignored)
                    if (q2 := self.terminals[t].step(q, ch)) >= 0)
        return (stack, nxt) if nxt else None

    def advance(self, state: State, text: str) -> State | None:
        for ch in text:
            nxt = self.step(state, ch)
            if nxt is None:
                return None
            state = nxt
        return state

    def can_end(self, state: State) -> bool:
        stack, cands = state
        if cands:
            done = self.complete(stack, cands)
            if done is None:
                return False
            stack = done[0]
        return self.acceptable(stack)[1]

    def next_chars(self, state: State) -> frozenset[str] | None:
        """The characters that may come next; None when that set is open (any other char)."""
        got = self._next_chars.get(state, _MISSING)  # a mask asks once per partial-UTF-8 token
        if got is _MISSING:
            got = self._compute_next_chars(state)
            if len(self._next_chars) > 20_000:
                self._next_chars.clear()
            self._next_chars[state] = got
        return got  # type: ignore[return-value]

    def _compute_next_chars(self, state: State) -> frozenset[str] | None:
        stack, cands = state
        out: set[str] = set()
        starts: Cands = self.start_cands(stack, False) if not cands else ()
        glued = False  # the next lexeme may not start with a word character
        if cands:
            done = self.complete(stack, cands)
            if done is not None:
                starts = self.start_cands(done[0], done[1])
                glued = self._ends_word(cands)
        for group, no_word in ((cands, False), (starts, glued)):
            for t, q in group:
                dfa = self.terminals[t]
                for cls in np.nonzero(dfa.trans[q] >= 0)[0]:
                    chars = dfa.class_chars[cls]
                    if chars is None:
                        return None
                    out |= {c for c in chars if not is_word_char(c)} if no_word else chars
        return frozenset(out)

    def forced_text(self, state: State, limit: int = 64) -> str:
        """The characters the grammar forces from here (one choice each, and no end possible)."""
        out: list[str] = []
        while len(out) < limit and not self.can_end(state):
            chars = self.next_chars(state)
            if chars is None or len(chars) != 1:
                break
            (ch,) = chars
            nxt = self.step(state, ch)
            if nxt is None:
                break
            out.append(ch)
            state = nxt
        return "".join(out)

    def shortest_word(self, t: int, q: int = 0) -> str | None:
        """The shortest string taking terminal t's DFA from state q to acceptance (BFS)."""
        dfa = self.terminals[t]
        if dfa.accepting[q]:
            return ""
        seen, frontier = {q}, [(q, "")]
        while frontier:
            nxt = []
            for state, text in frontier:
                for cls, chars in enumerate(dfa.class_chars):
                    if not chars:  # "any other char": no concrete character to write
                        continue
                    q2 = int(dfa.trans[state, cls])
                    if q2 < 0 or q2 in seen:
                        continue
                    word = text + min(chars)
                    if dfa.accepting[q2]:
                        return word
                    seen.add(q2)
                    nxt.append((q2, word))
            frontier = nxt
        return None

    # ---- closing a cut-off input ---------------------------------------------------------------

    def shortest_completion(self, state: State, max_pieces: int = 16, budget: int = 2000) -> str | None:
        """A short text after which the input may end; None if none is found.

        Used to close an output that a token limit cut off mid-structure. First from the LR
        items (`_planned_completion`: finish the top item, reduce, repeat down the stack), which
        is immediate however deep the nesting; if that text does not check out character by
        character, a best-first search over pieces within `budget` expansions. The planned text
        is the shortest, counting FALLBACK_COST more for each terminal of negative priority."""
        planned = self._planned_completion(state)
        if planned is not None:
            return planned
        return self._searched_completion(state, max_pieces, budget)

    def _planned_completion(self, state: State) -> str | None:
        """The cheapest completion from the LR items (`_close_stack`), for each way to end the
        open lexeme (as it is, or finished as one of its candidate terminals), spelled out and
        checked character by character; None if no spelling checks out."""
        stack, cands = state
        starts: list[tuple[float, str, Stack]] = []  # (cost, rest of the open lexeme, stack after it)
        if not cands:
            starts.append((0, "", stack))
        else:
            done = self.complete(stack, cands)
            if done is not None:
                starts.append((0, "", done[0]))
            for t, q in cands:
                word = self.shortest_word(t, q)
                if word and t not in self.ignored and (after := self.feed(stack, self.terminals[t].name)) is not None:
                    starts.append((len(word) + self._fallback_cost(t), word, after))
        memo: dict[Stack, tuple[float, tuple[str, ...]]] = {}
        plans = []
        for cost, word, st in starts:
            rest_cost, names = self._close_stack(st, memo, set())
            if rest_cost < _INF:
                plans.append((cost + rest_cost, word, names))
        sep = self._separator()
        for _, word, names in sorted(plans, key=lambda p: p[0]):
            # separators only where words would run together, then also after the open lexeme,
            # then between every two terminals; the first that the grammar accepts
            for lead, spaced in ((False, False), (True, False), (True, True)):
                text = self._spell(word + sep if lead and sep and names else word, names, sep, spaced)
                if text is not None:
                    nxt = self.advance(state, text)
                    if nxt is not None and self.can_end(nxt):
                        return text
        return None

    def _fallback_cost(self, t: int) -> int:
        return FALLBACK_COST if self.terminals[t].priority < 0 else 0

    def _spell(self, word: str, names: tuple[str, ...], sep: str, spaced: bool) -> str | None:
        """`word`, then the terminals' shortest words, separated by `sep` (the grammar's ignored
        text) as people write it (not before a closer or comma, not after an opener), or
        (spaced) between every two."""
        out = word
        for name in names:
            w = self.shortest_word(self.index[name]) if name in self.index else None
            if w is None:
                return None
            if out and sep and not out.endswith(sep) and (spaced or (w[0] not in ")]},;.:" and out[-1] not in "([{.")):
                out += sep
            out += w
        return out

    def _separator(self) -> str:
        """The ignored text to put between two terminals: a space where one is, else the shortest."""
        for t in self.ignored:
            q = self.terminals[t].step(0, " ")
            if q >= 0 and self.terminals[t].accepting[q]:
                return " "
        return min((w for t in self.ignored if (w := self.shortest_word(t))), key=len, default="")

    def _close_stack(self, stack: Stack, memo: dict[Stack, tuple[float, tuple[str, ...]]],
                     active: set[Stack]) -> tuple[float, tuple[str, ...]]:
        """(cost, terminal names) of the cheapest way to end the input from a parser stack.

        Every way to end pops the top state, through one of its kernel items A -> alpha . beta:
        the rest beta is spelled with its shortest yield, A is reduced (popping len(alpha) states
        and going to A), and the same question is asked of the shorter stack."""
        if stack[-1] == self.end_state or self.feed(stack, END) is not None:
            return 0, ()
        got = memo.get(stack)
        if got is not None:
            return got
        if stack in active:  # a cycle of unit reductions: no progress along it
            return _INF, ()
        active.add(stack)
        kernels, yields = self._items()
        best: tuple[float, tuple[str, ...]] = (_INF, ())
        # nothing read yet: the whole input is left to write ("$root -> . start")
        items = kernels.get(stack[-1], []) if len(stack) > 1 else [(0, "start", ("start",))]
        for popped, origin, rest in items:
            if popped >= len(stack) or not all(sym in yields for sym in rest):
                continue
            below = stack[: len(stack) - popped]
            goto = self.actions[below[-1]].get(origin)
            cost = sum(yields[sym][0] for sym in rest)
            if goto is None or not goto[0] or cost >= best[0]:
                continue
            tail_cost, tail = self._close_stack(below + (goto[1],), memo, active)
            if cost + tail_cost < best[0]:
                best = (cost + tail_cost, tuple(n for sym in rest for n in yields[sym][1]) + tail)
        active.discard(stack)
        memo[stack] = best
        return best

    def _items(self) -> tuple[dict[int, list[Item]], dict[str, tuple[int, tuple[str, ...]]]]:
        """Each parser state's LR(0) kernel items, and each symbol's shortest yield (cost, terminal
        names). lark keeps only the action table, so the item sets are rebuilt from the BNF rules
        by walking the automaton from the start state along its own transitions."""
        if self._kernel_items is not None and self._min_yield is not None:
            return self._kernel_items, self._min_yield
        by_origin: dict[str, list[tuple[str, ...]]] = {}
        for origin, expansion in self.rules:
            by_origin.setdefault(origin, []).append(expansion)

        def closure(kernel: set[tuple[str, tuple[str, ...], int]]) -> set[tuple[str, tuple[str, ...], int]]:
            items, todo = set(kernel), list(kernel)
            while todo:
                _, exp, dot = todo.pop()
                if dot < len(exp):
                    for e in by_origin.get(exp[dot], ()):
                        if (it := (exp[dot], e, 0)) not in items:
                            items.add(it)
                            todo.append(it)
            return items

        start = self.initial[0][0]
        item_sets = {start: closure({("start", e, 0) for e in by_origin.get("start", ())})}
        kernels: dict[int, list[Item]] = {}
        todo = [start]
        while todo:
            sid = todo.pop()
            moves: dict[str, set[tuple[str, tuple[str, ...], int]]] = {}
            for origin, exp, dot in item_sets[sid]:
                if dot < len(exp):
                    moves.setdefault(exp[dot], set()).add((origin, exp, dot + 1))
            for sym, kernel in moves.items():
                act = self.actions[sid].get(sym)
                if act is None or not act[0] or act[1] in item_sets:
                    continue
                item_sets[act[1]] = closure(kernel)
                kernels[act[1]] = [(dot, origin, exp[dot:]) for origin, exp, dot in kernel]
                todo.append(act[1])

        # shortest yields: a terminal costs its shortest word plus a separator; a rule the sum
        yields: dict[str, tuple[int, tuple[str, ...]]] = {}
        for i, dfa in enumerate(self.terminals):
            if i not in self.ignored and (w := self.shortest_word(i)) is not None:
                yields[dfa.name] = (len(w) + 1 + self._fallback_cost(i), (dfa.name,))
        changed = True
        while changed:
            changed = False
            for origin, exp in self.rules:
                if all(sym in yields for sym in exp):
                    cost = sum(yields[sym][0] for sym in exp)
                    if cost < yields.get(origin, (_INF,))[0]:
                        yields[origin] = (cost, tuple(n for sym in exp for n in yields[sym][1]))
                        changed = True
        self._kernel_items, self._min_yield = kernels, yields
        return kernels, yields

    def _searched_completion(self, state: State, max_pieces: int, budget: int) -> str | None:
        """Best-first over pieces (the rest of the open lexeme, or a separator plus the shortest
        word of a terminal the parser can shift next), shortest total text first."""
        import heapq

        heap: list[tuple[int, int, str, State]] = [(0, 0, "", state)]
        seen: set[State] = set()
        tick = 0
        while heap and budget > 0:
            _, pieces, text, st = heapq.heappop(heap)
            if self.can_end(st):
                return text
            if st in seen or pieces >= max_pieces:
                continue
            seen.add(st)
            budget -= 1
            stack, cands = st
            options: list[str] = []
            for t, q in cands:  # finish the open lexeme
                w = self.shortest_word(t, q)
                if w:
                    options.append(w)
            closed = self.complete(stack, cands) if cands else (stack, False)
            if closed is not None:
                for t in self.acceptable(closed[0])[0]:
                    w = self.shortest_word(t)
                    if w:
                        options += [" " + w, w]
            for piece in options:
                nxt = self.advance(st, piece)
                if nxt is not None and nxt not in seen:
                    tick += 1
                    heapq.heappush(heap, (len(text) + len(piece), tick, text + piece, nxt))
        return None

    def accepts_prefix(self, text: str) -> bool:
        return self.advance(self.initial, text) is not None

    def accepts_text(self, text: str) -> bool:
        state = self.advance(self.initial, text)
        return state is not None and self.can_end(state)


_CACHE: OrderedDict[str, Grammar] = OrderedDict()
_TABLES: OrderedDict[str, Any] = OrderedDict()  # lark LALR parse tables by rule set
_CACHE_LOCK = threading.Lock()


def compile_grammar(text: str, cache_size: int = 64) -> Grammar:
    """Grammar.from_lark with an LRU cache keyed by the grammar text."""
    key = hashlib.sha256(text.encode()).hexdigest()
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    g = Grammar.from_lark(text)
    with _CACHE_LOCK:
        _CACHE[key] = g
        while len(_CACHE) > cache_size:
            _CACHE.popitem(last=False)
    return g
