"""Regenerate the checked-in protobuf/gRPC code: `python -m ragloom.services.protogen` (`make proto`).

protoc mirrors the proto path (`ragloom/v1/x_pb2.py`) and writes absolute imports
(`from ragloom.v1 import x_pb2`) that would resolve against *our* `ragloom` package and fail.
We generate into a scratch folder, flatten the files into `services/_proto/` (already a
package, so no new package entries) and rewrite those imports to package-relative ones.
The descriptors keep their `ragloom/v1/...proto` names, which is what reflection serves.

Two more outputs come from the same protoc run:
  - `services/_proto/descriptors.binpb`: a FileDescriptorSet of proto/ragloom/v1/*.proto and
    their imports *with* source info (comments). The _pb2 modules carry none, so the server's
    reflection serves our files from this set (services/reflection_docs.py) and grpcurl,
    Postman etc. show the proto comments;
  - `docs/api.md`: the API reference, rendered from that set (render_markdown).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
DESCRIPTOR_SET_NAME = "descriptors.binpb"
DOCS_FILE = ROOT / "docs" / "api.md"
# the files of ours inside a descriptor set (the rest are imports such as google/protobuf/*)
OWN_PREFIX = "ragloom/"

# `from ragloom.v1 import generation_pb2 as ragloom_dot_v1_dot_generation__pb2`
_IMPORT = re.compile(r"^from ragloom\.v1 import (\w+_pb2)", re.MULTILINE)
# pyi stubs refer to sibling modules as `import ragloom.v1.x_pb2` / `ragloom.v1.x_pb2.Msg`
_PYI_IMPORT = re.compile(r"^import ragloom\.v1\.(\w+_pb2)$", re.MULTILINE)
_PYI_REF = re.compile(r"\bragloom\.v1\.(\w+_pb2)\.")


def proto_files() -> list[Path]:
    return sorted((PROTO_DIR / "ragloom" / "v1").glob("*.proto"))


def _rewrite(name: str, text: str) -> str:
    text = _IMPORT.sub(r"from . import \1", text)
    if name.endswith(".pyi"):
        text = _PYI_IMPORT.sub(r"from . import \1", text)
        text = _PYI_REF.sub(r"\1.", text)
    return text


def docs_path_for(out_dir: Path) -> Path:
    """Where generate(out_dir) writes the API reference: docs/api.md for services/_proto, else
    <out_dir>/api.md (a scratch generation, such as the drift test's, leaves docs/ alone)."""
    return DOCS_FILE if out_dir.resolve() == OUT_DIR else out_dir / "api.md"


def generate(out_dir: Path = OUT_DIR, docs_out: Path | None = None) -> list[Path]:
    """Write the generated modules, descriptors.binpb and the API reference (docs_out, default
    docs_path_for(out_dir)); returns the files written."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_DIR / 'ragloom' / 'v1'}")
    # protoc's own include dir provides google/protobuf/*.proto
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / DESCRIPTOR_SET_NAME
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--descriptor_set_out={descriptor_set}",
            "--include_source_info",
            "--include_imports",
            *[str(f.relative_to(PROTO_DIR)) for f in files],
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise SystemExit(f"protoc failed with exit code {rc}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for src in sorted((Path(tmp) / "ragloom" / "v1").iterdir()):
            dst = out_dir / src.name
            dst.write_text(_rewrite(src.name, src.read_text()))
            written.append(dst)
        data = descriptor_set.read_bytes()
    dst = out_dir / DESCRIPTOR_SET_NAME
    dst.write_bytes(data)
    written.append(dst)
    docs = docs_out or docs_path_for(out_dir)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(render_markdown(descriptor_pb2.FileDescriptorSet.FromString(data)), encoding="utf-8")
    written.append(docs)
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC code (do not edit; run `make proto`)."""\n')
    return written


# -- API reference (Markdown) ------------------------------------------------------------------

# FileDescriptorProto / DescriptorProto / ... field numbers: the `path` of SourceCodeInfo.Location
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_SYNTAX = 4, 5, 6, 12
_MSG_FIELD, _MSG_NESTED, _MSG_ENUM, _MSG_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_FD = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _FD.TYPE_DOUBLE: "double", _FD.TYPE_FLOAT: "float", _FD.TYPE_INT64: "int64", _FD.TYPE_UINT64: "uint64",
    _FD.TYPE_INT32: "int32", _FD.TYPE_FIXED64: "fixed64", _FD.TYPE_FIXED32: "fixed32", _FD.TYPE_BOOL: "bool",
    _FD.TYPE_STRING: "string", _FD.TYPE_BYTES: "bytes", _FD.TYPE_UINT32: "uint32", _FD.TYPE_SFIXED32: "sfixed32",
    _FD.TYPE_SFIXED64: "sfixed64", _FD.TYPE_SINT32: "sint32", _FD.TYPE_SINT64: "sint64",
}
_WELL_KNOWN_DOCS = "https://protobuf.dev/reference/protobuf/google.protobuf/"

