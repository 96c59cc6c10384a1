"""Requests that cannot be decoded answer INVALID_ARGUMENT, not UNKNOWN.

grpc.aio decodes a request before the handler runs, and a DecodeError there (malformed bytes, or
a message nested deeper than protobuf's limit of 100, which a client can build with nested
google.protobuf.Struct values) ends the call as UNKNOWN "Unexpected DecodeError" with a logged
traceback. This interceptor hands the handler the raw bytes and decodes them inside the call
instead, so the failure is an InvalidArgument with the usual error details (services/status.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ragloom.errors import InvalidArgument
from ragloom.services.status import failure_status

Deserializer = Callable[[bytes], Any]


def _undecodable(method: str, exc: Exception) -> InvalidArgument:
    return InvalidArgument(f"the {method} request cannot be decoded as its protobuf message: {exc}")


async def _decode_or_abort(deserialize: Deserializer, raw: bytes, method: str, context: grpc.aio.ServicerContext) -> Any:
    try:
        return deserialize(raw)
    except DecodeError as exc:
        failure = failure_status(_undecodable(method, exc), method)
    await context.abort(*failure)


async def _decoded_stream(deserialize: Deserializer, raws: AsyncIterator[bytes], method: str) -> AsyncIterator[Any]:
    # raised inside the handler's own iteration, where its abort_on_failure maps it
    async for raw in raws:
        try:
            yield deserialize(raw)
        except DecodeError as exc:
            raise _undecodable(method, exc) from exc


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            request = await _decode_or_abort(deserialize, raw, method, context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, response_serializer=serialize)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request = await _decode_or_abort(deserialize, raw, method, context)
            async for response in inner_us(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, response_serializer=serialize)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def stream_unary(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await inner_su(_decoded_stream(deserialize, raws, method), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=serialize)
    inner_ss = handler.stream_stream

    async def stream_stream(raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in inner_ss(_decoded_stream(deserialize, raws, method), context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)


class DecodeRequests(grpc.aio.ServerInterceptor):
    """Decode every ragloom.v1 request inside its call (health and reflection are left alone)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith("/ragloom."):
            return handler
        return _wrap(handler, method.rsplit("/", 1)[-1])
