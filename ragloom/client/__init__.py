"""The Python SDK: `Client` (blocking) and `AsyncClient` (asyncio), one API written once for both.

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
        # each document once (its best chunk), k counting documents; where each chunk lies in it
        for hit in c.search("notes", "French capital", k=3, group_by_document=True):
            print(hit.id, hit.chunk_index, hit.start_char, hit.end_char)

        # RAG over the collection, prefilled from cached chunk KV
        answer = c.ask("What is the capital of France?", collection="notes", k=3, max_tokens=32)
        print(answer.text, [p.id for p in answer.passages], answer.usage.reused_tokens)

        # databases and tables: text-to-SQL, read-only and guarded
        c.register_connector("shop", "sqlite:///shop.db")
        r = c.sql("shop", "How many orders per country?")
        print(r.sql, r.columns, r.rows)   # rows: exact Python values (int, Decimal, bytes, datetime, ...)
        print(r.column_types)             # per column: name, database type, value kind
        c.execute_sql("shop", "SELECT count(*) FROM orders")   # DROP/INSERT/...: ForbiddenQuery

Arguments left as None are left out of the request, so the server's defaults apply. gRPC
errors are re-raised as ragloom errors (`ragloom.errors`) with the RpcError as `__cause__`.
Stubs are created lazily per service.

Layout: results.py (what methods return), schemas.py (json_schema=), requests.py (request
building, upsert batching, connector paths), calls.py (the RPCs a method asks for), streams.py
(stream states and iterables), api.py (every method, once), drivers.py / binding.py (running a
method blocking or awaited), channel.py and clients.py (the two clients).
"""


from ragloom.client.api import Api
from ragloom.client.calls import _error
from ragloom.client.channel import DEFAULT_ADDRESS, DEFAULT_MAX_MESSAGE_BYTES
from ragloom.client.clients import AsyncClient, Client
from ragloom.client.requests import (
    DEFAULT_UPSERT_BATCH,
    UPSERT_BATCH_BYTES,
    _UpsertFeed,
    absolute_connector_url,
    build_ask_request,
    build_create_collection_request,
    build_generate_request,
    build_query_request,
    build_search_request,
    to_document,
)
from ragloom.client.results import (
    Answer,
    AskUsage,
    CacheStats,
    Citation,
    CollectionInfo,
    ColumnInfo,
    Completion,
    ConnectorInfo,
    ForeignKeyInfo,
    GroundedValue,
    Hit,
    Loads,
    Passage,
    ResultColumn,
    SchemaInfo,
    SqlResult,
    StreamChunk,
    TableInfo,
    TierStats,
    UpsertResult,
    Usage,
)
from ragloom.client.schemas import JsonSchema, model_schema, output_parser
from ragloom.client.streams import (
    AskStream,
    AsyncAskStream,
    AsyncStream,
    Stream,
    _AskState,
    _QueryState,
    _StreamState,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_UPSERT_BATCH",
    "UPSERT_BATCH_BYTES",
    "Answer",
    "Api",
    "AskStream",
    "AskUsage",
    "AsyncAskStream",
    "AsyncClient",
    "AsyncStream",
    "CacheStats",
    "Citation",
    "Client",
    "CollectionInfo",
    "ColumnInfo",
    "Completion",
    "ConnectorInfo",
    "ForeignKeyInfo",
    "GroundedValue",
    "Hit",
    "JsonSchema",
    "Loads",
    "Passage",
    "ResultColumn",
    "SchemaInfo",
    "SqlResult",
    "Stream",
    "StreamChunk",
    "TableInfo",
    "TierStats",
    "UpsertResult",
    "Usage",
    "_AskState",
    "_QueryState",
    "_StreamState",
    "_UpsertFeed",
    "_error",
    "absolute_connector_url",
    "build_ask_request",
    "build_create_collection_request",
    "build_generate_request",
    "build_query_request",
    "build_search_request",
    "model_schema",
    "output_parser",
    "to_document",
]
