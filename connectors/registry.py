"""Opening connectors by URL or path, and the named registrations the Tables service serves.

Registrations (name -> URL, plus solved few-shot examples) persist through a backend: one JSON
file in the data dir (JsonFileBackend, a single server), or the shared collection store
(registry_store.py, replicas over PostgreSQL, URLs encrypted). Connectors are opened lazily on
first use and kept open while their registration names the same URL.
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
from typing import Any, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ragloom.connectors.base import Connector
from ragloom.connectors.files import SUFFIXES, FileConnector
from ragloom.connectors.guard import guard
from ragloom.connectors.sandbox import ConnectorSandbox
from ragloom.connectors.sql import SCHEMES, SqlConnector
from ragloom.connectors.values import redact_url
from ragloom.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

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


@dataclass(frozen=True)
class StoredConnector:
    """One registration as a backend holds it."""

    name: str
    url: str | None  # None: this process cannot read it (`problem` says why)
    shown_url: str  # password redacted
    dialect: str
    examples: int
    problem: str | None = None


class RegistryBackend(Protocol):
    """Where registrations live. Each call is one atomic step on one entry, so that several
    processes can share a backend (registry_store.py); nothing is cached here."""

    def entries(self) -> builtins.list[StoredConnector]:
        """Every registration, sorted by name."""
        ...

    def entry(self, name: str) -> StoredConnector | None: ...

    def check_url(self, name: str, url: str) -> None:
        """Raise when `url` cannot be kept here (before anything is opened)."""
        ...

    def put(self, name: str, url: str, replace: bool) -> bool:
        """Store name -> url, keeping its examples; False (and nothing changed) when it exists and
        not replace."""
        ...

    def delete(self, name: str) -> bool: ...

    def append_example(self, name: str, question: str, sql: str) -> bool:
        """False when there is no such registration."""
        ...

    def examples(self, name: str) -> builtins.list[dict[str, str]] | None: ...

    def describe(self) -> str: ...


class JsonFileBackend:
    """Registrations in one JSON file (or in memory only, path=None), as in every release so far.

    The URLs in it may hold passwords, so the file is private (0600) and written atomically: a
    crash never leaves half a file, and no reader sees one. One process owns the file: it is read
    once, and the copy in memory is the truth while it runs."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] = self._read()

    def entries(self) -> builtins.list[StoredConnector]:
        with self._lock:
            return [self._stored(name, e) for name, e in sorted(self._entries.items())]

    def entry(self, name: str) -> StoredConnector | None:
        with self._lock:
            e = self._entries.get(name)
            return self._stored(name, e) if e is not None else None

    def check_url(self, name: str, url: str) -> None:
        return None  # the file is private: anything may be kept in it

    def put(self, name: str, url: str, replace: bool) -> bool:
        with self._lock:
            if name in self._entries and not replace:
                return False
            examples = self._entries.get(name, {}).get("examples", [])
            self._entries[name] = {"url": url, "examples": examples}
            self._write()
            return True

    def delete(self, name: str) -> bool:
        with self._lock:
            if self._entries.pop(name, None) is None:
                return False
            self._write()
            return True

    def append_example(self, name: str, question: str, sql: str) -> bool:
        with self._lock:
            if name not in self._entries:
                return False
            self._entries[name].setdefault("examples", []).append({"question": question, "sql": sql})
            self._write()
            return True

    def examples(self, name: str) -> builtins.list[dict[str, str]] | None:
        with self._lock:
            if name not in self._entries:
                return None
            return [dict(e) for e in self._entries[name].get("examples", [])]

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "memory only"

    @staticmethod
    def _stored(name: str, entry: dict[str, Any]) -> StoredConnector:
        url = entry["url"]
        return StoredConnector(name, url, redact_url(url), dialect_of(url), len(entry.get("examples", [])))

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return {}
        return read_registry_file(self.path)

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


def read_registry_file(path: Path) -> dict[str, dict[str, Any]]:
    """A connectors.json file's registrations: {name: {"url": ..., "examples": [...]}}."""
    try:
        data = json.loads(Path(path).read_text())
        entries = data["connectors"]
        if not isinstance(entries, dict):
            raise TypeError("connectors is not an object")
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(f"{path} is not a connector registry file") from None
    return entries


