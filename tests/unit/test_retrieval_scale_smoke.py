"""benchmarks/retrieval_scale.py runs end to end at a tiny size and writes the JSON it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "retrieval_scale.py"


def test_retrieval_scale_quick(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    # clustered data needs no embeddings; --output keeps real results untouched
    cmd = [sys.executable, str(SCRIPT), "--n", "3000", "--data", "clustered", "--queries", "64", "--single", "5",
           "--reps", "1", "--min-time", "0", "--sweep-oversample", "2,10", "--sweep-nprobe", "4", "--threads", "1",
           "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [r["system"] for r in res["rows"]] == ["float flat", "binary flat+rescore", "binary ivf+rescore"]
    assert res["defaults"]["oversample"] == res["rows"][1]["oversample"] == 10
    assert len(res["sweep"]) == 2 + 2  # flat x 2 oversamples, ivf x 1 nprobe x 2 oversamples
    for r in res["rows"] + res["sweep"]:
        assert 0.0 <= r["recall@10"] <= 1.0 and r["qps_b1"] > 0 and r["qps_b64"] > 0
    assert res["rows"][0]["recall@10"] == 1.0
    assert res["rows"][0]["ram_bytes"] / res["rows"][1]["ram_bytes"] > 20
