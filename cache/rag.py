"""The Ask flow as a library: passages -> chunk KV (stored or computed) -> blended prompt -> engine request.

The prompt is the model's chat template split around the user turn:

    [head: system prompt + start of the user turn] [passage 1] ... [passage k] [question + tail]

Each passage is tokenized on its own ("text\\n\\n"), so its tokens, and therefore its chunk-KV
key, do not depend on where it lands; its KV is computed once, after the head (the context it
is keyed with), and reused at any rank in any later prompt. The head's own KV is stored too
and is exact at position 0. Only the question is new in every request.

Store lookups (and codec decoding) happen on the caller's thread; computing missing chunk KV
and blending need the model, so they run inside the engine's step (Request.prefill).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ragloom.cache.blend import MODES, BlendConfig, Segment, blend, prefill_kv
from ragloom.cache.chunk_kv import ChunkKV, ChunkKVStore, chunk_key, dtype_name
from ragloom.errors import InvalidArgument
from ragloom.generation.runner.engine import LLMEngine, PrefillResult, Request
from ragloom.generation.runner.model import LlamaModel
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.sampler import LogitsProcessor

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions using the passages the user gives. Answer briefly, with a few words "
    "taken from the passages."
)
_MARK = "\ue000RAGLOOM-USER-TURN\ue000"


@dataclass
class PassageText:
    id: str
    text: str
    score: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class AskUsage:
    """Filled in when the engine runs the prefill."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    recomputed_tokens: int = 0
    chunks_computed: int = 0  # passages whose KV was computed (and stored) by this request
    tier_hits: dict[str, int] = field(default_factory=dict)  # tier name -> passages found there
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class AskPlan:
    request: Request
    passages: list[PassageText]
    tiers: list[str | None]  # per passage: the tier its KV came from, None = computed
    usage: AskUsage


