"""Per-sequence constraint state, and the logits processor the engine calls each step.

`Constraint` is what a request carries: a compiled grammar plus its token masks (shared by every
sequence with the same constraint and tokenizer). `GrammarMatcher` is one sequence's position in
it, with its history so that drafts can be rolled back. `GrammarProcessor` plugs a matcher into
the engine: it follows the sequence's output ids, masks the logits, and offers forced tokens for
jump-forward (re-tokenized canonically, holding back the last token so that it can still merge
with what the model writes next, as llguidance does).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ragloom.errors import GrammarError, InvalidArgument, UnsupportedKeyword
from ragloom.generation.constrain import deadline
from ragloom.generation.constrain.grammar import Grammar, State, compile_grammar
from ragloom.generation.constrain.masks import TokenMasks, advance_bytes, apply_mask
from ragloom.generation.constrain.vocab import TokenVocab, vocab_for

log = logging.getLogger(__name__)


@dataclass
class Constraint:
    """A compiled constraint for one tokenizer. Thread-safe to share; cheap to start matchers."""

    grammar: Grammar
    masks: TokenMasks
    kind: str  # "json_schema" | "lark_grammar" | "regex" | "choices" | "sql"
    warnings: list[str] = field(default_factory=list)
    compile_seconds: float = 0.0

    def matcher(self) -> GrammarMatcher:
        return GrammarMatcher(self)


class GrammarMatcher:
    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint
        self.grammar = constraint.grammar
        self.masks = constraint.masks
        self.vocab = constraint.masks.vocab
        self.eos_ids = frozenset(constraint.masks.eos_ids)
        # per accepted token: (grammar state, bytes of a character not finished yet)
        self.states: list[tuple[State, bytes]] = [(self.grammar.initial, b"")]
        self.finished = False  # EOS accepted

    @property
    def state(self) -> State:
        return self.states[-1][0]

    def accept_token(self, token_id: int) -> bool:
        """Advance by one token; False (and no change) if the grammar does not allow it here."""
        if self.finished:
            return False
        state, pending = self.states[-1]
        if token_id in self.eos_ids:
            if pending or not self.grammar.can_end(state):
                return False
            self.finished = True
            self.states.append(self.states[-1])
            return True
        text = self.vocab.texts[token_id] if 0 <= token_id < self.vocab.size else None
        if text and not pending:
            nxt = self.grammar.advance(state, text)
            if nxt is None:
                return False
            self.states.append((nxt, b""))
            return True
        raw = self.vocab.partial.get(token_id) if not text else text.encode()
        if raw is None:
            return False
        got = advance_bytes(self.grammar, state, pending, raw)
        if got is None:
            return False
        self.states.append(got)
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens:
            del self.states[-num_tokens:]
            self.finished = False

    @property
    def num_tokens(self) -> int:
        return len(self.states) - 1

    def mask(self) -> np.ndarray:
        """Packed allowed-token bitset (masks.pack layout); empty once EOS was accepted."""
        if self.finished:
            return np.zeros((self.vocab.size + 7) // 8, np.uint8)
        state, pending = self.states[-1]
        return self.masks.mask(state, pending)

    def is_allowed(self, token_id: int) -> bool:
        m = self.mask()
        return bool((m[token_id >> 3] >> (token_id & 7)) & 1)

    def can_end(self) -> bool:
        state, pending = self.states[-1]
        return not pending and self.grammar.can_end(state)

    def forced_text(self, limit: int = 64) -> str:
        state, pending = self.states[-1]
        return "" if self.finished or pending else self.grammar.forced_text(state, limit)


class GrammarProcessor:
    """The engine's logits processor for one constrained sequence (sampler.LogitsProcessor)."""

    def __init__(self, constraint: Constraint, tokenizer: Any) -> None:
        self.matcher = constraint.matcher()
        self.tokenizer = tokenizer

    def _sync(self, output_ids: list[int]) -> None:
        m = self.matcher
        if len(output_ids) < m.num_tokens:  # rejected drafts / preemption trimmed the output
            m.rollback(m.num_tokens - len(output_ids))
        for tid in output_ids[m.num_tokens :]:
            if not m.accept_token(tid):
                raise InvalidArgument(f"token {tid} ({self.tokenizer.decode([tid])!r}) breaks the constraint")

    def prepare(self, output_ids: list[int]) -> None:
        """Compute (and cache) the next mask ahead of the logits: the engine calls this on a worker
        thread during the forward pass, so that __call__ finds it ready."""
        self._sync(output_ids)
        self.matcher.mask()

    def __call__(self, output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        self._sync(output_ids)
        mask = self.matcher.mask()
        if not mask.any():
            # Only tokens that are never allowed (partial UTF-8) could continue: end, don't loop.
            log.warning("constraint allows no token here; ending the sequence")
            logits.fill_(float("-inf"))
            logits[sorted(self.matcher.eos_ids)] = 0.0
            return logits
        return apply_mask(logits, mask)

    def forced_tokens(self, output_ids: list[int]) -> list[int]:
        """Tokens the grammar forces next (jump-forward), canonically tokenized; [] if none."""
        self._sync(output_ids)
        text = self.matcher.forced_text()
        if not text:
            return []
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        # The last forced token might merge with the next generated text: leave it to the model.
        ids = ids[:-1]
        if not ids or not output_ids:
            return []
        # The first forced token must not merge with the previous output token either.
        prev = output_ids[-1]
        prev_text = self.matcher.vocab.texts[prev] or ""
        joint = self.tokenizer.encode(prev_text + text, add_special_tokens=False)
        if joint[: len(ids) + 1] != [prev, *ids]:
            return []
        accepted = []
        for tid in ids:
            if not self.matcher.accept_token(tid):
                break
            accepted.append(tid)
        self.matcher.rollback(len(accepted))  # _sync re-applies them once they are output ids
        return accepted


# ---- compiling, with a cache and a time limit -----------------------------------------------

_COMPILED: OrderedDict[tuple[str, str, int, int], Constraint] = OrderedDict()
_LOCK = threading.Lock()


def _grammar_text(kind: str, spec: Any, strict: bool, deadline: float) -> tuple[str, list[str]]:
    if kind == "lark_grammar":
        return str(spec), []
    if kind == "json_schema":
        from ragloom.generation.constrain.jsonschema import schema_to_grammar

        # "subset": formats as exact subsets (date-time without leap seconds, hostnames without A-labels,
        # IRIs in the Basic Multilingual Plane): every string accepted is valid
        jg = schema_to_grammar(spec, strict=strict, deadline=deadline, formats="subset")
        return jg.grammar, jg.warnings
    if kind == "regex":
        from ragloom.generation.constrain.regex import regex_to_grammar

        return regex_to_grammar(str(spec)), []
    if kind == "choices":
        from ragloom.generation.constrain.regex import choices_to_grammar

        return choices_to_grammar(list(spec)), []
    if kind == "sql":
        from ragloom.generation.constrain.sql import sql_grammar

        # spec: {"tables": {table: [columns]}, "dialect": "sqlite", "max_limit": optional int}
        if not isinstance(spec, dict) or not isinstance(spec.get("tables"), dict):
            raise GrammarError('sql constraint spec must be {"tables": {table: [columns]}, "dialect": ...}')
        return sql_grammar(spec["tables"], spec.get("dialect", "sqlite"), max_limit=spec.get("max_limit")), []
    raise InvalidArgument(f"unknown constraint kind {kind!r}")


@contextmanager
def _schema_reason(kind: str) -> Iterator[None]:
    """A json_schema that fails to compile is a bad schema (SCHEMA_INVALID: not a schema, malformed
    keywords, no value satisfies it, too complex), whichever stage refused it; the default
    GRAMMAR_INVALID is for lark grammars, regexes and choices that the caller wrote. A keyword the
    compiler cannot enforce keeps its own reason (SCHEMA_KEYWORD_UNSUPPORTED)."""
    try:
        yield
    except GrammarError as exc:
        if kind == "json_schema" and not isinstance(exc, UnsupportedKeyword):
            exc.reason = "SCHEMA_INVALID"
        raise


def compile_constraint(
    kind: str,
    spec: Any,
    tokenizer: Any,
    vocab_size: int,
    eos_ids: frozenset[int],
    *,
    strict: bool = True,
    timeout_s: float = 30.0,
    cache_size: int = 64,
) -> Constraint:
    """Compile a constraint for a tokenizer, cached by (kind, spec, strict, tokenizer).

    Raises GrammarError (INVALID_ARGUMENT) naming what cannot be compiled, and CompileTimeout
    (DEADLINE_EXCEEDED) naming the part being compiled once `timeout_s` has passed: the compiler
    checks the limit as it goes (`deadline.py`) and stops there, so no worker thread is held
    longer. Only lark's LALR tables and the first mask run without checks.
    """
    spec_text = spec if isinstance(spec, str) else repr(spec)
    key = (kind, hashlib.sha256(f"{strict}\0{spec_text}".encode()).hexdigest(), id(tokenizer), vocab_size)
    with _LOCK:
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
    started = time.monotonic()
    with _schema_reason(kind), deadline.limit(timeout_s, f"the {kind} constraint") as limit:
        with deadline.part("its translation to a lark grammar"):
            text, warnings = _grammar_text(kind, spec, strict, limit.at)
        with deadline.part("its lark grammar"):  # terminals and parser tables name themselves
            grammar = compile_grammar(text)
        if not grammar.start_cands(grammar.initial[0], False):
            what = "only the empty string" if grammar.can_end(grammar.initial) else "nothing"
            raise GrammarError(f"the {kind} constraint matches {what}: there is nothing to generate")
        vocab: TokenVocab = vocab_for(tokenizer, vocab_size)
        masks = TokenMasks(grammar, vocab, eos_ids)
        with deadline.part("its first token mask"):
            masks.mask(grammar.initial)  # the first mask is part of compiling (time-to-first-mask)
            deadline.check()
    elapsed = time.monotonic() - started
    constraint = Constraint(grammar, masks, kind, warnings, elapsed)
    log.info("compiled %s constraint: %d terminals in %.2fs", kind, len(grammar.terminals), elapsed)
    with _LOCK:
        _COMPILED[key] = constraint
        while len(_COMPILED) > cache_size:
            _COMPILED.popitem(last=False)
    return constraint
