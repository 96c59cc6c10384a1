"""The `ragloom.v1.GenerationService` servicer: protobuf in, engine Request out, engine Outputs back
as a stream.

All validation errors come from the libraries (or the translation here) as RagloomError, with the
request field at fault as a path ("sampling.top_p", "messages[2].role"), and are turned into
status codes with google.rpc details by services/status.py (`abort_on_failure`), in one place.
Cancellation needs no code of its own: when the client cancels, disconnects or its deadline
passes, grpc.aio cancels this handler, which cancels the `async for` over the engine stream, and
the engine aborts the request and frees its KV blocks.

A constraint (JSON Schema, lark grammar, regex, choices) is compiled by the engine's cached
compiler in a worker thread (`asyncio.to_thread`): compiling can take seconds, and neither the
event loop nor the engine thread waits for it. Its strict=False warnings go into Complete.warnings.

The engine speaks strings (roles, finish reasons, speculative methods); the API speaks enums. The
maps between them are here, and Ask (services/rag.py) uses the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from ragloom.errors import GrammarError, InvalidArgument, NotFound
from ragloom.generation.constrain.processor import Constraint
from ragloom.generation.runner.engine import Output, Request
from ragloom.generation.runner.params import SamplingParams
from ragloom.services import auth
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import generation_pb2_grpc as pb_grpc
from ragloom.services.metrics import Metrics
from ragloom.services.status import abort_on_failure, unary

if TYPE_CHECKING:
    from ragloom.generation.runner.async_engine import AsyncEngine
    from ragloom.generation.runner.engine import LLMEngine

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GenerationService"].full_name  # "ragloom.v1.GenerationService"

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

# Role -> the chat template's role name; ROLE_UNSPECIFIED (and numbers this server does not know)
# are absent, hence refused
ROLES: dict[int, str] = {pb.ROLE_SYSTEM: "system", pb.ROLE_USER: "user", pb.ROLE_ASSISTANT: "assistant"}
# SpeculativeMethod -> the engine's method name; None: the server's --speculative setting
SPECULATIVE: dict[int, str | None] = {
    pb.SPECULATIVE_METHOD_UNSPECIFIED: None,
    pb.SPECULATIVE_METHOD_OFF: "off",
    pb.SPECULATIVE_METHOD_LOOKUP: "lookup",
    pb.SPECULATIVE_METHOD_RECYCLING: "recycling",
    pb.SPECULATIVE_METHOD_AUTO: "auto",
}
# the engine's finish reasons -> FinishReason ("error" never reaches a stream: a failed request
# raises instead)
FINISH_REASONS: dict[str, pb.FinishReason] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
}


def finish_reason_to_proto(reason: str | None) -> pb.FinishReason:
    """The FinishReason of an engine's finished Output; an unknown reason is a runner bug
    (KeyError, answered INTERNAL), not something to pass off as STOP."""
    return FINISH_REASONS[reason or "stop"]


def _enum_name(enum: Any, value: int) -> str:
    """An enum value's name for a message, or the number when this server does not know it."""
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def sampling_from_proto(msg: pb.SamplingParams) -> SamplingParams:
    kwargs: dict[str, object] = {name: getattr(msg, name) for name in _OPTIONAL_SAMPLING if msg.HasField(name)}
    return SamplingParams(**kwargs, stop=list(msg.stop), stop_token_ids=list(msg.stop_token_ids))  # type: ignore[arg-type]


def messages_from_proto(messages: Sequence[pb.ChatMessage]) -> list[dict[str, str]]:
    """Chat messages as the chat template takes them; InvalidArgument on messages[i].role when a
    role is unset or unknown, or a system message is not the first (the proto allows one, first)."""
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        role = ROLES.get(m.role)
        if role is None:
            raise InvalidArgument(
                f"messages[{i}].role must be ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT, got {_enum_name(pb.Role, m.role)}",
                field=f"messages[{i}].role",
            )
        if role == "system" and i > 0:
            raise InvalidArgument(
                f"messages[{i}] is a system message: only the first message may be one", field=f"messages[{i}].role"
            )
        out.append({"role": role, "content": m.content})
    return out


