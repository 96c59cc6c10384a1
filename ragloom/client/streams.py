"""Server streams: the states that fold their messages into a result (Generate, Ask, Query), and
the iterables handed to the caller (one iteration loop for blocking calls, one for asyncio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, Self, TypeVar

import grpc

from ragloom.client.calls import State, _error
from ragloom.client.results import (
    Answer,
    AskUsage,
    Citation,
    Completion,
    Passage,
    SqlResult,
    StreamChunk,
    Usage,
    ask_usage_from,
    enum_text,
    grounded_value_from,
    passage_from,
    result_column_from,
    row_from,
    usage_from,
)
from ragloom.errors import RagloomError
from ragloom.services._proto import generation_pb2 as pb
from ragloom.services._proto import rag_pb2 as apb
from ragloom.services._proto import tables_pb2 as tpb

S = TypeVar("S", bound=State)

# -- states -----------------------------------------------------------------------------------


class _TextState:
    """Token chunks gathered into the final text, which is parsed once the output finished."""

    def __init__(self, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        self.request_id = request_id
        self.parse = parse
        self.texts: list[str] = []
        self.token_ids: list[int] = []

    def _chunk(self, chunk: pb.Chunk) -> StreamChunk:
        self.texts.append(chunk.text)
        self.token_ids.extend(chunk.token_ids)
        return StreamChunk(text=chunk.text, token_ids=list(chunk.token_ids), usage=usage_from(chunk.usage))

    def _parsed(self, text: str, finish_reason: str, warnings: list[str], what: str) -> Any:
        if self.parse is None or finish_reason != "stop":
            return None
        try:
            return self.parse(text)
        except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError
            # e.g. a stop string cut the JSON short, or strict=False dropped a keyword the
            # pydantic model checks: the text is still there to inspect
            warnings.append(f"{what} did not parse: {exc}")
            return None


class _StreamState(_TextState):
    """Accumulates chunks so the final Completion holds the full text (and its parsed value)."""

    def __init__(self, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        super().__init__(request_id, parse)
        self.completion: Completion | None = None

    @property
    def done(self) -> bool:
        return self.completion is not None

    def feed(self, msg: pb.GenerateResponse) -> StreamChunk | None:
        if msg.HasField("chunk"):
            return self._chunk(msg.chunk)
        done = msg.complete
        text = "".join(self.texts)
        warnings = list(done.warnings)
        finish_reason = enum_text(pb.FinishReason, done.finish_reason, "FINISH_REASON_")
        parsed = self._parsed(text, finish_reason, warnings, "the output")
        self.completion = Completion(
            text=text,
            token_ids=self.token_ids,
            finish_reason=finish_reason,
            usage=usage_from(done.usage),
            request_id=done.request_id or self.request_id,
            warnings=warnings,
            parsed=parsed,
        )
        return None

    def final(self) -> Completion:
        if self.completion is None:
            raise RagloomError(f"stream {self.request_id} ended without a final message")
        return self.completion


class _AskState(_TextState):
    """Passages first, then answer chunks, then the final Answer."""

    def __init__(self, request_id: str, parse: Callable[[str], Any] | None = None) -> None:
        super().__init__(request_id, parse)
        self.passages: list[Passage] | None = None
        self.answer: Answer | None = None

    @property
    def done(self) -> bool:
        return self.answer is not None

    def feed(self, msg: apb.AskResponse) -> StreamChunk | None:
        kind = msg.WhichOneof("response")
        if kind == "passages":
            self.passages = [passage_from(p) for p in msg.passages.passages]
            return None
        if kind == "chunk":
            return self._chunk(msg.chunk)
        if kind != "complete":  # a newer server's message this client does not know
            return None
        done = msg.complete
        text = done.answer or "".join(self.texts)
        warnings = list(done.warnings)
        finish_reason = enum_text(pb.FinishReason, done.finish_reason, "FINISH_REASON_")
        parsed = self._parsed(text, finish_reason, warnings, "the answer")
        self.answer = Answer(
            text=text,
            passages=self.passages or [],
            citations=[Citation(id=c.id, chunk_id=c.chunk_id, score=c.score, rank=c.rank) for c in done.citations],
            finish_reason=finish_reason,
            usage=ask_usage_from(done.usage),
            request_id=done.request_id or self.request_id,
            mode=enum_text(apb.AskMode, done.mode, "ASK_MODE_"),
            token_ids=self.token_ids,
            warnings=warnings,
            parsed=parsed,
        )
        return None

    def final(self) -> Answer:
        if self.answer is None:
            raise RagloomError(f"ask {self.request_id} ended without a final message")
        return self.answer


class _QueryState:
    """Folds a Query/ExecuteSql response stream into one SqlResult."""

    def __init__(self) -> None:
        self.header: tpb.QueryHeader | None = None
        self.rows: list[list[Any]] = []
        self.result: SqlResult | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def feed(self, msg: tpb.QueryResponse | tpb.ExecuteSqlResponse) -> None:
        kind = msg.WhichOneof("response")
        if kind == "header":
            self.header = msg.header
        elif kind == "rows":
            self.rows.extend(row_from(r) for r in msg.rows.rows)
        elif kind == "complete":
            c, h = msg.complete, self.header or tpb.QueryHeader()
            # the complete message's kinds are judged over every row (the header's over the first batch)
            columns = c.columns or h.columns
            self.result = SqlResult(
                sql=c.sql, columns=[col.name for col in h.columns], rows=self.rows,
                column_types=[result_column_from(col) for col in columns], tables=list(h.tables),
                linked_tables=list(h.linked_tables),
                grounded_values=[grounded_value_from(g) for g in h.grounded_values], truncated=c.truncated, attempts=c.attempts, valid=c.valid,
                error=c.error or None, mode=enum_text(tpb.QueryMode, c.mode, "QUERY_MODE_") or "sql", answer=c.answer,
                failed_sql=list(c.failed_sql),
                usage=Usage(prompt_tokens=c.usage.prompt_tokens, completion_tokens=c.usage.completion_tokens),
                request_id=h.request_id, seconds=c.usage.seconds,
            )

    def final(self) -> SqlResult:
        if self.result is None:
            raise RagloomError("the query stream ended without a final message")
        return self.result


# -- iterating a started call -----------------------------------------------------------------


class _Messages(Generic[S]):
    """A started server-streaming call and the state its messages are folded into."""

    def __init__(self, call: Any, state: S) -> None:
        self._call = call
        self._state = state

    def cancel(self) -> None:
        """Cancel the call; the server aborts the request and frees its KV cache."""
        self._call.cancel()


class Messages(_Messages[S]):
    """Iterate for the chunks the state yields; leaving a `with` block early cancels the call."""

    def __iter__(self) -> Iterator[StreamChunk]:
        try:
            for msg in self._call:
                chunk = self._state.feed(msg)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._state.done:
            self.cancel()


class AsyncMessages(_Messages[S]):
    """`async for` the chunks the state yields; leaving an `async with` block early cancels the call."""

    async def __aiter__(self) -> AsyncIterator[StreamChunk]:
        try:
            async for msg in self._call:
                chunk = self._state.feed(msg)
                if chunk is not None:
                    yield chunk
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._state.done:
            self.cancel()


# -- what stream() and stream_ask() return ----------------------------------------------------

_RS = TypeVar("_RS", _StreamState, _AskState)


class _RequestView(_Messages[_RS]):
    @property
    def request_id(self) -> str:
        """Known before the first chunk: pass it to abort() from elsewhere."""
        return self._state.request_id


class _CompletionView(_RequestView[_StreamState]):
    @property
    def completion(self) -> Completion | None:
        """The whole result (full text, finish_reason, usage) once the stream is exhausted."""
        return self._state.completion

    @property
    def finish_reason(self) -> str | None:
        return self.completion.finish_reason if self.completion else None

    @property
    def usage(self) -> Usage | None:
        return self.completion.usage if self.completion else None


class _AnswerView(_RequestView[_AskState]):
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
        return self.answer.finish_reason if self.answer else None

    @property
    def usage(self) -> AskUsage | None:
        return self.answer.usage if self.answer else None


class Stream(_CompletionView, Messages[_StreamState]):
    """Iterate for StreamChunk items; then read .finish_reason / .usage / .completion."""


class AsyncStream(_CompletionView, AsyncMessages[_StreamState]):
    """`async for` for StreamChunk items; then read .finish_reason / .usage / .completion."""


class AskStream(_AnswerView, Messages[_AskState]):
    """Iterate for the answer's StreamChunk items (.passages is set before the first); then read
    .answer / .usage / .finish_reason."""


class AsyncAskStream(_AnswerView, AsyncMessages[_AskState]):
    """`async for` the answer's StreamChunk items; then read .answer / .usage / .finish_reason."""
