"""The engine: requests in, one schedule -> forward -> sample -> detokenize step at a time, outputs out.

`LLMEngine` is synchronous and single-threaded; `AsyncEngine` (async_engine.py) drives it from a
background thread for the server. Offline users call `generate()`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from ragloom.config import EngineSettings
from ragloom.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from ragloom.generation.constrain.processor import Constraint, GrammarProcessor, compile_constraint
from ragloom.generation.runner.batch import ForwardBatch
from ragloom.generation.runner.detokenizer import IncrementalDetokenizer
from ragloom.generation.runner.kv import KVCache
from ragloom.generation.runner.kv_quant import resolve_kv_dtype
from ragloom.generation.runner.model import LlamaModel
from ragloom.generation.runner.params import SamplingParams
from ragloom.generation.runner.sampler import LogitsProcessor, SamplingRow, sample
from ragloom.generation.runner.scheduler import Scheduler
from ragloom.generation.runner.sequence import Sequence
from ragloom.generation.runner.speculative.lookup import PromptLookup
from ragloom.generation.runner.speculative.recycling import TokenRecycling
from ragloom.generation.runner.speculative.tree import DraftTree
from ragloom.generation.runner.weights import (
    PACK_VERSION,
    ModelConfig,
    build_state,
    gguf_tensors,
    load_state,
    load_state_dict,
    save_state,
)
from ragloom.models import cached_artifact, gguf_source, model_id, resolve_model

log = logging.getLogger(__name__)


@dataclass
class PrefillResult:
    """A prompt's KV computed outside the normal forward (e.g. blended from stored chunks)."""

    k: torch.Tensor  # [layers, prompt_len, kv_heads, head_dim]
    v: torch.Tensor
    logits: torch.Tensor  # [vocab] for the last prompt token
    reused_tokens: int  # reported as cached_tokens


# Called on the engine thread with the model when the request is first scheduled.
CustomPrefill = Callable[[LlamaModel], PrefillResult]


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    constraint: Constraint | None = None  # from LLMEngine.compile_constraint
    prefill: CustomPrefill | None = None  # replaces the prompt's forward (cache/blend.py)
    speculative: str | None = None  # "off" or a method (SPECULATIVE_METHODS); None: the engine's setting


@dataclass
class Output:
    """What one step produced for one request: deltas, plus the final state when finished."""

    request_id: str
    text: str
    token_ids: list[int]
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    draft_tokens: int = 0  # drafted for this request so far (speculative decoding)
    accepted_tokens: int = 0  # of which the model accepted


@dataclass
class Completion:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Loads:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float
    prefix_cache_queried_tokens: int  # since start: tokens of prompts that looked up the prefix cache
    prefix_cache_hit_tokens: int  # of which were found there
    speculative_steps: int = 0  # since start: sequence steps that verified a draft
    speculative_draft_tokens: int = 0
    speculative_accepted_tokens: int = 0


# lookup: prompt lookup chains; recycling: Token Recycling trees; auto: a lookup match where there
# is one, else a recycling tree.
SPECULATIVE_METHODS = ("off", "lookup", "recycling", "auto")
SPEC_MISSES, SPEC_PAUSE = 3, 8  # drafts rejected in a row -> decode steps without drafting


def speculates(params: SamplingParams, processors: list[LogitsProcessor]) -> bool:
    """Whether a request can speculate: verification is exact for plain greedy decoding (no
    penalty, no logits processor or constraint). Sampling and constrained requests decode one
    token a step."""
    return params.greedy and params.repetition_penalty == 1.0 and not processors


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device 'cuda' was asked for but CUDA is not available")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return torch.device(device), getattr(torch, dtype)