def speculative_from_proto(value: int) -> str | None:
    if value not in SPECULATIVE:  # a newer client's method
        raise InvalidArgument(f"unknown speculative method {value}", field="speculative")
    return SPECULATIVE[value]


def parse_json_schema(text: str, field: str = "json_schema") -> dict[str, Any] | bool:
    """A request's json_schema field (Generate's and Ask's), parsed: InvalidArgument
    (SCHEMA_INVALID) unless it is a JSON object or true/false."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"json_schema is not valid JSON: {exc}", reason="SCHEMA_INVALID", field=field) from exc
    if not isinstance(spec, dict | bool):
        raise InvalidArgument(
            f"json_schema must be a JSON object (or true/false), got {type(spec).__name__}",
            reason="SCHEMA_INVALID",
            field=field,
        )
    return spec


def check_constraint_size(kind: str, spec: str | Sequence[str], limit: int, field: str | None = None) -> None:
    """InvalidArgument on the field when a constraint's text (all choices together) is over
    `limit` UTF-8 bytes (max_constraint_bytes): checked before parsing or compiling it."""
    size = len(spec.encode()) if isinstance(spec, str) else sum(len(c.encode()) for c in spec)
    if size > limit:
        raise InvalidArgument(
            f"{kind} is {size} bytes; this server compiles constraints of at most {limit} bytes "
            "(max_constraint_bytes)",
            field=field or kind,
            metadata={"bytes": str(size), "max_constraint_bytes": str(limit)},
        )


def constraint_from_proto(msg: pb.GenerateRequest, max_bytes: int | None = None) -> tuple[str, Any, bool] | None:
    """(kind, spec, strict) for LLMEngine.compile_constraint, or None when unconstrained. The kind
    is also the request field it came from.

    Checks what is cheap to check here (at most one constraint, JSON syntax, empty specs); the
    compiler checks the rest."""
    kind = msg.WhichOneof("constraint")
    if msg.choices:
        # choices is a plain repeated field beside the oneof, so both can arrive set
        if kind is not None:
            raise InvalidArgument(f"choices cannot be combined with {kind}: give at most one constraint", field="choices")
        kind = "choices"
    if kind is None:
        return None
    if max_bytes is not None:
        check_constraint_size(kind, list(msg.choices) if kind == "choices" else getattr(msg, kind), max_bytes)
    strict = msg.strict if msg.HasField("strict") else True
    spec: Any
    if kind == "json_schema":
        spec = parse_json_schema(msg.json_schema)
    elif kind == "lark_grammar":
        if not msg.lark_grammar.strip():
            raise GrammarError("lark_grammar is empty", field="lark_grammar")
        spec = msg.lark_grammar
    elif kind == "regex":
        if not msg.regex:
            raise GrammarError("regex is empty", field="regex")
        spec = msg.regex
    elif kind == "choices":
        spec = list(msg.choices)
        for i, choice in enumerate(spec):
            if not choice:
                raise GrammarError(f"choices[{i}] is empty: every choice must be a non-empty string", field=f"choices[{i}]")
    else:  # a newer client's oneof member this server does not know
        raise InvalidArgument(f"unknown constraint {kind!r}", field=kind)
    return kind, spec, strict


async def compile_constraint(
    llm: LLMEngine, kind: str, spec: Any, *, strict: bool, field: str, metrics: Metrics | None = None
) -> Constraint:
    """Compile in a worker thread: it can take seconds, and neither the event loop nor the engine
    thread waits for it. A spec the compiler refuses names `field`, the request field it came
    from (the compiler knows what is wrong, not where it was in the request). The time it took
    goes to metrics' constraint compile histogram, failures included."""
    started = time.perf_counter()
    try:
        return await asyncio.to_thread(llm.compile_constraint, kind, spec, strict=strict)
    except InvalidArgument as exc:
        if exc.field is None:
            exc.field = field
        raise
    finally:
        if metrics is not None:
            metrics.compile_seconds.labels(kind).observe(time.perf_counter() - started)


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


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, engine: AsyncEngine, metrics: Metrics | None = None) -> None:
        self._engine = engine
        self._model_id: str = engine.engine.model_id
        self._metrics = metrics or Metrics()

    # -- request translation -------------------------------------------------------------

    def _token_ids(self, msg: pb.GenerateRequest) -> list[int]:
        # proto3 cannot tell an empty prompt from an unset one, nor an empty list from none
        has_prompt, has_messages = bool(msg.prompt), len(msg.messages) > 0
        if has_prompt and has_messages:
            raise InvalidArgument("set either prompt or messages, not both", field="prompt")
        if not has_prompt and not has_messages:
            raise InvalidArgument("no input: set prompt (plain text) or messages (a chat)", field="prompt")
        llm = self._engine.engine
        if has_prompt:
            return llm.encode(prompt=msg.prompt)
        return llm.encode(messages=messages_from_proto(msg.messages))

    async def _to_request(self, msg: pb.GenerateRequest, request_id: str) -> Request:
        if msg.model and msg.model != self._model_id:
            raise NotFound(
                f"model {msg.model!r} is not served here (this server serves {self._model_id!r})",
                reason="MODEL_NOT_FOUND",
                metadata={"model": msg.model},
            )
        # cheap checks first: a bad field is answered before a constraint is compiled
        llm = self._engine.engine
        constraint_spec = constraint_from_proto(msg, llm.settings.max_constraint_bytes)
        speculative = speculative_from_proto(msg.speculative)
        # tokenizing (or rendering a chat template) a long prompt takes long enough to stall every
        # other call on the event loop: a worker thread does it
        token_ids = await asyncio.to_thread(self._token_ids, msg)
        params = sampling_from_proto(msg.sampling)
        params.validate(llm.vocab_size)
        constraint: Constraint | None = None
        if constraint_spec is not None:
            kind, spec, strict = constraint_spec
            constraint = await compile_constraint(llm, kind, spec, strict=strict, field=kind, metrics=self._metrics)
        return Request(
            request_id=request_id,
            prompt_token_ids=token_ids,
            params=params,
            constraint=constraint,
            speculative=speculative,
        )

    # -- RPCs ----------------------------------------------------------------------------

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        # auth.owned: while it runs, only the caller's API key may abort this request
        async with abort_on_failure("Generate", context, request.request_id) as request_id, auth.owned(request_id):
            timer = self._metrics.timer("Generate")
            req = await self._to_request(request, request_id)
            warnings = list(req.constraint.warnings) if req.constraint is not None else []
            # aclosing: if gRPC cancels us while we are parked at a `yield`, closing this
            # generator closes the engine stream now (aborting the request), not at GC time.
            async with contextlib.aclosing(self._engine.generate(req)) as outputs:
                async for out in outputs:
                    timer.tokens(len(out.token_ids))
                    if out.text or out.token_ids:
                        yield pb.GenerateResponse(chunk=chunk_from_output(out))
                    if out.finished:
                        timer.finished(out.prompt_tokens, out.completion_tokens)
                        yield pb.GenerateResponse(
                            complete=pb.Complete(
                                finish_reason=finish_reason_to_proto(out.finish_reason),
                                usage=usage_from_output(out),
                                request_id=request_id,
                                warnings=warnings,
                            )
                        )
                        return
            # the engine stream ended without a finished Output: a runner bug, not the caller's
            raise RuntimeError(f"engine stream for {request_id} ended without finishing")

    async def Abort(self, request: pb.AbortRequest, context: grpc.aio.ServicerContext) -> pb.AbortResponse:
        async def work() -> pb.AbortResponse:
            if not request.request_id:
                raise InvalidArgument("request_id is empty: name the running request to abort", field="request_id")
            # another key's request answers as an unknown one would: its id is not revealed
            found = auth.may_abort(request.request_id) and self._engine.abort(request.request_id)
            log.info("Abort %s: %s", request.request_id, "aborted" if found else "not running")
            return pb.AbortResponse(found=found)

        # the id Abort names is also the one its log lines and errors carry: a malformed one
        # (which no running request can have) is refused on request_id like any other
        return await unary("Abort", context, work, request.request_id)

    async def GetLoads(self, request: pb.GetLoadsRequest, context: grpc.aio.ServicerContext) -> pb.GetLoadsResponse:
        async def work() -> pb.GetLoadsResponse:
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

        return await unary("GetLoads", context, work, request.request_id)
