"""The generation benchmark runs end to end at tiny sizes and writes the JSON it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


@pytest.mark.slow
def test_generate_benchmark_quick(tmp_path: Path) -> None:
    out = tmp_path / "generate-cpu.json"
    # --output keeps the smoke run from overwriting real results in benchmarks/results/.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--systems", "ragloom,transformers", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "decode tok/s" in proc.stdout  # the table header

    report = json.loads(out.read_text())
    for key in ("hardware", "software", "settings", "systems", "results", "skipped", "failed", "notes"):
        assert key in report, key
    assert report["failed"] == {}
    assert report["hardware"]["cpu_cores"] >= 1
    assert report["software"]["torch"]
    settings = report["settings"]
    assert settings["quick"] is True and settings["device"] == "cpu"

    rows = {(r["system"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(s, b) for s in ("ragloom", "transformers") for b in settings["batch_sizes"]}
    for row in rows.values():
        for metric in ("ttft_ms", "decode_tok_s", "decode_tok_s_per_seq", "wall_s"):
            assert math.isfinite(row[metric]) and row[metric] > 0, (row["system"], row["batch"], metric)
        assert row["decode_vs_transformers"] > 0
        assert len(row["runs"]) == settings["repeats"]
    assert rows[("transformers", 1)]["decode_vs_transformers"] == pytest.approx(1.0)
    # Same float32 weights and greedy decoding: ragloom's tokens should match transformers'.
    match = rows[("ragloom", 1)]["greedy_match"]
    assert match["sequences"] == 1 and match["min_common_prefix"] >= 1
