"""Server reflection serves our proto files with their comments (source_code_info), so grpcurl
`describe` and Postman show the API documentation (services/reflection_docs.py).

A real server (no model: Retrieval and Tables over an empty data dir) is asked over loopback with
the raw reflection stub and with grpc_reflection's client-side descriptor database. Files and
services are found through the server's own answers and the checked-in descriptor set, never by
name, so renaming services or adding files does not touch this test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from background_loop import LiveServer, live_server
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ragloom.config import Settings
from ragloom.retrieval.collections import CollectionManager
from ragloom.services import protogen

SERVICE_PATH = 6  # FileDescriptorProto.service: SourceCodeInfo paths of services are (6, index)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("reflection-data")
    manager = CollectionManager(data_dir)  # the embedder loads on first use: never, here
    settings = Settings(host="127.0.0.1", port=0, data_dir=data_dir, shutdown_grace_s=1.0)
    try:
        with live_server(settings, model=False, collections=manager) as s:
            yield s
    finally:
        manager.close()


def _ask(address: str, *requests: reflection_pb2.ServerReflectionRequest) -> list[reflection_pb2.ServerReflectionResponse]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        return list(stub.ServerReflectionInfo(iter(requests), timeout=10))


def _files(response: reflection_pb2.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.HasField("file_descriptor_response"), response.error_response
    return [descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in response.file_descriptor_response.file_descriptor_proto]


def _comments(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    return [loc.leading_comments for loc in file.source_code_info.location if loc.leading_comments.strip()]


def _own_files() -> list[str]:
    """Our proto files, as `make proto` recorded them."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (protogen.OUT_DIR / protogen.DESCRIPTOR_SET_NAME).read_bytes())
    return sorted(f.name for f in fds.file if f.name.startswith(protogen.OWN_PREFIX))


def test_generation_proto_has_comments(served: LiveServer) -> None:
    # served although this server runs no generation service: reflection answers by file
    [response] = _ask(served.address, reflection_pb2.ServerReflectionRequest(file_by_filename="ragloom/v1/generation.proto"))
    files = _files(response)
    assert files[0].name == "ragloom/v1/generation.proto"
    assert _comments(files[0]), "ragloom/v1/generation.proto came without comments (source_code_info)"


def test_every_own_file_is_served_with_comments(served: LiveServer) -> None:
    names = _own_files()
    assert "ragloom/v1/generation.proto" in names
    responses = _ask(served.address, *[reflection_pb2.ServerReflectionRequest(file_by_filename=n) for n in names])
    for name, response in zip(names, responses, strict=True):
        file = _files(response)[0]
        assert file.name == name
        assert _comments(file), f"{name} came without comments"


def test_listed_services_come_with_their_comments(served: LiveServer) -> None:
    [listed] = _ask(served.address, reflection_pb2.ServerReflectionRequest(list_services=""))
    ours = sorted(s.name for s in listed.list_services_response.service if s.name.startswith("ragloom."))
    assert ours, "the server lists none of our services"
    responses = _ask(served.address, *[reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in ours])
    for service, response in zip(ours, responses, strict=True):
        package, _, simple = service.rpartition(".")
        [(file, index)] = [(f, i) for f in _files(response) if f.package == package
                           for i, s in enumerate(f.service) if s.name == simple]
        service_docs = [loc.leading_comments for loc in file.source_code_info.location
                        if tuple(loc.path) == (SERVICE_PATH, index)]
        assert service_docs and service_docs[0].strip(), f"{service} ({file.name}) has no comment"


def test_reflection_clients_resolve_the_documented_files(served: LiveServer) -> None:
    """What grpcurl does: build a pool from the served files and their imports (google/protobuf/*)."""
    with grpc.insecure_channel(served.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        ours = [s for s in database.get_services() if s.startswith("ragloom.")]
        assert ours
        for name in ours:
            service = pool.FindServiceByName(name)
            assert service.methods, name
            for method in service.methods:  # request and response types resolve, imports included
                assert method.input_type.fields is not None and method.output_type.full_name


def test_a_stale_descriptor_set_falls_back_to_the_served_schema(tmp_path: Path) -> None:
    """A descriptors.binpb that does not describe the running code is not served (comments or not)."""
    from ragloom.services import reflection_docs
    from ragloom.services._proto import generation_pb2

    served = descriptor_pb2.FileDescriptorProto()
    generation_pb2.DESCRIPTOR.CopyToProto(served)
    stale = descriptor_pb2.FileDescriptorProto()
    stale.CopyFrom(reflection_docs.documented_files()[served.name])
    stale.message_type[0].name += "Renamed"
    servicer = reflection_docs.DocumentedReflectionServicer([], {served.name: stale})
    assert servicer._answer(served.SerializeToString()) == served.SerializeToString()
    current = reflection_docs.DocumentedReflectionServicer([], reflection_docs.documented_files())
    answer = descriptor_pb2.FileDescriptorProto.FromString(current._answer(served.SerializeToString()))
    assert _comments(answer)
