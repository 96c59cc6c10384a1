"""The connector sandbox: which files and which database servers a connector may reach.

RegisterConnector takes a path or URL from the caller, and the server opens it with its own
rights. Without a sandbox that reads any CSV, Parquet, Excel or SQLite file the process can read
(under /etc, other users' data) and connects to any host:port (server-side request forgery). So:

- a file, folder or SQLite database must resolve, after every symlink, under one of the roots
  (`--connector-root`, default: the data dir and the server's working directory); a folder's
  files are checked one by one when they are loaded, since each may be a symlink out;
- a PostgreSQL or MySQL/MariaDB URL must name one plain host (no libpq host lists, no
  `?host=` / `?unix_socket=` / option-file query options that would connect elsewhere or read
  files) whose host[:port] matches a `--connector-host` pattern (default: loopback only).

Anything else is PermissionDenied (CONNECTOR_NOT_ALLOWED) naming the rule and the flag that lifts
it. Paths are checked before their existence, so a refusal says nothing about what exists outside
the roots. The check happens at the time of opening; a symlink swapped between the check and the
open by someone who can write inside a root is not covered (nor are DNS answers for an allowed
host name): the roots and patterns are the operator's trust boundary.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ragloom.errors import PermissionDenied

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
REASON = "CONNECTOR_NOT_ALLOWED"
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
# URL query options a database URL may carry. Everything else is refused: libpq and PyMySQL read
# host, hostaddr, service, unix_socket, read_default_file, sslkey, ... from the query, which would
# connect somewhere else than the host checked here or read files of the server.
ALLOWED_QUERY = {
    "postgres": frozenset({"schema", "sslmode", "application_name", "connect_timeout"}),
    "mysql": frozenset({"charset"}),
}
# one DNS name or IPv4 address, or an IPv6 address (with an optional %zone)
_HOST = re.compile(r"[A-Za-z0-9_.-]{1,253}|[0-9A-Fa-f:.]{2,45}(%[A-Za-z0-9_.-]+)?")


@dataclass(frozen=True)
class HostPattern:
    """One --connector-host: an fnmatch pattern of the host, and of the port if it names one."""

    host: str
    port: str | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """`db.internal`, `*.corp.example:5432`, `10.0.0.*`, `::1`, `[::1]:5432`, `[fd00::*]`."""
        text = text.strip()
        if text.startswith("["):  # IPv6, bracketed so that a port can follow
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else None
            if rest and port is None:
                raise ValueError(f"connector host pattern {text!r}: expected [ipv6] or [ipv6]:port")
            return cls(host.lower(), port or None)
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(host.lower(), port or None)
        return cls(text.lower(), None)  # a name, an IPv4 address or a bare IPv6 address

    def matches(self, host: str, port: int) -> bool:
        return fnmatch.fnmatchcase(host.lower(), self.host) and (
            self.port is None or fnmatch.fnmatchcase(str(port), self.port)
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        return host if self.port is None else f"{host}:{self.port}"


class ConnectorSandbox:
    """Roots for files and host patterns for database servers (see the module's docstring)."""

    def __init__(self, roots: Iterable[str | Path], hosts: Iterable[str] = LOOPBACK_HOSTS) -> None:
        # resolved once: a root that is itself a symlink (/tmp -> /private/tmp) compares as its target
        self.roots: tuple[Path, ...] = tuple(dict.fromkeys(Path(r).expanduser().resolve() for r in roots))
        self.hosts: tuple[HostPattern, ...] = tuple(HostPattern.parse(h) for h in hosts if h.strip())
        for root in self.roots:
            if root == Path(root.anchor):
                log.warning("connector root %s is the file system's root: callers may open any file the "
                            "server can read", root)

    @classmethod
    def for_server(
        cls, data_dir: str | Path, roots: Iterable[str | Path] = (), hosts: Iterable[str] = ()
    ) -> ConnectorSandbox:
        """The server's sandbox: the roots and hosts configured, or the defaults where none are
        (the data dir and the working directory; loopback hosts)."""
        roots, hosts = list(roots), list(hosts)
        return cls(roots or [data_dir, Path.cwd()], hosts or LOOPBACK_HOSTS)

    # ---- files ----

    def check_path(self, path: str | Path) -> Path:
        """The path resolved (relative to the working directory, every symlink followed), if it is
        under a root; PermissionDenied otherwise. The path need not exist: that is checked after."""
        given = Path(path).expanduser()
        try:
            resolved = given.resolve(strict=False)
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise self._path_denied(given, f"cannot be resolved ({exc})") from None
        if not any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            via = "" if resolved == Path.cwd() / given else f" (it resolves to {resolved})"
            raise self._path_denied(given, f"is outside the connector roots{via}")
        return resolved

    def _path_denied(self, path: Path, why: str) -> PermissionDenied:
        roots = ", ".join(str(r) for r in self.roots) or "none"
        return PermissionDenied(
            f"path {path} {why} [{roots}]; start the server with --connector-root to allow it",
            reason=REASON, metadata={"rule": "connector_roots", "path": str(path)},
        )

    # ---- database URLs ----

    def check_url(self, url: str, dialect: str) -> None:
        """A SQLite URL's file under the roots; a server URL's one host among the allowed hosts."""
        try:
            sa_url = make_url(url)
        except (ArgumentError, ValueError):
            return  # not a URL at all: the connector says what is wrong with it
        if dialect == "sqlite":
            database = sa_url.database or ""
            if database and database != ":memory:":
                self.check_path(database)
            return
        extra = sorted(set(sa_url.query) - ALLOWED_QUERY.get(dialect, frozenset()))
        if extra:
            allowed = ", ".join(sorted(ALLOWED_QUERY.get(dialect, ()))) or "none"
            raise PermissionDenied(
                f"URL option {', '.join(extra)} is not allowed in a connector URL (it can point the "
                f"connection elsewhere or read the server's files); allowed options: {allowed}",
                reason=REASON, metadata={"rule": "connector_url_options", "option": extra[0]},
            )
        host = (sa_url.host or "localhost").strip("[]")  # no host: the local server's socket
        port = sa_url.port or DEFAULT_PORTS.get(dialect, 0)
        if not _HOST.fullmatch(host):
            raise PermissionDenied(
                f"host {host!r} is not one plain host name or address; a connector connects to one host",
                reason=REASON, metadata={"rule": "connector_hosts", "host": host},
            )
        if not any(p.matches(host, port) for p in self.hosts):
            patterns = ", ".join(str(p) for p in self.hosts) or "none"
            shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise PermissionDenied(
                f"database host {shown} is not among the allowed connector hosts [{patterns}]; start "
                f"the server with --connector-host to allow it",
                reason=REASON, metadata={"rule": "connector_hosts", "host": host, "port": str(port)},
            )

    def describe(self) -> str:
        return (f"connector roots [{', '.join(str(r) for r in self.roots)}], "
                f"hosts [{', '.join(str(h) for h in self.hosts)}]")
