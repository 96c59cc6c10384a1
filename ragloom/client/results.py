"""What the SDK returns: frozen pydantic models, and how each is read from its protobuf message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message
from pydantic import BaseModel, ConfigDict

from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import rag_pb2 as apb
from ragloom.services._proto import retrieval_pb2 as rpb
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.structs import struct_to_dict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Usage(_Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    draft_tokens: int = 0  # speculative decoding: drafted for this request
    accepted_tokens: int = 0  # of which the model accepted


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
    prefix_cache_queried_tokens: int = 0  # prompt tokens that looked up the prefix cache, since start
    prefix_cache_hit_tokens: int = 0  # of which were found there
    speculative_steps: int = 0  # since start: steps that verified a draft
    speculative_draft_tokens: int = 0
    speculative_accepted_tokens: int = 0
    mean_accepted_tokens: float = 0.0  # accepted per verify step


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


class GroundedValue(_Frozen):
    """A stored value the question named, shown to the model (`sql(..., ground_values=True)`)."""

    table: str
    column: str
    value: str  # exactly as stored: what a WHERE clause should compare with
    span: str  # the question's words it matched
    score: float  # 1.0 exact (case, accents, punctuation ignored); lower for fuzzy, abbreviation, partial
    kind: str  # "exact" | "abbreviation" | "fuzzy" | "partial"


class SqlResult(_Frozen):
    """What `sql()` / `execute_sql()` return: the statement that ran, its columns and rows."""

    sql: str
    columns: list[str]
    rows: list[list[Any]]
    tables: list[str] = []  # tables the statement read
    linked_tables: list[str] = []  # tables the prompt showed (sql() only)
    grounded_values: list[GroundedValue] = []  # stored values the prompt showed (sql(ground_values=True))
    truncated: bool = False  # more rows existed than max_rows
    attempts: int = 1
    valid: bool = True  # parses and names only real tables and columns
    error: str | None = None  # why the model's final query failed; rows are empty then
    mode: str = "sql"  # "sql", or "table" (answered from the rows: see .answer)
    answer: str = ""
    failed_sql: list[str] = []
    usage: Usage = Usage()
    request_id: str = ""


# -- from protobuf ----------------------------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)


def from_fields(cls: type[_M], msg: Message, **converted: Any) -> _M:
    """cls from msg's fields of the same names; `converted` gives those that need converting
    (Structs, maps, repeated and optional fields, nested messages)."""
    return cls(**{name: getattr(msg, name) for name in cls.model_fields if name not in converted}, **converted)


def usage_from(msg: pb.Usage) -> Usage:
    return from_fields(Usage, msg)


def loads_from(msg: pb.GetLoadsResponse) -> Loads:
    return from_fields(Loads, msg)


def collection_from(msg: rpb.CollectionInfo) -> CollectionInfo:
    return from_fields(
        CollectionInfo, msg,
        created_at=msg.created_at.ToDatetime(tzinfo=UTC) if msg.HasField("created_at") else None,
        metadata=struct_to_dict(msg.metadata),
        index_requested=msg.index_requested or msg.index,
    )


def hit_from(msg: rpb.Hit) -> Hit:
    return from_fields(Hit, msg, metadata=struct_to_dict(msg.metadata))


def passage_from(msg: apb.Passage) -> Passage:
    return from_fields(Passage, msg, metadata=struct_to_dict(msg.metadata))


def ask_usage_from(msg: apb.AskUsage) -> AskUsage:
    return from_fields(AskUsage, msg, tier_hits=dict(msg.tier_hits))


def cache_stats_from(msg: apb.CacheStats) -> CacheStats:
    tiers = [from_fields(TierStats, t, detail=struct_to_dict(t.detail)) for t in msg.tiers]
    return from_fields(CacheStats, msg, tiers=tiers)


def connector_from(msg: tpb.ConnectorInfo) -> ConnectorInfo:
    return from_fields(ConnectorInfo, msg)


def schema_from(msg: tpb.SchemaInfo) -> SchemaInfo:
    tables = [
        from_fields(
            TableInfo, t,
            columns=[from_fields(ColumnInfo, c, samples=plain_list(c.samples)) for c in t.columns],
            primary_key=list(t.primary_key),
            foreign_keys=[from_fields(ForeignKeyInfo, f, columns=list(f.columns), ref_columns=list(f.ref_columns))
                          for f in t.foreign_keys],
            row_count=t.row_count if t.HasField("row_count") else None,
        )
        for t in msg.tables
    ]
    return from_fields(SchemaInfo, msg, tables=tables)


def grounded_value_from(msg: tpb.GroundedValue) -> GroundedValue:
    return from_fields(GroundedValue, msg, score=round(msg.score, 4))  # a float32 on the wire


def plain_list(lv: Any) -> list[Any]:
    # protobuf numbers are doubles: whole numbers come back as int (as in ragloom.structs)
    return [int(v) if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53 else v for v in lv]


def upsert_result_from(msg: rpb.UpsertResponse) -> UpsertResult:
    return from_fields(UpsertResult, msg)