class RagPipeline:
    """`chunk_context`: what a passage's KV is computed after, "head" (the system prompt and the
    start of the user turn, the tokens it follows in every prompt) or "none" (alone at position 0).
    benchmarks/blend.py measures both."""

    def __init__(self, engine: LLMEngine, store: ChunkKVStore, chunk_context: str = "head") -> None:
        if chunk_context not in ("head", "none"):
            raise InvalidArgument(f"chunk_context must be 'head' or 'none', got {chunk_context!r}")
        self.engine = engine
        self.store = store
        self.chunk_context = chunk_context
        self.model_id = engine.model_id
        self.dtype = dtype_name(engine.dtype)
        self._templates: dict[str, tuple[list[int], str]] = {}

    # ---- prompt pieces -------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.engine.tokenizer.encode(text, add_special_tokens=False))

    def head_and_tail(self, system_prompt: str) -> tuple[list[int], str]:
        """Token ids before the user's content, and the template text after it."""
        got = self._templates.get(system_prompt)
        if got is None:
            tok = self.engine.tokenizer
            if tok.chat_template is None:
                head_text, tail = system_prompt + "\n\n", "\nAnswer:"
            else:
                msgs = [{"role": "system", "content": system_prompt}, {"role": "user", "content": _MARK}]
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                head_text, tail = text.split(_MARK)
            head = self._encode(head_text)
            if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False) and head[:1] != [tok.bos_token_id]:
                head = [tok.bos_token_id] + head
            got = self._templates[system_prompt] = (head, tail)
        return got

    def passage_tokens(self, text: str) -> list[int]:
        return self._encode(text.strip() + "\n\n")

    def _context_tag(self, head: list[int]) -> str:
        if self.chunk_context == "none":
            return ""
        return hashlib.sha256(repr(head).encode()).hexdigest()[:32]

    def _chunk_context(self, model: LlamaModel, head_segment: Segment) -> Segment:
        return head_segment if self.chunk_context == "head" else Segment([])

    # ---- the plan ------------------------------------------------------------------------------

    def plan(
        self,
        question: str,
        passages: Sequence[PassageText],
        params: SamplingParams,
        *,
        request_id: str,
        mode: str = "blend",
        ratio: float = 0.15,
        epic_tokens: int = 16,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        processors: list[LogitsProcessor] | None = None,
        blend_config: BlendConfig | None = None,
    ) -> AskPlan:
        if not question.strip():
            raise InvalidArgument("the question is empty")
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if not 0.0 <= ratio <= 1.0:
            raise InvalidArgument(f"recompute ratio must be in [0, 1], got {ratio}")
        head, tail = self.head_and_tail(system_prompt)
        ctx_tag = self._context_tag(head)
        chunks = [self.passage_tokens(p.text) for p in passages]
        question_ids = self._encode(f"Question: {question.strip()}{tail}")
        prompt = head + [t for c in chunks for t in c] + question_ids

        # Stored KV, looked up here (decoding off the engine thread). "full" uses none.
        head_key = chunk_key(self.model_id, self.dtype, head)
        keys = [chunk_key(self.model_id, self.dtype, c, context=ctx_tag) for c in chunks]
        head_entry: ChunkKV | None = None
        entries: list[ChunkKV | None] = [None] * len(chunks)
        tiers: list[str | None] = [None] * len(chunks)
        usage = AskUsage(prompt_tokens=len(prompt))
        if mode != "full":
            head_entry, _ = self.store.get(head_key, self.model_id, self.dtype)
            # prefix mode can use only the first passage (exact after the head): fetch no more
            for i, key in enumerate(keys[:1] if mode == "prefix" else keys):
                entries[i], tier = self.store.get(key, self.model_id, self.dtype)
                tiers[i] = tier
                if tier is not None:
                    usage.tier_hits[tier] = usage.tier_hits.get(tier, 0) + 1

        def prefill(model: LlamaModel) -> PrefillResult:
            try:
                return self._prefill(model, head, head_key, head_entry, chunks, keys, entries, question_ids,
                                     mode, ratio, epic_tokens, ctx_tag, usage, blend_config)
            finally:
                usage.done.set()

        request = Request(request_id, prompt, params, logits_processors=list(processors or []), prefill=prefill)
        return AskPlan(request, list(passages), tiers, usage)

    def _prefill(
        self, model: LlamaModel, head: list[int], head_key: str, head_entry: ChunkKV | None,
        chunks: list[list[int]], keys: list[str], entries: list[ChunkKV | None], question_ids: list[int],
        mode: str, ratio: float, epic_tokens: int, ctx_tag: str, usage: AskUsage,
        blend_config: BlendConfig | None = None,
    ) -> PrefillResult:
        if mode == "full":
            res = blend(model, [Segment(head + [t for c in chunks for t in c] + question_ids)], mode="full")
            usage.recomputed_tokens, usage.reused_tokens = res.recomputed, res.reused
            return PrefillResult(res.k, res.v, res.logits, res.reused)
        from_store = [head_entry is not None]  # per segment: its KV was stored before this request
        if head_entry is None:
            hk, hv = prefill_kv(model, Segment([]), head)
            head_entry = self._put(head_key, head, hk, hv, 0)
        ctx = Segment(head, head_entry.k, head_entry.v, 0, exact=True)
        segments = [ctx]
        for i, (tokens, key) in enumerate(zip(chunks, keys)):
            entry = entries[i]
            from_store.append(entry is not None)
            if mode == "prefix" and i > 0:  # recomputed in place anyway: nothing to fetch or store
                segments.append(Segment(tokens))
                continue
            if entry is None:
                chunk_ctx = self._chunk_context(model, ctx)
                k, v = prefill_kv(model, chunk_ctx, tokens)
                entry = self._put(key, tokens, k, v, len(chunk_ctx.token_ids))
                usage.chunks_computed += 1
            # the first passage sits right after the head, where its KV was computed: exact
            segments.append(Segment(tokens, entry.k, entry.v, entry.start_pos, exact=i == 0 and entry.start_pos == len(head)))
        segments.append(Segment(question_ids))
        from_store.append(False)
        res = blend(model, segments, mode=mode, ratio=ratio, epic_tokens=epic_tokens,  # type: ignore[arg-type]
                    config=blend_config)
        # "reused" counts only KV that existed before this request; a passage computed just now
        # for the store was computed, whatever the blend then kept of it.
        stored = torch.tensor([f for seg, f in zip(segments, from_store) for _ in seg.token_ids], dtype=torch.bool)
        usage.recomputed_tokens = res.recomputed
        usage.reused_tokens = int((res.reused_mask & stored).sum())
        return PrefillResult(res.k, res.v, res.logits, usage.reused_tokens)

    def _put(self, key: str, tokens: list[int], k: Any, v: Any, start_pos: int) -> ChunkKV:
        entry = ChunkKV(key, list(tokens), k, v, start_pos, self.model_id, self.dtype)
        try:
            self.store.put(entry)
        except Exception:  # storing is an optimisation: a full disk must not fail the answer
            log.exception("could not store chunk KV %s", key)
        return entry

    # ---- ingest-time precompute ----------------------------------------------------------------

    def precompute(self, model: LlamaModel, texts: Sequence[str], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> int:
        """Compute and store the chunk KV of passages not stored yet; returns how many were computed.
        Needs the model: call it on the engine thread (AsyncEngine.run) when a server is running."""
        head, _ = self.head_and_tail(system_prompt)
        ctx_tag = self._context_tag(head)
        head_key = chunk_key(self.model_id, self.dtype, head)
        head_entry, _ = self.store.get(head_key, self.model_id, self.dtype)
        if head_entry is None:
            hk, hv = prefill_kv(model, Segment([]), head)
            head_entry = self._put(head_key, head, hk, hv, 0)
        ctx = Segment(head, head_entry.k, head_entry.v, 0, exact=True)
        computed = 0
        for text in texts:
            tokens = self.passage_tokens(text)
            key = chunk_key(self.model_id, self.dtype, tokens, context=ctx_tag)
            if self.store.contains(key):
                continue
            chunk_ctx = self._chunk_context(model, ctx)
            k, v = prefill_kv(model, chunk_ctx, tokens)
            self._put(key, tokens, k, v, len(chunk_ctx.token_ids))
            computed += 1
        return computed
