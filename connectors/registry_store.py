"""The connector registry in the shared collection store, for replicas over one PostgreSQL.

Two tables beside the collections' (created like them, in the store's schema when it has one):

    ragloom_connectors          name (primary key), url_cipher, url_format, url_shown, dialect,
                                created_at, updated_at
    ragloom_connector_examples  id (serial), connector (-> name, ON DELETE CASCADE), question, sql,
                                created_at

Examples are rows of their own rather than a JSON list in the connector's row: appending one is
a single INSERT, so replicas adding examples at once never overwrite each other and need no
row lock, and replacing a connector's URL (an UPDATE of its row) keeps them as it must.

Every call is one short transaction that reads or writes one entry; nothing is cached, so what
another replica did is seen at the next call (ConnectorRegistry compares the URL it opened a
connector with against the stored one, and reopens when they differ).

URLs are encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under the `secret_key` setting
(RAGLOOM_SECRET_KEY): a Fernet key as `Fernet.generate_key()` writes it is used as is; any other
text is a passphrase, and the key is urlsafe-base64(SHA-256(passphrase)). Without a key, URLs
that hold no password are stored as they are (url_format "plain") and one with a password is
refused (FAILED_PRECONDITION): the store is shared, so it is not the place for a cleartext
password. `url_shown` (the URL with its password masked, as ListConnectors shows it) stays
readable without the key, so listing works on a replica with a missing or wrong key; using such
a connector is FAILED_PRECONDITION for that connector alone.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    exists,
    func,
    insert,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError

from ragloom.connectors.registry import (
    ConnectorRegistry,
    StoredConnector,
    dialect_of,
    read_registry_file,
)
from ragloom.connectors.sandbox import ConnectorSandbox
from ragloom.connectors.values import redact_url
from ragloom.errors import FailedPrecondition, InvalidArgument
from ragloom.retrieval.store import Store

log = logging.getLogger(__name__)

KEY_ENV = "RAGLOOM_SECRET_KEY"
PLAIN, FERNET = "plain", "fernet"
# query parameters that carry a password in libpq / PyMySQL / SQLAlchemy URLs
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "pass", "sslpassword"})

# Their own MetaData, not the collections' Base: a collection store that never serves a
# registry (a local SQLite one) gets no connector tables.
metadata = MetaData()


def _now() -> datetime:
    return datetime.now(UTC)


connectors_table = Table(
    "ragloom_connectors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("url_cipher", Text, nullable=False),  # a Fernet token, or the URL itself when url_format is "plain"
    Column("url_format", String(16), nullable=False),  # "fernet" | "plain"
    Column("url_shown", Text, nullable=False),  # password masked: listable without the key
    Column("dialect", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Column("updated_at", DateTime(timezone=True), nullable=False, default=_now),
)

examples_table = Table(
    "ragloom_connector_examples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("connector", String(64), ForeignKey("ragloom_connectors.name", ondelete="CASCADE"), nullable=False),
    Column("question", Text, nullable=False),
    Column("sql", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, default=_now),
    Index("ix_ragloom_connector_examples_connector", "connector"),
)


def fernet_key(secret: str) -> bytes:
    """The Fernet key for the secret_key setting: a Fernet key (32 bytes, urlsafe base64) as is,
    else urlsafe-base64(SHA-256(the passphrase)). Surrounding whitespace is ignored (a secret
    mounted from a file often ends in a newline)."""
    text = secret.strip()
    if not text:
        raise InvalidArgument(f"{KEY_ENV} (secret_key) is set but empty: give a Fernet key or a passphrase",
                              field="secret_key")
    try:
        Fernet(text.encode())
        return text.encode()
    except ValueError:  # not a Fernet key (binascii.Error is a ValueError too): a passphrase
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())


def holds_password(url: str) -> bool:
    """Whether a connector URL carries a password (userinfo or a password query parameter)."""
    if "://" not in url:
        return False  # a file or folder path
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        # unparsable (it will not open either): judge by the userinfo alone
        authority = url.split("://", 1)[1].split("/", 1)[0]
        return "@" in authority and ":" in authority.rsplit("@", 1)[0]
    return bool(parsed.password) or any(k.lower() in _SECRET_PARAMS for k in parsed.query)


class SqlRegistryBackend:
    """ConnectorRegistry's backend in a collection Store (its engine, schema and sessions)."""

    def __init__(self, store: Store, secret_key: str | None = None) -> None:
        self.store = store
        self._fernet = Fernet(fernet_key(secret_key)) if secret_key is not None else None
        _create_tables(store)
        if self._fernet is not None:
            self._encrypt_plain_rows()

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    # ---- the RegistryBackend protocol ----

    def entries(self) -> builtins.list[StoredConnector]:
        c, e = connectors_table, examples_table
        count = select(func.count()).where(e.c.connector == c.c.name).scalar_subquery()
        with self.store.session() as s, s.begin():
            rows = s.execute(
                select(c.c.name, c.c.url_cipher, c.c.url_format, c.c.url_shown, c.c.dialect, count).order_by(c.c.name)
            ).all()
        return [self._stored(*row) for row in rows]

    def entry(self, name: str) -> StoredConnector | None:
        c, e = connectors_table, examples_table
        count = select(func.count()).where(e.c.connector == c.c.name).scalar_subquery()
        with self.store.session() as s, s.begin():
            row = s.execute(
                select(c.c.name, c.c.url_cipher, c.c.url_format, c.c.url_shown, c.c.dialect, count)
                .where(c.c.name == name)
            ).first()
        return self._stored(*row) if row is not None else None

    def check_url(self, name: str, url: str) -> None:
        if self._fernet is None and holds_password(url):
            raise FailedPrecondition(
                f"connector {name!r}: its URL holds a password, and this server keeps connectors in a store "
                f"that all replicas share, where passwords are stored only encrypted: set {KEY_ENV} (or "
                "secret_key in the config file) to the same Fernet key or passphrase on every replica and "
                "restart, then register it again",
                metadata={"connector": name},
            )

    def put(self, name: str, url: str, replace: bool) -> bool:
        self.check_url(name, url)
        values = self._url_values(url)
        c = connectors_table
        # one statement per attempt, each in its own transaction: an INSERT that loses a race to
        # another replica fails on the primary key (IntegrityError) and changes nothing
        for _ in range(3):
            if replace and self._rowcount(update(c).where(c.c.name == name).values(**values, updated_at=_now())):
                return True
            try:
                self._rowcount(insert(c).values(name=name, **values))
                return True
            except IntegrityError:
                if not replace:
                    return False
                # replace: it was inserted meanwhile, so the UPDATE finds it now
        raise FailedPrecondition(f"connector {name!r} kept changing while it was registered; try again",
                                 metadata={"connector": name})

    def delete(self, name: str) -> bool:
        c, e = connectors_table, examples_table
        with self.store.session() as s, s.begin():
            # examples first: the FOREIGN KEY cascade does it too, but SQLite enforces it only
            # with PRAGMA foreign_keys on
            s.execute(delete(e).where(e.c.connector == name))
            return bool(cast(CursorResult[Any], s.execute(delete(c).where(c.c.name == name))).rowcount)

    def append_example(self, name: str, question: str, sql: str) -> bool:
        c, e = connectors_table, examples_table
        # one INSERT ... SELECT ... WHERE EXISTS: atomic on its own, no lock held between a read
        # and a write; the foreign key turns a removal racing it into an IntegrityError
        source = select(literal(name), literal(question), literal(sql), literal(_now(), DateTime(timezone=True))) \
            .where(exists().where(c.c.name == name))
        # RETURNING counts what was inserted: the driver's rowcount of an INSERT ... SELECT is -1
        statement = insert(e).from_select(["connector", "question", "sql", "created_at"], source).returning(e.c.id)
        try:
            with self.store.session() as s, s.begin():
                return bool(s.execute(statement).all())
        except IntegrityError:
            return False

    def examples(self, name: str) -> builtins.list[dict[str, str]] | None:
        c, e = connectors_table, examples_table
        with self.store.session() as s, s.begin():
            if s.execute(select(c.c.name).where(c.c.name == name)).first() is None:
                return None
            rows = s.execute(select(e.c.question, e.c.sql).where(e.c.connector == name).order_by(e.c.id)).all()
        return [{"question": q, "sql": sql} for q, sql in rows]

    def describe(self) -> str:
        where = self.store.engine.url.render_as_string(hide_password=True)
        schema = f" (schema {self.store.schema})" if self.store.schema else ""
        how = f"URLs encrypted with {KEY_ENV}" if self._fernet else f"no {KEY_ENV}: URLs with passwords are refused"
        return f"shared store {where}{schema}; {how}"

    # ---- the JSON file of a single server, imported once ----

    def import_file(self, path: Path) -> int | None:
        """Import a connectors.json into an empty registry, in one transaction: the number
        imported, or None when the store has registrations already (nothing is imported)."""
        entries = read_registry_file(path)
        refused = [n for n, e in entries.items() if self._fernet is None and holds_password(e["url"])]
        if refused:
            raise FailedPrecondition(
                f"{path} holds connector URLs with passwords ({', '.join(sorted(refused))}), and the shared "
                f"store keeps passwords only encrypted: set {KEY_ENV} (or secret_key in the config file) on "
                "every replica, then start again to import them"
            )
        c, e = connectors_table, examples_table
        try:
            with self.store.session() as s, s.begin():
                if s.execute(select(func.count()).select_from(c)).scalar_one():
                    return None
                for name, entry in sorted(entries.items()):
                    s.execute(insert(c).values(name=name, **self._url_values(entry["url"])))
                    examples = [{"connector": name, "question": x["question"], "sql": x["sql"]}
                                for x in entry.get("examples", [])]
                    if examples:
                        s.execute(insert(e), examples)
        except IntegrityError:
            return None  # another replica imported at the same moment: its registrations stand
        return len(entries)

    # ---- rows ----

    def _url_values(self, url: str) -> dict[str, str]:
        if self._fernet is not None:
            cipher, form = self._fernet.encrypt(url.encode()).decode("ascii"), FERNET
        else:
            cipher, form = url, PLAIN
        return {"url_cipher": cipher, "url_format": form, "url_shown": redact_url(url), "dialect": dialect_of(url)}

    def _stored(self, name: str, cipher: str, form: str, shown: str, dialect: str, examples: int) -> StoredConnector:
        url, problem = self._decrypt(name, cipher, form)
        return StoredConnector(name, url, shown, dialect, int(examples), problem)

    def _decrypt(self, name: str, cipher: str, form: str) -> tuple[str | None, str | None]:
        if form == PLAIN:
            return cipher, None
        if form != FERNET:
            return None, f"connector {name!r} is stored in a format this version does not know ({form!r}): upgrade"
        if self._fernet is None:
            return None, (f"connector {name!r}: its URL is stored encrypted and this server has no {KEY_ENV}: "
                          "set it (or secret_key in the config file) to the key the other replicas use")
        try:
            return self._fernet.decrypt(cipher.encode("ascii")).decode(), None
        except (InvalidToken, ValueError):
            return None, (f"connector {name!r}: its URL was encrypted under another secret key than this server's "
                          f"{KEY_ENV}: give every replica the same key, or register it again with replace")

    def _rowcount(self, statement: Any) -> int:
        with self.store.session() as s, s.begin():
            return int(cast(CursorResult[Any], s.execute(statement)).rowcount)

    def _encrypt_plain_rows(self) -> None:
        """Rows stored in plain text before a key was set are encrypted now; each UPDATE names the
        text it replaces, so a concurrent change by another replica is never overwritten."""
        assert self._fernet is not None
        c = connectors_table
        with self.store.session() as s, s.begin():
            plain = s.execute(select(c.c.name, c.c.url_cipher).where(c.c.url_format == PLAIN)).all()
        done = 0
        for name, url in plain:
            token = self._fernet.encrypt(url.encode()).decode("ascii")
            done += self._rowcount(update(c).where(c.c.name == name, c.c.url_format == PLAIN, c.c.url_cipher == url)
                                   .values(url_cipher=token, url_format=FERNET))
        if done:
            log.info("connector registry: encrypted %d URL(s) stored before %s was set", done, KEY_ENV)


