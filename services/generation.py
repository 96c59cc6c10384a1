"""The `ragloom.v1.Generation` servicer: protobuf in, engine Request out, engine Outputs back as a stream.

All validation errors come from the libraries as RagloomError and are turned into status codes
by services/status.py (`abort_on_failure`), in one place. Cancellation needs no code of its own:
when the client cancels, disconnects or its deadline passes, grpc.aio cancels this handler, which
cancels the `async for` over the engine stream, and the engine aborts the request and frees its
KV blocks.

A `constraint` (JSON Schema, lark grammar, regex, choices) is compiled by the engine's cached
compiler in a worker thread (`asyncio.to_thread`): compiling can take seconds, and neither the
event loop nor the engine thread waits for it. Its strict=False warnings go into Complete.warnings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from ragloom.errors import InvalidArgument, NotFound
from ragloom.generation.constrain.processor import Constraint
from ragloom.generation.runner.engine import Output, Request
from ragloom.generation.runner.params import SamplingParams
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import generation_pb2_grpc as pb_grpc
from ragloom.services.status import abort_on_failure

if TYPE_CHECKING:
    from ragloom.generation.runner.async_engine import AsyncEngine

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Generation"].full_name  # "ragloom.v1.Generation"

# proto `optional` scalars copied only when set, so unset ones keep SamplingParams' defaults
_OPTIONAL_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "seed",
    "ignore_eos",
)


def sampling_from_proto(msg: pb.SamplingParams) -> SamplingParams:
    kwargs: dict[str, object] = {name: getattr(msg, name) for name in _OPTIONAL_SAMPLING if msg.HasField(name)}
    return SamplingParams(**kwargs, stop=list(msg.stop), stop_token_ids=list(msg.stop_token_ids))  # type: ignore[arg-type]


def parse_json_schema(text: str) -> dict[str, Any] | bool:
    """A request's json_schema field (Generate's and Ask's), parsed: InvalidArgument unless it is a
    JSON object or true/false."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"json_schema is not valid JSON: {exc}") from exc
    if not isinstance(spec, dict | bool):
        raise InvalidArgument(f"json_schema must be a JSON object (or true/false), got {type(spec).__name__}")
    return spec


def constraint_from_proto(msg: pb.GenerateRequest) -> tuple[str, Any, bool] | None:
    """(kind, spec, strict) for LLMEngine.compile_constraint, or None when unconstrained.

    Checks what is cheap to check here (JSON syntax, empty specs); the compiler checks the rest."""
    kind = msg.WhichOneof("constraint")
    if kind is None:
        return None
    strict = msg.strict if msg.HasField("strict") else True
    spec: Any
    if kind == "json_schema":
        spec = parse_json_schema(msg.json_schema)
    elif kind == "lark_grammar":
        if not msg.lark_grammar.strip():
            raise InvalidArgument("lark_grammar is empty")
        spec = msg.lark_grammar
    elif kind == "regex":
        if not msg.regex:
            raise InvalidArgument("regex is empty")
        spec = msg.regex
    elif kind == "choices":
        spec = list(msg.choices.choices)
        if not spec:
            raise InvalidArgument("choices is empty: give at least one choice")
    else:  # a newer client's oneof member this server does not know
        raise InvalidArgument(f"unknown constraint {kind!r}")
    return kind, spec, strict


def usage_from_output(out: Output) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=out.prompt_tokens,
        completion_tokens=out.completion_tokens,
        cached_tokens=out.cached_tokens,
        draft_tokens=out.draft_tokens,
        accepted_tokens=out.accepted_tokens,
    )


def chunk_from_output(out: Output) -> pb.Chunk:
    """An engine Output's new text as the Chunk that Generate and Ask stream."""
    return pb.Chunk(text=out.text, token_ids=out.token_ids, usage=usage_from_output(out))


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._model_id: str = engine.engine.model_id

    # -- request translation -------------------------------------------------------------

    async def _to_request(self, msg: pb.GenerateRequest, request_id: str) -> Request:
        if msg.model and msg.model != self._model_id:
            raise NotFound(f"model {msg.model!r} is not served here (this server serves {self._model_id!r})")
        constraint_spec = constraint_from_proto(msg)
        llm = self._engine.engine
        which = msg.WhichOneof("input")
        if which == "prompt":
            if not msg.prompt:
                raise InvalidArgument("prompt is empty")
            token_ids = llm.encode(prompt=msg.prompt)
        elif which == "messages":
            if not msg.messages.messages:
                raise InvalidArgument("messages is empty")
            messages = [{"role": m.role, "content": m.content} for m in msg.messages.messages]
            token_ids = llm.encode(messages=messages)
        else:
            raise InvalidArgument("no input: set either prompt or messages")
        params = sampling_from_proto(msg.sampling)
        params.validate(llm.vocab_size)
        constraint: Constraint | None = None
        if constraint_spec is not None:
            kind, spec, strict = constraint_spec
            # compiling can take seconds: neither the event loop nor the engine thread waits for it
            constraint = await asyncio.to_thread(llm.compile_constraint, kind, spec, strict=strict)
        return Request(
            request_id=request_id,
            prompt_token_ids=token_ids,
            params=params,
            constraint=constraint,
            speculative=msg.speculative or None,
        )

    # -- RPCs ----------------------------------------------------------------------------

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        request_id = request.request_id or uuid.uuid4().hex
        async with abort_on_failure(f"Generate {request_id}", context):
            req = await self._to_request(request, request_id)
            warnings = list(req.constraint.warnings) if req.constraint is not None else []
            # aclosing: if gRPC cancels us while we are parked at a `yield`, closing this
            # generator closes the engine stream now (aborting the request), not at GC time.
            async with contextlib.aclosing(self._engine.generate(req)) as outputs:
                async for out in outputs:
                    if out.text or out.token_ids:
                        yield pb.GenerateResponse(chunk=chunk_from_output(out))
                    if out.finished:
                        yield pb.GenerateResponse(
                            complete=pb.Complete(
                                finish_reason=out.finish_reason or "stop",
                                usage=usage_from_output(out),
                                request_id=request_id,
                                warnings=warnings,
                            )
                        )
                        return
            # the engine stream ended without a finished Output: a runner bug, not the caller's
            raise RuntimeError(f"engine stream for {request_id} ended without finishing")

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        if not request.request_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request_id is empty")
        found = self._engine.abort(request.request_id)
        log.info("Abort %s: %s", request.request_id, "aborted" if found else "not running")
        return pb.AbortResponse(found=found)

    async def GetLoads(self, request: pb.GetLoadsRequest, context: grpc.aio.ServicerContext) -> pb.GetLoadsResponse:
        loads = self._engine.loads()
        return pb.GetLoadsResponse(
            running=loads.running,
            waiting=loads.waiting,
            kv_blocks_used=loads.kv_blocks_used,
            kv_blocks_total=loads.kv_blocks_total,
            kv_usage=loads.kv_usage,
            model=self._model_id,
            prefix_cache_queried_tokens=loads.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens=loads.prefix_cache_hit_tokens,
            speculative_steps=loads.speculative_steps,
            speculative_draft_tokens=loads.speculative_draft_tokens,
            speculative_accepted_tokens=loads.speculative_accepted_tokens,
            mean_accepted_tokens=loads.speculative_accepted_tokens / max(loads.speculative_steps, 1),
        )