Path_ = tuple[int, ...]


class _Comments:
    """A file's comments by element path (SourceCodeInfo), as Markdown-ready text."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        self._by_path: dict[Path_, descriptor_pb2.SourceCodeInfo.Location] = {}
        for loc in file.source_code_info.location:
            key = tuple(loc.path)
            have = self._by_path.get(key)
            if have is None or (not _has_comments(have) and _has_comments(loc)):
                self._by_path[key] = loc

    def get(self, path: Path_) -> str:
        """The element's leading comment and its trailing one (`int32 x = 1; // ...`)."""
        loc = self._by_path.get(path)
        if loc is None:
            return ""
        parts = [_clean(c) for c in (loc.leading_comments, loc.trailing_comments)]
        return "\n\n".join(p for p in parts if p)

    def file_comment(self) -> str:
        """The comment above `syntax = ...`: detached blocks (a blank line after) and the attached one."""
        loc = self._by_path.get((_FILE_SYNTAX,))
        if loc is None:
            return ""
        parts = [_clean(c) for c in (*loc.leading_detached_comments, loc.leading_comments)]
        return "\n\n".join(p for p in parts if p)


def _has_comments(loc: descriptor_pb2.SourceCodeInfo.Location) -> bool:
    return bool(loc.leading_comments or loc.trailing_comments or loc.leading_detached_comments)


def _clean(comment: str) -> str:
    """protoc keeps the text after `//` as is: drop the one space after the slashes, and escape
    `<` outside code spans (`map<string, Value>` in prose would otherwise read as an HTML tag)."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    text = "\n".join(line.rstrip() for line in lines).strip("\n")
    spans = text.split("`")
    return "`".join(s.replace("<", "&lt;") if i % 2 == 0 else s for i, s in enumerate(spans))


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, `|` escaped."""
    paragraphs = [" ".join(p.split("\n")) for p in text.split("\n\n")]
    return "<br><br>".join(paragraphs).replace("|", "\\|")


def _anchor(full_name: str) -> str:
    return full_name.lstrip(".")


def _file_anchor(name: str) -> str:
    """`ragloom/v1/rag.proto` -> `ragloom-v1-rag.proto` (a slash in an id trips some renderers)."""
    return name.replace("/", "-")