def _create_tables(store: Store) -> None:
    """As the store creates its own: CREATE TABLE where missing, in its schema. Replicas starting
    at once may race on PostgreSQL ("already exists"): re-checked rather than failed on."""
    try:
        metadata.create_all(store.engine)
    except DBAPIError:
        present = set(inspect(store.engine).get_table_names(schema=store.schema))
        if not {t.name for t in metadata.sorted_tables} <= present:
            raise


def open_shared_registry(
    store: Store,
    sandbox: ConnectorSandbox | None = None,
    secret_key: str | None = None,
    *,
    legacy_file: Path | None = None,
) -> ConnectorRegistry:
    """The registry of a server whose store replicas share. A `legacy_file` (the connectors.json a
    single server kept in its data dir) is imported once, into an empty registry, and renamed
    `connectors.json.imported` (it still holds the URLs in clear: delete it once not needed)."""
    backend = SqlRegistryBackend(store, secret_key)
    if legacy_file is not None and Path(legacy_file).is_file():
        _import_legacy(backend, Path(legacy_file))
    log.info("connector registry: %s", backend.describe())
    for entry in backend.entries():  # said once at startup; each use of one says it again
        if entry.problem is not None:
            log.warning("%s", entry.problem)
    return ConnectorRegistry(sandbox=sandbox, backend=backend)


def _import_legacy(backend: SqlRegistryBackend, path: Path) -> None:
    imported = backend.import_file(path)
    if imported is None:
        log.warning("connector registry: %s not imported: the shared store has registrations already "
                    "(remove or rename the file to silence this)", path)
        return
    target = path.with_name(path.name + ".imported")
    n = 1
    while target.exists():  # an earlier import's file is kept
        target, n = path.with_name(f"{path.name}.imported.{n}"), n + 1
    path.rename(target)
    log.info("connector registry: imported %d connector(s) from %s into the shared store; the file is now %s "
             "(it holds their URLs unencrypted: delete it once you no longer need it)", imported, path, target)
