"""Running an API method (an `Op`, see calls.py): one driver that blocks, one that awaits.
Everything else about a method is written once in api.py."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc

from ragloom.client.calls import AnyCall, ClientStream, Op, ServerStream, _error
from ragloom.client.channel import ClientBase
from ragloom.client.streams import AsyncMessages, Messages
from ragloom.errors import RagloomError

R = TypeVar("R")


class Blocking(ClientBase):
    """Runs API methods to completion on a grpc.Channel (see binding.py)."""


class Asyncio(ClientBase):
    """Runs API methods as coroutines on a grpc.aio.Channel (see binding.py)."""


def _resume(op: Op[R], reply: Any, error: RagloomError | None) -> tuple[AnyCall | None, R | None]:
    """Send `op` the last call's response (or throw it that call's error): (its next call, None),
    or (None, its result) once it returned."""
    try:
        return (op.send(reply) if error is None else op.throw(error)), None
    except StopIteration as stop:
        return None, stop.value


def _perform(client: ClientBase, call: AnyCall) -> Any:
    fn, timeout = client._start(call)
    try:
        if isinstance(call, ClientStream):
            replies = fn(call.source.requests(call.items), timeout=timeout)
            call.source.attach(replies.cancel)
            last = None
            try:
                for last in replies:
                    call.source.receive(last)
            except BaseException:  # Ctrl-C or a failing callback: the server must not commit
                replies.cancel()
                raise
            return last
        if isinstance(call, ServerStream):
            with Messages(fn(call.request, timeout=timeout), call.state) as messages:
                for _ in messages:
                    pass
            return None
        return fn(call.request, timeout=timeout)
    except grpc.RpcError as exc:
        raise _error(exc) from exc


def run(client: ClientBase, op: Op[R]) -> R:
    """Drive `op` to its result, blocking on each call it yields."""
    call, result = _resume(op, None, None)
    while call is not None:
        try:
            reply, error = _perform(client, call), None
        except RagloomError as exc:  # the op may handle it (upsert does)
            reply, error = None, exc
        call, result = _resume(op, reply, error)
    return result  # type: ignore[return-value]


async def _aperform(client: ClientBase, call: AnyCall) -> Any:
    fn, timeout = client._start(call)
    try:
        if isinstance(call, ClientStream):
            replies = fn(call.source.arequests(call.items), timeout=timeout)
            call.source.attach(replies.cancel)
            last = None
            try:
                async for last in replies:
                    call.source.receive(last)
            except BaseException:  # a cancelled task or a failing callback: the server must not commit
                replies.cancel()
                raise
            return last
        if isinstance(call, ServerStream):
            async with AsyncMessages(fn(call.request, timeout=timeout), call.state) as messages:
                async for _ in messages:
                    pass
            return None
        return await fn(call.request, timeout=timeout)
    except grpc.RpcError as exc:
        raise _error(exc) from exc


async def arun(client: ClientBase, op: Op[R]) -> R:
    """Drive `op` to its result, awaiting each call it yields."""
    call, result = _resume(op, None, None)
    while call is not None:
        try:
            reply, error = await _aperform(client, call), None
        except RagloomError as exc:
            reply, error = None, exc
        call, result = _resume(op, reply, error)
    return result  # type: ignore[return-value]