class _Types:
    """Resolves `.pkg.Type` names to Markdown links and knows which nested types are map entries."""

    def __init__(self, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> None:
        self.documented: set[str] = set()
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}
        for f in files:
            prefix = f".{f.package}" if f.package else ""
            for name, msg in _walk_messages(f.message_type, prefix):
                if msg.options.map_entry:
                    self.map_entries[name] = msg
                elif f.name.startswith(OWN_PREFIX):
                    self.documented.add(name)
            if f.name.startswith(OWN_PREFIX):
                for name, _ in _walk_enums(f, prefix):
                    self.documented.add(name)

    def link(self, type_name: str, package: str) -> str:
        short = type_name.lstrip(".")
        if short.startswith(package + "."):
            short = short[len(package) + 1:]
        if type_name in self.documented:
            return f"[`{short}`](#{_anchor(type_name)})"
        if type_name.startswith(".google.protobuf."):
            simple = type_name.rsplit(".", 1)[1]
            return f"[`{short}`]({_WELL_KNOWN_DOCS}#{simple.lower()})"
        return f"`{short}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto, package: str) -> str:
        if field.type in (_FD.TYPE_MESSAGE, _FD.TYPE_ENUM):
            entry = self.map_entries.get(field.type_name)
            if entry is not None:
                key, value = entry.field[0], entry.field[1]
                return f"map&lt;{self.field_type(key, package)}, {self.field_type(value, package)}&gt;"
            return self.link(field.type_name, package)
        return f"`{_SCALARS.get(field.type, str(field.type))}`"


