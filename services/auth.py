"""Transport security and API keys: TLS credentials, the exposure check, and the one place where
keys and scopes are enforced (a grpc.aio server interceptor).

Keys live in a JSON (or YAML) file that holds only their SHA-256, never the keys themselves:

    {"keys": [{"name": "app", "sha256": "<hex of the key>", "scopes": ["generate", "retrieve"]}]}

A call sends its key as `authorization: Bearer <key>` metadata. Every RPC of the four ragloom
services needs one scope (METHOD_SCOPES); health is always open, and so is reflection while it
is served (it only describes the API). A missing or unknown key is UNAUTHENTICATED
(API_KEY_INVALID), a key without the scope PERMISSION_DENIED (SCOPE_MISSING, naming it).

The key's name is the caller's identity inside the server (`current_key()`): Generate and Ask
record it for their request id, and Abort stops only the caller's own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ragloom.errors import InvalidArgument, ResourceExhausted, ScopeMissing, Unauthenticated
from ragloom.services.handlers import behaviour, rebuild, refusing, responses
from ragloom.services.limits import RateLimits

if TYPE_CHECKING:
    from ragloom.config import Settings

log = logging.getLogger(__name__)

Scope = Literal["generate", "retrieve", "ask", "tables", "admin"]
SCOPES: tuple[str, ...] = ("generate", "retrieve", "ask", "tables", "admin")
ANY_KEY = ""  # the "scope" of calls any valid key may make (load and cache statistics)

_G, _R, _A, _T = "ragloom.v1.GenerationService", "ragloom.v1.RetrievalService", "ragloom.v1.RagService", "ragloom.v1.TablesService"
# Every RPC of the ragloom services -> the scope it needs. An RPC missing here needs `admin`
# (fail closed), and a unit test checks that the protos' RPCs and this map agree.
METHOD_SCOPES: dict[str, str] = {
    f"/{_G}/Generate": "generate",
    f"/{_G}/Abort": "generate",
    f"/{_G}/GetLoads": ANY_KEY,
    f"/{_R}/Search": "retrieve",
    f"/{_R}/Upsert": "retrieve",
    f"/{_R}/Delete": "retrieve",
    f"/{_R}/ListCollections": "retrieve",
    f"/{_R}/CreateCollection": "admin",
    f"/{_R}/DeleteCollection": "admin",
    f"/{_A}/Ask": "ask",
    f"/{_A}/GetCacheStats": ANY_KEY,
    f"/{_T}/Query": "tables",
    f"/{_T}/ExecuteSql": "tables",
    f"/{_T}/DescribeSchema": "tables",
    f"/{_T}/ListConnectors": "tables",
    f"/{_T}/AddExample": "tables",
    f"/{_T}/RegisterConnector": "admin",
    f"/{_T}/RemoveConnector": "admin",
}
# services any caller may use, key or not: load balancers' health checks, and reflection (which
# describes the API, and can be switched off with --no-reflection)
OPEN_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})


# -- the key file ---------------------------------------------------------------------------


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="hex SHA-256 of the key")
    scopes: list[Scope]
    # this key's rate limit (services/limits.py); unset: the server's --rate-limit-per-s/-burst
    rate_per_s: float | None = Field(None, gt=0, description="calls per second this key may make")
    burst: int | None = Field(None, ge=1, description="calls this key may make at once above its rate")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry]


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: frozenset[str]
    digest: bytes  # SHA-256 of the key
    rate_per_s: float | None = None  # None: the server's default rate
    burst: int | None = None


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The keys of one file, looked up by the SHA-256 of a presented key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def lookup(self, key: str) -> ApiKey | None:
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        # every entry is compared (constant time each), so timing tells nothing about which matched
        for entry in self.keys:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found

    def describe(self) -> dict[str, frozenset[str]]:
        return {k.name: k.scopes for k in self.keys}


def load_key_file(path: Path) -> KeyRing:
    """Parse and check a key file: InvalidArgument naming the file and what is wrong in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read the API key file {path}: {exc.strerror or exc}", field="api_keys") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise InvalidArgument(f"API key file {path} cannot be parsed: {exc}", field="api_keys") from exc
    try:
        parsed = KeyFile.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(
            f"API key file {path} is malformed (expected {{\"keys\": [{{\"name\", \"sha256\", \"scopes\"}}]}}, "
            f"scopes among {', '.join(SCOPES)}): {exc}",
            field="api_keys",
        ) from exc
    names, digests = set(), set()
    for entry in parsed.keys:
        # names are identities (Abort ownership, logs): two keys of one name would share requests
        if entry.name in names:
            raise InvalidArgument(f"API key file {path}: the name {entry.name!r} appears twice", field="api_keys")
        if entry.sha256 in digests:
            raise InvalidArgument(f"API key file {path}: key {entry.name!r} has the same sha256 as another", field="api_keys")
        names.add(entry.name)
        digests.add(entry.sha256)
    return KeyRing([ApiKey(e.name, frozenset(e.scopes), bytes.fromhex(e.sha256), e.rate_per_s, e.burst)
                    for e in parsed.keys])


