"""The SDK's API, each method written once for both clients.

A method is a generator: it builds and checks its request, yields the call to make (calls.py),
is sent the response and returns the result. Client runs it blocking, AsyncClient awaits it
(binding.py, drivers.py); `streamed` gives a method's streaming twin (generate -> stream)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from grpc_health.v1 import health_pb2, health_pb2_grpc

from ragloom.client.binding import rpc, streamed
from ragloom.client.calls import ClientStream, Op, ServerStream, Unary
from ragloom.client.channel import ClientBase
from ragloom.client.requests import (
    DEFAULT_UPSERT_BATCH,
    _UpsertFeed,
    absolute_connector_url,
    build_ask_request,
    build_create_collection_request,
    build_generate_request,
    build_query_request,
    build_search_request,
)
from ragloom.client.results import (
    Answer,
    CacheStats,
    CollectionInfo,
    Completion,
    ConnectorInfo,
    Hit,
    Loads,
    SchemaInfo,
    SqlResult,
    UpsertResult,
    cache_stats_from,
    collection_from,
    connector_from,
    hit_from,
    loads_from,
    schema_from,
    upsert_result_from,
)
from ragloom.client.schemas import JsonSchema, output_parser
from ragloom.client.streams import (
    AskStream,
    AsyncAskStream,
    AsyncStream,
    Stream,
    _AskState,
    _QueryState,
    _StreamState,
)
from ragloom.errors import RagloomError
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import generation_pb2_grpc as pb_grpc
from ragloom.services._proto import rag_pb2 as apb
from ragloom.services._proto import rag_pb2_grpc as apb_grpc
from ragloom.services._proto import retrieval_pb2 as rpb
from ragloom.services._proto import retrieval_pb2_grpc as rpb_grpc
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.services._proto import tables_pb2_grpc as tpb_grpc

F = TypeVar("F", bound=Callable[..., Any])

_GENERATE_DOC = """\
        prompt: plain text (no chat template); or messages: [{"role": ..., "content": ...}]
        rendered with the model's chat template. Sampling arguments left as None use the
        server's defaults; temperature=0 is greedy. request_id defaults to a new UUID.
        timeout (seconds) overrides the client's; past it, DeadlineExceeded is raised and the
        server aborts the request.

        Structured output (at most one; more raises InvalidArgument before any call):
        json_schema: a dict, JSON text or a pydantic model class (its model_json_schema(), each
        model's object closed to other keys unless the model allows extras);
        grammar: lark grammar text (LALR(1), rule `start`); regex: the whole output matches it;
        choices: a list of strings, the output is exactly one of them. strict (json_schema):
        True rejects a schema keyword the server cannot enforce (InvalidArgument naming it);
        False drops it and lists it in Completion.warnings. With json_schema, Completion.parsed
        is the parsed value (the pydantic instance for a model class) once finish_reason is
        "stop"; if it does not parse, parsed stays None and warnings says why.

        messages: roles "system" (at most one, first), "user" and "assistant"; another role raises
        InvalidArgument (field "messages[i].role") before any call. finish_reason is "stop",
        "length" or "abort".

        speculative: "off" or a method ("lookup", "recycling", "auto"); None: the server's setting. Only plain greedy
        requests speculate, and their output is the same; usage.draft_tokens / accepted_tokens
        say how much was drafted and accepted."""

_UPSERT_DOC = """        docs: an iterable (or, for AsyncClient, also an async iterable) of mappings
        {"id": str, "text": str, "metadata": dict (optional), "vector": list[float] (optional)};
        streamed to the server in batches of batch_size and stored as one transaction: when the
        call returns, all of them are stored; when it raises (a bad document, an error of the
        iterable, a timeout, a cancel, the server going away), none of them is, and documents
        they would have replaced keep their old version. A document whose id exists replaces
        it. create_if_missing creates the (empty) collection with default options, outside the
        transaction. precompute_kv=True also has the server prefill and store the chunk KV of
        the upserted chunks once they are stored (the call returns after that; see ask()), so
        the first ask() over them already reuses it. progress(n) is called as the server
        acknowledges n more documents (embedded and staged in the transaction); the last ones
        are acknowledged by the commit, so the counts reach the total only once all is stored.
        A document that cannot be sent (no id, text not a string, metadata not JSON-like)
        raises InvalidArgument, and nothing is stored."""

_ASK_DOC = """        Search `collection` for the k passages (1 to 50; None: the server's default, 5) most
        similar to `question` (filter: metadata, as in search()), put them into the prompt from
        their cached chunk KV (the server computes and stores what it lacks) and answer; each
        Passage's kv_source says where its KV came from ("computed", "memory", "disk",
        "redis"). mode: "full" (recompute everything), "prefix" (reuse the exact prefix only),
        "blend" (the server's default: reuse every passage, recompute the recompute_ratio share
        of most deviating tokens, default 0.15) or "epic" (recompute the first epic_tokens of
        each passage); another string raises InvalidArgument (field "mode") before any call.
        json_schema (a dict, JSON text or a pydantic model class) constrains the answer to JSON
        valid for it; Answer.parsed then holds the parsed value. system_prompt replaces the
        server's RAG instruction (chunk KV is cached per system prompt). Sampling arguments
        left as None take the server's defaults; temperature=0 is greedy."""


def _doc(text: str) -> Callable[[F], F]:
    """A docstring composed from shared parts (a literal docstring cannot be)."""

    def set_doc(fn: F) -> F:
        fn.__doc__ = text
        return fn

    return set_doc


class Api(ClientBase):
    """Every remote method of Client and AsyncClient."""

    # -- generation ------------------------------------------------------------------------

    @rpc
    @_doc("Generate to completion and return a Completion.\n" + _GENERATE_DOC)
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
        speculative: str | None = None,
        model: str | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Op[Completion]:
        req = build_generate_request(
            prompt, messages=messages, request_id=request_id, model=model, json_schema=json_schema,
            grammar=grammar, regex=regex, choices=choices, strict=strict, speculative=speculative, max_tokens=max_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
            seed=seed, stop=stop, stop_token_ids=stop_token_ids, ignore_eos=ignore_eos,
        )
        state = _StreamState(req.request_id, output_parser(json_schema))
        yield ServerStream(pb_grpc.GenerationServiceStub, "Generate", timeout, request=req, state=state)
        return state.final()

    stream = streamed(generate, Stream, AsyncStream, "Start a streamed generation (see Stream).\n" + _GENERATE_DOC)

    @rpc
    def abort(self, request_id: str, *, timeout: float | None = None) -> Op[bool]:
        """Abort a running generate/stream or ask by its request id; False if it is unknown or
        already finished (idempotent). An empty id raises InvalidArgument (field "request_id")."""
        req = pb.AbortRequest(request_id=request_id)
        resp = yield Unary(pb_grpc.GenerationServiceStub, "Abort", timeout, request=req)
        return bool(resp.found)

    @rpc
    def loads(self, *, request_id: str | None = None, timeout: float | None = None) -> Op[Loads]:
        """The server's load: running and waiting requests, KV cache use, the model served."""
        req = pb.GetLoadsRequest(request_id=request_id or "")
        resp = yield Unary(pb_grpc.GenerationServiceStub, "GetLoads", timeout, request=req)
        return loads_from(resp)

    # -- retrieval -------------------------------------------------------------------------
    # request_id (every call): an id for the server's log lines and the error's RequestInfo;
    # None: the server makes one up.

    @rpc
    def create_collection(
        self,
        name: str,
        *,
        index: str | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Op[CollectionInfo]:
        """Create an empty collection; options left as None take the server's defaults.

        index: "auto" (default: flat below 200,000 chunks, IVF from there), "flat" or "ivf";
        anything else raises InvalidArgument (field "index") before any call. metadata: a plain
        dict stored with the collection. Raises AlreadyExists (reason COLLECTION_EXISTS) if the
        name is taken."""
        req = build_create_collection_request(
            name, index=index, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, metadata=metadata,
            request_id=request_id,
        )
        resp = yield Unary(rpb_grpc.RetrievalServiceStub, "CreateCollection", timeout, request=req)
        return collection_from(resp.collection)

    @rpc
    def delete_collection(
        self, name: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> Op[None]:
        """Delete a collection with all its documents; NotFound (reason COLLECTION_NOT_FOUND) if
        there is none."""
        req = rpb.DeleteCollectionRequest(name=name, request_id=request_id or "")
        yield Unary(rpb_grpc.RetrievalServiceStub, "DeleteCollection", timeout, request=req)

    @rpc
    def list_collections(
        self, *, request_id: str | None = None, timeout: float | None = None
    ) -> Op[list[CollectionInfo]]:
        """Every collection on the server, with its options and counts, by name."""
        req = rpb.ListCollectionsRequest(request_id=request_id or "")
        resp = yield Unary(rpb_grpc.RetrievalServiceStub, "ListCollections", timeout, request=req)
        return [collection_from(c) for c in resp.collections]

    @rpc
    @_doc("Add or replace documents in a collection; returns the counts stored.\n" + _UPSERT_DOC)
    def upsert(
        self,
        name: str,
        docs: Iterable[Any] | AsyncIterable[Any],
        *,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        create_if_missing: bool = False,
        precompute_kv: bool = False,
        progress: Callable[[int], None] | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Op[UpsertResult]:
        # a client stream: a header naming the collection, then batches of documents (see _UpsertFeed)
        feed = _UpsertFeed(
            name, batch_size, create_if_missing, progress, self._batch_bytes, precompute_kv, request_id=request_id
        )
        try:
            resp = yield ClientStream(rpb_grpc.RetrievalServiceStub, "Upsert", timeout, source=feed, items=docs)
        except RagloomError as exc:
            if feed.error is not None:  # the documents' own error ended the stream: that is the cause
                raise feed.error from exc.__cause__
            raise
        if feed.error is not None:
            raise feed.error
        if resp is None or not resp.committed:  # a server that ends the call without committing
            raise RagloomError("the server ended the upsert without committing it: nothing was stored")
        return upsert_result_from(resp)

    @rpc
    def delete(
        self, name: str, ids: Sequence[str], *, request_id: str | None = None, timeout: float | None = None
    ) -> Op[int]:
        """Delete documents by id; returns how many existed (unknown ids are skipped)."""
        req = rpb.DeleteRequest(collection=name, ids=list(ids), request_id=request_id or "")
        resp = yield Unary(rpb_grpc.RetrievalServiceStub, "Delete", timeout, request=req)
        return int(resp.deleted)

    @rpc
    def search(
        self,
        name: str,
        query: str,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        oversample: int | None = None,
        group_by_document: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Op[list[Hit]]:
        """The k chunks most similar to query, best first. filter: metadata, e.g. {"lang": "en"}
        or {"year": {"$in": [2023, 2024]}} ($eq, $ne, $in, $nin); oversample: binary candidates
        per hit before rescoring (server default). group_by_document=True: each document at most
        once, as its best chunk, ranked by that chunk's score, and k counts documents (a long
        document cannot fill every hit). Each Hit has its chunk's chunk_index and character
        offsets in the document (start_char, end_char)."""
        req = build_search_request(
            name, query, k=k, filter=filter, oversample=oversample, group_by_document=group_by_document,
            request_id=request_id,
        )
        resp = yield Unary(rpb_grpc.RetrievalServiceStub, "Search", timeout, request=req)
        return [hit_from(h) for h in resp.hits]

    # -- rag -------------------------------------------------------------------------------

    @rpc
    @_doc("Answer a question from a collection; returns an Answer.\n" + _ASK_DOC)
    def ask(
        self,
        question: str,
        *,
        collection: str,
        k: int | None = None,
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
    ) -> Op[Answer]:
        req = build_ask_request(
            question, collection=collection, k=k, filter=filter, mode=mode, recompute_ratio=recompute_ratio,
            epic_tokens=epic_tokens, json_schema=json_schema, strict=strict, system_prompt=system_prompt,
            request_id=request_id, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
            stop=stop,
        )
        state = _AskState(req.request_id, output_parser(json_schema))
        yield ServerStream(apb_grpc.RagServiceStub, "Ask", timeout, request=req, state=state)
        return state.final()

    stream_ask = streamed(ask, AskStream, AsyncAskStream, "Start a streamed ask (see AskStream).\n" + _ASK_DOC)

    @rpc
    def cache_stats(self, *, request_id: str | None = None, timeout: float | None = None) -> Op[CacheStats]:
        """The server's chunk-KV store counters: hits/misses/bytes per tier, Redis errors."""
        req = apb.GetCacheStatsRequest(request_id=request_id or "")
        resp = yield Unary(apb_grpc.RagServiceStub, "GetCacheStats", timeout, request=req)
        return cache_stats_from(resp)

    # -- tables ------------------------------------------------------------------------------

    @rpc
    def register_connector(
        self, name: str, url: str, *, replace: bool = False, request_id: str | None = None,
        timeout: float | None = None,
    ) -> Op[ConnectorInfo]:
        """Register a database (sqlite:///f.db, postgresql://user@host/db, mysql://root@host/db)
        or a CSV/Parquet/Excel file or folder under `name`; introspects it and keeps it.
        replace=True re-registers an existing name (its examples are kept).

        A relative path (./f.csv, sqlite:///data/f.db) is resolved in this process's working
        directory and sent absolute: the server opens it, and its own directory is another."""
        req = tpb.RegisterConnectorRequest(name=name, url=absolute_connector_url(url), replace=replace,
                                           request_id=request_id or "")
        resp = yield Unary(tpb_grpc.TablesServiceStub, "RegisterConnector", timeout, request=req)
        return connector_from(resp.connector)

    @rpc
    def list_connectors(self, *, request_id: str | None = None, timeout: float | None = None) -> Op[list[ConnectorInfo]]:
        """The registered connectors (passwords in their URLs replaced by ***)."""
        req = tpb.ListConnectorsRequest(request_id=request_id or "")
        resp = yield Unary(tpb_grpc.TablesServiceStub, "ListConnectors", timeout, request=req)
        return [connector_from(c) for c in resp.connectors]

    @rpc
    def remove_connector(self, name: str, *, request_id: str | None = None, timeout: float | None = None) -> Op[None]:
        """Forget connector `name` (the database itself is untouched); NotFound if there is none."""
        req = tpb.RemoveConnectorRequest(name=name, request_id=request_id or "")
        yield Unary(tpb_grpc.TablesServiceStub, "RemoveConnector", timeout, request=req)

    @rpc
    def describe_schema(
        self, name: str, *, refresh: bool = False, request_id: str | None = None, timeout: float | None = None
    ) -> Op[SchemaInfo]:
        """Connector `name`'s tables, columns and keys; refresh=True introspects the database again.
        Column samples are Python values as in SqlResult.rows."""
        req = tpb.DescribeSchemaRequest(connector=name, refresh=refresh, request_id=request_id or "")
        resp = yield Unary(tpb_grpc.TablesServiceStub, "DescribeSchema", timeout, request=req)
        return schema_from(resp)

    @rpc
    def add_sql_example(
        self, name: str, question: str, sql: str, *, request_id: str | None = None, timeout: float | None = None
    ) -> Op[int]:
        """Add a solved example for few-shot prompting (the SQL must pass the guard); returns the count."""
        req = tpb.AddExampleRequest(connector=name, question=question, sql=sql, request_id=request_id or "")
        resp = yield Unary(tpb_grpc.TablesServiceStub, "AddExample", timeout, request=req)
        return int(resp.examples)

    @rpc
    def sql(
        self,
        name: str,
        question: str,
        *,
        mode: str | None = None,
        link: bool | None = None,
        grammar: bool | None = None,
        self_correct: bool | None = None,
        ground_values: bool | None = None,
        max_rows: int | None = None,
        timeout_s: float | None = None,
        instructions: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Op[SqlResult]:
        """Answer a question over connector `name` with SQL written by the model (schema linking,
        a SQL grammar of the linked schema, guard, read-only execution, one correction round).
        `.sql .columns .rows` (exact Python values: see SqlResult); when the model's query
        failed, `.error` says why. mode: "sql" (default), "table" (a text answer from small
        tables' rows, in `.answer`) or "auto".

        ground_values=True (server default off) matches the question's words to the values the
        database stores ('arizona' -> 'Arizona', 'US' -> 'United States') and shows the model
        those in the linked columns; `.grounded_values` lists them. The first such question on a
        connector builds its distinct-value index (a query per text column, at most 30 s)."""
        req = build_query_request(name, question, mode=mode, link=link, grammar=grammar, self_correct=self_correct,
                                  max_rows=max_rows, timeout_s=timeout_s, instructions=instructions,
                                  max_tokens=max_tokens, temperature=temperature, request_id=request_id,
                                  ground_values=ground_values)
        state = _QueryState()
        yield ServerStream(tpb_grpc.TablesServiceStub, "Query", timeout, request=req, state=state)
        return state.final()

    @rpc
    def execute_sql(self, name: str, sql: str, *, max_rows: int | None = None, timeout_s: float | None = None,
                    request_id: str | None = None, timeout: float | None = None) -> Op[SqlResult]:
        """Run caller-written SQL through the same guard (one read-only SELECT, allow-listed tables,
        row limit, time limit). Writes and other statements raise ForbiddenQuery (reason
        SQL_NOT_READ_ONLY), SQL that fails SqlError (SQL_INVALID), a slow one DeadlineExceeded
        (SQL_TIMEOUT). max_rows in [1, 100000] (server default 1000), timeout_s in (0, 300]
        (default 30)."""
        req = tpb.ExecuteSqlRequest(connector=name, sql=sql, request_id=request_id or "")
        if max_rows is not None:
            req.max_rows = max_rows
        if timeout_s is not None:
            req.timeout_s = timeout_s
        state = _QueryState()
        yield ServerStream(tpb_grpc.TablesServiceStub, "ExecuteSql", timeout, request=req, state=state)
        return state.final()

    # -- health ------------------------------------------------------------------------------

    @rpc
    def health(self, service: str = "", *, timeout: float | None = None) -> Op[str]:
        """The grpc.health.v1 status name: "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN".

        Raises Unavailable when nothing answers at the address."""
        req = health_pb2.HealthCheckRequest(service=service)
        resp = yield Unary(health_pb2_grpc.HealthStub, "Check", timeout, request=req)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
