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
regex features interegular cannot compile (lookarounds, backreferences); terminals that can run
into each other in the grammar (a+ followed by a+), which lark's own lexer cannot split either.
Token-level masks are built on top of this in masks.py.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import interegular
import lark
import numpy as np
from interegular.fsm import anything_else
from lark.exceptions import LarkError
from lark.lexer import PatternStr

from ragloom.errors import GrammarError

END = "$END"
_MISSING = object()
# A parser state is the LALR state stack; a lexer state is the live (terminal, dfa state) pairs.
Stack = tuple[int, ...]
Cands = tuple[tuple[int, int], ...]
State = tuple[Stack, Cands]  # empty Cands = no lexeme started yet (only before the first char)


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
            fsm: Any = interegular.parse_pattern(pattern).to_fsm()
        except Exception as e:  # interegular raises several types for unsupported syntax
            raise GrammarError(f"terminal {name}: regex /{pattern}/ is not supported ({e})") from e
        symbols = fsm.alphabet._symbol_mapping
        n_classes = len(set(symbols.values()))
        class_of: dict[str, int] = {c: int(sym) for c, sym in symbols.items() if isinstance(c, str)}
        other = symbols.get(anything_else, n_classes)
        members: dict[int, set[str]] = {}
        for c, sym in class_of.items():
            members.setdefault(sym, set()).add(c)
        class_chars: list[frozenset[str] | None] = [
            None if sym == other else frozenset(members.get(sym, ())) for sym in range(max(n_classes, other + 1))
        ]
        # relabel states 0..n-1 (initial first) and drop the ones that can no longer accept
        order = [fsm.initial] + [s for s in fsm.states if s != fsm.initial]
        idx = {s: i for i, s in enumerate(order)}
        live = set(fsm.finals)
        changed = True
        while changed:
            changed = False
            for st in order:
                if st not in live and any(t in live for t in fsm.map.get(st, {}).values()):
                    live.add(st)
                    changed = True
        if fsm.initial not in live:
            raise GrammarError(f"terminal {name}: regex /{pattern}/ matches nothing")
        trans = np.full((len(order), len(class_chars)), -1, np.int32)
        for st, row in fsm.map.items():
            for sym, t in row.items():
                if st in live and t in live:
                    trans[idx[st], sym] = idx[t]
        accepting = np.array([st in fsm.finals for st in order], bool)
        if accepting[0]:
            raise GrammarError(f"terminal {name}: regex /{pattern}/ matches the empty string")
        return cls(name, trans, accepting, class_of, other, class_chars, priority, False, len(pattern))


class Grammar:
    """A compiled lark grammar: parser tables, terminal DFAs, and char-level matching."""

    def __init__(self, parser: lark.Lark, text: str) -> None:
        self.text = text
        self.key = hashlib.sha256(text.encode()).hexdigest()
        self.terminals: list[TerminalDFA] = []
        for t in parser.terminals:
            p = t.pattern
            if isinstance(p, PatternStr) and not p.flags:
                dfa = TerminalDFA.literal(t.name, p.value, t.priority)
            else:
                dfa = TerminalDFA.regex(t.name, p.to_regexp(), t.priority)
            self.terminals.append(dfa)
        self.index = {t.name: i for i, t in enumerate(self.terminals)}
        self.ignored = frozenset(self.index[n] for n in parser.ignore_tokens if n in self.index)
        # lower rank wins when several candidates complete at the same character
        ranked = sorted(range(len(self.terminals)), key=lambda i: (
            -self.terminals[i].priority, not self.terminals[i].is_literal, -self.terminals[i].width, i))
        self.rank = [0] * len(self.terminals)
        for r, i in enumerate(ranked):
            self.rank[i] = r
        table = parser.parser.parser.parser.parse_table
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

    @classmethod
    def from_lark(cls, text: str) -> Grammar:
        try:
            parser = lark.Lark(text, parser="lalr", lexer="contextual", start="start")
        except LarkError as e:
            raise GrammarError(f"grammar does not compile as LALR(1) lark: {e}") from e
        return cls(parser, text)

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

    def complete(self, stack: Stack, cands: Cands) -> tuple[Stack, bool] | None:
        """End the current lexeme: (stack after feeding it, whether it was ignored), or None."""
        done = [t for t, q in cands if self.terminals[t].accepting[q]]
        if not done:
            return None
        t = min(done, key=self.rank.__getitem__)
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
            if done is None:
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
        stack, cands = state
        out: set[str] = set()
        starts: Cands = self.start_cands(stack, False) if not cands else ()
        if cands:
            done = self.complete(stack, cands)
            if done is not None:
                starts = self.start_cands(done[0], done[1])
        for t, q in cands + starts:
            dfa = self.terminals[t]
            for cls in np.nonzero(dfa.trans[q] >= 0)[0]:
                chars = dfa.class_chars[cls]
                if chars is None:
                    return None
                out |= chars
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

    def accepts_prefix(self, text: str) -> bool:
        return self.advance(self.initial, text) is not None

    def accepts_text(self, text: str) -> bool:
        state = self.advance(self.initial, text)
        return state is not None and self.can_end(state)


_CACHE: OrderedDict[str, Grammar] = OrderedDict()
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
