"""The checked-in generated code must match what `make proto` produces from proto/."""

from __future__ import annotations

import re
from pathlib import Path

import grpc_tools  # noqa: F401 - a dev dependency: missing, this file fails to import instead of skipping

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


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    assert written, "protogen wrote nothing"
    fresh = {p.name: _unstamped(p.read_text()) for p in written}
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
    from ragloom.services._proto import generation_pb2, generation_pb2_grpc

    assert generation_pb2.DESCRIPTOR.name == "ragloom/v1/generation.proto"
    assert hasattr(generation_pb2_grpc, "GenerationStub")
    from ragloom.services._proto import retrieval_pb2, retrieval_pb2_grpc

    assert retrieval_pb2.DESCRIPTOR.name == "ragloom/v1/retrieval.proto"
    assert hasattr(retrieval_pb2_grpc, "RetrievalStub")
