"""What the SDK returns: frozen pydantic models, and how each is read from its protobuf message."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal
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
    index: str  # the index kind in use: "flat" | "ivf" (for "auto", what the last build chose)
    created_at: datetime | None = None
    chunk_tokens: int = 0
    chunk_overlap: int = 0
    metadata: dict[str, Any] = {}
    index_requested: str = "auto"  # the kind asked for on create: "auto" | "flat" | "ivf"


class Hit(_Frozen):
    id: str  # the document id
    chunk_id: str  # the matching chunk within the document: "<id>#<chunk_index>"
    score: float  # cosine similarity in [-1, 1]; higher is more similar
    text: str  # the chunk's text
    metadata: dict[str, Any]  # the document's metadata
    chunk_index: int = 0  # the chunk's position in its document, from 0
    # text == the document's text[start_char:end_char] (characters). 0 and 0 (an empty span, which
    # no real chunk has) for chunks stored by an earlier ragloom that kept no offsets: re-upsert the
    # document to have them.
    start_char: int = 0
    end_char: int = 0


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
    kv_source: str  # where its chunk KV came from: "computed" | "memory" | "disk" | "redis"
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
    mode: str = ""  # the mode used: "full" | "prefix" | "blend" | "epic"
    token_ids: list[int] = []
    warnings: list[str] = []
    # json_schema=: the parsed answer (json.loads, or the pydantic model's validated instance);
    # None without a JSON Schema, or when the answer did not finish
    parsed: Any = None


class TierStats(_Frozen):
    name: str
    kind: str  # "memory" | "disk" | "redis"
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
    dialect: str  # "sqlite" | "postgres" | "mysql" | "duckdb"
    tables: int
    examples: int = 0


class ColumnInfo(_Frozen):
    name: str
    type: str  # as the database declares it: "INTEGER", "VARCHAR(20)", "numeric(10,2)"
    nullable: bool = True  # False for NOT NULL columns and primary keys the database keeps non-null
    primary_key: bool = False
    description: str = ""
    samples: list[Any] = []  # a few distinct values, as SqlResult.rows holds them (texts cut to 80)
    kind: str = ""  # the kind its values arrive in (see SqlResult.column_types); "" when the type does not say


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


class ResultColumn(_Frozen):
    """A result column (`SqlResult.column_types`)."""

    name: str
    type: str = ""  # as the database reported it ("int8", "numeric(10,2)", "BIGINT"); "" where it does not (SQLite)
    # the kind of every non-null value, and so their Python type in .rows: "int" (int), "double"
    # (float), "decimal" (Decimal), "string" (str), "bytes" (bytes), "bool" (bool), "timestamp"
    # (datetime in UTC), "datetime" (naive datetime), "date" (date), "time" (time), "json" (the
    # json.loads'ed value); "" when all are NULL or they mix kinds
    kind: str = ""


class SqlResult(_Frozen):
    """What `sql()` / `execute_sql()` return: the statement that ran, its columns and rows.

    Rows hold exact Python values, typed as the database returned them (see cell_value_from):
    int (exact at any size), float, Decimal (NUMERIC/DECIMAL, and integers beyond 64 bits), str,
    bytes, bool, datetime (aware UTC for zoned timestamps, naive otherwise), date, time, and parsed
    JSON (PostgreSQL json/arrays, DuckDB lists/structs); None for NULL."""

    sql: str
    columns: list[str]  # the column names, in order
    rows: list[list[Any]]
    column_types: list[ResultColumn] = []  # per column: name, database type and value kind
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
    usage: Usage = Usage()  # the model's prompt and completion tokens over every attempt (0 for execute_sql)
    request_id: str = ""
    seconds: float = 0.0  # the call's wall time on the server


# -- from protobuf ----------------------------------------------------------------------

_M = TypeVar("_M", bound=BaseModel)


def from_fields(cls: type[_M], msg: Message, **converted: Any) -> _M:
    """cls from msg's fields of the same names; `converted` gives those that need converting
    (Structs, maps, repeated and optional fields, nested messages)."""
    return cls(**{name: getattr(msg, name) for name in cls.model_fields if name not in converted}, **converted)


def enum_text(enum: Any, value: int, prefix: str) -> str:
    """An API enum value as the SDK spells it: FINISH_REASON_STOP -> "stop" (a value newer than
    this SDK: its lower-cased name without the prefix, or the number; *_UNSPECIFIED: "")."""
    try:
        name = str(enum.Name(value))
    except ValueError:
        return str(value)
    return "" if name == prefix + "UNSPECIFIED" else name.removeprefix(prefix).lower()


def usage_from(msg: pb.Usage) -> Usage:
    return from_fields(Usage, msg)


def loads_from(msg: pb.GetLoadsResponse) -> Loads:
    return from_fields(Loads, msg)


def index_kind_name(value: int) -> str:
    """An IndexKind as the SDK spells it: "auto", "flat" or "ivf" (a kind newer than this SDK:
    its lower-cased name without the prefix, or the number)."""
    if value == rpb.INDEX_KIND_UNSPECIFIED:  # never returned; on create it means auto
        return "auto"
    try:
        return rpb.IndexKind.Name(value).removeprefix("INDEX_KIND_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(value)


def collection_from(msg: rpb.CollectionInfo) -> CollectionInfo:
    return from_fields(
        CollectionInfo, msg,
        created_at=msg.created_at.ToDatetime(tzinfo=UTC) if msg.HasField("created_at") else None,
        metadata=struct_to_dict(msg.metadata),
        index=index_kind_name(msg.index),
        index_requested=index_kind_name(msg.index_requested),
    )


def hit_from(msg: rpb.Hit) -> Hit:
    return from_fields(Hit, msg, metadata=struct_to_dict(msg.metadata))


def passage_from(msg: apb.Passage) -> Passage:
    return from_fields(
        Passage, msg, metadata=struct_to_dict(msg.metadata), kv_source=enum_text(apb.KvSource, msg.kv_source, "KV_SOURCE_")
    )


def ask_usage_from(msg: apb.AskUsage) -> AskUsage:
    return from_fields(AskUsage, msg, tier_hits=dict(msg.tier_hits))


def cache_stats_from(msg: apb.GetCacheStatsResponse) -> CacheStats:
    tiers = [
        from_fields(TierStats, t, detail=struct_to_dict(t.detail), kind=enum_text(apb.TierKind, t.kind, "TIER_KIND_"))
        for t in msg.tiers
    ]
    return from_fields(CacheStats, msg, tiers=tiers)


def connector_from(msg: tpb.ConnectorInfo) -> ConnectorInfo:
    return from_fields(ConnectorInfo, msg, dialect=enum_text(tpb.SqlDialect, msg.dialect, "SQL_DIALECT_"))


def schema_from(msg: tpb.DescribeSchemaResponse) -> SchemaInfo:
    tables = [
        from_fields(
            TableInfo, t,
            columns=[
                from_fields(ColumnInfo, c, samples=[cell_value_from(v) for v in c.samples],
                            kind=enum_text(tpb.CellKind, c.kind, "CELL_KIND_"))
                for c in t.columns
            ],
            primary_key=list(t.primary_key),
            foreign_keys=[from_fields(ForeignKeyInfo, f, columns=list(f.columns), ref_columns=list(f.ref_columns))
                          for f in t.foreign_keys],
            row_count=t.row_count if t.HasField("row_count") else None,
        )
        for t in msg.tables
    ]
    return from_fields(
        SchemaInfo, msg, tables=tables, dialect=enum_text(tpb.SqlDialect, msg.dialect, "SQL_DIALECT_")
    )


def grounded_value_from(msg: tpb.GroundedValue) -> GroundedValue:
    return from_fields(
        GroundedValue, msg,
        score=round(msg.score, 4),  # a float32 on the wire
        kind=enum_text(tpb.GroundingKind, msg.kind, "GROUNDING_KIND_"),
    )


def result_column_from(msg: tpb.Column) -> ResultColumn:
    return ResultColumn(name=msg.name, type=msg.type, kind=enum_text(tpb.CellKind, msg.kind, "CELL_KIND_"))


def cell_value_from(cell: tpb.Cell) -> Any:
    """A Cell as the Python value it stands for: exact numbers (int, Decimal), bytes, date and
    time objects, parsed JSON; None for NULL. A date or time text this SDK cannot parse (from
    another server) stays text."""
    which = cell.WhichOneof("value")
    if which is None or which == "null_value":
        return None
    if which == "decimal_value":
        return Decimal(cell.decimal_value)
    if which == "timestamp_value":
        return cell.timestamp_value.ToDatetime(tzinfo=UTC)
    if which == "json_value":
        return json.loads(cell.json_value)
    parse = _ISO_PARSERS.get(which)
    if parse is not None:
        text = getattr(cell, which)
        try:
            return parse(text)
        except ValueError:
            return text
    return getattr(cell, which)  # int_value, double_value, string_value, bytes_value, bool_value


_ISO_PARSERS: dict[str, Callable[[str], Any]] = {
    "datetime_value": datetime.fromisoformat,
    "date_value": date.fromisoformat,
    "time_value": time.fromisoformat,
}


def row_from(msg: tpb.Row) -> list[Any]:
    return [cell_value_from(c) for c in msg.cells]


def upsert_result_from(msg: rpb.UpsertResponse) -> UpsertResult:
    return from_fields(UpsertResult, msg)

