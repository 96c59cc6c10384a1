"""Regenerate the checked-in protobuf/gRPC code: `python -m ragloom.services.protogen` (`make proto`).

protoc mirrors the proto path (`ragloom/v1/x_pb2.py`) and writes absolute imports
(`from ragloom.v1 import x_pb2`) that would resolve against *our* `ragloom` package and fail.
We generate into a scratch folder, flatten the files into `services/_proto/` (already a
package, so no new package entries) and rewrite those imports to package-relative ones.
The descriptors keep their `ragloom/v1/...proto` names, which is what reflection serves.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"

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


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write the generated modules into out_dir; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    files = proto_files()
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_DIR / 'ragloom' / 'v1'}")
    # protoc's own include dir provides google/protobuf/*.proto
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
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
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC code (do not edit; run `make proto`)."""\n')
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: services/_proto)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
