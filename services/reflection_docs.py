"""Server reflection that serves the proto comments, so grpcurl `describe`, Postman and other
reflection clients show the API's documentation.

grpc_reflection's servicer answers with FileDescriptorProtos copied out of a DescriptorPool, and
those never carry source info: the generated _pb2 modules embed descriptors without comments,
and a pool drops source_code_info even when it is built from a FileDescriptorSet that has it.
`make proto` therefore also writes services/_proto/descriptors.binpb (protoc
--include_source_info --include_imports); DocumentedReflectionServicer answers as the stock
aio servicer does and swaps each of our files (ragloom/...) in the answer for its copy from that
set. A copy is used only when, comments and json_name aside, it describes exactly the file the
server runs (the pool's): a stale descriptors.binpb falls back to the comment-less file, with a
warning, rather than describe an API that differs from the one served.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

log = logging.getLogger(__name__)

DESCRIPTOR_SET = Path(__file__).resolve().parent / "_proto" / "descriptors.binpb"
OWN_PREFIX = "ragloom/"
_PB2_PACKAGE = "ragloom.services._proto"


@functools.cache
def documented_files(path: Path = DESCRIPTOR_SET) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Our files (ragloom/...) from the descriptor set, by name; empty (with a warning) when the
    set is missing or unreadable: reflection then works as before, without comments."""
    try:
        fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    except (OSError, ValueError) as exc:  # DecodeError is a ValueError
        log.warning("reflection serves no proto comments: cannot read %s (%s); run `make proto`", path, exc)
        return {}
    return {f.name: f for f in fds.file if f.name.startswith(OWN_PREFIX)}


def _schema(file: descriptor_pb2.FileDescriptorProto) -> bytes:
    """The file without what does not change the API: source info and the json_name that protoc
    fills in for a descriptor set (but not in the _pb2 modules' embedded copies)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(file)
    copy.ClearField("source_code_info")
    messages = list(copy.message_type)
    while messages:
        msg = messages.pop()
        for field in (*msg.field, *msg.extension):
            field.ClearField("json_name")
        messages.extend(msg.nested_type)
    for field in copy.extension:
        field.ClearField("json_name")
    return copy.SerializeToString(deterministic=True)


def load_own_modules(names: Iterable[str]) -> None:
    """Import the _pb2 module of each of our files, so that the default pool knows files no
    servicer imports (errors.proto: ErrorReason is only ever named in error details)."""
    for name in names:
        module = f"{_PB2_PACKAGE}.{Path(name).stem}_pb2"
        try:
            importlib.import_module(module)
        except ImportError:
            log.warning("reflection cannot serve %s: no module %s (run `make proto`)", name, module)


class DocumentedReflectionServicer(reflection.aio.ReflectionServicer):
    """The grpc.aio reflection servicer, answering with commented copies of our files."""

    def __init__(self, service_names: Iterable[str], documented: dict[str, descriptor_pb2.FileDescriptorProto],
                 pool: Any = None) -> None:
        super().__init__(service_names, pool=pool)
        self._documented = documented
        # the pool's serialized file -> what to answer instead (itself when no matching copy)
        self._answers: dict[bytes, bytes] = {}

    def _answer(self, served: bytes) -> bytes:
        answer = self._answers.get(served)
        if answer is None:
            answer = served
            file = descriptor_pb2.FileDescriptorProto.FromString(served)
            doc = self._documented.get(file.name)
            if doc is not None:
                if _schema(doc) == _schema(file):
                    answer = doc.SerializeToString(deterministic=True)
                else:
                    log.warning("reflection serves %s without comments: services/_proto/%s is out of "
                                "date with the generated code (run `make proto`)", file.name, DESCRIPTOR_SET.name)
            self._answers[served] = answer
        return answer

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        context: Any,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response") and self._documented:
                files = response.file_descriptor_response.file_descriptor_proto
                files[:] = [self._answer(f) for f in files]
            yield response


def enable_documented_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """reflection.enable_server_reflection for a grpc.aio server, with the proto comments."""
    documented = documented_files()
    load_own_modules(documented)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        DocumentedReflectionServicer(service_names, documented), server
    )
