"""The Python SDK: `Client` (blocking) and `AsyncClient` (asyncio), one per transport.

    with ragloom.Client("127.0.0.1:50051") as c:
        print(c.generate("Hello", max_tokens=16).text)
        s = c.stream(messages=[{"role": "user", "content": "Hi"}], max_tokens=32)
        for chunk in s:              # StreamChunk(.text, .token_ids, .usage)
            print(chunk.text, end="")
        print(s.finish_reason, s.usage)   # set once the stream is exhausted (s.completion too)

        # structured output: a JSON Schema (dict, JSON text or a pydantic model class), a lark
        # grammar, a regex or a list of choices; .parsed holds the parsed / validated value
        person = c.generate("Describe Ada.", json_schema=Person, max_tokens=64).parsed
        label = c.generate("Sentiment of 'great!':", choices=["positive", "negative"]).text

        c.create_collection("notes")
        c.upsert("notes", [{"id": "a", "text": "Paris is in France.", "metadata": {"lang": "en"}}])
        for hit in c.search("notes", "French capital", k=3, filter={"lang": "en"}):
            print(hit.score, hit.id, hit.text, hit.metadata)

        # RAG over the collection, prefilled from cached chunk KV
        answer = c.ask("What is the capital of France?", collection="notes", k=3, max_tokens=32)
        print(answer.text, [p.id for p in answer.passages], answer.usage.reused_tokens)

        # databases and tables: text-to-SQL, read-only and guarded
        c.register_connector("shop", "sqlite:///shop.db")
        r = c.sql("shop", "How many orders per country?")
        print(r.sql, r.columns, r.rows)
        c.execute_sql("shop", "SELECT count(*) FROM orders")   # DROP/INSERT/...: ForbiddenQuery

Arguments left as None are left out of the request, so the server's defaults apply. gRPC
errors are re-raised as ragloom errors (`ragloom.errors`) with the RpcError as `__cause__`.
Stubs are created lazily per service.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict

from ragloom.errors import InvalidArgument, RagloomError
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import generation_pb2_grpc as pb_grpc
from ragloom.services._proto import rag_pb2 as apb
from ragloom.services._proto import rag_pb2_grpc as apb_grpc
from ragloom.services._proto import retrieval_pb2 as rpb
from ragloom.services._proto import retrieval_pb2_grpc as rpb_grpc
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.services._proto import tables_pb2_grpc as tpb_grpc
from ragloom.services.status import error_from_status
from ragloom.structs import dict_to_struct, struct_to_dict

DEFAULT_ADDRESS = os.environ.get("RAGLOOM_ADDRESS", "127.0.0.1:50051")  # the SDK's and the CLI's default server
# matches Settings.max_message_bytes' default, so whatever the server may send is accepted
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# documents per Upsert message; a batch is embedded and stored as one unit on the server
DEFAULT_UPSERT_BATCH = 256
# a batch is also sent early once it holds this many bytes, so long texts stay under message limits
UPSERT_BATCH_BYTES = 4 * 1024 * 1024

_Stub = TypeVar("_Stub")


# -- results -----------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Usage(_Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Completion(_Frozen):
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "abort"
    usage: Usage
    request_id: str
    # strict=False: the JSON Schema keywords the server dropped; also a note when .parsed failed
    warnings: list[str] = []
    # json_schema=: the parsed output (json.loads, or the pydantic model's validated instance);
    # None without a JSON Schema, or when the output did not finish ("length", "abort")
    parsed: Any = None


class StreamChunk(_Frozen):
    text: str  # new text since the previous chunk (may be "" while a character is incomplete)
    token_ids: list[int]
    usage: Usage  # running totals


class Loads(_Frozen):
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float
    model: str


class CollectionInfo(_Frozen):
    name: str
    dim: int  # embedding size
    model: str  # embedding model id
    documents: int
    chunks: int
    index: str  # the index kind in use: flat | ivf
    created_at: datetime | None = None
    chunk_tokens: int = 0
    chunk_overlap: int = 0
    metadata: dict[str, Any] = {}
    index_requested: str = "auto"  # the setting the collection was created with


class Hit(_Frozen):
    id: str  # the document id
    chunk_id: str  # the matching chunk within the document
    score: float  # higher is more similar
    text: str  # the chunk's text
    metadata: dict[str, Any]  # the document's metadata


class UpsertResult(_Frozen):
    documents: int  # stored, new or replaced
    chunks: int
    kv_precomputed: int = 0  # precompute_kv=True: chunks whose KV the server computed and stored


class Passage(_Frozen):
    """A retrieved chunk as it went into an Ask's prompt."""

    id: str  # the document id
    chunk_id: str
    score: float  # retrieval score, higher is more similar
    text: str
    metadata: dict[str, Any]
    cache: str  # where its chunk KV came from: "memory" | "disk" | "redis" | "computed"
    tokens: int = 0  # its tokens in the prompt


class Citation(_Frozen):
    id: str  # the document id
    chunk_id: str
    score: float
    rank: int  # 1-based position in the prompt


