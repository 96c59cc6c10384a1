"""Durable state of collections: SQLAlchemy 2 models on SQLite (default) or PostgreSQL.

The store is the source of truth; the faiss/int8 files are a cache of it. Every chunk keeps its
float32 embedding as a blob, so an index can be rebuilt (and int8 recalibrated) without
re-embedding. `collections.version` increases with every committed change; an index folder
records the version it reflects, and a mismatch on open means "rebuild from the store".

PostgreSQL isolation per test run or tenant: pass `schema=`; tables are created inside it via
SQLAlchemy's schema_translate_map, without changing the models.

Stores created by earlier versions are upgraded on open: columns added since are created
(nullable, see _ADDED_COLUMNS), so an existing database keeps working without a manual migration.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from ragloom.errors import Unavailable

log = logging.getLogger(__name__)


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class CollectionRow(Base):
    __tablename__ = "ragloom_collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    model: Mapped[str] = mapped_column(String(256), nullable=False)
    index_kind: Mapped[str] = mapped_column(String(16), nullable=False)
    chunk_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    chunk_overlap: Mapped[int] = mapped_column(Integer, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_now)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_slot: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    documents: Mapped[list[DocumentRow]] = relationship(
        back_populates="collection", cascade="all, delete-orphan", passive_deletes=True
    )


class DocumentRow(Base):
    __tablename__ = "ragloom_documents"
    __table_args__ = (UniqueConstraint("collection_id", "doc_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("ragloom_collections.id", ondelete="CASCADE"), nullable=False
    )
    doc_id: Mapped[str] = mapped_column(String(512), nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, nullable=False, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_now)

    collection: Mapped[CollectionRow] = relationship(back_populates="documents")
    chunks: Mapped[list[ChunkRow]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True
    )


class ChunkRow(Base):
    __tablename__ = "ragloom_chunks"
    __table_args__ = (
        UniqueConstraint("collection_id", "slot"),
        Index("ix_ragloom_chunks_document", "document_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("ragloom_collections.id", ondelete="CASCADE"), nullable=False
    )
    document_id: Mapped[int] = mapped_column(ForeignKey("ragloom_documents.id", ondelete="CASCADE"), nullable=False)
    chunk_id: Mapped[str] = mapped_column(String(600), nullable=False)
    idx: Mapped[int] = mapped_column(Integer, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    slot: Mapped[int] = mapped_column(Integer, nullable=False)  # row in the index's int8 file
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32 little-endian
    # Where `text` lies in its document's text, in characters: text == document[start:end].
    # Nullable because stores made before these columns existed get them added on open (see
    # _add_missing_columns) with NULL in their old rows: the document text is not stored, so old
    # chunks' offsets cannot be recovered (search reports them as 0/0 until re-upserted).
    start_char: Mapped[int | None] = mapped_column(Integer, nullable=True)
    end_char: Mapped[int | None] = mapped_column(Integer, nullable=True)

    document: Mapped[DocumentRow] = relationship(back_populates="chunks")


def vector_blob(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def blob_vector(b: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4", count=dim)


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{Path(data_dir) / 'ragloom.db'}"


class Store:
    """An engine + session factory; callers use `with store.session() as s, s.begin(): ...`."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # gRPC worker threads share the engine; SQLite serializes writers itself.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            # a server that dropped our connections (restart, failover, pg_terminate_backend) must
            # not fail the next call: a pooled connection is tested before use and replaced if dead
            kwargs["pool_pre_ping"] = True
        engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _sqlite_pragmas)
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        self.engine: Engine = engine
        self.schema = schema
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine, schema)
        self._sessions = sessionmaker(self.engine, class_=_Session, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()


class _Session(Session):
    """A session whose `with` block reports a lost database connection as Unavailable (UNAVAILABLE,
    retryable) instead of an internal error. The pool has already dropped the dead connection, so a
    retry gets a fresh one. A commit cut off in flight may or may not have been stored: upserts and
    deletes are idempotent, so retrying them is safe."""

    def __exit__(self, type_: Any, value: Any, traceback: Any) -> None:
        sqlite = self.bind is not None and self.bind.dialect.name == "sqlite"
        try:
            super().__exit__(type_, value, traceback)  # closing rolls back: it may find the connection gone
        except DBAPIError as exc:
            if not _lost_connection(exc, sqlite):
                raise
            if value is None:  # the block's work is done (a write committed in its begin() block)
                log.info("collection store: the connection was gone when the session closed: %s", exc.orig)
                return
            if not isinstance(value, DBAPIError):
                return  # the block's own exception goes on
        if isinstance(value, DBAPIError) and _lost_connection(value, sqlite):
            raise Unavailable(
                f"lost the connection to the collection store: {str(value.orig).strip() or type(value.orig).__name__}",
                reason="DATABASE_UNAVAILABLE", retry_after_s=1.0,
            ) from value


def _lost_connection(exc: DBAPIError, sqlite: bool) -> bool:
    """A disconnect SQLAlchemy recognised, or (server databases only) a connection that could not be
    made or was ended by the server: SQLSTATE class 08 (connection exception) or 57 (operator
    intervention: admin shutdown, crash shutdown, cannot connect now)."""
    if exc.connection_invalidated:
        return True
    if sqlite or not isinstance(exc, OperationalError):  # SQLite's OperationalErrors are SQL errors
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate is None or str(sqlstate)[:2] in ("08", "57")


# Columns added after the first release, as (table, column, SQL type): a store created by an
# earlier version has the tables (create_all leaves existing tables alone) but not these columns.
# Each is nullable, so adding it is a metadata-only change on both backends (no table rewrite) and
# rows written before read as NULL.
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    (ChunkRow.__tablename__, "start_char", "INTEGER"),
    (ChunkRow.__tablename__, "end_char", "INTEGER"),
)


def _add_missing_columns(engine: Engine, schema: str | None) -> None:
    """Bring a store created by an earlier version up to the current models, in place.

    Several processes may open one store at once (replicas on one PostgreSQL): PostgreSQL's
    ADD COLUMN IF NOT EXISTS makes a concurrent add a no-op; on SQLite (no IF NOT EXISTS there) a
    column another process added in between shows up as "duplicate column", which is re-checked
    rather than failed on."""
    prep = engine.dialect.identifier_preparer
    postgres = engine.dialect.name == "postgresql"
    for table, column, sql_type in _ADDED_COLUMNS:
        present = {c["name"] for c in inspect(engine).get_columns(table, schema=schema)}
        if column in present:
            continue
        qualified = f"{prep.quote_schema(schema)}.{prep.quote(table)}" if schema else prep.quote(table)
        guard = "IF NOT EXISTS " if postgres else ""
        try:
            with engine.begin() as conn:
                conn.execute(sql_text(f"ALTER TABLE {qualified} ADD COLUMN {guard}{prep.quote(column)} {sql_type}"))
        except DBAPIError:  # another process added it first (SQLite: "duplicate column name")
            if column not in {c["name"] for c in inspect(engine).get_columns(table, schema=schema)}:
                raise
        log.info("store %s: added column %s.%s (rows written before have no value there)",
                 engine.url.render_as_string(hide_password=True), table, column)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # ON DELETE CASCADE needs it
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
