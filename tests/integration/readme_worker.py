"""Runs README.md's Python blocks for test_readme.py, one after another in one shared namespace
(as a reader pasting them into one interpreter would).

Protocol: one JSON object per line on stdin, {"code", "line", "checks"}; one JSON object per line
on stdout, {"ok", "output", "error"}. What a block prints is captured into "output", so stdout
carries only the protocol. Code is compiled under README.md's path, padded so that a traceback
names the README's own line numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def main(readme: str) -> None:
    protocol = sys.stdout
    namespace: dict[str, object] = {"__name__": "__main__"}
    for raw in sys.stdin:
        request = json.loads(raw)
        captured = io.StringIO()
        error = None
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            try:
                padded = "\n" * (request["line"] - 1) + request["code"]
                exec(compile(padded, readme, "exec"), namespace)  # noqa: S102 - the README's own examples
                for check in request["checks"]:
                    ok = eval(compile(check, f"{readme} (readme-test check)", "eval"), namespace)  # noqa: S307
                    if not ok:
                        raise AssertionError(f"check failed: {check}")
            except BaseException:  # noqa: BLE001 - a failing block is reported, not fatal to the worker
                error = traceback.format_exc()
        protocol.write(json.dumps({"ok": error is None, "output": captured.getvalue(), "error": error}) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main(sys.argv[1])