class AskUsage(_Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the chunk-KV store as is
    recomputed_tokens: int = 0  # prompt tokens this request ran through every layer
    chunks_computed: int = 0  # passages whose chunk KV this request computed (and stored)
    tier_hits: dict[str, int] = {}  # tier name -> passages found there


class Answer(_Frozen):
    text: str
    passages: list[Passage]  # in prompt order, best first
    citations: list[Citation]
    finish_reason: str  # "stop" | "length" | "abort"
    usage: AskUsage
    request_id: str
    mode: str = ""  # the blend mode used: full | prefix | blend | epic
    token_ids: list[int] = []
    warnings: list[str] = []
    # json_schema=: the parsed answer (json.loads, or the pydantic model's validated instance);
    # None without a JSON Schema, or when the answer did not finish
    parsed: Any = None


class TierStats(_Frozen):
    name: str
    kind: str
    available: bool
    entries: int
    bytes: int
    hits: int
    misses: int
    puts: int
    evictions: int
    errors: int
    corrupt: int
    mismatches: int
    detail: dict[str, Any] = {}


class CacheStats(_Frozen):
    """The server's chunk-KV store counters (since it started)."""

    hits: int
    misses: int
    redis_errors: int
    tiers: list[TierStats]
    codec_bits: int
    codec_group_size: int
    codec_entropy: bool


def _usage(msg: pb.Usage) -> Usage:
    return Usage(
        prompt_tokens=msg.prompt_tokens,
        completion_tokens=msg.completion_tokens,
        cached_tokens=msg.cached_tokens,
    )


def _loads(msg: pb.GetLoadsResponse) -> Loads:
    return Loads(
        running=msg.running,
        waiting=msg.waiting,
        kv_blocks_used=msg.kv_blocks_used,
        kv_blocks_total=msg.kv_blocks_total,
        kv_usage=msg.kv_usage,
        model=msg.model,
    )


def _collection(msg: rpb.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        name=msg.name,
        dim=msg.dim,
        model=msg.model,
        documents=msg.documents,
        chunks=msg.chunks,
        index=msg.index,
        created_at=msg.created_at.ToDatetime(tzinfo=UTC) if msg.HasField("created_at") else None,
        chunk_tokens=msg.chunk_tokens,
        chunk_overlap=msg.chunk_overlap,
        metadata=struct_to_dict(msg.metadata),
        index_requested=msg.index_requested or msg.index,
    )


def _hit(msg: rpb.Hit) -> Hit:
    return Hit(id=msg.id, chunk_id=msg.chunk_id, score=msg.score, text=msg.text, metadata=struct_to_dict(msg.metadata))


def _passage(msg: apb.Passage) -> Passage:
    return Passage(
        id=msg.id, chunk_id=msg.chunk_id, score=msg.score, text=msg.text, metadata=struct_to_dict(msg.metadata),
        cache=msg.cache, tokens=msg.tokens,
    )


def _ask_usage(msg: apb.AskUsage) -> AskUsage:
    return AskUsage(
        prompt_tokens=msg.prompt_tokens,
        completion_tokens=msg.completion_tokens,
        reused_tokens=msg.reused_tokens,
        recomputed_tokens=msg.recomputed_tokens,
        chunks_computed=msg.chunks_computed,
        tier_hits=dict(msg.tier_hits),
    )


def _cache_stats(msg: apb.CacheStats) -> CacheStats:
    return CacheStats(
        hits=msg.hits,
        misses=msg.misses,
        redis_errors=msg.redis_errors,
        tiers=[
            TierStats(
                name=t.name, kind=t.kind, available=t.available, entries=t.entries, bytes=t.bytes, hits=t.hits,
                misses=t.misses, puts=t.puts, evictions=t.evictions, errors=t.errors, corrupt=t.corrupt,
                mismatches=t.mismatches, detail=struct_to_dict(t.detail),
            )
            for t in msg.tiers
        ],
        codec_bits=msg.codec_bits,
        codec_group_size=msg.codec_group_size,
        codec_entropy=msg.codec_entropy,
    )


def _error(exc: grpc.RpcError) -> RagloomError:
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)  # type: ignore[attr-defined]
    err = error_from_status(code, details or code.name)
    err.__cause__ = exc
    return err


# -- tables ------------------------------------------------------------------------------


class ConnectorInfo(_Frozen):
    name: str
    url: str  # password replaced by ***
    dialect: str  # sqlite | postgres | mysql | duckdb
    tables: int
    examples: int = 0


class ColumnInfo(_Frozen):
    name: str
    type: str
    nullable: bool = True
    primary_key: bool = False
    description: str = ""
    samples: list[Any] = []


class ForeignKeyInfo(_Frozen):
    columns: list[str]
    ref_table: str
    ref_columns: list[str]


class TableInfo(_Frozen):
    name: str
    columns: list[ColumnInfo]
    primary_key: list[str] = []
    foreign_keys: list[ForeignKeyInfo] = []
    row_count: int | None = None
    description: str = ""


class SchemaInfo(_Frozen):
    connector: str
    dialect: str
    tables: list[TableInfo]


class SqlResult(_Frozen):
    """What `sql()` / `execute_sql()` return: the statement that ran, its columns and rows."""

    sql: str
    columns: list[str]
    rows: list[list[Any]]
    tables: list[str] = []  # tables the statement read
    linked_tables: list[str] = []  # tables the prompt showed (sql() only)
    truncated: bool = False  # more rows existed than max_rows
    attempts: int = 1
    valid: bool = True  # parses and names only real tables and columns
    error: str | None = None  # why the model's final query failed; rows are empty then
    mode: str = "sql"  # "sql", or "table" (answered from the rows: see .answer)
    answer: str = ""
    failed_sql: list[str] = []
    usage: Usage = Usage()
    request_id: str = ""


def _connector_info(msg: tpb.ConnectorInfo) -> ConnectorInfo:
    return ConnectorInfo(name=msg.name, url=msg.url, dialect=msg.dialect, tables=msg.tables, examples=msg.examples)


def _schema_info(msg: tpb.SchemaInfo) -> SchemaInfo:
    tables = [
        TableInfo(
            name=t.name,
            columns=[ColumnInfo(name=c.name, type=c.type, nullable=c.nullable, primary_key=c.primary_key,
                                description=c.description, samples=_plain_list(c.samples)) for c in t.columns],
            primary_key=list(t.primary_key),
            foreign_keys=[ForeignKeyInfo(columns=list(f.columns), ref_table=f.ref_table, ref_columns=list(f.ref_columns))
                          for f in t.foreign_keys],
            row_count=t.row_count if t.HasField("row_count") else None,
            description=t.description,
        )
        for t in msg.tables
    ]
    return SchemaInfo(connector=msg.connector, dialect=msg.dialect, tables=tables)


def _plain_list(lv: Any) -> list[Any]:
    # protobuf numbers are doubles: whole numbers come back as int (as in ragloom.structs)
    return [int(v) if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53 else v for v in lv]


class _QueryState:
    """Folds a Query/ExecuteSql response stream into one SqlResult."""

    def __init__(self) -> None:
        self.header: tpb.QueryHeader | None = None
        self.rows: list[list[Any]] = []
        self.result: SqlResult | None = None

    def feed(self, msg: tpb.QueryResponse) -> None:
        kind = msg.WhichOneof("response")
        if kind == "header":
            self.header = msg.header
        elif kind == "rows":
            self.rows.extend(_plain_list(r) for r in msg.rows.rows)
        elif kind == "complete":
            c, h = msg.complete, self.header or tpb.QueryHeader()
            self.result = SqlResult(
                sql=c.sql, columns=list(h.columns), rows=self.rows, tables=list(h.tables),
                linked_tables=list(h.linked_tables), truncated=c.truncated, attempts=c.attempts, valid=c.valid,
                error=c.error or None, mode=c.mode or "sql", answer=c.answer, failed_sql=list(c.failed_sql),
                usage=Usage(prompt_tokens=c.usage.prompt_tokens, completion_tokens=c.usage.completion_tokens),
                request_id=h.request_id,
            )

    def final(self) -> SqlResult:
        if self.result is None:
            raise RagloomError("the query stream ended without a final message")
        return self.result


