"""Building the requests the SDK sends: arguments left as None stay out of them (the server's
defaults apply), constraints are checked before any call, documents are batched for Upsert and
connector paths are made absolute."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ragloom.client.schemas import JsonSchema, schema_text
from ragloom.errors import InvalidArgument
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import rag_pb2 as apb
from ragloom.services._proto import retrieval_pb2 as rpb
from ragloom.services._proto import tables_pb2 as tpb
from ragloom.structs import dict_to_struct

# documents per Upsert message; the server acknowledges each message's documents once staged
DEFAULT_UPSERT_BATCH = 256
# a batch is also sent early once it holds this many bytes, so long texts stay under message limits
UPSERT_BATCH_BYTES = 4 * 1024 * 1024



def enum_value(enum: Any, text: object, prefix: str, field: str) -> int:
    """An API enum's value for the string users write ("lookup" -> SPECULATIVE_METHOD_LOOKUP);
    InvalidArgument naming `field` for anything else, before any call."""
    names = [n.removeprefix(prefix).lower() for n in enum.keys() if n != prefix + "UNSPECIFIED"]
    if not isinstance(text, str) or text.lower() not in names:
        raise InvalidArgument(f"{field} must be one of {', '.join(map(repr, names))}, got {text!r}", field=field)
    return int(enum.Value(prefix + text.upper()))


def _chat_message(m: Any, i: int) -> pb.ChatMessage:
    """{"role": "user", "content": "..."} as a ChatMessage (roles "system", "user", "assistant")."""
    if not isinstance(m, Mapping):
        raise InvalidArgument(f"messages[{i}] must be a dict with role and content, got {type(m).__name__}",
                              field=f"messages[{i}]")
    content = m.get("content")
    if not isinstance(content, str):
        raise InvalidArgument(f"messages[{i}].content must be a string, got {type(content).__name__}",
                              field=f"messages[{i}].content")
    role = enum_value(pb.Role, m.get("role"), "ROLE_", f"messages[{i}].role")
    return pb.ChatMessage(role=role, content=content)


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
        raise InvalidArgument(f"give at most one constraint, got {' and '.join(given)}", field=given[1])
    if json_schema is not None:
        req.json_schema = schema_text(json_schema)
        if strict is not None:
            req.strict = strict
    elif grammar is not None:
        if not isinstance(grammar, str):
            raise InvalidArgument(f"grammar must be lark grammar text, got {type(grammar).__name__}", field="grammar")
        req.lark_grammar = grammar
    elif regex is not None:
        if not isinstance(regex, str):
            raise InvalidArgument(f"regex must be a string, got {type(regex).__name__}", field="regex")
        req.regex = regex
    elif choices is not None:
        if isinstance(choices, str) or not all(isinstance(c, str) for c in choices):
            raise InvalidArgument("choices must be a list of strings", field="choices")
        if not choices:  # on the wire an empty list is no constraint at all: refuse it here
            raise InvalidArgument("choices is empty: give at least one choice", field="choices")
        req.choices.extend(choices)


def _set_sampling(msg: pb.SamplingParams, sampling: Mapping[str, Any]) -> None:
    for name, value in sampling.items():
        if value is None:
            continue
        if name in ("stop", "stop_token_ids"):
            getattr(msg, name).extend([value] if isinstance(value, str) else value)
        else:
            setattr(msg, name, value)


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
    speculative: str | None = None,
    **sampling: Any,
) -> pb.GenerateRequest:
    """Only arguments that were given go into the request (None = the server's default).

    messages: dicts {"role": "system" | "user" | "assistant", "content": str}. At most one of
    json_schema / grammar / regex / choices; strict applies to json_schema. speculative: "off",
    "lookup", "recycling" or "auto"."""
    if (prompt is None) == (messages is None):
        raise TypeError("pass exactly one of prompt or messages")
    req = pb.GenerateRequest(request_id=request_id or uuid.uuid4().hex, model=model or "")
    if prompt is not None:
        req.prompt = prompt
    else:
        assert messages is not None
        req.messages.extend(_chat_message(m, i) for i, m in enumerate(messages))
    _set_constraint(req, json_schema, grammar, regex, choices, strict)
    _set_sampling(req.sampling, sampling)
    if speculative is not None:
        req.speculative = enum_value(pb.SpeculativeMethod, speculative, "SPECULATIVE_METHOD_", "speculative")
    return req


# CreateCollection's index kinds as users write them, and their IndexKind values
INDEX_KINDS: dict[str, rpb.IndexKind] = {
    "auto": rpb.INDEX_KIND_AUTO,
    "flat": rpb.INDEX_KIND_FLAT,
    "ivf": rpb.INDEX_KIND_IVF,
}


def _struct_field(value: Mapping[str, Any], field: str, what: str) -> Any:
    """dict_to_struct, its InvalidArgument naming the request field."""
    try:
        return dict_to_struct(value, what)
    except InvalidArgument as exc:
        exc.field = field
        raise


def build_create_collection_request(
    name: str,
    *,
    index: str | None = None,
    chunk_tokens: int | None = None,
    chunk_overlap: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> rpb.CreateCollectionRequest:
    """index: "auto", "flat" or "ivf" (None: the server's default, auto)."""
    req = rpb.CreateCollectionRequest(name=name, request_id=request_id or "")
    if index is not None:
        kind = INDEX_KINDS.get(index) if isinstance(index, str) else None
        if kind is None:
            raise InvalidArgument(f"index must be one of {', '.join(map(repr, INDEX_KINDS))}, got {index!r}", field="index")
        req.index = kind
    if chunk_tokens is not None:
        req.chunk_tokens = chunk_tokens
    if chunk_overlap is not None:
        req.chunk_overlap = chunk_overlap
    if metadata is not None:
        req.metadata.CopyFrom(_struct_field(metadata, "metadata", "collection metadata"))
    return req


def build_search_request(
    name: str,
    query: str,
    *,
    k: int,
    filter: Mapping[str, Any] | None,
    oversample: int | None,
    group_by_document: bool = False,
    request_id: str | None = None,
) -> rpb.SearchRequest:
    req = rpb.SearchRequest(
        collection=name, query=query, k=k, group_by_document=group_by_document, request_id=request_id or ""
    )
    if filter:
        req.filter.CopyFrom(_struct_field(filter, "filter", "filter"))
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
    """Only arguments that were given go into the request (None = the server's default).

    mode: "full", "prefix", "blend" or "epic"."""
    if not isinstance(question, str):
        raise InvalidArgument(f"question must be a string, got {type(question).__name__}", field="question")
    if not isinstance(collection, str) or not collection:
        raise InvalidArgument("collection must be a non-empty string: the collection to answer from",
                              field="collection")
    req = apb.AskRequest(
        request_id=request_id or uuid.uuid4().hex,
        question=question,
        collection=collection,
        system_prompt=system_prompt or "",
    )
    if k is not None:
        req.k = k
    if mode is not None:
        req.mode = enum_value(apb.AskMode, mode, "ASK_MODE_", "mode")
    if filter:
        req.filter.CopyFrom(dict_to_struct(filter, "filter"))
    if recompute_ratio is not None:
        req.recompute_ratio = recompute_ratio
    if epic_tokens is not None:
        req.epic_tokens = epic_tokens
    if json_schema is not None:
        req.json_schema = schema_text(json_schema)
        if strict is not None:
            req.strict = strict
    _set_sampling(req.sampling, sampling)
    return req




def build_query_request(
    connector: str, question: str, *, mode: str | None, link: bool | None, grammar: bool | None,
    self_correct: bool | None, max_rows: int | None, timeout_s: float | None, instructions: str | None,
    max_tokens: int | None, temperature: float | None, request_id: str | None, ground_values: bool | None = None,
) -> tpb.QueryRequest:
    req = tpb.QueryRequest(connector=connector, question=question, instructions=instructions or "",
                           request_id=request_id or "")
    if mode is not None:
        req.mode = enum_value(tpb.QueryMode, mode, "QUERY_MODE_", "mode")
    for name, value in (("link", link), ("grammar", grammar), ("self_correct", self_correct),
                        ("ground_values", ground_values), ("max_rows", max_rows), ("timeout_s", timeout_s)):
        if value is not None:
            setattr(req, name, value)
    _set_sampling(req.sampling, {"max_tokens": max_tokens, "temperature": temperature})
    return req


# -- connectors ----------------------------------------------------------------------------------


def absolute_connector_url(url: str, cwd: str | None = None) -> str:
    """`url` with a relative file path made absolute against the client's working directory.

    The server opens the path, and its working directory is rarely the caller's: `./shop.db`,
    `sqlite:///data/shop.db` (three slashes: relative) and `file://exports/` are resolved here,
    where the caller meant them. Server URLs (postgresql://, mysql://, ...), absolute paths,
    `~/...` inside a URL and SQLite's in-memory forms are sent as given."""
    target = url.strip()
    base = os.getcwd() if cwd is None else cwd
    if "://" not in target:
        path = os.path.expanduser(target)
        if not target or (path == target and os.path.isabs(path)):
            return url
        return os.path.abspath(os.path.join(base, path))
    scheme, rest = target.split("://", 1)
    kind = scheme.split("+", 1)[0].lower()
    if kind == "file":
        return f"{scheme}://{absolute_connector_url(rest, base)}" if rest else url
    if kind != "sqlite" or not rest.startswith("/"):
        return url
    database, sep, query = rest[1:].partition("?")
    if not database or database == ":memory:" or database.startswith(("file:", "~")) or os.path.isabs(database):
        return url
    return f"{scheme}:///{os.path.abspath(os.path.join(base, database))}{sep}{query}"


# -- upsert ------------------------------------------------------------------------------



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
    """Turns documents into UpsertRequests: a header naming the collection, then batches; and
    the server's acknowledgements into progress(n) calls.

    The call is one transaction on the server. A document that cannot be converted (or an error
    raised by the caller's iterable) is kept in .error, so the caller raises it once the call is
    over, and cancels the call: ending the stream normally would commit the batches before it."""

    def __init__(
        self,
        name: str,
        batch_size: int,
        create_if_missing: bool,
        progress: Callable[[int], None] | None,
        max_bytes: int = UPSERT_BATCH_BYTES,
        precompute_kv: bool = False,
        request_id: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.header = rpb.UpsertRequest(
            collection=name, create_if_missing=create_if_missing, precompute_kv=precompute_kv,
            progress=progress is not None,  # acknowledgements only when someone shows them
            request_id=request_id or "",  # the first message's names the call (empty: the server picks one)
        )
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.progress = progress
        self.error: Exception | None = None
        self.acknowledged = 0  # documents the server acknowledged (reported to progress)
        self.committed = False  # a committed=true reply came: the call's documents are stored
        self._cancel: Callable[[], Any] | None = None
        self._attached = threading.Event()
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

    def attach(self, cancel: Callable[[], Any]) -> None:
        self._cancel = cancel
        self._attached.set()
        if self.error is not None:  # the documents failed before the call was handed back
            cancel()

    def receive(self, msg: rpb.UpsertResponse) -> None:
        """A reply: the counts are cumulative; the last documents are acknowledged by the commit."""
        self.committed = self.committed or msg.committed
        if msg.documents > self.acknowledged:
            n, self.acknowledged = msg.documents - self.acknowledged, msg.documents
            if self.progress is not None:
                self.progress(n)

    def _fail(self, exc: Exception, wait: bool) -> None:
        """Keep the documents' error and cancel the call, so the server rolls back."""
        self.error = exc
        if wait:  # the blocking client iterates on gRPC's thread, possibly before attach()
            self._attached.wait(30)
        if self._cancel is not None:
            self._cancel()

    def _take(self) -> rpb.UpsertRequest:
        req = rpb.UpsertRequest(documents=self._batch)
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
            self._fail(exc, wait=True)
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
            self._fail(exc, wait=False)  # attach() ran before the loop started this iteration
            return
        last = self.flush()
        if last is not None:
            yield last
