"""Drives LLMEngine from one background thread so an asyncio server never blocks on a forward.

All engine mutations happen on that thread: callers enqueue commands (add, abort) and read
outputs from per-request asyncio queues that the thread fills with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ragloom.errors import AlreadyExists, RagloomError, Unavailable
from ragloom.generation.runner.engine import LLMEngine, Loads, Output, Request

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Add:
    request: Request


@dataclass
class _Abort:
    request_id: str


@dataclass
class _Call:
    fn: Callable[[LLMEngine], Any]
    future: asyncio.Future[Any]


class EngineFailure(RagloomError):
    """The step loop raised; every request in flight at that moment fails with this."""


class Reservation:
    """One place held in the engine's queue (AsyncEngine.reservation)."""

    def __init__(self, owner: AsyncEngine) -> None:
        self._owner: AsyncEngine | None = owner

    def release(self) -> None:
        if self._owner is not None:
            self._owner._reserved -= 1
            self._owner = None


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[_Add | _Abort | _Call | None] = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue[Output | BaseException]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._loads = engine.loads()
        self._reserved = 0  # places held by reservation(); only touched on the event loop

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ragloom-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        """Abort everything in flight and stop the loop thread."""
        if self._thread is None:
            return
        for request_id in list(self._streams):
            self.abort(request_id)
        self._stopping = True
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    def loads(self) -> Loads:
        return self._loads

    def abort(self, request_id: str) -> bool:
        """Ask the loop to stop a request; its stream then ends with finish_reason 'abort'."""
        if request_id not in self._streams:
            return False
        self._commands.put(_Abort(request_id))
        return True

    async def run(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run fn(engine) on the loop thread between two steps (work that needs the model, such
        as precomputing chunk KV, without racing the step loop) and return its result."""
        if not self.running or self._loop is None:
            raise Unavailable("the engine is not running (starting up or shutting down)")
        future: asyncio.Future[T] = self._loop.create_future()
        self._commands.put(_Call(fn, future))
        return await future

    @contextlib.contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A place in the engine's queue held across a request's pre-work (Ask's retrieval and
        chunk-KV loading), so that past max_queued the request is refused before that work
        rather than after it, which under overload would only slow the requests admitted.

        Judged on the event loop from the last step's waiting count plus the places held now;
        admit() still decides exactly when the request is added. Release it just before
        generate() (the request then waits in the queue itself); leaving the block releases it.
        """
        held = self._reserved + self._loads.waiting
        if held >= self.engine.settings.max_queued:
            raise self.engine.overloaded(held)
        ticket = Reservation(self)
        self._reserved += 1
        try:
            yield ticket
        finally:
            ticket.release()

    async def generate(self, request: Request) -> AsyncIterator[Output]:
        """Outputs of one request as they are produced. Validation errors raise before the first
        yield; if the consumer stops early (cancelled, disconnected) the request is aborted."""
        if not self.running:
            raise Unavailable("the engine is not running (starting up or shutting down)")
        self.engine.validate(request)
        if request.request_id in self._streams:
            raise AlreadyExists(f"request id {request.request_id!r} is already running")
        stream: asyncio.Queue[Output | BaseException] = asyncio.Queue()
        self._streams[request.request_id] = stream
        self._commands.put(_Add(request))
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self._commands.put(_Abort(request.request_id))
            else:
                self._streams.pop(request.request_id, None)

    # ---- the loop thread ---------------------------------------------------------------------

    def _deliver(self, request_id: str, item: Output | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(stream.put_nowait, item)

    def _apply(self, command: _Add | _Abort | _Call) -> None:
        if isinstance(command, _Call):
            loop, future = self._loop, command.future
            assert loop is not None
            try:
                result = command.fn(self.engine)
            except BaseException as exc:  # handed to the caller, never kills the loop
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)
        elif isinstance(command, _Add):
            try:
                self.engine.admit()  # the bounded queue (max_queued): OVERLOADED when full
                self.engine.add_request(command.request)
            except RagloomError as exc:  # a full queue, or a limit that validate() could not see
                self._deliver(command.request.request_id, exc)
        else:
            out = self.engine.abort(command.request_id)
            if out is not None:
                self._deliver(command.request_id, out)
            stream = self._streams.pop(command.request_id, None)
            if out is None and stream is not None and self._loop is not None:
                # Already finished or never added: make sure a waiting consumer wakes up.
                self._loop.call_soon_threadsafe(stream.put_nowait, _aborted(command.request_id))

    def _run(self) -> None:
        log.info("engine loop started")
        while True:
            block = not self.engine.has_unfinished()
            try:
                command = self._commands.get(block=block, timeout=None if block else 0)
            except queue.Empty:
                command = None
                block = False
            if command is None and block:  # the shutdown sentinel
                break
            if command is not None:
                self._apply(command)
                while True:  # drain whatever else arrived
                    try:
                        nxt = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._stopping = True
                        break
                    self._apply(nxt)
            if self._stopping and not self.engine.has_unfinished():
                break
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a bug in a step must not kill the server
                log.exception("engine step failed; failing the requests in flight")
                self._fail_all(exc)
                outputs = []
            for out in outputs:
                self._deliver(out.request_id, out)
            while self.engine.failures:
                request_id, failure = self.engine.failures.popitem()
                self._deliver(request_id, failure)
            self._loads = self.engine.loads()
        log.info("engine loop stopped")

    def _fail_all(self, exc: Exception) -> None:
        for request_id in list(self._streams):
            self.engine.abort(request_id)
            self._deliver(request_id, EngineFailure(f"generation failed: {exc}"))


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller gave up (cancelled) meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _aborted(request_id: str) -> Output:
    return Output(request_id, "", [], True, "abort", 0, 0, 0)
