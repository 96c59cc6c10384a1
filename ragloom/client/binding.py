"""How an API method written once (api.py) becomes a blocking method of Client and a coroutine
method of AsyncClient: a descriptor that picks the driver by the class it is read from, typed so
that `Client().generate(...)` is a Completion and `AsyncClient().generate(...)` an awaitable one."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from ragloom.client.calls import Op, ServerStream
from ragloom.client.channel import ClientBase
from ragloom.client.drivers import Asyncio, Blocking, arun, run

P = ParamSpec("P")
R = TypeVar("R")
SW = TypeVar("SW")  # what a blocking stream method returns
AW = TypeVar("AW")  # what an asyncio stream method returns

OpFunction = Callable[Concatenate[Any, P], Op[R]]


def _like(op: Callable[..., Any], method: Callable[..., Any], returns: str | None = None,
          doc: str | None = None) -> Callable[..., Any]:
    """`method` with op's name, docstring and signature, less the Op[...] around its return type."""
    functools.update_wrapper(method, op)
    del method.__wrapped__  # type: ignore[attr-defined]  # inspect would show op's own signature
    sig = inspect.signature(op)
    ret = sig.return_annotation
    if returns is None and isinstance(ret, str) and ret.startswith("Op[") and ret.endswith("]"):
        returns = ret[len("Op["):-1]
    method.__signature__ = sig.replace(return_annotation=returns or ret)  # type: ignore[attr-defined]
    if doc is not None:
        method.__doc__ = doc
    return method


class _Descriptor:
    """Builds, once per client kind, the function a client class exposes, and binds it."""

    def __init__(self) -> None:
        self._functions: dict[type, Callable[..., Any]] = {}

    def _build(self, kind: type) -> Callable[..., Any]:
        raise NotImplementedError

    def _get(self, obj: Any, owner: type) -> Any:
        kind = Asyncio if issubclass(owner, Asyncio) else Blocking
        fn = self._functions.get(kind)
        if fn is None:
            fn = self._functions[kind] = self._build(kind)
        return fn if obj is None else types.MethodType(fn, obj)


class Method(_Descriptor, Generic[P, R]):
    """A unary or collecting API method: Client runs it blocking, AsyncClient awaits it."""

    def __init__(self, op: OpFunction[P, R]) -> None:
        super().__init__()
        self.op = op

    @overload
    def __get__(self, obj: None, owner: type) -> Callable[..., Any]: ...
    @overload
    def __get__(self, obj: Blocking, owner: type) -> Callable[P, R]: ...
    @overload
    def __get__(self, obj: Asyncio, owner: type) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        return self._get(obj, owner)

    def _build(self, kind: type) -> Callable[..., Any]:
        op = self.op
        if kind is Asyncio:
            async def awaiting(self: ClientBase, /, *args: Any, **kwargs: Any) -> Any:
                return await arun(self, op(self, *args, **kwargs))

            return _like(op, awaiting)

        def blocking(self: ClientBase, /, *args: Any, **kwargs: Any) -> Any:
            return run(self, op(self, *args, **kwargs))

        return _like(op, blocking)


class StreamMethod(_Descriptor, Generic[P, SW, AW]):
    """A streaming API method: starts the op's server stream and hands it to the caller wrapped
    (sync_wrap for Client, async_wrap for AsyncClient); starting one needs no await."""

    def __init__(self, op: OpFunction[P, Any], sync_wrap: Callable[[Any, Any], SW],
                 async_wrap: Callable[[Any, Any], AW], doc: str) -> None:
        super().__init__()
        self.op, self.doc = op, doc
        self.wraps: dict[type, Callable[[Any, Any], Any]] = {Blocking: sync_wrap, Asyncio: async_wrap}

    @overload
    def __get__(self, obj: None, owner: type) -> Callable[..., Any]: ...
    @overload
    def __get__(self, obj: Blocking, owner: type) -> Callable[P, SW]: ...
    @overload
    def __get__(self, obj: Asyncio, owner: type) -> Callable[P, AW]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        return self._get(obj, owner)

    def _build(self, kind: type) -> Callable[..., Any]:
        op, wrap = self.op, self.wraps[kind]

        def streaming(self: ClientBase, /, *args: Any, **kwargs: Any) -> Any:
            calls = op(self, *args, **kwargs)
            call = next(calls)  # builds and checks the request: bad arguments raise here
            calls.close()  # the caller consumes the stream, not the op
            assert isinstance(call, ServerStream), f"{op.__name__} does not stream"
            fn, timeout = self._start(call)
            return wrap(fn(call.request, timeout=timeout), call.state)

        return _like(op, streaming, returns=getattr(wrap, "__name__", None), doc=self.doc)


def rpc(op: OpFunction[P, R]) -> Method[P, R]:
    """Decorates an API method written as an Op generator (see api.py)."""
    return Method(op)


def streamed(method: Method[P, Any], sync_wrap: Callable[[Any, Any], SW], async_wrap: Callable[[Any, Any], AW],
             doc: str) -> StreamMethod[P, SW, AW]:
    """The streaming twin of a method whose op yields one ServerStream (generate -> stream)."""
    return StreamMethod(method.op, sync_wrap, async_wrap, doc)