def build_query_request(
    connector: str, question: str, *, mode: str | None, link: bool | None, grammar: bool | None,
    self_correct: bool | None, max_rows: int | None, timeout_s: float | None, instructions: str | None,
    max_tokens: int | None, temperature: float | None, request_id: str | None,
) -> tpb.QueryRequest:
    req = tpb.QueryRequest(connector=connector, question=question, mode=mode or "", max_rows=max_rows or 0,
                           timeout_s=timeout_s or 0.0, instructions=instructions or "", request_id=request_id or "")
    for name, value in (("link", link), ("grammar", grammar), ("self_correct", self_correct)):
        if value is not None:
            setattr(req, name, value)
    if max_tokens is not None:
        req.sampling.max_tokens = max_tokens
    if temperature is not None:
        req.sampling.temperature = temperature
    return req


# -- requests ----------------------------------------------------------------------------

# what json_schema= accepts: a schema as a mapping, as JSON text, or a pydantic model class
JsonSchema = Mapping[str, Any] | str | bool | type[BaseModel]


def _is_model_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _schema_text(schema: JsonSchema) -> str:
    if _is_model_class(schema):
        return json.dumps(schema.model_json_schema())  # type: ignore[union-attr]
    if isinstance(schema, str):
        return schema  # sent as given: the server says where it is not valid JSON
    if isinstance(schema, Mapping | bool):
        try:
            return json.dumps(schema if isinstance(schema, bool) else dict(schema))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"json_schema cannot be serialized as JSON: {exc}") from exc
    raise InvalidArgument(
        f"json_schema must be a dict, JSON text or a pydantic model class, got {type(schema).__name__}"
    )


def output_parser(json_schema: JsonSchema | None) -> Callable[[str], Any] | None:
    """How Completion.parsed is made from the output text: json.loads, or the pydantic model's
    model_validate_json; None for other constraints (their output is the text itself)."""
    if json_schema is None:
        return None
    if _is_model_class(json_schema):
        return json_schema.model_validate_json  # type: ignore[union-attr]
    return json.loads


def _set_constraint(
    req: pb.GenerateRequest,
    json_schema: JsonSchema | None,
    grammar: str | None,
    regex: str | None,
    choices: Sequence[str] | None,
    strict: bool | None,
) -> None:
    given = [n for n, v in (("json_schema", json_schema), ("grammar", grammar), ("regex", regex),
                            ("choices", choices)) if v is not None]
    if len(given) > 1:
        raise InvalidArgument(f"give at most one constraint, got {' and '.join(given)}")
    if json_schema is not None:
        req.json_schema = _schema_text(json_schema)
        if strict is not None:
            req.strict = strict
    elif grammar is not None:
        if not isinstance(grammar, str):
            raise InvalidArgument(f"grammar must be lark grammar text, got {type(grammar).__name__}")
        req.lark_grammar = grammar
    elif regex is not None:
        if not isinstance(regex, str):
            raise InvalidArgument(f"regex must be a string, got {type(regex).__name__}")
        req.regex = regex
    elif choices is not None:
        if isinstance(choices, str) or not all(isinstance(c, str) for c in choices):
            raise InvalidArgument("choices must be a list of strings")
        if not choices:
            raise InvalidArgument("choices is empty: give at least one choice")
        req.choices.choices.extend(choices)


def build_generate_request(
    prompt: str | None,
    *,
    messages: Sequence[dict[str, str]] | None,
    request_id: str | None,
    model: str | None = None,
    json_schema: JsonSchema | None = None,
    grammar: str | None = None,
    regex: str | None = None,
    choices: Sequence[str] | None = None,
    strict: bool | None = None,
    **sampling: Any,
) -> pb.GenerateRequest:
    """Only arguments that were given go into the request (None = the server's default).

    At most one of json_schema / grammar / regex / choices; strict applies to json_schema."""
    if (prompt is None) == (messages is None):
        raise TypeError("pass exactly one of prompt or messages")
    req = pb.GenerateRequest(request_id=request_id or uuid.uuid4().hex, model=model or "")
    if prompt is not None:
        req.prompt = prompt
    else:
        assert messages is not None
        req.messages.messages.extend(pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages)
    _set_constraint(req, json_schema, grammar, regex, choices, strict)
    for name, value in sampling.items():
        if value is None:
            continue
        if name in ("stop", "stop_token_ids"):
            getattr(req.sampling, name).extend([value] if isinstance(value, str) else value)
        else:
            setattr(req.sampling, name, value)
    return req