class ApiKeys:
    """The server's current keys, reloadable from their file (SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ring = load_key_file(path)  # a bad file at startup is an error, not an open server

    def reload(self) -> bool:
        """Read the file again; on any error keep the keys in use and log why. Logs what changed."""
        try:
            ring = load_key_file(self.path)
        except InvalidArgument as exc:
            log.error("API keys not reloaded, the %d key(s) in use stay: %s", len(self.ring.keys), exc)
            return False
        before, after = self.ring.describe(), ring.describe()
        old_digests = {k.name: k.digest for k in self.ring.keys}
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(n for n in after.keys() & before.keys()
                         if after[n] != before[n] or old_digests[n] != next(k.digest for k in ring.keys if k.name == n))
        self.ring = ring
        log.info("API keys reloaded from %s: %d key(s); added %s; removed %s; changed %s", self.path,
                 len(ring.keys), added or "none", removed or "none", changed or "none")
        return True


@contextlib.contextmanager
def reload_on_sighup(keys: ApiKeys | None) -> Iterator[None]:
    """While inside, SIGHUP reloads `keys` from their file (on the running loop, which must be the
    main thread's, as for any asyncio signal handler); nothing happens without keys."""
    if keys is None:
        yield
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, keys.reload)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


# -- who is calling -------------------------------------------------------------------------

# The name of the key the current call was made with; None when the server needs no keys.
# Set by the interceptor in the call's own task, so servicers read it like a parameter.
_current_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("ragloom_api_key", default=None)
# request id -> key name, for the requests (Generate, Ask) of callers with keys while they run
_owners: dict[str, str] = {}


def current_key() -> str | None:
    return _current_key.get()


@contextlib.asynccontextmanager
async def owned(request_id: str) -> AsyncIterator[None]:
    """Around a running Generate / Ask: its request id belongs to the calling key until it ends.
    An id some call owns already is left to it (the engine refuses a second request of a running
    id): a caller reusing another's id must not take over the right to abort it."""
    name = _current_key.get()
    if name is None or request_id in _owners:
        yield
        return
    _owners[request_id] = name
    try:
        yield
    finally:
        del _owners[request_id]


def may_abort(request_id: str) -> bool:
    """Whether the current caller may abort this request: always without keys; with keys, only
    requests its own key started (another key's look the same as an unknown id: found=false)."""
    name = _current_key.get()
    return name is None or _owners.get(request_id) == name