def _walk_messages(
    messages: Iterable[descriptor_pb2.DescriptorProto], prefix: str, path: Path_ = (_FILE_MESSAGE,)
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for _, name, msg in _walk_messages_with_paths(messages, prefix, path):
        yield name, msg


def _walk_messages_with_paths(
    messages: Iterable[descriptor_pb2.DescriptorProto], prefix: str, path: Path_ = (_FILE_MESSAGE,)
) -> Iterator[tuple[Path_, str, descriptor_pb2.DescriptorProto]]:
    """Every message, nested ones right after their parent, with its source path and full name."""
    for i, msg in enumerate(messages):
        full = f"{prefix}.{msg.name}"
        yield (*path, i), full, msg
        yield from _walk_messages_with_paths(msg.nested_type, full, (*path, i, _MSG_NESTED))


def _walk_enums(
    file: descriptor_pb2.FileDescriptorProto, prefix: str
) -> Iterator[tuple[str, tuple[Path_, descriptor_pb2.EnumDescriptorProto]]]:
    """Top-level enums, then the enums nested in messages, with their full names and paths."""
    for i, enum in enumerate(file.enum_type):
        yield f"{prefix}.{enum.name}", ((_FILE_ENUM, i), enum)
    for path, name, msg in _walk_messages_with_paths(file.message_type, prefix):
        for i, enum in enumerate(msg.enum_type):
            yield f"{name}.{enum.name}", ((*path, _MSG_ENUM, i), enum)


def _relative(full_name: str, package: str) -> str:
    name = full_name.lstrip(".")
    return name[len(package) + 1:] if package and name.startswith(package + ".") else name


def _heading(level: int, full_name: str, title: str) -> list[str]:
    return [f'<a id="{_anchor(full_name)}"></a>', "", f"{'#' * level} {title}", ""]


def _render_file(f: descriptor_pb2.FileDescriptorProto, types: _Types) -> list[str]:
    comments = _Comments(f)
    package = f.package
    prefix = f".{package}" if package else ""
    out: list[str] = [f'<a id="{_file_anchor(f.name)}"></a>', "", f"## {f.name}", ""]
    if package:
        out += [f"Package `{package}`.", ""]
    if text := comments.file_comment():
        out += [text, ""]

    for si, service in enumerate(f.service):
        full = f"{prefix}.{service.name}"
        out += _heading(3, full, f"Service `{_relative(full, package)}`")
        if text := comments.get((_FILE_SERVICE, si)):
            out += [text, ""]
        for mi, method in enumerate(service.method):
            request = ("stream " if method.client_streaming else "") + types.link(method.input_type, package)
            response = ("stream " if method.server_streaming else "") + types.link(method.output_type, package)
            out += _heading(4, f"{full}.{method.name}", f"`{method.name}`")
            out += [f"{request} → {response}", ""]
            if method.options.deprecated:
                out += ["**Deprecated.**", ""]
            if text := comments.get((_FILE_SERVICE, si, _SERVICE_METHOD, mi)):
                out += [text, ""]

    for path, full, msg in _walk_messages_with_paths(f.message_type, prefix):
        if msg.options.map_entry:
            continue
        out += _heading(3, full, f"Message `{_relative(full, package)}`")
        if msg.options.deprecated:
            out += ["**Deprecated.**", ""]
        if text := comments.get(path):
            out += [text, ""]
        if not msg.field:
            out += ["No fields.", ""]
            continue
        out += ["| Field | # | Type | Label | Description |", "| --- | --- | --- | --- | --- |"]
        for fi, field in enumerate(msg.field):
            labels: list[str] = []
            if field.proto3_optional:
                labels.append("optional")
            elif field.HasField("oneof_index"):
                labels.append(f"oneof `{msg.oneof_decl[field.oneof_index].name}`")
            elif field.label == _FD.LABEL_REPEATED and field.type_name not in types.map_entries:
                labels.append("repeated")
            if field.options.deprecated:
                labels.append("deprecated")
            text = comments.get((*path, _MSG_FIELD, fi))
            out.append(f"| `{field.name}` | {field.number} | {types.field_type(field, package)} | "
                       f"{', '.join(labels)} | {_cell(text)} |")
        out.append("")
        for oi, oneof in enumerate(msg.oneof_decl):
            members = [fl for fl in msg.field if fl.HasField("oneof_index") and fl.oneof_index == oi]
            if not members or members[0].proto3_optional:  # the synthetic oneof of an `optional` field
                continue
            text = comments.get((*path, _MSG_ONEOF, oi))
            names = ", ".join(f"`{fl.name}`" for fl in members)
            out += [f"**Oneof `{oneof.name}`**: at most one of {names}." + (f" {text}" if text else ""), ""]

    for full, (path, enum) in _walk_enums(f, prefix):
        out += _heading(3, full, f"Enum `{_relative(full, package)}`")
        if enum.options.deprecated:
            out += ["**Deprecated.**", ""]
        if text := comments.get(path):
            out += [text, ""]
        out += ["| Name | Number | Description |", "| --- | --- | --- |"]
        for vi, value in enumerate(enum.value):
            text = comments.get((*path, _ENUM_VALUE, vi))
            if value.options.deprecated:
                text = "**Deprecated.** " + text
            out.append(f"| `{value.name}` | {value.number} | {_cell(text)} |")
        out.append("")
    return out


def render_markdown(fds: descriptor_pb2.FileDescriptorSet) -> str:
    """The API reference for the ragloom/ files of a FileDescriptorSet (built with source info):
    per file its comment, services and their RPCs, messages with field tables, enums. Every
    service, RPC, message and enum has an anchor named by its full name (`#ragloom.v1.Passage`),
    which field and RPC types link to. Deterministic: files by name, elements in source order."""
    files = sorted((f for f in fds.file if f.name.startswith(OWN_PREFIX)), key=lambda f: f.name)
    types = _Types(list(fds.file))
    out = [
        "# API reference",
        "",
        "<!-- Generated from proto/ by `make proto` (services/protogen.py); do not edit by hand. -->",
        "",
        "The gRPC API of ragloom, from the comments in "
        + ", ".join(f"[`proto/{f.name}`](../proto/{f.name})" for f in files) + ".",
        "",
        "## Contents",
        "",
    ]
    for f in files:
        out.append(f"- [{f.name}](#{_file_anchor(f.name)})")
        prefix = f".{f.package}" if f.package else ""
        names = [f"{prefix}.{s.name}" for s in f.service]
        names += [n for _, n, m in _walk_messages_with_paths(f.message_type, prefix) if not m.options.map_entry]
        names += [n for n, _ in _walk_enums(f, prefix)]
        for name in names:
            out.append(f"  - [{_relative(name, f.package)}](#{_anchor(name)})")
    out.append("")
    for f in files:
        out += _render_file(f, types)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: services/_proto)")
    parser.add_argument("--docs-out", type=Path, default=None,
                        help="the API reference (default: docs/api.md, or OUT/api.md with --out)")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.docs_out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
