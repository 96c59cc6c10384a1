"""Opening connectors by URL or path, and the named registrations the Tables service serves.

Registrations (name -> URL, plus solved few-shot examples) persist in one JSON file. The URLs in
it may hold passwords, so the file is private (0600) and written atomically: a crash never leaves
half a file, and no reader sees one. Connectors are opened lazily on first use and kept open.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ragloom.connectors.base import Connector
from ragloom.connectors.files import SUFFIXES, FileConnector
from ragloom.connectors.guard import guard
from ragloom.connectors.sandbox import ConnectorSandbox
from ragloom.connectors.sql import SCHEMES, SqlConnector
from ragloom.connectors.values import redact_url
from ragloom.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied

log = logging.getLogger(__name__)
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_FORMAT_VERSION = 1


def open_connector(name: str, url_or_path: str, sandbox: ConnectorSandbox | None = None) -> Connector:
    """A connector for a database URL (sqlite://, postgresql://, mysql://, mariadb://), a SQLite
    file, a CSV / Parquet / Excel file, or a folder of those.

    With a sandbox (the server's: sandbox.py), paths and hosts outside it are PermissionDenied,
    checked before anything is opened or even looked at; None trusts the caller (in-process use).
    A path the filesystem refuses to look at (a name too long, a NUL byte) is InvalidArgument.
    """
    try:
        return _open_connector(name, url_or_path, sandbox)
    except (OSError, ValueError) as exc:
        shown = url_or_path if len(url_or_path) <= 80 else url_or_path[:77] + "..."
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidArgument(f"cannot use {redact_url(shown)!r} as a connector: {why}",
                              reason="CONNECTOR_URL_INVALID", field="url") from None


def _open_connector(name: str, url_or_path: str, sandbox: ConnectorSandbox | None) -> Connector:
    target = url_or_path.strip()
    if "://" in target:
        scheme = target.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme in SCHEMES:
            if sandbox is not None:
                sandbox.check_url(target, SCHEMES[scheme])
            if SCHEMES[scheme] == "sqlite":
                _check_sqlite_file(target)
            return SqlConnector(name, target)
        if scheme == "file":
            return _open_connector(name, target[len("file://"):], sandbox)
        supported = ", ".join(f"{s}://" for s in SCHEMES)
        raise InvalidArgument(
            f"unsupported URL scheme {scheme!r} in {redact_url(target)}; supported: {supported}, "
            f"or a path to a {', '.join(SUFFIXES)} file, a SQLite file or a folder",
            reason="CONNECTOR_URL_INVALID",
        )
    path = Path(target).expanduser()
    if sandbox is not None:
        sandbox.check_path(path)
    if not path.exists():
        raise NotFound(f"no such file or folder: {path}{_relative_note(path)}", reason="FILE_NOT_FOUND",
                       metadata={"path": str(path)})
    if path.is_file() and path.suffix.lower() in SQLITE_SUFFIXES:
        return SqlConnector(name, f"sqlite:///{path.resolve()}")
    return FileConnector(name, path, allow=sandbox.check_path if sandbox is not None else None)


def _relative_note(path: Path) -> str:
    # the caller's relative path means its own directory, which the server cannot know (the SDK
    # and the CLI send paths absolute; a raw gRPC caller may not): say which directory was used
    if path.is_absolute():
        return ""
    return f" (a relative path is resolved in the server's working directory, {Path.cwd()}; give an absolute path)"


def _check_sqlite_file(url: str) -> None:
    """A relative SQLite path that does not exist: NotFound naming the server's directory."""
    try:
        database = make_url(url).database
    except ArgumentError:
        return  # SqlConnector says what is wrong with the URL
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.is_absolute() and not path.is_file():
        raise NotFound(f"SQLite database file not found: {path}{_relative_note(path)}", reason="FILE_NOT_FOUND",
                       metadata={"path": str(path)})


def dialect_of(url_or_path: str) -> str:
    """The sqlglot dialect a registration will use, without connecting."""
    if "://" in url_or_path:
        return SCHEMES.get(url_or_path.split("://", 1)[0].split("+", 1)[0].lower(), "duckdb")
    return "sqlite" if url_or_path.lower().endswith(SQLITE_SUFFIXES) else "duckdb"


@dataclass
class ConnectorInfo:
    name: str
    url: str  # password redacted
    dialect: str
    examples: int  # solved few-shot examples registered with it


class ConnectorRegistry:
    """Named connectors; `path=None` keeps the registrations in memory only.

    With a sandbox, every connector is opened through it: at registration, and again when a
    saved registration is reopened after a restart. A registration the sandbox no longer allows
    (the roots or hosts were narrowed) stays saved and listed, is logged once here, and each use
    of it is refused with PermissionDenied naming the rule, until the operator widens the
    sandbox again or someone removes it: silently dropping it would lose its examples.
    """

    def __init__(self, path: Path | None = None, sandbox: ConnectorSandbox | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.sandbox = sandbox
        self._lock = threading.RLock()
        self._entries: dict[str, dict[str, Any]] = self._read()
        self._open: dict[str, Connector] = {}
        for name, why in self.refused().items():
            log.warning("connector %r is registered but not allowed by the sandbox (%s): its use is refused "
                        "until the roots or hosts allow it, or it is removed", name, why)

    def refused(self) -> dict[str, str]:
        """Saved registrations the sandbox does not allow now, with the reason: checked without
        connecting (a folder's files are checked when it is opened)."""
        if self.sandbox is None:
            return {}
        out: dict[str, str] = {}
        with self._lock:
            entries = list(self._entries.items())
        for name, entry in entries:
            try:
                _check_sandbox(entry["url"], self.sandbox)
            except PermissionDenied as exc:
                out[name] = str(exc)
        return out

    def register(self, name: str, url: str, replace: bool = False) -> Connector:
        """Open `url`, read its schema (so a bad URL fails now, not at the first question), save it.
        With replace, an existing registration's examples are kept."""
        _check_name(name)
        with self._lock:
            if name in self._entries and not replace:
                raise _exists(name)
        try:
            connector = open_connector(name, url, self.sandbox)  # outside the lock: connecting can take seconds
        except InvalidArgument as exc:
            if exc.reason == "CONNECTOR_URL_INVALID" and exc.field is None:
                exc.field = "url"  # here the URL is the caller's request field (RegisterConnector)
            raise
        try:
            connector.schema()
        except Exception:
            connector.close()
            raise
        with self._lock:
            if name in self._entries and not replace:
                connector.close()
                raise _exists(name)
            old = self._open.pop(name, None)
            examples = self._entries.get(name, {}).get("examples", []) if replace else []
            self._entries[name] = {"url": url, "examples": examples}
            self._open[name] = connector
            self._write()
        if old is not None:
            old.close()
        return connector

    def get(self, name: str) -> Connector:
        with self._lock:
            if name in self._open:
                return self._open[name]
            entry = self._entries.get(name)
            if entry is None:
                known = ", ".join(sorted(self._entries)) or "none"
                raise _missing(name, f"; registered: {known}")
            connector = open_connector(name, entry["url"], self.sandbox)
            self._open[name] = connector
            return connector

    def list(self) -> list[ConnectorInfo]:
        with self._lock:
            return [
                ConnectorInfo(name, redact_url(e["url"]), dialect_of(e["url"]), len(e.get("examples", [])))
                for name, e in sorted(self._entries.items())
            ]

    def remove(self, name: str) -> None:
        with self._lock:
            if name not in self._entries:
                raise _missing(name)
            del self._entries[name]
            connector = self._open.pop(name, None)
            self._write()
        if connector is not None:
            connector.close()

    def add_example(self, name: str, question: str, sql: str) -> None:
        """A solved example for few-shot prompts; its SQL must pass the guard on this connector."""
        for field, text in (("question", question), ("sql", sql)):
            if not text.strip():
                raise InvalidArgument(f"an example needs both a question and its SQL: {field} is empty", field=field)
        connector = self.get(name)
        guard(sql, connector.dialect, connector.schema(), 1, getattr(connector, "qualifiers", None))
        with self._lock:
            if name not in self._entries:
                raise _missing(name)
            self._entries[name].setdefault("examples", []).append({"question": question.strip(), "sql": sql.strip()})
            self._write()

    def examples(self, name: str) -> builtins.list[dict[str, str]]:
        with self._lock:
            if name not in self._entries:
                raise _missing(name)
            return [dict(e) for e in self._entries[name].get("examples", [])]

    def close(self) -> None:
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for connector in opened:
            connector.close()

    # ---- persistence ----

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            entries = data["connectors"]
            if not isinstance(entries, dict):
                raise TypeError("connectors is not an object")
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument(f"{self.path} is not a connector registry file") from None
        return entries

    def _write(self) -> None:
        """Write to a private temporary file beside the target, then rename over it (atomic)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": _FORMAT_VERSION, "connectors": self._entries}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _check_sandbox(url_or_path: str, sandbox: ConnectorSandbox) -> None:
    """The sandbox's verdict on a URL or path, as open_connector would reach it, opening nothing."""
    target = url_or_path.strip()
    if "://" in target:
        scheme = target.split("://", 1)[0].split("+", 1)[0].lower()
        if scheme in SCHEMES:
            sandbox.check_url(target, SCHEMES[scheme])
        elif scheme == "file":
            sandbox.check_path(target[len("file://"):])
        return
    sandbox.check_path(target)


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name or ""):
        raise InvalidArgument(f"connector name {name!r}: use 1-64 letters, digits, '_', '.' or '-'", field="name")


def _missing(name: str, more: str = "") -> NotFound:
    return NotFound(f"no connector named {name!r}{more}", reason="CONNECTOR_NOT_FOUND", metadata={"connector": name})


def _exists(name: str) -> AlreadyExists:
    return AlreadyExists(f"connector {name!r} is already registered; pass replace to change it",
                         reason="CONNECTOR_EXISTS", metadata={"connector": name})