def build_create_collection_request(
    name: str,
    *,
    index: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> rpb.CreateCollectionRequest:
    req = rpb.CreateCollectionRequest(name=name, index=index or "")
    if chunk_tokens is not None:
        req.chunk_tokens = chunk_tokens
    if chunk_overlap is not None:
        req.chunk_overlap = chunk_overlap
    if metadata is not None:
        req.metadata.CopyFrom(dict_to_struct(metadata, "collection metadata"))
    return req


def build_search_request(
    name: str, query: str, *, k: int, filter: Mapping[str, Any] | None, oversample: int | None
) -> rpb.SearchRequest:
    req = rpb.SearchRequest(collection=name, query=query, k=k)
    if filter:
        req.filter.CopyFrom(dict_to_struct(filter, "filter"))
    if oversample is not None:
        req.oversample = oversample
    return req


def build_ask_request(
    question: str,
    *,
    collection: str,
    k: int | None = None,
    filter: Mapping[str, Any] | None = None,
    mode: str | None = None,
    recompute_ratio: float | None = None,
    epic_tokens: int | None = None,
    json_schema: JsonSchema | None = None,
    strict: bool | None = None,
    system_prompt: str | None = None,
    request_id: str | None = None,
    **sampling: Any,
) -> apb.AskRequest:
    """Only arguments that were given go into the request (None = the server's default)."""
    if not isinstance(question, str):
        raise InvalidArgument(f"question must be a string, got {type(question).__name__}")
    if not isinstance(collection, str) or not collection:
        raise InvalidArgument("collection must be a non-empty string: the collection to answer from")
    req = apb.AskRequest(
        request_id=request_id or uuid.uuid4().hex,
        question=question,
        collection=collection,
        k=k or 0,
        mode=mode or "",
        system_prompt=system_prompt or "",
    )
    if filter:
        req.filter.CopyFrom(dict_to_struct(filter, "filter"))
    if recompute_ratio is not None:
        req.recompute_ratio = recompute_ratio
    if epic_tokens is not None:
        req.epic_tokens = epic_tokens
    if json_schema is not None:
        req.json_schema = _schema_text(json_schema)
        if strict is not None:
            req.strict = strict
    for name, value in sampling.items():
        if value is None:
            continue
        if name in ("stop", "stop_token_ids"):
            getattr(req.sampling, name).extend([value] if isinstance(value, str) else value)
        else:
            setattr(req.sampling, name, value)
    return req


def _field(doc: Any, key: str, default: Any = None) -> Any:
    if isinstance(doc, Mapping):
        return doc.get(key, default)
    return getattr(doc, key, default)


def to_document(doc: Any, position: int = 0) -> rpb.Document:
    """A mapping (or object) with "id", "text" and optional "metadata" / "vector" as a Document."""
    doc_id, text = _field(doc, "id"), _field(doc, "text")
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool) or doc_id == "":
        raise InvalidArgument(f"document #{position}: 'id' must be a non-empty string, got {doc_id!r}")
    if not isinstance(text, str):
        raise InvalidArgument(f"document #{position} ({doc_id!r}): 'text' must be a string, got {type(text).__name__}")
    msg = rpb.Document(id=str(doc_id), text=text)
    metadata = _field(doc, "metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise InvalidArgument(f"document {doc_id!r}: 'metadata' must be a mapping, got {type(metadata).__name__}")
        msg.metadata.CopyFrom(dict_to_struct(metadata, f"document {doc_id!r} metadata"))
    vector = _field(doc, "vector")
    if vector is not None:
        msg.vector.extend(float(x) for x in vector)
    return msg


class _UpsertFeed:
    """Turns documents into UpsertRequests: a header naming the collection, then batches.

    A document that cannot be converted (or an error raised by the caller's iterable) ends the
    stream early and is kept in .error, so the caller raises it once the call is over (batches
    already sent stay stored, as with any failure mid-stream)."""

    def __init__(
        self,
        name: str,
        batch_size: int,
        create_if_missing: bool,
        progress: Callable[[int], None] | None,
        max_bytes: int = UPSERT_BATCH_BYTES,
        precompute_kv: bool = False,
    ) -> None:
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.header = rpb.UpsertRequest(
            collection=name, create_if_missing=create_if_missing, precompute_kv=precompute_kv
        )
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.progress = progress
        self.error: Exception | None = None
        self._batch: list[rpb.Document] = []
        self._bytes = 0
        self._count = 0

    def add(self, doc: Any) -> list[rpb.UpsertRequest]:
        """Add one document; returns the batches that are ready to send (usually none)."""
        msg = to_document(doc, self._count)
        self._count += 1
        size = msg.ByteSize()
        ready: list[rpb.UpsertRequest] = []
        # a long document goes into the next message rather than pushing this one past the limit
        if self._batch and self._bytes + size > self.max_bytes:
            ready.append(self._take())
        self._batch.append(msg)
        self._bytes += size
        if len(self._batch) >= self.batch_size:
            ready.append(self._take())
        return ready

    def _take(self) -> rpb.UpsertRequest:
        req = rpb.UpsertRequest(documents=self._batch)
        if self.progress is not None:
            self.progress(len(self._batch))
        self._batch = []
        self._bytes = 0
        return req

    def flush(self) -> rpb.UpsertRequest | None:
        return self._take() if self._batch else None

    def requests(self, docs: Iterable[Any]) -> Iterator[rpb.UpsertRequest]:
        yield self.header
        try:
            for doc in docs:
                yield from self.add(doc)
        except Exception as exc:  # raised by the caller once the call is over, not inside gRPC
            self.error = exc
            return
        last = self.flush()
        if last is not None:
            yield last

    async def arequests(self, docs: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[rpb.UpsertRequest]:
        if not isinstance(docs, AsyncIterable):
            for req in self.requests(docs):
                yield req
            return
        yield self.header
        try:
            async for doc in docs:
                for req in self.add(doc):
                    yield req
        except Exception as exc:  # raised by the caller once the call is over, not inside gRPC
            self.error = exc
            return
        last = self.flush()
        if last is not None:
            yield last


def _upsert_result(msg: rpb.UpsertResponse) -> UpsertResult:
    return UpsertResult(documents=msg.documents, chunks=msg.chunks, kv_precomputed=msg.kv_precomputed)


_UPSERT_DOC = """        docs: an iterable (or, for AsyncClient, also an async iterable) of mappings
        {"id": str, "text": str, "metadata": dict (optional), "vector": list[float] (optional)};
        streamed to the server in batches of batch_size, each stored as it arrives. A document
        whose id exists replaces it. create_if_missing creates the collection with default
        options. precompute_kv=True also has the server prefill and store the chunk KV of the
        upserted chunks once they are stored (the call returns after that; see ask()), so
        the first ask() over them already reuses it. progress(n) is called as each batch of n
        documents is sent. A document that
        cannot be sent (no id, text not a string, metadata not JSON-like) raises InvalidArgument
        after the batches before it were stored."""


class _StreamState:
    """Accumulates chunks so the final Completion holds the full text (and its parsed value)."""

    def __init__(self, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        self.request_id = request_id
        self.parse = parse
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.completion: Completion | None = None

    def feed(self, msg: pb.GenerateResponse) -> StreamChunk | None:
        if msg.HasField("chunk"):
            self.texts.append(msg.chunk.text)
            self.token_ids.extend(msg.chunk.token_ids)
            return StreamChunk(text=msg.chunk.text, token_ids=list(msg.chunk.token_ids), usage=_usage(msg.chunk.usage))
        done = msg.complete
        text = "".join(self.texts)
        warnings = list(done.warnings)
        parsed = None
        if self.parse is not None and done.finish_reason == "stop":
            try:
                parsed = self.parse(text)
            except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError
                # e.g. a stop string cut the JSON short, or strict=False dropped a keyword the
                # pydantic model checks: the text is still there to inspect
                warnings.append(f"the output did not parse: {exc}")
        self.completion = Completion(
            text=text,
            token_ids=self.token_ids,
            finish_reason=done.finish_reason,
            usage=_usage(done.usage),
            request_id=done.request_id or self.request_id,
            warnings=warnings,
            parsed=parsed,
        )
        return None


class _StreamBase:
    def __init__(self, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        self._state = _StreamState(request_id, parse)

    @property
    def request_id(self) -> str:
        """Known before the first chunk: pass it to abort() from elsewhere."""
        return self._state.request_id

    @property
    def completion(self) -> Completion | None:
        """The whole result (full text, finish_reason, usage) once the stream is exhausted."""
        return self._state.completion

    @property
    def finish_reason(self) -> str | None:
        return self._state.completion.finish_reason if self._state.completion else None

    @property
    def usage(self) -> Usage | None:
        return self._state.completion.usage if self._state.completion else None


class Stream(_StreamBase):
    """Iterate for StreamChunk items; then read .finish_reason / .usage / .completion."""

    def __init__(self, call: Any, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        super().__init__(request_id, parse)
        self._call = call

    def __iter__(self) -> Iterator[StreamChunk]:
        try:
            for msg in self._call:
                chunk = self._state.feed(msg)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def cancel(self) -> None:
        """Cancel the call; the server aborts the request and frees its KV cache."""
        self._call.cancel()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state.completion is None:
            self.cancel()


class AsyncStream(_StreamBase):
    """`async for` for StreamChunk items; then read .finish_reason / .usage / .completion."""

    def __init__(self, call: Any, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        super().__init__(request_id, parse)
        self._call = call

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        try:
            async for msg in self._call:
                chunk = self._state.feed(msg)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def cancel(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state.completion is None:
            self.cancel()


class _AskState:
    """Passages first, then answer chunks, then the final Answer."""

    def __init__(self, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        self.request_id = request_id
        self.parse = parse
        self.passages: list[Passage] | None = None
        self.texts: list[str] = []
        self.token_ids: list[int] = []
        self.answer: Answer | None = None

    def feed(self, msg: apb.AskResponse) -> StreamChunk | None:
        kind = msg.WhichOneof("response")
        if kind == "passages":
            self.passages = [_passage(p) for p in msg.passages.passages]
            return None
        if kind == "chunk":
            self.texts.append(msg.chunk.text)
            self.token_ids.extend(msg.chunk.token_ids)
            return StreamChunk(text=msg.chunk.text, token_ids=list(msg.chunk.token_ids), usage=_usage(msg.chunk.usage))
        if kind != "complete":  # a newer server's message this client does not know
            return None
        done = msg.complete
        text = done.answer or "".join(self.texts)
        warnings = list(done.warnings)
        parsed = None
        if self.parse is not None and done.finish_reason == "stop":
            try:
                parsed = self.parse(text)
            except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError
                warnings.append(f"the answer did not parse: {exc}")
        self.answer = Answer(
            text=text,
            passages=self.passages or [],
            citations=[Citation(id=c.id, chunk_id=c.chunk_id, score=c.score, rank=c.rank) for c in done.citations],
            finish_reason=done.finish_reason,
            usage=_ask_usage(done.usage),
            request_id=done.request_id or self.request_id,
            mode=done.mode,
            token_ids=self.token_ids,
            warnings=warnings,
            parsed=parsed,
        )
        return None


class _AskStreamBase:
    def __init__(self, call: Any, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        self._call = call
        self._state = _AskState(request_id, parse)

    @property
    def request_id(self) -> str:
        return self._state.request_id

    @property
    def passages(self) -> list[Passage] | None:
        """The retrieved passages; set before the first chunk is yielded."""
        return self._state.passages

    @property
    def answer(self) -> Answer | None:
        """The whole Answer (text, citations, usage) once the stream is exhausted."""
        return self._state.answer

    @property
    def finish_reason(self) -> str | None:
        return self._state.answer.finish_reason if self._state.answer else None

    @property
    def usage(self) -> AskUsage | None:
        return self._state.answer.usage if self._state.answer else None

    def cancel(self) -> None:
        """Cancel the call; the server aborts the generation and frees its KV cache."""
        self._call.cancel()


class AskStream(_AskStreamBase):
    """Iterate for the answer's StreamChunk items (.passages is set before the first); then read
    .answer / .usage / .finish_reason."""

    def __iter__(self) -> Iterator[StreamChunk]:
        try:
            for msg in self._call:
                chunk = self._state.feed(msg)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def __enter__(self) -> AskStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state.answer is None:
            self.cancel()


class AsyncAskStream(_AskStreamBase):
    """`async for` the answer's StreamChunk items; then read .answer / .usage / .finish_reason."""

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        try:
            async for msg in self._call:
                chunk = self._state.feed(msg)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def __aenter__(self) -> AsyncAskStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state.answer is None:
            self.cancel()


_ASK_DOC = """        Search `collection` for the k passages (default 5) most similar to `question` (filter:
        metadata, as in search()), put them into the prompt from their cached chunk KV (the
        server computes and stores what it lacks) and answer. mode: "full" (recompute
        everything), "prefix" (reuse the exact prefix only), "blend" (the server's default:
        reuse every passage, recompute the recompute_ratio share of most deviating tokens,
        default 0.15) or "epic" (recompute the first epic_tokens of each passage).
        json_schema (a dict, JSON text or a pydantic model class) constrains the answer to JSON
        valid for it; Answer.parsed then holds the parsed value. system_prompt replaces the
        server's RAG instruction (chunk KV is cached per system prompt). Sampling arguments
        left as None take the server's defaults; temperature=0 is greedy."""


# -- clients -----------------------------------------------------------------------------


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class _Base:
    def __init__(self, address: str, timeout: float | None, max_message_bytes: int) -> None:
        self.address = address
        self.timeout = timeout
        self._max_message_bytes = max_message_bytes
        self._channel: Any = None  # set by the subclass: grpc.Channel or grpc.aio.Channel
        self._stubs: dict[type, Any] = {}

    def _stub(self, cls: Callable[[Any], _Stub]) -> _Stub:
        """One stub per service on the shared channel, created on first use."""
        stub = self._stubs.get(cls)  # type: ignore[call-overload]
        if stub is None:
            stub = self._stubs[cls] = cls(self._channel)  # type: ignore[index]
        return stub

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    @property
    def _batch_bytes(self) -> int:
        return min(UPSERT_BATCH_BYTES, self._max_message_bytes // 2)


_GENERATE_DOC = """\
        prompt: plain text (no chat template); or messages: [{"role": ..., "content": ...}]
        rendered with the model's chat template. Sampling arguments left as None use the
        server's defaults; temperature=0 is greedy. request_id defaults to a new UUID.
        timeout (seconds) overrides the client's; past it, DeadlineExceeded is raised and the
        server aborts the request.

        Structured output (at most one; more raises InvalidArgument before any call):
        json_schema: a dict, JSON text or a pydantic model class (its model_json_schema());
        grammar: lark grammar text (LALR(1), rule `start`); regex: the whole output matches it;
        choices: a list of strings, the output is exactly one of them. strict (json_schema):
        True rejects a schema keyword the server cannot enforce (InvalidArgument naming it);
        False drops it and lists it in Completion.warnings. With json_schema, Completion.parsed
        is the parsed value (the pydantic instance for a model class) once finish_reason is
        "stop"; if it does not parse, parsed stays None and warnings says why."""


class Client(_Base):
    """Blocking client. Thread-safe; reuse one per process."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(address, timeout, max_message_bytes)
        self._channel = grpc.insecure_channel(address, options=_channel_options(max_message_bytes))

    def _call(self, fn: Any, request: Any, timeout: float | None) -> Any:
        try:
            return fn(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, str]] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool | None = None,
        json_schema: JsonSchema | None = None,
        grammar: str | None = None,
        regex: str | None = None,
        choices: Sequence[str] | None = None,
        strict: bool = True,
        model: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Completion:
        s = self.stream(
            prompt,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            json_schema=json_schema,
            grammar=grammar,
            regex=regex,
            choices=choices,
            strict=strict,
            model=model,
            request_id=request_id,
            timeout=timeout,
        )
        with s:
            for _ in s:
                pass
        if s.completion is None:
            raise RagloomError(f"stream {s.request_id} ended without a final message")
        return s.completion

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, str]] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool | None = None,
        json_schema: JsonSchema | None = None,
        grammar: str | None = None,
        regex: str | None = None,
        choices: Sequence[str] | None = None,
        strict: bool = True,
        model: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Stream:
        req = build_generate_request(
            prompt,
            messages=messages,
            request_id=request_id,
            model=model,
            json_schema=json_schema,
            grammar=grammar,
            regex=regex,
            choices=choices,
            strict=strict,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
        )
        call = self._stub(pb_grpc.GenerationStub).Generate(req, timeout=self._timeout(timeout))
        return Stream(call, req.request_id, output_parser(json_schema))

    generate.__doc__ = "Generate to completion and return a Completion.\n" + _GENERATE_DOC
    stream.__doc__ = "Start a streamed generation (see Stream).\n" + _GENERATE_DOC

    def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        """Abort a running request; False if it is unknown or already finished (idempotent)."""
        stub = self._stub(pb_grpc.GenerationStub)
        return self._call(stub.Abort, pb.AbortRequest(request_id=request_id), timeout).found

    def loads(self, *, timeout: float | None = None) -> Loads:
        stub = self._stub(pb_grpc.GenerationStub)
        return _loads(self._call(stub.GetLoads, pb.GetLoadsRequest(), timeout))

    # -- retrieval -------------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        *,
        index: str | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> CollectionInfo:
        """Create an empty collection; options left as None take the server's defaults.

        Raises AlreadyExists if the name is taken."""
        req = build_create_collection_request(
            name, index=index, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, metadata=metadata
        )
        stub = self._stub(rpb_grpc.RetrievalStub)
        return _collection(self._call(stub.CreateCollection, req, timeout).collection)

    def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        """Delete a collection with all its documents; NotFound if there is none."""
        stub = self._stub(rpb_grpc.RetrievalStub)
        self._call(stub.DeleteCollection, rpb.DeleteCollectionRequest(name=name), timeout)

    def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        stub = self._stub(rpb_grpc.RetrievalStub)
        resp = self._call(stub.ListCollections, rpb.ListCollectionsRequest(), timeout)
        return [_collection(c) for c in resp.collections]

    def upsert(
        self,
        name: str,
        docs: Iterable[Any],
        *,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        create_if_missing: bool = False,
        precompute_kv: bool = False,
        progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> UpsertResult:
        feed = _UpsertFeed(name, batch_size, create_if_missing, progress, self._batch_bytes, precompute_kv)
        stub = self._stub(rpb_grpc.RetrievalStub)
        try:
            resp = stub.Upsert(feed.requests(docs), timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            if feed.error is not None:
                raise feed.error from exc
            raise _error(exc) from exc
        if feed.error is not None:
            raise feed.error
        return _upsert_result(resp)

    upsert.__doc__ = "Add or replace documents in a collection; returns the counts stored.\n" + _UPSERT_DOC

    def delete(self, name: str, ids: Sequence[str], *, timeout: float | None = None) -> int:
        """Delete documents by id; returns how many existed (unknown ids are skipped)."""
        stub = self._stub(rpb_grpc.RetrievalStub)
        return self._call(stub.Delete, rpb.DeleteRequest(collection=name, ids=list(ids)), timeout).deleted

    def search(
        self,
        name: str,
        query: str,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        oversample: int | None = None,
        timeout: float | None = None,
    ) -> list[Hit]:
        """The k chunks most similar to query, best first. filter: metadata equality, e.g.
        {"lang": "en"}; oversample: binary candidates per hit before rescoring (server default)."""
        req = build_search_request(name, query, k=k, filter=filter, oversample=oversample)
        stub = self._stub(rpb_grpc.RetrievalStub)
        return [_hit(h) for h in self._call(stub.Search, req, timeout).hits]

    # -- rag -------------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        *,
        collection: str,
        k: int = 5,
        filter: Mapping[str, Any] | None = None,
        mode: str | None = None,
        recompute_ratio: float | None = None,
        epic_tokens: int | None = None,
        json_schema: JsonSchema | None = None,
        strict: bool = True,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Answer:
        s = self.stream_ask(
            question, collection=collection, k=k, filter=filter, mode=mode, recompute_ratio=recompute_ratio,
            epic_tokens=epic_tokens, json_schema=json_schema, strict=strict, system_prompt=system_prompt,
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
            request_id=request_id, timeout=timeout,
        )
        with s:
            for _ in s:
                pass
        if s.answer is None:
            raise RagloomError(f"ask {s.request_id} ended without a final message")
        return s.answer

    def stream_ask(
        self,
        question: str,
        *,
        collection: str,
        k: int = 5,
        filter: Mapping[str, Any] | None = None,
        mode: str | None = None,
        recompute_ratio: float | None = None,
        epic_tokens: int | None = None,
        json_schema: JsonSchema | None = None,
        strict: bool = True,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AskStream:
        req = build_ask_request(
            question, collection=collection, k=k, filter=filter, mode=mode, recompute_ratio=recompute_ratio,
            epic_tokens=epic_tokens, json_schema=json_schema, strict=strict, system_prompt=system_prompt,
            request_id=request_id, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=stop,
        )
        call = self._stub(apb_grpc.RagStub).Ask(req, timeout=self._timeout(timeout))
        return AskStream(call, req.request_id, output_parser(json_schema))

    ask.__doc__ = "Answer a question from a collection; returns an Answer.\n" + _ASK_DOC
    stream_ask.__doc__ = "Start a streamed ask (see AskStream).\n" + _ASK_DOC

    def cache_stats(self, *, timeout: float | None = None) -> CacheStats:
        """The server's chunk-KV store counters: hits/misses/bytes per tier, Redis errors."""
        stub = self._stub(apb_grpc.RagStub)
        return _cache_stats(self._call(stub.GetCacheStats, apb.GetCacheStatsRequest(), timeout))

    # -- tables ------------------------------------------------------------------------------

    def register_connector(self, name: str, url: str, *, replace: bool = False, timeout: float | None = None) -> ConnectorInfo:
        """Register a database (sqlite:///f.db, postgresql://user@host/db, mysql://root@host/db)
        or a CSV/Parquet/Excel file or folder under `name`; introspects it and keeps it."""
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.RegisterConnectorRequest(name=name, url=url, replace=replace)
        return _connector_info(self._call(stub.RegisterConnector, req, timeout))

    def list_connectors(self, *, timeout: float | None = None) -> list[ConnectorInfo]:
        stub = self._stub(tpb_grpc.TablesStub)
        resp = self._call(stub.ListConnectors, tpb.ListConnectorsRequest(), timeout)
        return [_connector_info(c) for c in resp.connectors]

    def remove_connector(self, name: str, *, timeout: float | None = None) -> None:
        stub = self._stub(tpb_grpc.TablesStub)
        self._call(stub.RemoveConnector, tpb.RemoveConnectorRequest(name=name), timeout)

    def describe_schema(self, name: str, *, refresh: bool = False, timeout: float | None = None) -> SchemaInfo:
        stub = self._stub(tpb_grpc.TablesStub)
        return _schema_info(self._call(stub.DescribeSchema, tpb.DescribeSchemaRequest(connector=name, refresh=refresh), timeout))

    def add_sql_example(self, name: str, question: str, sql: str, *, timeout: float | None = None) -> int:
        """Add a solved example for few-shot prompting (the SQL must pass the guard); returns the count."""
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.AddExampleRequest(connector=name, question=question, sql=sql)
        return int(self._call(stub.AddExample, req, timeout).examples)

    def sql(
        self,
        name: str,
        question: str,
        *,
        mode: str | None = None,
        link: bool | None = None,
        grammar: bool | None = None,
        self_correct: bool | None = None,
        max_rows: int | None = None,
        timeout_s: float | None = None,
        instructions: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> SqlResult:
        """Answer a question over connector `name` with SQL written by the model (schema linking,
        a SQL grammar of the linked schema, guard, read-only execution, one correction round).
        `.sql .columns .rows`; when the model's query failed, `.error` says why."""
        stub = self._stub(tpb_grpc.TablesStub)
        req = build_query_request(name, question, mode=mode, link=link, grammar=grammar, self_correct=self_correct,
                                  max_rows=max_rows, timeout_s=timeout_s, instructions=instructions,
                                  max_tokens=max_tokens, temperature=temperature, request_id=request_id)
        return self._collect(stub.Query, req, timeout)

    def execute_sql(self, name: str, sql: str, *, max_rows: int | None = None, timeout_s: float | None = None,
                    timeout: float | None = None) -> SqlResult:
        """Run caller-written SQL through the same guard (one read-only SELECT, allow-listed tables,
        row limit, time limit). Writes and other statements raise ForbiddenQuery."""
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.ExecuteSqlRequest(connector=name, sql=sql, max_rows=max_rows or 0, timeout_s=timeout_s or 0.0)
        return self._collect(stub.ExecuteSql, req, timeout)

    def _collect(self, fn: Any, request: Any, timeout: float | None) -> SqlResult:
        state = _QueryState()
        try:
            for msg in fn(request, timeout=self._timeout(timeout)):
                state.feed(msg)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return state.final()

    # -- health ------------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status name: "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN".

        Raises Unavailable when nothing answers at the address."""
        stub = self._stub(health_pb2_grpc.HealthStub)
        resp = self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client; create it inside the event loop that uses it."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        timeout: float | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(address, timeout, max_message_bytes)
        self._channel = grpc.aio.insecure_channel(address, options=_channel_options(max_message_bytes))

    async def _call(self, fn: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await fn(request, timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, str]] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool | None = None,
        json_schema: JsonSchema | None = None,
        grammar: str | None = None,
        regex: str | None = None,
        choices: Sequence[str] | None = None,
        strict: bool = True,
        model: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Completion:
        s = self.stream(
            prompt,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
            json_schema=json_schema,
            grammar=grammar,
            regex=regex,
            choices=choices,
            strict=strict,
            model=model,
            request_id=request_id,
            timeout=timeout,
        )
        async with s:
            async for _ in s:
                pass
        if s.completion is None:
            raise RagloomError(f"stream {s.request_id} ended without a final message")
        return s.completion

    def stream(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[dict[str, str]] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool | None = None,
        json_schema: JsonSchema | None = None,
        grammar: str | None = None,
        regex: str | None = None,
        choices: Sequence[str] | None = None,
        strict: bool = True,
        model: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncStream:
        req = build_generate_request(
            prompt,
            messages=messages,
            request_id=request_id,
            model=model,
            json_schema=json_schema,
            grammar=grammar,
            regex=regex,
            choices=choices,
            strict=strict,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=ignore_eos,
        )
        call = self._stub(pb_grpc.GenerationStub).Generate(req, timeout=self._timeout(timeout))
        return AsyncStream(call, req.request_id, output_parser(json_schema))

    generate.__doc__ = Client.generate.__doc__
    stream.__doc__ = Client.stream.__doc__

    async def abort(self, request_id: str, *, timeout: float | None = None) -> bool:
        stub = self._stub(pb_grpc.GenerationStub)
        return (await self._call(stub.Abort, pb.AbortRequest(request_id=request_id), timeout)).found

    async def loads(self, *, timeout: float | None = None) -> Loads:
        stub = self._stub(pb_grpc.GenerationStub)
        return _loads(await self._call(stub.GetLoads, pb.GetLoadsRequest(), timeout))

    # -- retrieval -------------------------------------------------------------------------

    async def create_collection(
        self,
        name: str,
        *,
        index: str | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> CollectionInfo:
        req = build_create_collection_request(
            name, index=index, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, metadata=metadata
        )
        stub = self._stub(rpb_grpc.RetrievalStub)
        return _collection((await self._call(stub.CreateCollection, req, timeout)).collection)

    async def delete_collection(self, name: str, *, timeout: float | None = None) -> None:
        stub = self._stub(rpb_grpc.RetrievalStub)
        await self._call(stub.DeleteCollection, rpb.DeleteCollectionRequest(name=name), timeout)

    async def list_collections(self, *, timeout: float | None = None) -> list[CollectionInfo]:
        stub = self._stub(rpb_grpc.RetrievalStub)
        resp = await self._call(stub.ListCollections, rpb.ListCollectionsRequest(), timeout)
        return [_collection(c) for c in resp.collections]

    async def upsert(
        self,
        name: str,
        docs: Iterable[Any] | AsyncIterable[Any],
        *,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        create_if_missing: bool = False,
        precompute_kv: bool = False,
        progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> UpsertResult:
        feed = _UpsertFeed(name, batch_size, create_if_missing, progress, self._batch_bytes, precompute_kv)
        stub = self._stub(rpb_grpc.RetrievalStub)
        try:
            resp = await stub.Upsert(feed.arequests(docs), timeout=self._timeout(timeout))
        except grpc.RpcError as exc:
            if feed.error is not None:
                raise feed.error from exc
            raise _error(exc) from exc
        if feed.error is not None:
            raise feed.error
        return _upsert_result(resp)

    async def delete(self, name: str, ids: Sequence[str], *, timeout: float | None = None) -> int:
        stub = self._stub(rpb_grpc.RetrievalStub)
        return (await self._call(stub.Delete, rpb.DeleteRequest(collection=name, ids=list(ids)), timeout)).deleted

    async def search(
        self,
        name: str,
        query: str,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        oversample: int | None = None,
        timeout: float | None = None,
    ) -> list[Hit]:
        req = build_search_request(name, query, k=k, filter=filter, oversample=oversample)
        stub = self._stub(rpb_grpc.RetrievalStub)
        return [_hit(h) for h in (await self._call(stub.Search, req, timeout)).hits]

    create_collection.__doc__ = Client.create_collection.__doc__
    delete_collection.__doc__ = Client.delete_collection.__doc__
    upsert.__doc__ = Client.upsert.__doc__
    delete.__doc__ = Client.delete.__doc__
    search.__doc__ = Client.search.__doc__

    # -- rag -------------------------------------------------------------------------------

    async def ask(
        self,
        question: str,
        *,
        collection: str,
        k: int = 5,
        filter: Mapping[str, Any] | None = None,
        mode: str | None = None,
        recompute_ratio: float | None = None,
        epic_tokens: int | None = None,
        json_schema: JsonSchema | None = None,
        strict: bool = True,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Answer:
        s = self.stream_ask(
            question, collection=collection, k=k, filter=filter, mode=mode, recompute_ratio=recompute_ratio,
            epic_tokens=epic_tokens, json_schema=json_schema, strict=strict, system_prompt=system_prompt,
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop,
            request_id=request_id, timeout=timeout,
        )
        async with s:
            async for _ in s:
                pass
        if s.answer is None:
            raise RagloomError(f"ask {s.request_id} ended without a final message")
        return s.answer

    def stream_ask(
        self,
        question: str,
        *,
        collection: str,
        k: int = 5,
        filter: Mapping[str, Any] | None = None,
        mode: str | None = None,
        recompute_ratio: float | None = None,
        epic_tokens: int | None = None,
        json_schema: JsonSchema | None = None,
        strict: bool = True,
        system_prompt: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> AsyncAskStream:
        req = build_ask_request(
            question, collection=collection, k=k, filter=filter, mode=mode, recompute_ratio=recompute_ratio,
            epic_tokens=epic_tokens, json_schema=json_schema, strict=strict, system_prompt=system_prompt,
            request_id=request_id, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=stop,
        )
        call = self._stub(apb_grpc.RagStub).Ask(req, timeout=self._timeout(timeout))
        return AsyncAskStream(call, req.request_id, output_parser(json_schema))

    async def cache_stats(self, *, timeout: float | None = None) -> CacheStats:
        stub = self._stub(apb_grpc.RagStub)
        return _cache_stats(await self._call(stub.GetCacheStats, apb.GetCacheStatsRequest(), timeout))

    ask.__doc__ = Client.ask.__doc__
    stream_ask.__doc__ = Client.stream_ask.__doc__
    cache_stats.__doc__ = Client.cache_stats.__doc__

    # -- tables ------------------------------------------------------------------------------

    async def register_connector(self, name: str, url: str, *, replace: bool = False,
                                 timeout: float | None = None) -> ConnectorInfo:
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.RegisterConnectorRequest(name=name, url=url, replace=replace)
        return _connector_info(await self._call(stub.RegisterConnector, req, timeout))

    async def list_connectors(self, *, timeout: float | None = None) -> list[ConnectorInfo]:
        stub = self._stub(tpb_grpc.TablesStub)
        resp = await self._call(stub.ListConnectors, tpb.ListConnectorsRequest(), timeout)
        return [_connector_info(c) for c in resp.connectors]

    async def remove_connector(self, name: str, *, timeout: float | None = None) -> None:
        stub = self._stub(tpb_grpc.TablesStub)
        await self._call(stub.RemoveConnector, tpb.RemoveConnectorRequest(name=name), timeout)

    async def describe_schema(self, name: str, *, refresh: bool = False, timeout: float | None = None) -> SchemaInfo:
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.DescribeSchemaRequest(connector=name, refresh=refresh)
        return _schema_info(await self._call(stub.DescribeSchema, req, timeout))

    async def add_sql_example(self, name: str, question: str, sql: str, *, timeout: float | None = None) -> int:
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.AddExampleRequest(connector=name, question=question, sql=sql)
        return int((await self._call(stub.AddExample, req, timeout)).examples)

    async def sql(
        self,
        name: str,
        question: str,
        *,
        mode: str | None = None,
        link: bool | None = None,
        grammar: bool | None = None,
        self_correct: bool | None = None,
        max_rows: int | None = None,
        timeout_s: float | None = None,
        instructions: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> SqlResult:
        stub = self._stub(tpb_grpc.TablesStub)
        req = build_query_request(name, question, mode=mode, link=link, grammar=grammar, self_correct=self_correct,
                                  max_rows=max_rows, timeout_s=timeout_s, instructions=instructions,
                                  max_tokens=max_tokens, temperature=temperature, request_id=request_id)
        return await self._collect(stub.Query, req, timeout)

    async def execute_sql(self, name: str, sql: str, *, max_rows: int | None = None, timeout_s: float | None = None,
                          timeout: float | None = None) -> SqlResult:
        stub = self._stub(tpb_grpc.TablesStub)
        req = tpb.ExecuteSqlRequest(connector=name, sql=sql, max_rows=max_rows or 0, timeout_s=timeout_s or 0.0)
        return await self._collect(stub.ExecuteSql, req, timeout)

    async def _collect(self, fn: Any, request: Any, timeout: float | None) -> SqlResult:
        state = _QueryState()
        try:
            async for msg in fn(request, timeout=self._timeout(timeout)):
                state.feed(msg)
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return state.final()

    register_connector.__doc__ = Client.register_connector.__doc__
    add_sql_example.__doc__ = Client.add_sql_example.__doc__
    sql.__doc__ = Client.sql.__doc__
    execute_sql.__doc__ = Client.execute_sql.__doc__

    # -- health ------------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        stub = self._stub(health_pb2_grpc.HealthStub)
        resp = await self._call(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
