"""The one way benchmarks write their JSON: atomically, with machine-specific paths made portable.

Scripts run as `python benchmarks/NAME.py`, so this module is importable as `results_io`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _portable(value: Any) -> Any:
    """Absolute paths under the checkout, the shared data beside it or the home folder become
    '<repo>/…', '<repo>/../shared/…' and '~/…'."""
    if isinstance(value, str):
        shared = str(REPO.parent / "shared")
        return (value.replace(str(REPO), "<repo>").replace(shared, "<repo>/../shared")
                .replace(str(Path.home()), "~"))
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    return value


def write_results(path: Path, data: dict[str, Any]) -> None:
    """Temp file beside the target, fsync, rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_portable(data), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