# -- the interceptor ------------------------------------------------------------------------


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _as_key(handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
    """`handler`, run with current_key() = name. The variable is set inside the call's own task
    (grpc.aio runs each call in one), so it needs no reset and no other call sees it."""
    inner = behaviour(handler)

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _current_key.set(name)
        return await inner(request, context)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        _current_key.set(name)
        async for message in responses(handler, request, context):
            yield message

    return rebuild(handler, unary, stream)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call's key and scope before its servicer runs: the one place they are enforced."""

    def __init__(self, keys: ApiKeys, rate_per_s: float | None = None, burst: int | None = None) -> None:
        self.keys = keys
        self.rate_per_s, self.burst = rate_per_s, burst  # defaults for keys without their own
        self.limits = RateLimits()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.split("/")[1] in OPEN_SERVICES:
            return handler  # an unknown method (UNIMPLEMENTED) or an open service
        token = _bearer(handler_call_details.invocation_metadata)  # type: ignore[attr-defined]
        key = self.keys.ring.lookup(token) if token is not None else None
        rpc = method.rsplit("/", 1)[-1]
        if key is None:
            what = "no API key" if token is None else "an unknown API key"
            return refusing(handler, Unauthenticated(
                f"{rpc} needs an API key, and the call has {what}: send it as "
                "`authorization: Bearer <key>` metadata (the SDK's api_key=, RAGLOOM_API_KEY, the CLI's --api-key)"
            ), method)
        scope = METHOD_SCOPES.get(method, "admin")
        if scope != ANY_KEY and scope not in key.scopes:
            return refusing(handler, ScopeMissing(
                f"{rpc} needs the {scope!r} scope, which API key {key.name!r} lacks "
                f"(it has: {', '.join(sorted(key.scopes)) or 'none'})",
                metadata={"scope": scope, "key": key.name},
            ), method)
        rate = key.rate_per_s if key.rate_per_s is not None else self.rate_per_s
        wait = self.limits.check(key.name, rate, key.burst if key.burst is not None else self.burst)
        if wait > 0:
            return refusing(handler, ResourceExhausted(
                f"API key {key.name!r} is over its rate limit of {rate:g} calls/s; retry in {wait:.2f} s",
                reason="RATE_LIMITED", retry_after_s=wait, metadata={"key": key.name},
            ), method)
        return _as_key(handler, key.name)


# -- TLS and the exposure check -------------------------------------------------------------


def _read_pem(path: Path, what: str, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the {what} {path} ({flag}): {exc.strerror or exc}", field=flag) from exc
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"the {what} {path} ({flag}) is not PEM (no '-----BEGIN' line)", field=flag)
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' tls_* files (mTLS with tls_client_ca); None without TLS."""
    cert, key, ca = settings.tls_cert, settings.tls_key, settings.tls_client_ca
    if cert is None and key is None:
        if ca is not None:
            raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key: mTLS is TLS first",
                                  field="tls_client_ca")
        return None
    if cert is None or key is None:
        missing = "--tls-key" if key is None else "--tls-cert"
        raise InvalidArgument(f"TLS needs both --tls-cert and --tls-key; {missing} is missing", field=missing[2:].replace("-", "_"))
    pair = (_read_pem(key, "TLS private key", "tls_key"), _read_pem(cert, "TLS certificate", "tls_cert"))
    roots = _read_pem(ca, "client CA", "tls_client_ca") if ca is not None else None
    # with a client CA, a client without a certificate it signed is refused in the handshake
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one ("" and 0.0.0.0 / :: are all interfaces)."""
    host = host.strip("[]")
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos)


def check_exposure(settings: Settings) -> None:
    """Refuse (InvalidArgument) to listen beyond loopback without both TLS and API keys, unless
    settings.insecure: anyone who can reach the port could otherwise generate, read every
    collection, query every connector and register new ones."""
    if settings.insecure or is_loopback(settings.host):
        return
    missing = [what for what, given in (("TLS (--tls-cert F --tls-key F)", settings.tls_cert is not None),
                                        ("API keys (--api-keys FILE)", settings.api_keys is not None)) if not given]
    if missing:
        raise InvalidArgument(
            f"refusing to listen on {settings.host}:{settings.port} without {' and '.join(missing)}: "
            "any host that reaches this port could generate, read every collection and query every "
            "connector, in clear text. Pass " + " and ".join(missing) + ", listen on 127.0.0.1, or pass "
            "--insecure (insecure = true) if something else protects the port (a private network, a "
            "TLS-terminating proxy)",
            field="host",
        )


# -- keys on the command line ---------------------------------------------------------------


def new_key() -> str:
    import secrets

    return "rgl_" + secrets.token_urlsafe(32)


def add_key(path: Path, name: str, scopes: list[str]) -> str:
    """Make a random key, append its entry (name, sha256, scopes) to the key file (created if
    missing), and return the key: the file never holds it, so this is the only time it is seen."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidArgument(f"unknown scope(s) {', '.join(bad) or '(none given)'}: choose among {', '.join(SCOPES)}",
                              field="scopes")
    if path.suffix.lower() in (".yaml", ".yml"):
        raise InvalidArgument(f"{path}: keys are added to JSON key files only", field="file")
    entries: list[dict[str, Any]] = []
    if path.exists():
        load_key_file(path)  # refuse to append to a file the server could not read
        entries = json.loads(path.read_text(encoding="utf-8"))["keys"]
    if any(e["name"] == name for e in entries):
        raise InvalidArgument(f"{path} already has a key named {name!r}", field="name")
    key = new_key()
    entries.append({"name": name, "sha256": key_digest(key), "scopes": list(dict.fromkeys(scopes))})
    KeyFile.model_validate({"keys": entries})  # the name's format
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole to a temporary file, then renamed: a server reloading meanwhile reads the
    # old file or the new one, never half of one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"keys": entries}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return key
