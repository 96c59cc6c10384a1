"""The `ragloom.v1.RagService` servicer: Ask = search -> chunk KV (stored or computed) -> blend -> decode.

One Ask runs in four stages, none of which blocks the event loop or the engine thread longer
than it must:

1. validation of everything cheap to check (question, mode, ratio, k, sampling), and the JSON
   Schema compiled in a worker thread (as in services/generation.py);
2. the collection searched in a worker thread (CollectionManager is synchronous; stored data is
   reached only through it, never through retrieval's tables);
3. the plan (`RagPipeline.plan`) built in a worker thread: chunk-KV lookups and codec decoding
   happen there; computing missing chunk KV and blending happen inside the engine's step;
4. the passages streamed first, then the answer's tokens from `AsyncEngine.generate`, then one
   AskComplete with citations and usage. The prefill numbers (reused / recomputed tokens,
   chunks computed, tier hits) are final by the first token; `usage.done` says so.

A collection with no (matching) chunks is answered without passages, with a warning, rather
than refused: "nothing relevant found" is an answer the caller can show.

Cancellation and deadlines are as in services/generation.py: grpc.aio cancels the handler,
which closes the engine stream and aborts the request (freeing its KV blocks); a worker thread
already searching or planning finishes on its own. The chunk-KV store never fails an Ask for a
tier's sake: a Redis outage is logged by the tier, counted in GetCacheStats, and served from
the other tiers (or recomputed).

`precompute` (for `Upsert(precompute_kv=true)`) prefills and stores the chunk KV of stored
chunks on the engine thread, a few passages per engine call so decoding requests interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ragloom.cache.blend import MODES
from ragloom.cache.chunk_kv import ChunkKVStore
from ragloom.cache.rag import DEFAULT_SYSTEM_PROMPT, AskPlan, PassageText, RagPipeline
from ragloom.errors import InvalidArgument
from ragloom.generation.constrain.processor import Constraint, GrammarProcessor
from ragloom.services import auth
from ragloom.services._proto import rag_pb2 as pb
from ragloom.services._proto import rag_pb2_grpc as pb_grpc
from ragloom.services.generation import (
    check_constraint_size,
    chunk_from_output,
    compile_constraint,
    finish_reason_to_proto,
    parse_json_schema,
    sampling_from_proto,
)
from ragloom.services.metrics import Metrics
from ragloom.services.status import abort_on_failure, unary
from ragloom.structs import dict_to_struct, struct_to_dict

if TYPE_CHECKING:
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.retrieval.collections import CollectionManager, Hit

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RagService"].full_name  # "ragloom.v1.RagService"

DEFAULT_K = 5
MAX_K = 50
DEFAULT_EPIC_TOKENS = 16
# passages per engine call while precomputing: decode steps of running requests go in between
PRECOMPUTE_BATCH = 4

# AskMode <-> cache.blend's mode names; UNSPECIFIED means the server's default mode
ASK_MODES: dict[int, str] = {
    pb.ASK_MODE_FULL: "full",
    pb.ASK_MODE_PREFIX: "prefix",
    pb.ASK_MODE_BLEND: "blend",
    pb.ASK_MODE_EPIC: "epic",
}
_ASK_MODE_OF: dict[str, pb.AskMode] = {name: value for value, name in ASK_MODES.items()}
# a chunk-KV tier's kind (MemoryTier.kind, ...) -> where a passage's KV came from, and what the tier is
KV_SOURCES: dict[str, pb.KvSource] = {
    "memory": pb.KV_SOURCE_MEMORY,
    "disk": pb.KV_SOURCE_DISK,
    "redis": pb.KV_SOURCE_REDIS,
}
TIER_KINDS: dict[str, pb.TierKind] = {
    "memory": pb.TIER_KIND_MEMORY,
    "disk": pb.TIER_KIND_DISK,
    "redis": pb.TIER_KIND_REDIS,
}


def _tier_stats(name: str, st: dict[str, Any]) -> pb.TierStats:
    ints = {k: int(v) for k, v in st.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return pb.TierStats(
        name=name,
        kind=TIER_KINDS.get(str(st.get("kind", "")), pb.TIER_KIND_UNSPECIFIED),
        available=bool(st.get("available", True)),
        entries=ints.get("entries", 0),
        bytes=ints.get("bytes", 0),
        hits=ints.get("hits", 0),
        misses=ints.get("misses", 0),
        puts=ints.get("puts", 0),
        evictions=ints.get("evictions", 0),
        errors=ints.get("errors", 0),
        corrupt=ints.get("corrupt", 0),
        mismatches=ints.get("mismatches", 0),
        detail=dict_to_struct({k: v for k, v in st.items() if v is None or isinstance(v, str | int | float | bool)}),
    )


def stats_to_proto(stats: dict[str, Any]) -> pb.GetCacheStatsResponse:
    codec = stats.get("codec", {})
    return pb.GetCacheStatsResponse(
        hits=int(stats.get("hits", 0)),
        misses=int(stats.get("misses", 0)),
        redis_errors=int(stats.get("redis_errors", 0)),
        tiers=[_tier_stats(name, st) for name, st in stats.get("tiers", {}).items()],
        codec_bits=int(codec.get("bits", 0)),
        codec_group_size=int(codec.get("group_size", 0)),
        codec_entropy=bool(codec.get("entropy", False)),
    )


class RagServicer(pb_grpc.RagServiceServicer):
    def __init__(
        self,
        engine: AsyncEngine,
        collections: CollectionManager,
        pipeline: RagPipeline,
        *,
        default_mode: str = "blend",
        default_ratio: float = 0.15,
        max_k: int = MAX_K,
        metrics: Metrics | None = None,
    ) -> None:
        if default_mode not in MODES:
            raise InvalidArgument(f"ask mode must be one of {', '.join(MODES)}; got {default_mode!r}")
        self._engine = engine
        self._mgr = collections
        self.pipeline = pipeline
        self.default_mode = default_mode
        self.default_ratio = default_ratio
        self.max_k = max_k
        self._metrics = metrics or Metrics()

    @property
    def store(self) -> ChunkKVStore:
        return self.pipeline.store

    # -- request translation -------------------------------------------------------------

    def _check(self, msg: pb.AskRequest) -> tuple[str, float, int, int]:
        """(mode, ratio, k, epic_tokens), or InvalidArgument naming the first bad field."""
        if not msg.question.strip():
            raise InvalidArgument("the question is empty", field="question")
        if not msg.collection:
            raise InvalidArgument("collection is empty: name the collection to answer from", field="collection")
        if msg.mode == pb.ASK_MODE_UNSPECIFIED:
            mode = self.default_mode
        elif msg.mode in ASK_MODES:
            mode = ASK_MODES[msg.mode]
        else:  # a newer client's mode
            raise InvalidArgument(f"unknown mode {msg.mode}: one of {', '.join(pb.AskMode.keys())}", field="mode")
        ratio = msg.recompute_ratio if msg.HasField("recompute_ratio") else self.default_ratio
        if not 0.0 <= ratio <= 1.0:  # also NaN
            raise InvalidArgument(f"recompute_ratio must be in [0, 1], got {ratio}", field="recompute_ratio")
        k = msg.k if msg.HasField("k") else DEFAULT_K
        if not 1 <= k <= self.max_k:
            raise InvalidArgument(f"k must be in [1, {self.max_k}] (unset = {DEFAULT_K}), got {k}", field="k")
        epic = msg.epic_tokens if msg.HasField("epic_tokens") else DEFAULT_EPIC_TOKENS
        if epic < 0:
            raise InvalidArgument(f"epic_tokens must be >= 0, got {epic}", field="epic_tokens")
        return mode, ratio, k, epic

    async def _constraint(self, msg: pb.AskRequest) -> Constraint | None:
        if not msg.HasField("json_schema"):
            return None
        llm = self._engine.engine
        check_constraint_size("json_schema", msg.json_schema, llm.settings.max_constraint_bytes)
        spec = parse_json_schema(msg.json_schema)
        strict = msg.strict if msg.HasField("strict") else True
        return await compile_constraint(llm, "json_schema", spec, strict=strict, field="json_schema",
                                        metrics=self._metrics)

    async def _plan(self, msg: pb.AskRequest, request_id: str) -> tuple[AskPlan, str, Constraint | None, list[Hit], list[int]]:
        """The plan, the mode in use, the constraint, the hits (in prompt order) and each passage's tokens."""
        mode, ratio, k, epic = self._check(msg)
        llm = self._engine.engine
        params = sampling_from_proto(msg.sampling)
        params.validate(llm.vocab_size)
        constraint = await self._constraint(msg)
        hits = await asyncio.to_thread(
            self._mgr.search, msg.collection, msg.question, k=k, filter=struct_to_dict(msg.filter, "filter") or None
        )
        passages = [PassageText(h.id, h.text, float(h.score), dict(h.metadata)) for h in hits]
        processors = [GrammarProcessor(constraint, llm.tokenizer)] if constraint is not None else None
        system_prompt = msg.system_prompt or DEFAULT_SYSTEM_PROMPT

        def build() -> tuple[AskPlan, list[int]]:
            plan = self.pipeline.plan(
                msg.question, passages, params, request_id=request_id, mode=mode, ratio=ratio, epic_tokens=epic,
                system_prompt=system_prompt, processors=processors,
            )
            # refused here, before any message goes out, rather than by generate() mid-stream
            llm.validate(plan.request)
            return plan, [len(self.pipeline.passage_tokens(p.text)) for p in passages]

        plan, sizes = await asyncio.to_thread(build)
        return plan, mode, constraint, hits, sizes

    # -- RPCs ----------------------------------------------------------------------------

    async def Ask(self, request: pb.AskRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.AskResponse]:
        # auth.owned: while it runs, only the caller's API key may abort this request (Generation's Abort)
        async with abort_on_failure("Ask", context, request.request_id) as request_id, auth.owned(request_id):
            what = f"Ask {request_id}"
            timer = self._metrics.timer("Ask")
            # past max_queued an Ask is refused here, before its retrieval and chunk-KV work
            with self._engine.reservation() as place:
                plan, mode, constraint, hits, sizes = await self._plan(request, request_id)
                place.release()  # from here the request waits in the engine's own queue
            warnings = list(constraint.warnings) if constraint is not None else []
            if not plan.passages:
                warnings.append(f"no passages of collection {request.collection!r} matched; answered without context")
            cited = []
            passages_msg = pb.Passages()
            # plan.tiers names each passage's tier (None: computed); the API reports the tier's kind
            kinds = {tier.name: tier.kind for tier in self.store.tiers}
            for rank, (hit, tier, size) in enumerate(zip(hits, plan.tiers, sizes), 1):
                source = pb.KV_SOURCE_COMPUTED if tier is None else KV_SOURCES[kinds[tier]]
                passages_msg.passages.append(
                    pb.Passage(
                        id=hit.id, chunk_id=hit.chunk_id, score=hit.score, text=hit.text,
                        metadata=dict_to_struct(hit.metadata), kv_source=source, tokens=size,
                    )
                )
                cited.append(pb.Citation(id=hit.id, chunk_id=hit.chunk_id, score=hit.score, rank=rank))
            yield pb.AskResponse(passages=passages_msg)

            texts: list[str] = []
            async with contextlib.aclosing(self._engine.generate(plan.request)) as outputs:
                async for out in outputs:
                    timer.tokens(len(out.token_ids))
                    if out.text or out.token_ids:
                        texts.append(out.text)
                        yield pb.AskResponse(chunk=chunk_from_output(out))
                    if out.finished:
                        usage = plan.usage
                        timer.finished(out.prompt_tokens, out.completion_tokens)
                        if out.finish_reason != "abort" and not usage.done.is_set():
                            # set on the engine thread before the first token; only a race could get here
                            await asyncio.to_thread(usage.done.wait, 5.0)
                        ask_usage = pb.AskUsage(
                            prompt_tokens=usage.prompt_tokens,
                            completion_tokens=out.completion_tokens,
                            reused_tokens=usage.reused_tokens,
                            recomputed_tokens=usage.recomputed_tokens,
                            chunks_computed=usage.chunks_computed,
                            tier_hits=dict(usage.tier_hits),
                        )
                        log.info(
                            "%s: %d passages from %r, mode %s: %d prompt tokens (%d reused, %d recomputed), "
                            "%d chunks computed, tier hits %s; %d tokens, %s",
                            what, len(plan.passages), request.collection, mode, usage.prompt_tokens,
                            usage.reused_tokens, usage.recomputed_tokens, usage.chunks_computed,
                            dict(usage.tier_hits), out.completion_tokens, out.finish_reason,
                        )
                        yield pb.AskResponse(
                            complete=pb.AskComplete(
                                answer="".join(texts),
                                citations=cited,
                                finish_reason=finish_reason_to_proto(out.finish_reason),
                                usage=ask_usage,
                                request_id=request_id,
                                warnings=warnings,
                                mode=_ASK_MODE_OF[mode],
                            )
                        )
                        return
            raise RuntimeError(f"engine stream for {request_id} ended without finishing")

    async def GetCacheStats(
        self, request: pb.GetCacheStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCacheStatsResponse:
        async def work() -> pb.GetCacheStatsResponse:
            return stats_to_proto(await asyncio.to_thread(self.store.stats))

        return await unary("GetCacheStats", context, work, request.request_id)

    # -- ingest-time precompute ----------------------------------------------------------

    async def precompute(self, collection: str, doc_ids: Sequence[str] | None = None) -> int:
        """Prefill and store the chunk KV of the collection's chunks (of doc_ids only, when given)
        that are not stored yet, for Asks with the default system prompt. Returns how many were
        computed."""
        texts = await asyncio.to_thread(self._mgr.chunk_texts, collection, doc_ids)
        computed = 0
        for start in range(0, len(texts), PRECOMPUTE_BATCH):
            batch = texts[start : start + PRECOMPUTE_BATCH]
            computed += await self._engine.run(lambda eng, b=batch: self.pipeline.precompute(eng.model, b))
        log.info("precomputed the chunk KV of %d of %d chunks of %r", computed, len(texts), collection)
        return computed
