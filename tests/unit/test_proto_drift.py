"""The checked-in generated code must match what `make proto` produces from proto/: the _pb2
modules, services/_proto/descriptors.binpb (what reflection serves, with comments) and docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path

import grpc_tools  # noqa: F401 - a dev dependency: missing, this file fails to import instead of skipping
import pytest
from google.protobuf import descriptor_pb2

from ragloom.services import protogen

# The generator stamps its own version into the code: a newer grpcio-tools in a fresh venv is not
# drift in the protos (pyproject's lower bounds keep the runtime at or above the stamp).
_STAMPS = [
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = <v>"),
    (re.compile(r"# Protobuf Python Version: \S+"), "# Protobuf Python Version: <v>"),
    (re.compile(r"(ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,"),
     r"\1 <v>,"),
]


def _unstamped(text: str) -> str:
    for pattern, repl in _STAMPS:
        text = pattern.sub(repl, text)
    return text


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make proto`'s output, written to a scratch folder (docs included: <folder>/api.md)."""
    out = tmp_path_factory.mktemp("protogen")
    assert protogen.generate(out), "protogen wrote nothing"
    return out


def test_generated_code_matches_protos(fresh_dir: Path) -> None:
    fresh = {p.name: _unstamped(p.read_text()) for p in fresh_dir.iterdir()
             if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name}
    assert fresh, "protogen wrote no modules"
    checked_in = {
        p.name: _unstamped(p.read_text())
        for p in protogen.OUT_DIR.iterdir()
        if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name
    }
    assert sorted(checked_in) == sorted(fresh), "generated file set differs; run `make proto`"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not stale, f"generated code is out of date ({stale}); run `make proto`"


def test_generated_imports_are_package_relative() -> None:
    # `from ragloom.v1 import ...` would resolve against our own ragloom package and fail.
    for path in protogen.OUT_DIR.glob("*_pb2*.py"):
        assert "from ragloom.v1" not in path.read_text(), path
    from ragloom.services._proto import generation_pb2, generation_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc

    for pb2, pb2_grpc, name in [(generation_pb2, generation_pb2_grpc, "ragloom/v1/generation.proto"),
                                (retrieval_pb2, retrieval_pb2_grpc, "ragloom/v1/retrieval.proto")]:
        assert pb2.DESCRIPTOR.name == name
        assert pb2.DESCRIPTOR.services_by_name, f"{name} declares no service"
        for service in pb2.DESCRIPTOR.services_by_name:
            assert hasattr(pb2_grpc, f"{service}Stub"), (pb2_grpc.__name__, service)


def _files(path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    return {f.name: f for f in fds.file}


def test_descriptor_set_matches_protos(fresh_dir: Path) -> None:
    """Reflection serves our files from descriptors.binpb; protoc writes the same bytes for the same
    protos. The imported google/protobuf files come from grpcio-tools' own copies, so a newer
    grpcio-tools may change them (as the version stamps above): only their names must match."""
    checked_in_path = protogen.OUT_DIR / protogen.DESCRIPTOR_SET_NAME
    assert checked_in_path.exists(), f"{checked_in_path} is missing; run `make proto`"
    fresh, checked_in = _files(fresh_dir / protogen.DESCRIPTOR_SET_NAME), _files(checked_in_path)
    assert sorted(checked_in) == sorted(fresh), "descriptor set's files differ; run `make proto`"
    own = [name for name in fresh if name.startswith(protogen.OWN_PREFIX)]
    assert own, "the descriptor set holds none of our files"
    stale = [name for name in own
             if fresh[name].SerializeToString(deterministic=True)
             != checked_in[name].SerializeToString(deterministic=True)]
    assert not stale, f"{checked_in_path.name} is out of date ({stale}); run `make proto`"
    generation = checked_in["ragloom/v1/generation.proto"]
    assert any(loc.leading_comments for loc in generation.source_code_info.location), "no comments kept"


def test_api_reference_is_up_to_date(fresh_dir: Path) -> None:
    fresh = protogen.docs_path_for(fresh_dir).read_text(encoding="utf-8")
    assert protogen.DOCS_FILE.exists(), f"{protogen.DOCS_FILE} is missing; run `make proto`"
    assert protogen.DOCS_FILE.read_text(encoding="utf-8") == fresh, (
        f"{protogen.DOCS_FILE.relative_to(protogen.ROOT)} is out of date; run `make proto`")