class ConnectorRegistry:
    """Named connectors, kept by a backend: a JSON file (`path`; None keeps them in memory only),
    or a store that several server replicas share (`backend=`, see registry_store.py).

    Every call asks the backend afresh, so that what another replica registered, replaced or
    removed counts here at once; a connector opened earlier is reused only while its
    registration still names the URL it was opened with.

    With a sandbox, every connector is opened through it: at registration, and again when a
    saved registration is reopened after a restart. A registration the sandbox no longer allows
    (the roots or hosts were narrowed) stays saved and listed, is logged once here, and each use
    of it is refused with PermissionDenied naming the rule, until the operator widens the
    sandbox again or someone removes it: silently dropping it would lose its examples.
    """

    def __init__(
        self,
        path: Path | None = None,
        sandbox: ConnectorSandbox | None = None,
        *,
        backend: RegistryBackend | None = None,
    ) -> None:
        if backend is not None and path is not None:
            raise ValueError("give a path or a backend, not both")
        self.path = Path(path) if path is not None else None
        self.sandbox = sandbox
        self.backend: RegistryBackend = backend if backend is not None else JsonFileBackend(self.path)
        self._lock = threading.RLock()
        self._open: dict[str, tuple[str, Connector]] = {}  # name -> (the URL it was opened with, it)
        for name, why in self.refused().items():
            log.warning("connector %r is registered but not allowed by the sandbox (%s): its use is refused "
                        "until the roots or hosts allow it, or it is removed", name, why)

    def refused(self) -> dict[str, str]:
        """Saved registrations the sandbox does not allow now, with the reason: checked without
        connecting (a folder's files are checked when it is opened). Registrations this process
        cannot read (a URL encrypted under another key) are not judged: their use fails anyway."""
        if self.sandbox is None:
            return {}
        out: dict[str, str] = {}
        for entry in self.backend.entries():
            if entry.url is None:
                continue
            try:
                _check_sandbox(entry.url, self.sandbox)
            except PermissionDenied as exc:
                out[entry.name] = str(exc)
        return out

    def register(self, name: str, url: str, replace: bool = False) -> Connector:
        """Open `url`, read its schema (so a bad URL fails now, not at the first question), save it.
        With replace, an existing registration's examples are kept."""
        _check_name(name)
        if not replace and self.backend.entry(name) is not None:
            raise _exists(name)
        self.backend.check_url(name, url)  # e.g. a password and no key to encrypt it: before connecting
        try:
            connector = open_connector(name, url, self.sandbox)  # outside the lock: connecting can take seconds
        except InvalidArgument as exc:
            if exc.reason == "CONNECTOR_URL_INVALID" and exc.field is None:
                exc.field = "url"  # here the URL is the caller's request field (RegisterConnector)
            raise
        try:
            connector.schema()
            # the backend decides atomically: of two registering one name at once, one gets here
            stored = self.backend.put(name, url, replace)
        except BaseException:
            connector.close()
            raise
        if not stored:
            connector.close()
            raise _exists(name)
        with self._lock:
            old = self._open.pop(name, None)
            self._open[name] = (url, connector)
        if old is not None:
            old[1].close()
        return connector

    def get(self, name: str) -> Connector:
        entry = self.backend.entry(name)
        if entry is None:
            self._forget(name)  # removed, maybe by another replica: its connections go too
            known = ", ".join(e.name for e in self.backend.entries()) or "none"
            raise _missing(name, f"; registered: {known}")
        if entry.url is None:
            raise FailedPrecondition(entry.problem or f"connector {name!r} cannot be read here",
                                     metadata={"connector": name})
        with self._lock:
            held = self._open.get(name)
            if held is not None and held[0] == entry.url:
                return held[1]
            # not open yet, or opened under a URL since replaced (by another replica, say)
            connector = open_connector(name, entry.url, self.sandbox)
            self._open[name] = (entry.url, connector)
        if held is not None:
            held[1].close()
        return connector

    def list(self) -> builtins.list[ConnectorInfo]:
        return [ConnectorInfo(e.name, e.shown_url, e.dialect, e.examples) for e in self.backend.entries()]

    def remove(self, name: str) -> None:
        if not self.backend.delete(name):
            self._forget(name)
            raise _missing(name)
        self._forget(name)

    def add_example(self, name: str, question: str, sql: str) -> None:
        """A solved example for few-shot prompts; its SQL must pass the guard on this connector."""
        for field, text in (("question", question), ("sql", sql)):
            if not text.strip():
                raise InvalidArgument(f"an example needs both a question and its SQL: {field} is empty", field=field)
        connector = self.get(name)
        guard(sql, connector.dialect, connector.schema(), 1, getattr(connector, "qualifiers", None))
        if not self.backend.append_example(name, question.strip(), sql.strip()):
            raise _missing(name)

    def examples(self, name: str) -> builtins.list[dict[str, str]]:
        found = self.backend.examples(name)
        if found is None:
            raise _missing(name)
        return found

    def close(self) -> None:
        """Close the open connectors; the backend stays as it is (a shared store is its owner's)."""
        with self._lock:
            opened, self._open = [c for _, c in self._open.values()], {}
        for connector in opened:
            connector.close()

    def _forget(self, name: str) -> None:
        with self._lock:
            held = self._open.pop(name, None)
        if held is not None:
            held[1].close()


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
