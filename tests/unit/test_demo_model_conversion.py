"""`make demo` shows the model-conversion progress bar on a first run (issue 14).

The demo starts `ragloom serve` with its stderr in a file, so a conversion done by the server was
invisible; the demo now converts in its own process first. Here, with an empty model cache, the
bar must reach the demo's stderr and the cache must be complete by the time the server is started
(the server start itself is replaced: its part is covered by the integration tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ragloom import demo
from ragloom.models import BUNDLED_LLM, bundled_gguf_path, list_models


@pytest.mark.slow  # ~40 s: converts the bundled model afresh; `make test` stays under 15 min
def test_first_demo_run_shows_the_conversion_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("RAGLOOM_DATA_DIR", str(data_dir))
    monkeypatch.delenv("RAGLOOM_MODEL", raising=False)
    cached_at_server_start: list[bool] = []

    def fake_start_server(stderr_path: Path, timeout: float = 0, **_: object) -> tuple[subprocess.Popen[str], str, str]:
        cached_at_server_start.append({m.name: m.cached for m in list_models(data_dir)}[BUNDLED_LLM])
        raise demo.DemoError("stopped here by the test")

    monkeypatch.setattr(demo, "start_server", fake_start_server)
    assert demo.main() == 1  # the fake server start's error

    err = capsys.readouterr().err
    bar = f"converting {bundled_gguf_path().name}"
    assert bar in err, err[-2000:]
    assert "3/3" in err[err.index(bar):]  # the bar ran to its end
    assert cached_at_server_start == [True]  # converted before the server was started