class LLMEngine:
    def __init__(self, settings: EngineSettings | None = None) -> None:
        settings = settings or EngineSettings()
        self.settings = settings
        self.device, self.dtype = resolve_device(settings.device, settings.dtype)
        folder = resolve_model(settings.model, settings.data_dir)
        self.model_id = model_id(settings.model)
        self.config = ModelConfig.from_folder(folder)
        cfg = self.config
        self.max_model_len = min(settings.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.vocab_size = cfg.vocab_size

        started = time.perf_counter()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        self.model = LlamaModel(cfg, self.max_model_len, self.device, self.dtype)
        self._load_weights(folder)
        self.model.eval()
        self.eos_ids = set(cfg.eos_token_ids) | (
            {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        )

        num_blocks = -(-settings.kv_cache_tokens // settings.block_size)
        kv_format = resolve_kv_dtype(settings.kv_dtype, self.dtype)
        key_scale = self.model.key_channel_scales() if kv_format in ("int8", "int4") else None
        self.kv = KVCache(cfg.num_layers, num_blocks, settings.block_size, cfg.num_kv_heads, cfg.head_dim,
                          self.dtype, self.device, kv_format, key_scale)
        self.scheduler = Scheduler(self.kv, settings.max_num_seqs, settings.max_num_batched_tokens,
                                   prefix_caching=settings.prefix_caching, chunked_prefill=settings.chunked_prefill,
                                   max_prefill_tokens=settings.max_prefill_tokens)
        self._seqs: dict[str, Sequence] = {}
        self.speculation = [0, 0, 0]  # since start: verify steps, draft tokens, accepted tokens
        self.recycling: TokenRecycling | None = None  # made by the first request that drafts trees
        self.failures: dict[str, Exception] = {}  # request id -> why it failed inside a step
        self._mask_pool: ThreadPoolExecutor | None = None  # constraint masks beside the forward pass
        # when the latest requests finished: the throughput behind an OVERLOADED answer's retry delay
        self._finished_at: deque[float] = deque(maxlen=64)
        log.info(
            "loaded %s (%s, %d layers) on %s/%s, weights %s, in %.1fs; KV cache %d tokens in %d blocks (%.0f MiB, %s)",
            self.model_id, cfg.architecture, cfg.num_layers, self.device, str(self.dtype).removeprefix("torch."),
            self.weights_summary, time.perf_counter() - started, num_blocks * settings.block_size, num_blocks, self.kv.bytes / 2**20, self.kv.format,
        )

    def _load_weights(self, folder: Path) -> None:
        """Weights in the format `settings.weights` asks for. A GGUF model's quantized formats come
        from its packed cache (built once from the GGUF's raw blocks, beside the dequantized HF
        folder); dense formats and HF folders load the safetensors and convert in memory."""
        requested = self.settings.weights
        gguf = gguf_source(self.settings.model, self.settings.data_dir)
        packed = requested in ("int8", "int4") or (requested == "auto" and self.device.type == "cpu")
        if gguf is None or not packed:
            weights = None if requested == "auto" else requested  # auto: dense in the engine's dtype
            self.model.load_hf_state(load_state_dict(folder, self.dtype, self.device), weights)
        else:
            cfg, device = self.config, self.device
            name = f"weights-{requested}-{device.type}.safetensors"
            path = cached_artifact(
                folder / "packed", name, gguf, PACK_VERSION,  # not beside *.safetensors: those are the HF weights
                lambda tmp: save_state(build_state(gguf_tensors(gguf, cfg), cfg, requested, device), tmp),
            )
            self.model.load_state(load_state(path))
        formats = self.model.weight_formats.values()
        self.weights_summary = ", ".join(f"{n} {f}" for f, n in Counter(formats).most_common())

    # ---- input -------------------------------------------------------------------------------

    def compile_constraint(self, kind: str, spec: Any, *, strict: bool = True) -> Constraint:
        """Compile a json_schema / lark_grammar / regex / choices constraint for this model's
        tokenizer (cached). Thread-safe: the server calls it off the engine thread."""
        return compile_constraint(
            kind, spec, self.tokenizer, self.vocab_size, frozenset(self.eos_ids),
            strict=strict, timeout_s=self.settings.constraint_timeout_s,
        )

    def encode(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None) -> list[int]:
        """Token ids for a plain prompt, or for chat messages through the model's chat template."""
        # field paths as in GenerateRequest, whose prompt and messages these are
        if messages:
            for i, m in enumerate(messages):
                if m.get("role") not in ("system", "user", "assistant", "tool"):
                    raise InvalidArgument(f"unknown chat role {m.get('role')!r}", field=f"messages[{i}].role")
            if not any(m.get("content") for m in messages):
                raise InvalidArgument("chat messages are all empty", field="messages")
            if self.tokenizer.chat_template is None:
                raise InvalidArgument(f"model {self.model_id} has no chat template; send a plain prompt",
                                      field="messages")
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if not prompt:
            raise InvalidArgument("the prompt is empty: send a prompt or chat messages", field="prompt")
        ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        if self.config.bos_token_id is not None and self.tokenizer.bos_token_id is not None and not ids:
            ids = [self.tokenizer.bos_token_id]
        return list(ids)

    def validate(self, request: Request) -> None:
        """Everything that can be wrong with a request, checked before it enters the engine.

        Reads only immutable engine state, so the async front end may call it from any thread.
        """
        ids = request.prompt_token_ids
        if not ids:
            raise InvalidArgument("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidArgument(f"prompt token ids out of vocabulary range [0, {self.vocab_size}): {bad[:5]}")
        request.params.validate(self.vocab_size)
        if request.speculative and request.speculative not in SPECULATIVE_METHODS:
            raise InvalidArgument(f"unknown speculative method {request.speculative!r}; "
                                  f"choose from {', '.join(SPECULATIVE_METHODS)}", field="speculative")
        # A prompt that leaves no room for one token can never be served (REQUEST_TOO_LARGE); one
        # that fits but not with max_tokens more is fixed by asking for fewer (a bad max_tokens).
        if len(ids) >= self.max_model_len:
            raise ResourceExhausted(
                f"the prompt ({len(ids)} tokens) does not fit the context of {self.model_id} "
                f"({self.max_model_len} tokens, one of them for the output)",
                reason="REQUEST_TOO_LARGE",
                metadata={"prompt_tokens": str(len(ids)), "max_model_len": str(self.max_model_len)},
            )
        total = len(ids) + request.params.max_tokens
        if total > self.max_model_len:
            raise InvalidArgument(
                f"prompt ({len(ids)} tokens) + max_tokens ({request.params.max_tokens}) = {total} "
                f"exceeds the context of {self.model_id} ({self.max_model_len} tokens): "
                f"ask for at most {self.max_model_len - len(ids)} tokens",
                field="sampling.max_tokens",
            )
        limit = self.settings.max_prompt_tokens
        if limit is not None and len(ids) > limit:
            raise ResourceExhausted(
                f"the prompt ({len(ids)} tokens) is longer than this server allows ({limit} tokens, "
                "max_prompt_tokens)",
                reason="REQUEST_TOO_LARGE",
                metadata={"prompt_tokens": str(len(ids)), "max_prompt_tokens": str(limit)},
            )
        capacity = self.kv.num_blocks * self.kv.block_size
        if len(ids) + 1 > capacity:
            raise ResourceExhausted(
                f"prompt of {len(ids)} tokens does not fit the KV cache ({capacity} tokens)",
                reason="REQUEST_TOO_LARGE",
                metadata={"prompt_tokens": str(len(ids)), "kv_cache_tokens": str(capacity)},
            )

    def add_request(self, request: Request) -> None:
        self.validate(request)
        if request.request_id in self._seqs:
            raise AlreadyExists(f"request id {request.request_id!r} is already running")
        p = request.params
        generator = None
        if p.seed is not None and not p.greedy:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(p.seed)
        seq = Sequence(
            request_id=request.request_id,
            prompt_ids=list(request.prompt_token_ids),
            params=p,
            processors=list(request.logits_processors)
            + ([GrammarProcessor(request.constraint, self.tokenizer)] if request.constraint else []),
            detokenizer=IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids),
            generator=generator,
            custom_prefill=request.prefill,
            cache_prefix=request.prefill is None,
        )
        method = request.speculative or self.settings.speculative
        if method != "off" and self.settings.num_speculative_tokens and speculates(p, seq.processors):
            seq.speculative = method
            if method in ("lookup", "auto"):
                seq.lookup = PromptLookup(seq.prompt_ids)
            if method in ("recycling", "auto"):
                self.recycling = self.recycling or TokenRecycling(self.vocab_size)
                self.recycling.seed(seq.prompt_ids)
        self._seqs[seq.request_id] = seq
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> Output | None:
        """Stop a request now and free its KV blocks; its final Output, or None if unknown."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return None
        seq.finish_reason = "abort"
        self.scheduler.finish(seq)
        return self._output(seq, [], finished=True)

    def admit(self) -> None:
        """ResourceExhausted (OVERLOADED, with a retry delay) when max_queued requests are waiting
        already. The server's front end (AsyncEngine) calls it on the engine thread, where the
        queue's length is exact, before add_request; offline generate() queues without bound."""
        queued = len(self.scheduler.waiting)
        if queued >= self.settings.max_queued:
            raise self.overloaded(queued)

    def overloaded(self, queued: int) -> ResourceExhausted:
        """The error of a request refused because `queued` requests are waiting already."""
        retry = self.retry_after_s(queued)
        return ResourceExhausted(
            f"the engine is overloaded: {queued} requests are waiting (max_queued); retry in {retry:.1f}s",
            reason="OVERLOADED",
            metadata={"waiting": str(queued), "max_queued": str(self.settings.max_queued)},
            retry_after_s=retry,
        )

    def retry_after_s(self, queued: int) -> float:
        """How long until `queued` waiting requests have likely gone through, from the rate at which
        the latest requests finished: at least 0.5 s (an immediate retry would meet the same
        queue), at most 60 s; 1 s when too few have finished to tell a rate."""
        done = self._finished_at
        rate = (len(done) - 1) / (done[-1] - done[0]) if len(done) >= 2 and done[-1] > done[0] else 0.0
        estimate = queued / rate if rate > 0 else 1.0
        return float(min(60.0, max(0.5, estimate)))

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def loads(self) -> Loads:
        used, total, sched = self.kv.allocator.num_used, self.kv.num_blocks, self.scheduler
        return Loads(len(sched.running), len(sched.waiting), used, total, used / total,
                     sched.prefix_queried_tokens, sched.prefix_hit_tokens, *self.speculation)

    # ---- the step ----------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Output]:
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        seqs = batch.seqs
        todo = {id(s): n for s, n in zip(seqs, batch.num_tokens)}
        custom = [s for s in seqs if s.custom_prefill is not None and s.num_computed == 0]
        normal = [s for s in seqs if not (s.custom_prefill is not None and s.num_computed == 0)]
        rows_by_seq: dict[int, torch.Tensor] = {}
        for seq in custom:
            try:
                rows_by_seq[id(seq)] = self._custom_prefill(seq)
            except Exception as exc:  # fails this request only; the others in the step go on
                log.exception("custom prefill of %s failed", seq.request_id)
                self._seqs.pop(seq.request_id, None)
                seq.finish_reason = "error"
                self.scheduler.finish(seq)
                self.failures[seq.request_id] = exc
        seqs = [s for s in seqs if s.finish_reason is None]
        if not seqs:
            return []
        drafts: dict[int, tuple[DraftTree, list[int] | None]] = {}
        verify_rows: dict[int, torch.Tensor] = {}
        if normal:
            # A prompt chunk that does not reach the prompt's end needs no logits.
            ends = [seq.num_computed + todo[id(seq)] for seq in normal]
            wants = [int(end == seq.num_tokens) for seq, end in zip(normal, ends)]
            drafts = self._draft(normal, todo)
            # A sequence with a draft runs its last token and the draft's nodes, with logits at each.
            trees = [drafts[id(seq)][0] if id(seq) in drafts else None for seq in normal]
            extra = [[] if tree is None else tree.tokens for tree in trees]
            fwd = ForwardBatch.build(
                new_tokens=[seq.token_ids[seq.num_computed : end] + d for seq, end, d in zip(normal, ends, extra)],
                starts=[seq.num_computed for seq in normal],
                block_tables=[seq.block_table for seq in normal],
                kv=self.kv,
                logits_per_seq=[w + len(d) for w, d in zip(wants, extra)],
                sliding_window=self.config.sliding_window,
                verify=trees if drafts else None,
            )
            prepared = self._prepare_masks([seq for seq, w in zip(normal, wants) if w])
            out = self.model(fwd, self.kv)
            if prepared is not None:
                prepared.result()
            row = 0
            for seq, w, d in zip(normal, wants, extra):
                if d:
                    verify_rows[id(seq)] = out[row : row + 1 + len(d)]
                if w:
                    rows_by_seq[id(seq)] = out[row]
                row += w + len(d)
        for seq in seqs:
            seq.num_computed = seq.num_tokens if id(seq) in rows_by_seq else seq.num_computed + todo[id(seq)]
            self.scheduler.publish(seq)
        seqs = [s for s in seqs if id(s) in rows_by_seq]  # part-way through their prompt: no token yet
        outputs = [self._accept(s, *drafts[id(s)], verify_rows[id(s)]) for s in seqs if id(s) in drafts]
        seqs = [s for s in seqs if id(s) not in drafts]
        if not seqs:
            return outputs
        logits = torch.stack([rows_by_seq[id(s)] for s in seqs])
        recycled = [i for i, s in enumerate(seqs) if s.speculative in ("recycling", "auto")]
        if recycled and self.recycling is not None:  # the model's guesses after each last token
            self.recycling.update([seqs[i].token_ids[-1] for i in recycled], logits[recycled])
        rows = [
            SamplingRow(s.params, s.token_ids, s.output_ids, s.processors, s.generator) for s in seqs
        ]
        tokens = sample(logits, rows)
        return outputs + [self._append(seq, [token]) for seq, token in zip(seqs, tokens)]

    def _prepare_masks(self, seqs: list[Sequence]) -> Future[None] | None:
        """Compute the constrained sequences' next masks on a worker thread while the forward pass
        runs (they depend only on tokens already chosen), as XGrammar does beside the GPU: the
        sampler then finds them cached. The forward's kernels release the GIL."""
        procs = [(p, s.output_ids) for s in seqs for p in s.processors if hasattr(p, "prepare")]
        if not procs or not self.settings.overlap_masks:
            return None
        if self._mask_pool is None:
            self._mask_pool = ThreadPoolExecutor(1, thread_name_prefix="ragloom-masks")
        return self._mask_pool.submit(_prepare_all, procs)

    # ---- speculative decoding ----------------------------------------------------------------

    def _draft(self, seqs: list[Sequence], todo: dict[int, int]) -> dict[int, tuple[DraftTree, list[int] | None]]:
        """Draft trees (and, for recycling trees, their nodes' ranks) for the sequences about to
        decode that speculate, within the step's token budget and the KV cache (a draft that does
        not fit is dropped, not waited for)."""
        decoding = sum(1 for seq in seqs if seq.num_new == 1)
        if decoding > self.settings.speculative_max_batch:
            return {}  # a batched step already shares each weight read among its sequences
        budget = self.settings.max_num_batched_tokens - sum(todo.values())
        window = self.config.sliding_window
        drafts: dict[int, tuple[DraftTree, list[int] | None]] = {}
        for seq in seqs:
            if seq.speculative == "off" or seq.num_new != 1 or todo[id(seq)] != 1 or budget <= 0:
                continue
            if seq.spec_pause:
                seq.spec_pause -= 1
                continue
            room = min(seq.spec_k or self.settings.num_speculative_tokens, budget,
                       self.max_model_len - seq.num_tokens - 1,
                       self.max_model_len if window is None else window - seq.num_tokens - 1)
            left = seq.params.max_tokens - len(seq.output_ids) - 1  # tokens a chain can still add
            draft = self._propose(seq, room, left)
            if draft is None:
                continue
            try:
                self.kv.reserve(seq.block_table, seq.num_tokens + len(draft[0]))
            except ResourceExhausted:
                continue
            drafts[id(seq)] = draft
            budget -= len(draft[0])
        return drafts

    def _propose(self, seq: Sequence, room: int, left: int) -> tuple[DraftTree, list[int] | None] | None:
        """A prompt lookup chain where one matches, else a Token Recycling tree (as the
        sequence's method allows): at most `room` nodes, at most `left` deep."""
        if room <= 0 or left <= 0:
            return None
        if seq.lookup is not None:
            chain = seq.lookup.propose(seq.output_ids, min(room, left))
            if chain:
                return DraftTree.chain(chain), None
        if seq.speculative in ("recycling", "auto") and self.recycling is not None:
            return self.recycling.propose(seq.token_ids[-1], room, max_depth=left)
        return None

    def _adapt(self, seq: Sequence, depth: int, accepted: int) -> None:
        """Per-sequence draft size: one more node after a draft accepted to its full depth, half
        after one mostly rejected; after SPEC_MISSES drafts in a row with nothing accepted, pause
        drafting for SPEC_PAUSE steps (a verify step costs more than a decode, so useless drafts
        slow it)."""
        k = seq.spec_k or self.settings.num_speculative_tokens
        if accepted == depth:
            seq.spec_k = min(k + 1, self.settings.num_speculative_tokens)
        elif 2 * accepted < depth:
            seq.spec_k = max(1, k // 2)
        seq.spec_misses = seq.spec_misses + 1 if accepted == 0 else 0
        if seq.spec_misses >= SPEC_MISSES:
            seq.spec_pause, seq.spec_misses = SPEC_PAUSE, 0

    def _accept(self, seq: Sequence, tree: DraftTree, ranks: list[int] | None, rows: torch.Tensor) -> Output:
        """Greedy verification: the model's own choice after the last token and after each node
        ([1 + len(tree), vocab] logits); the deepest path of nodes the model agrees with is kept
        and the model's token after it follows (so every step adds at least one token, exactly the
        tokens plain greedy decoding would). The kept nodes' KV moves next to the context; the
        rest is dropped with its blocks."""
        choice = rows.argmax(-1).tolist()
        path = tree.accept(choice)
        if self.recycling is not None and seq.speculative in ("recycling", "auto"):
            self.recycling.update([seq.token_ids[-1]] + tree.tokens, rows)
            if ranks is not None:
                self.recycling.observe(tree, ranks, path)
        accepted = len(path)
        seq.draft_tokens += len(tree)
        seq.accepted_tokens += accepted
        self._adapt(seq, max(tree.depths), accepted)
        self.speculation[0] += 1
        self.speculation[1] += len(tree)
        self.speculation[2] += accepted
        root = seq.num_computed - 1  # position of the last token; node i was written at root + 1 + i
        moved = [(j, i) for j, i in enumerate(path) if i != j]  # nodes off the draft's first branch
        if moved:
            slots = self.kv.slot_tensor(seq.block_table, root + 1, root + 1 + len(tree))
            dst, src = (slots[torch.tensor(rows_, device=slots.device)] for rows_ in zip(*moved))
            self.kv.copy_slots(dst, src)
        out = self._append(seq, [tree.tokens[i] for i in path] + [choice[path[-1] + 1 if path else 0]])
        if seq.finish_reason is None:
            seq.num_computed += accepted  # the accepted nodes' KV was written by the verify pass
            self.kv.truncate(seq.block_table, seq.num_tokens)
        return out

    def _custom_prefill(self, seq: Sequence) -> torch.Tensor:
        """Run a request's own prefill (blending), write its KV into the sequence's blocks and
        return the last prompt token's logits. Only on first scheduling: after a preemption the
        prompt is recomputed by the normal forward."""
        assert seq.custom_prefill is not None
        res = seq.custom_prefill(self.model)
        seq.custom_prefill = None
        n = len(seq.prompt_ids)
        if res.k.shape[1] != n or res.v.shape[1] != n:
            raise InvalidArgument(f"custom prefill returned KV for {res.k.shape[1]} tokens, prompt has {n}")
        self.kv.write_layers(self.kv.slot_tensor(seq.block_table, 0, n), res.k.to(self.device), res.v.to(self.device))
        seq.num_cached = res.reused_tokens
        return res.logits.to(self.device, torch.float32)

    def _append(self, seq: Sequence, chosen: list[int]) -> Output:
        """Add the sampled (or verified) tokens until one finishes the sequence, then any tokens a
        constraint forces (jump-forward)."""
        tokens: list[int] = []
        for token in chosen:
            self._add_token(seq, token)
            tokens.append(token)
            if seq.finish_reason is not None:
                break
        if self.settings.jump_forward:
            for proc in seq.processors:
                forced = getattr(proc, "forced_tokens", None)
                if forced is None or seq.finish_reason is not None:
                    continue
                for t in forced(seq.output_ids):
                    self._add_token(seq, t)
                    tokens.append(t)
                    if seq.finish_reason is not None:
                        break
        finished = seq.finish_reason is not None
        if finished:
            self._seqs.pop(seq.request_id, None)
            self.scheduler.finish(seq)
            self._finished_at.append(time.monotonic())
        return self._output(seq, tokens, finished)

    def _add_token(self, seq: Sequence, token: int) -> None:
        p = seq.params
        seq.output_ids.append(token)
        if token in p.stop_token_ids or (token in self.eos_ids and not p.ignore_eos):
            seq.finish_reason = "stop"
        else:
            seq.text += seq.detokenizer.add(token)
            if p.stop:
                self._check_stop_strings(seq)
        if seq.finish_reason is None and (
            len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            seq.finish_reason = "length"

    def _check_stop_strings(self, seq: Sequence) -> None:
        # Only the tail can hold a new match: the last delta plus the longest stop string.
        window = max(len(s) for s in seq.params.stop) + 8
        start = max(0, seq.emitted_chars - window, len(seq.text) - 2 * window)
        hits = [i for s in seq.params.stop if (i := seq.text.find(s, start)) != -1]
        if hits:
            seq.text = seq.text[: min(hits)]
            seq.finish_reason = "stop"

    def _output(self, seq: Sequence, token_ids: list[int], finished: bool) -> Output:
        # While running, hold back text that could be the start of a stop string.
        hold = 0 if finished or not seq.params.stop else max(len(s) for s in seq.params.stop) - 1
        end = max(seq.emitted_chars, len(seq.text) - hold)
        delta = seq.text[seq.emitted_chars : end]
        seq.emitted_chars = end
        return Output(
            request_id=seq.request_id,
            text=delta,
            token_ids=token_ids,
            finished=finished,
            finish_reason=seq.finish_reason,
            prompt_tokens=len(seq.prompt_ids),
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.num_cached,
            draft_tokens=seq.draft_tokens,
            accepted_tokens=seq.accepted_tokens,
        )

    # ---- offline -----------------------------------------------------------------------------

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
        constraints: Constraint | list[Constraint | None] | None = None,
    ) -> list[Completion]:
        """Run prompts to completion (blocking) and return their completions in order."""
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise InvalidArgument("give one SamplingParams, or one per prompt")
        cons = constraints if isinstance(constraints, list) else [constraints] * len(prompts)
        if len(cons) != len(prompts):
            raise InvalidArgument("give one constraint, or one per prompt")
        ids = [self.encode(prompt=p) if isinstance(p, str) else list(p) for p in prompts]
        order: list[str] = []
        results: dict[str, Completion] = {}
        for prompt_ids, sp, con in zip(ids, params_list, cons):
            rid = uuid.uuid4().hex
            self.add_request(Request(rid, prompt_ids, sp, constraint=con))
            order.append(rid)
            results[rid] = Completion(rid, "", [], "", len(prompt_ids), 0)
        while self.has_unfinished():
            for out in self.step():
                c = results[out.request_id]
                c.text += out.text
                c.token_ids += out.token_ids
                c.completion_tokens = out.completion_tokens
                if out.finished:
                    c.finish_reason = out.finish_reason or ""
            for rid in [r for r in order if r in self.failures]:
                raise self.failures.pop(rid)
        return [results[r] for r in order]


def _prepare_all(procs: list[tuple[Any, list[int]]]) -> None:
    for proc, output_ids in procs:
        try:
            proc.prepare(output_ids)
        except Exception:  # noqa: BLE001 - the sampler calls it again and raises there, per request
            pass
