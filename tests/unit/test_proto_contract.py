"""The API contract: proto/ passes `buf lint` (proto/buf.yaml) and does not break the last released
API, proto/releases/v1.binpb (see proto/releases/README.md).

buf is the version pinned in tools/package-lock.json (tools/node_modules/.bin/buf); when it is not
installed yet, the test runs `npm ci --prefix tools` once. Without Node.js/npm the tests skip,
except in CI (CI=true), where a missing toolchain must not pass silently."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
BUF = TOOLS / "node_modules" / ".bin" / "buf"
RELEASE = ROOT / "proto" / "releases" / "v1.binpb"


@cache
def _install() -> str | None:
    """Run `npm ci --prefix tools` (once per session); None when it worked, else why not."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found (buf is installed from npm: tools/package.json)"
    try:
        proc = subprocess.run([npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund"], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "`npm ci --prefix tools` took longer than 300 s"
    if proc.returncode != 0 or not BUF.exists():
        return f"`npm ci --prefix tools` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return None


def _buf() -> Path:
    if not BUF.exists():
        why = _install()
        if why is not None:
            reason = f"buf is not available: {why}"
            if in_ci():
                pytest.fail(f"{reason}; CI=true, so a missing toolchain is an error", pytrace=False)
            pytest.skip(reason)
    return BUF


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_buf()), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_buf_lint() -> None:
    proc = _run("lint", "proto")
    assert proc.returncode == 0, (
        f"`buf lint proto` (rules: proto/buf.yaml) failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )


def test_no_breaking_change_against_last_release() -> None:
    buf = _buf()
    if not RELEASE.exists():
        pytest.fail(f"{RELEASE.relative_to(ROOT)} is missing: it is the last released API that `buf breaking` "
                    "compares with; create it with `make api-release` (proto/releases/README.md)", pytrace=False)
    proc = subprocess.run([str(buf), "breaking", "proto", "--against", str(RELEASE.relative_to(ROOT))],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"proto/ breaks the last released API ({RELEASE.relative_to(ROOT)}; rules: proto/buf.yaml):\n"
        f"{proc.stdout}{proc.stderr}\nAdd instead of changing (new fields, RPCs, enum values); a deliberate "
        "breaking change needs a new API version (proto/releases/README.md)."
    )
