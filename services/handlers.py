"""Rebuilding grpc.aio method handlers inside server interceptors: one behaviour wrapped for each
of the four call shapes, and the handler that refuses a call with an error's status. Auth
(services/auth.py) and admission (services/limits.py) wrap calls this way."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ragloom.services.status import failure_status


def behaviour(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function behind a handler, whatever its shape."""
    return (handler.unary_unary or handler.unary_stream or handler.stream_unary  # type: ignore[no-any-return]
            or handler.stream_stream)


def rebuild(handler: grpc.RpcMethodHandler, unary: Callable[..., Awaitable[Any]],
            stream: Callable[..., AsyncIterator[Any]]) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s shape and serializers: `unary` answers single-response calls,
    `stream` streaming ones."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


async def responses(handler: grpc.RpcMethodHandler, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    """A streaming handler's responses, whether it yields them or writes them with context.write."""
    result = behaviour(handler)(request, context)
    if inspect.isasyncgen(result):
        async for message in result:
            yield message
    else:
        await result


def refusing(handler: grpc.RpcMethodHandler, exc: Exception, method: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with exc's status."""
    failure = failure_status(exc, method.rsplit("/", 1)[-1])

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(*failure)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(*failure)
        yield  # pragma: no cover  (abort raises; this makes the function an async generator)

    return rebuild(handler, unary, stream)
