"""The SQL store: the source of truth of a collection (SQLAlchemy 2.x typed models and queries).

Tables
------
``photos``       one row per file: path (unique), content hash (sha256 hex), size, mtime,
                 width, height, status (``ok`` | ``no_face`` | ``failed``), error text.
``faces``        one row per detected face: photo, box ``x1 y1 x2 y2``, 5 landmarks (JSON list of
                 10 floats ``x1, y1, ..., x5, y5``), detector score, embedding (``(D,) float32``
                 little-endian bytes, unit norm), the model that embedded it, cluster.
``people``       id, unique name.
``assignments``  face -> person (at most one person per face) with its source
                 (``folder`` | ``csv`` | ``manual`` | ``enroll`` | ``propagated`` | ``cluster``).
``clusters``     groups of faces found by ``facesearch cluster``; optional person and name;
                 ``manual`` marks clusters the user named or merged, which re-clustering keeps.
``models``       embedding models registered in the collection: name, dim, the model it is
                 compatible with (harmonic training), file hash, file path, threshold tau.
``meta``         key/value text; ``generation`` is bumped in the same transaction as every change
                 to the set of faces or their embeddings, so the vector index (a cache) can tell
                 whether it is current.

Usage
-----
Query helpers are functions taking a :class:`~sqlalchemy.orm.Session`; a :class:`Store` hands
out sessions that commit on success and roll back on error::

    store = Store.open(url, create=True)
    with store.session() as s:
        added = add_photo(s, NewPhoto(path=..., content_hash=..., size=..., mtime=..., faces=...))
        assign(s, added.face_ids, "Ada Lovelace", LabelSource.MANUAL)

Helpers that change faces call :func:`bump_generation` themselves and return the face ids added
or removed, for the caller to apply to the vector index *after* the commit (the collection does).

Schema versions
---------------
The schema is managed by Alembic (``migrations/`` at the repository top). :meth:`Store.open`
creates a brand-new (empty) database at the newest revision when ``create=True``; it never
upgrades an existing database: an older one raises :class:`CollectionError` asking for
``facesearch db upgrade`` (:func:`upgrade_database`), a newer one asks to upgrade facesearch.

SQLite connections use WAL (readers never block the writer), ``foreign_keys=ON``, a 30 s busy
timeout and real transactions for reads (``BEGIN`` is emitted by us, not by the driver).
PostgreSQL URLs use psycopg 3 (``postgresql+psycopg://``; a bare ``postgresql://`` is taken
to mean psycopg 3 too).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    event,
    func,
    select,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from facesearch.distance import UNIT_NORM_TOLERANCE
from facesearch.errors import CollectionError, IncompatibleModelError, ModelError, NotFoundError
from facesearch.types import Face

logger = logging.getLogger(__name__)

#: The Alembic revision this code reads and writes, and every revision it knows (oldest first).
#: ``tests/test_migrations.py`` checks them against the scripts in ``migrations/versions``.
SCHEMA_HEAD: str = "0002"
SCHEMA_REVISIONS: tuple[str, ...] = ("0001", "0002")
#: Where the Alembic scripts live: ``facesearch/_migrations`` in an installed wheel, else the
#: repository's top-level ``migrations/`` folder (source tree, editable install).
_PACKAGED_MIGRATIONS = Path(__file__).resolve().parent / "_migrations"
MIGRATIONS_DIR: Path = (
    _PACKAGED_MIGRATIONS
    if (_PACKAGED_MIGRATIONS / "env.py").is_file()
    else Path(__file__).resolve().parent.parent / "migrations"
)

#: Ids per ``IN (...)`` clause (well below SQLite's and PostgreSQL's parameter limits).
_IN_CHUNK = 900

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class PhotoStatus(str, enum.Enum):
    """What indexing a photo gave."""

    OK = "ok"  #: decoded, at least one face
    NO_FACE = "no_face"  #: decoded, no face found
    FAILED = "failed"  #: could not be read or processed (see ``error``)


class LabelSource(str, enum.Enum):
    """Where a face's person came from."""

    FOLDER = "folder"  #: the photo's parent folder name (``--labels folders``)
    CSV = "csv"  #: a ``path,person`` file (``--labels FILE.csv``)
    MANUAL = "manual"  #: set by hand (``people`` commands, ``cluster name``)
    ENROLL = "enroll"  #: ``facesearch enroll NAME IMG...``
    PROPAGATED = "propagated"  #: copied from a labelled neighbour within tau
    CLUSTER = "cluster"  #: the person of the face's cluster (``cluster --assign``)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _enum(cls: type[enum.Enum]) -> sa.Enum:
    # Stored as VARCHAR(16) holding the values; no database enum type, no CHECK constraint
    # (new values need no migration); validated on the Python side.
    return sa.Enum(
        cls,
        native_enum=False,
        create_constraint=False,
        length=16,
        validate_strings=True,
        values_callable=lambda c: [m.value for m in c],
    )


class Base(DeclarativeBase):
    """Declarative base; constraint names follow :data:`NAMING_CONVENTION`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[PhotoStatus] = mapped_column(_enum(PhotoStatus), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    faces: Mapped[list[FaceRow]] = relationship(
        back_populates="photo", cascade="all, delete-orphan", passive_deletes=True
    )


class ModelRecord(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    compatible_with: Mapped[str | None] = mapped_column(String(64))
    file_hash: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(Text)
    threshold: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class Person(Base):
    __tablename__ = "people"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)


class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int | None] = mapped_column(
        ForeignKey("people.id", ondelete="SET NULL"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(255))
    manual: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_utcnow, onupdate=_utcnow
    )


class FaceRow(Base):
    __tablename__ = "faces"
    # Ids are never reused (SQLite would hand a deleted largest id out again); what remembers
    # face ids across runs, like incremental clustering, relies on it. Migration 0002.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), index=True)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    landmarks: Mapped[list[float]] = mapped_column(JSON)
    score: Mapped[float] = mapped_column(Float)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    model: Mapped[str] = mapped_column(ForeignKey("models.name"), index=True)
    cluster_id: Mapped[int | None] = mapped_column(
        ForeignKey("clusters.id", ondelete="SET NULL"), index=True
    )

    photo: Mapped[Photo] = relationship(back_populates="faces")
    assignment: Mapped[Assignment | None] = relationship(
        back_populates="face", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def vector(self) -> np.ndarray:
        """The embedding as ``(D,) float32``."""
        return np.frombuffer(self.embedding, dtype="<f4").astype(np.float32)


class Assignment(Base):
    __tablename__ = "assignments"

    face_id: Mapped[int] = mapped_column(
        ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"), index=True)
    source: Mapped[LabelSource] = mapped_column(_enum(LabelSource))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_utcnow)

    face: Mapped[FaceRow] = relationship(back_populates="assignment")
    person: Mapped[Person] = relationship()


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


# -- value types returned by the helpers ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewPhoto:
    """A photo to add, with its faces and (optionally) a person per face.

    ``labels``: empty, or one entry per face (a person name or ``None``). ``status`` defaults
    to ``failed`` when ``error`` is set, ``ok`` with faces, ``no_face`` without.
    """

    path: str
    content_hash: str
    size: int
    mtime: float
    width: int | None = None
    height: int | None = None
    faces: tuple[Face, ...] = ()
    labels: tuple[str | None, ...] = ()
    label_source: LabelSource = LabelSource.FOLDER
    status: PhotoStatus | None = None
    error: str | None = None

    def resolved_status(self) -> PhotoStatus:
        if self.status is not None:
            return self.status
        if self.error is not None:
            return PhotoStatus.FAILED
        return PhotoStatus.OK if self.faces else PhotoStatus.NO_FACE


@dataclass(frozen=True, slots=True)
class AddedPhoto:
    """Result of :func:`add_photo`: new ids, and the face ids of a replaced older row."""

    photo_id: int
    face_ids: tuple[int, ...]
    replaced_face_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PhotoStat:
    """What the indexer needs to know about a stored photo."""

    id: int
    path: str
    content_hash: str
    size: int
    mtime: float
    status: PhotoStatus
    error: str | None


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """A stored face with its photo path and person (no embedding)."""

    face_id: int
    photo_id: int
    photo: str
    box: tuple[float, float, float, float]
    landmarks: tuple[float, ...]
    score: float
    model: str
    person: str | None
    source: LabelSource | None
    cluster_id: int | None
    person_id: int | None = None


@dataclass(frozen=True, slots=True)
class PhotoRecord:
    """A stored photo: path, size in pixels (``None`` when it could not be decoded), status."""

    id: int
    path: str
    width: int | None
    height: int | None
    size: int
    status: PhotoStatus
    error: str | None
    faces: int


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    """A stored cluster's own columns."""

    id: int
    person_id: int | None
    name: str | None
    manual: bool


@dataclass(frozen=True, slots=True)
class ClusterSummary:
    """A stored cluster: size, person (when named), the first face ids as samples."""

    id: int
    size: int
    person_id: int | None
    person: str | None
    name: str | None
    manual: bool
    sample_face_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PersonSummary:
    id: int
    name: str
    faces: int
    photos: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    dim: int
    compatible_with: str | None
    file_hash: str | None
    path: str | None
    threshold: float | None
    faces: int = 0


@dataclass(frozen=True, slots=True)
class Counts:
    photos: int
    faces: int
    people: int
    labelled_faces: int
    failed_photos: int
    no_face_photos: int
    clusters: int


@dataclass(frozen=True, slots=True)
class FaceArrays:
    """Per-face integer columns, aligned, sorted by face id; ``-1`` for NULL. All ``(N,) int64``."""

    face_ids: np.ndarray
    photo_ids: np.ndarray
    person_ids: np.ndarray
    cluster_ids: np.ndarray


# -- engine, store, schema --------------------------------------------------------------------


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; ``postgresql://`` means psycopg 3 (``postgresql+psycopg://``)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine with the connection settings this store relies on (see the module doc)."""
    u = normalize_url(url)
    if u.get_backend_name() != "sqlite":
        return sa.create_engine(u, **kwargs)
    connect_args = {"timeout": 30.0, **kwargs.pop("connect_args", {})}
    engine = sa.create_engine(u, connect_args=connect_args, **kwargs)
    in_memory = u.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # BEGIN is emitted by _on_begin
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision of the database, or ``None`` when it has no ``alembic_version``."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _is_empty(engine: Engine) -> bool:
    """No tables, or only an empty ``alembic_version`` (after a downgrade to base)."""
    with engine.connect() as conn:
        return not set(sa.inspect(conn).get_table_names()) - {"alembic_version"}


def check_schema(engine: Engine, what: str = "the database") -> None:
    """Raise :class:`CollectionError` unless the database is at :data:`SCHEMA_HEAD`.

    ``what`` names the database in messages (e.g. ``"collection 'default'"``).
    """
    rev = schema_revision(engine)
    if rev == SCHEMA_HEAD:
        return
    if rev is None:
        if _is_empty(engine):
            raise CollectionError(f"{what} has no facesearch tables (empty database)")
        raise CollectionError(
            f"{what} holds tables but no facesearch schema version (alembic_version): "
            "it is not a facesearch database"
        )
    if rev in SCHEMA_REVISIONS:
        raise CollectionError(
            f"{what} has schema revision {rev}, this facesearch needs {SCHEMA_HEAD}: "
            "run `facesearch db upgrade` (with the same --home/--collection/--db)"
        )
    raise CollectionError(
        f"{what} has schema revision {rev}, unknown to this facesearch (newest known: "
        f"{SCHEMA_HEAD}): it was written by a newer facesearch; upgrade facesearch"
    )


#: Alembic's version table, as ``alembic stamp`` creates it (for :func:`create_schema`).
_ALEMBIC_VERSION = sa.Table(
    "alembic_version",
    sa.MetaData(),
    sa.Column("version_num", String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
#: The rows the migrations insert into an empty database.
_INITIAL_META: tuple[dict[str, str], ...] = (
    {"key": "generation", "value": "0"},
    {"key": "face_count", "value": "0"},
)


def create_schema(engine: Engine) -> None:
    """Give an empty database the newest schema, stamped :data:`SCHEMA_HEAD`, in one transaction.

    The same tables, indexes, constraints and rows as running every migration from nothing
    (:func:`upgrade_database`; ``tests/test_migrations.py`` compares the two databases), but built
    from the models directly: Alembic's recipe for a new database (``create_all``, then ``stamp``),
    much faster than importing and running Alembic. A new migration that inserts rows must add them
    to
    ``_INITIAL_META`` as well.
    """
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        _ALEMBIC_VERSION.create(conn, checkfirst=True)  # may exist, empty, after a downgrade
        conn.execute(_ALEMBIC_VERSION.delete())
        conn.execute(_ALEMBIC_VERSION.insert().values(version_num=SCHEMA_HEAD))
        conn.execute(sa.insert(Meta), list(_INITIAL_META))


def _alembic_config(connection: sa.Connection) -> Any:
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise CollectionError(
            f"database migrations not found in {MIGRATIONS_DIR}: facesearch was installed "
            "without its migrations folder; reinstall from the source tree"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def _engine_for(url_or_engine: str | URL | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    return make_engine(url_or_engine), True


def upgrade_database(url: str | URL | Engine, revision: str = "head") -> str | None:
    """Apply the Alembic migrations up to ``revision``; returns the revision reached.

    Works on an empty database (creates the schema) and on an older one. The Alembic
    configuration is built in code: no ``alembic.ini`` is needed.
    """
    from alembic import command

    engine, own = _engine_for(url)
    try:
        before = schema_revision(engine)
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), revision)
        after = schema_revision(engine)
        if before != after:
            logger.info("database schema upgraded from %s to %s", before or "nothing", after)
        return after
    finally:
        if own:
            engine.dispose()


def downgrade_database(url: str | URL | Engine, revision: str) -> str | None:
    """Apply the Alembic downgrades to ``revision`` (``"base"``: drop everything)."""
    from alembic import command

    engine, own = _engine_for(url)
    try:
        with engine.begin() as conn:
            command.downgrade(_alembic_config(conn), revision)
        return schema_revision(engine)
    finally:
        if own:
            engine.dispose()


class Store:
    """An engine plus a session factory. Use :meth:`open`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str | URL, *, create: bool = False, what: str = "the database") -> Store:
        """Connect to ``url`` and check the schema (:func:`check_schema`).

        ``create``: an *empty* database is given the newest schema. An existing database is
        never upgraded here.
        """
        engine = make_engine(url)
        try:
            if create and schema_revision(engine) is None and _is_empty(engine):
                create_schema(engine)
                logger.info("created a new database at schema %s", SCHEMA_HEAD)
            check_schema(engine, what)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    @contextmanager
    def session(self, *, snapshot: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        ``snapshot``: every read sees the same snapshot (PostgreSQL ``REPEATABLE READ``; SQLite
        transactions always do), e.g. to read the generation and the embeddings consistently.
        """
        s = self._sessions()
        try:
            if snapshot and self.dialect == "postgresql":
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    @property
    def url(self) -> URL:
        return self.engine.url

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()


# -- meta and generation ----------------------------------------------------------------------

GENERATION_KEY = "generation"
#: Number of faces, kept in step with the generation so that checking the index is O(1).
FACE_COUNT_KEY = "face_count"


def get_meta(s: Session, key: str, default: str | None = None) -> str | None:
    value = s.scalar(select(Meta.value).where(Meta.key == key))
    return default if value is None else value


def set_meta(s: Session, key: str, value: str) -> None:
    row = s.get(Meta, key)
    if row is None:
        s.add(Meta(key=key, value=value))
    else:
        row.value = value
    s.flush()


def get_generation(s: Session) -> int:
    """The face generation: bumped by every change to faces or their embeddings."""
    return int(get_meta(s, GENERATION_KEY, "0") or 0)


def bump_generation(s: Session, faces_delta: int = 0) -> int:
    """Increment the face generation in this transaction (row locked on PostgreSQL).

    ``faces_delta``: faces added (positive) or deleted (negative) by the change, applied to
    the recorded face count (:func:`recorded_face_count`). Returns the new generation.
    """
    row = s.get(Meta, GENERATION_KEY, with_for_update=True)
    if row is None:
        row = Meta(key=GENERATION_KEY, value="0")
        s.add(row)
    row.value = str(int(row.value) + 1)
    if faces_delta:
        count = s.get(Meta, FACE_COUNT_KEY)
        if count is None:
            s.flush()
            s.add(Meta(key=FACE_COUNT_KEY, value=str(face_count(s))))
        else:
            count.value = str(int(count.value) + faces_delta)
    s.flush()
    return int(row.value)


def recorded_face_count(s: Session) -> int:
    """The number of faces as recorded in ``meta`` (O(1); :func:`face_count` counts rows)."""
    value = get_meta(s, FACE_COUNT_KEY)
    return face_count(s) if value is None else int(value)


def recount_faces(s: Session) -> int:
    """Count the faces and record the count (repairs a count changed behind our back)."""
    n = face_count(s)
    set_meta(s, FACE_COUNT_KEY, str(n))
    return n


# -- models -----------------------------------------------------------------------------------


def _model_info(m: ModelRecord, faces: int = 0) -> ModelInfo:
    return ModelInfo(m.name, m.dim, m.compatible_with, m.file_hash, m.path, m.threshold, faces)


def register_model(
    s: Session,
    name: str,
    dim: int,
    *,
    compatible_with: str | None = None,
    file_hash: str | None = None,
    path: str | None = None,
    threshold: float | None = None,
) -> ModelInfo:
    """Register an embedding model (idempotent for identical details).

    ``compatible_with``: the name of the model whose vectors this one's can be compared with
    (trained with the harmonic loss); it must be registered and have the same ``dim``.
    Re-registering a name with a different ``dim`` or file hash raises :class:`ModelError`.
    """
    if not name or len(name) > 64:
        raise ModelError(f"model name must be 1..64 characters, got {name!r}")
    if dim <= 0:
        raise ModelError(f"model {name!r}: dim must be positive, got {dim}")
    if compatible_with is not None:
        base = s.get(ModelRecord, compatible_with)
        if base is None:
            raise ModelError(
                f"model {name!r} is declared compatible with {compatible_with!r}, which is not "
                "registered in this collection"
            )
        if base.dim != dim:
            raise IncompatibleModelError(
                f"model {name!r} (dim {dim}) cannot be compatible with {compatible_with!r} "
                f"(dim {base.dim})"
            )
    row = s.get(ModelRecord, name)
    if row is not None:
        if row.dim != dim:
            raise ModelError(f"model {name!r} is registered with dim {row.dim}, not {dim}")
        if file_hash and row.file_hash and row.file_hash != file_hash:
            raise ModelError(
                f"a different model file is already registered as {name!r} "
                f"(sha256 {row.file_hash[:12]}..., given {file_hash[:12]}...): rename the model"
            )
        row.file_hash = row.file_hash or file_hash
        row.path = path or row.path
        row.threshold = threshold if threshold is not None else row.threshold
        if compatible_with is not None:
            row.compatible_with = compatible_with
    else:
        row = ModelRecord(
            name=name,
            dim=dim,
            compatible_with=compatible_with,
            file_hash=file_hash,
            path=path,
            threshold=threshold,
        )
        s.add(row)
    s.flush()
    return _model_info(row)


def model_names(s: Session) -> set[str]:
    """Names of the registered models."""
    return set(s.scalars(select(ModelRecord.name)).all())


def database_bytes(s: Session) -> int | None:
    """Size of the store's tables on a server database (``None`` for SQLite: in the folder)."""
    if s.get_bind().dialect.name != "postgresql":
        return None
    tables = [t.name for t in Base.metadata.sorted_tables] + ["alembic_version"]
    total = s.execute(
        sa.text(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relname = ANY(:names)"
        ),
        {"names": tables},
    ).scalar()
    return int(total or 0)


def get_model(s: Session, name: str) -> ModelInfo | None:
    row = s.get(ModelRecord, name)
    return None if row is None else _model_info(row)


def list_models(s: Session) -> list[ModelInfo]:
    """Registered models with their face counts, by name."""
    n_faces = {
        r[0]: r[1] for r in s.execute(select(FaceRow.model, func.count()).group_by(FaceRow.model))
    }
    rows = s.scalars(select(ModelRecord).order_by(ModelRecord.name)).all()
    return [_model_info(m, int(n_faces.get(m.name, 0))) for m in rows]


def _root(parents: dict[str, str | None], name: str) -> str:
    if name not in parents:
        raise ModelError(f"model {name!r} is not registered in this collection")
    seen = {name}
    while (parent := parents.get(name)) is not None:
        if parent in seen or parent not in parents:
            raise ModelError(f"broken model compatibility chain at {name!r} -> {parent!r}")
        name = parent
        seen.add(name)
    return name


def model_root(s: Session, name: str) -> str:
    """The model at the end of ``name``'s ``compatible_with`` chain: its embedding space."""
    parents = {r[0]: r[1] for r in s.execute(select(ModelRecord.name, ModelRecord.compatible_with))}
    return _root(parents, name)


def model_space(s: Session, name: str) -> tuple[str, list[str]]:
    """``(root, models)``: ``name``'s space and every registered model in it, sorted.

    Vectors of models in one space can be compared (harmonic training); other models' cannot.
    """
    parents = {r[0]: r[1] for r in s.execute(select(ModelRecord.name, ModelRecord.compatible_with))}
    root = _root(parents, name)
    return root, sorted(m for m in parents if _root(parents, m) == root)


# -- photos -----------------------------------------------------------------------------------


def _stat(p: Photo) -> PhotoStat:
    return PhotoStat(p.id, p.path, p.content_hash, p.size, p.mtime, p.status, p.error)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _chunks(ids: Sequence[int] | np.ndarray, n: int = _IN_CHUNK) -> Iterator[list[int]]:
    flat = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
    for start in range(0, len(flat), n):
        yield flat[start : start + n]


#: Embeddings must be unit vectors within this tolerance on their norm.


def _embedding_bytes(e: np.ndarray, dim: int, where: str) -> bytes:
    v = np.asarray(e, dtype=np.float32).reshape(-1)
    if v.shape != (dim,):
        raise ModelError(f"{where}: embedding has {v.size} values, the model has dim {dim}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(v).all() or abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
        raise ValueError(f"{where}: embedding must be a finite unit vector, its norm is {norm:.6f}")
    return v.astype("<f4").tobytes()


def add_photo(s: Session, photo: NewPhoto, *, replace: bool = False) -> AddedPhoto:
    """Insert one photo with its faces and labels (see :func:`add_photos`)."""
    return add_photos(s, [photo], replace=replace)[0]


def add_photos(
    s: Session, photos: Sequence[NewPhoto], *, replace: bool = False
) -> list[AddedPhoto]:
    """Insert photos with their faces and labels; bumps the generation once if faces are added.

    Every face's model must be registered (:func:`register_model`) and its embedding must be
    a unit vector of that model's dim. ``replace``: stored photos with the same paths are
    deleted first (with their faces), in the same transaction; otherwise a path already stored
    (or given twice) raises :class:`CollectionError`. Bulk statements: a few queries per call,
    whatever the number of photos. Returns one :class:`AddedPhoto` per photo, in order.
    """
    if not photos:
        return []
    statuses = []
    for photo in photos:
        if photo.labels and len(photo.labels) != len(photo.faces):
            raise ValueError(
                f"{photo.path}: {len(photo.labels)} labels for {len(photo.faces)} faces"
            )
        status = photo.resolved_status()
        if status is PhotoStatus.FAILED and photo.faces:
            raise ValueError(f"{photo.path}: a failed photo cannot have faces")
        statuses.append(status)
    paths = [p.path for p in photos]
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise CollectionError(f"photo {dup} is given twice")
    dims = {
        r[0]: r[1]
        for r in s.execute(
            select(ModelRecord.name, ModelRecord.dim).where(
                ModelRecord.name.in_({f.model for p in photos for f in p.faces})
            )
        )
    }
    face_rows: list[dict[str, Any]] = []
    for photo in photos:
        for face in photo.faces:
            if face.model not in dims:
                raise ModelError(
                    f"{photo.path}: model {face.model!r} is not registered in this collection"
                )
            det = face.detection
            face_rows.append(
                {
                    "x1": float(det.box[0]),
                    "y1": float(det.box[1]),
                    "x2": float(det.box[2]),
                    "y2": float(det.box[3]),
                    "landmarks": [float(c) for pt in det.landmarks for c in pt],
                    "score": float(det.score),
                    "embedding": _embedding_bytes(face.embedding, dims[face.model], photo.path),
                    "model": face.model,
                }
            )
    # photos already stored under these paths
    old: dict[str, int] = {}
    for start in range(0, len(paths), _IN_CHUNK):
        part = paths[start : start + _IN_CHUNK]
        old.update(
            {
                r[1]: r[0]
                for r in s.execute(select(Photo.id, Photo.path).where(Photo.path.in_(part)))
            }
        )
    replaced: dict[int, list[int]] = {}
    if old:
        if not replace:
            raise CollectionError(f"photo {next(iter(old))} is already in the collection")
        old_ids = list(old.values())
        for start in range(0, len(old_ids), _IN_CHUNK):
            id_part = old_ids[start : start + _IN_CHUNK]
            for fid, pid in s.execute(
                select(FaceRow.id, FaceRow.photo_id).where(FaceRow.photo_id.in_(id_part))
            ):
                replaced.setdefault(pid, []).append(fid)
        delete_photos(s, list(old.values()))
    now = _utcnow()
    photo_ids = s.scalars(
        sa.insert(Photo).returning(Photo.id, sort_by_parameter_order=True),
        [
            {
                "path": p.path,
                "content_hash": p.content_hash,
                "size": p.size,
                "mtime": p.mtime,
                "width": p.width,
                "height": p.height,
                "status": status,
                "error": p.error,
                "indexed_at": now,
            }
            for p, status in zip(photos, statuses, strict=True)
        ],
    ).all()
    row = 0
    for photo, photo_id in zip(photos, photo_ids, strict=True):
        for _ in photo.faces:
            face_rows[row]["photo_id"] = photo_id
            row += 1
    face_ids = (
        s.scalars(
            sa.insert(FaceRow).returning(FaceRow.id, sort_by_parameter_order=True), face_rows
        ).all()
        if face_rows
        else []
    )
    results: list[AddedPhoto] = []
    labels: dict[tuple[str, LabelSource], list[int]] = {}
    row = 0
    for photo, photo_id in zip(photos, photo_ids, strict=True):
        ids = tuple(int(i) for i in face_ids[row : row + len(photo.faces)])
        row += len(photo.faces)
        for face_id, label in zip(ids, photo.labels, strict=False):  # labels may be ()
            if label is not None:
                labels.setdefault((label, LabelSource(photo.label_source)), []).append(face_id)
        results.append(
            AddedPhoto(int(photo_id), ids, tuple(replaced.get(old.get(photo.path, -1), ())))
        )
    if labels:
        person_ids = _ensure_people(s, sorted({name for name, _ in labels}))
        s.execute(
            sa.insert(Assignment),
            [
                {"face_id": f, "person_id": person_ids[name], "source": source, "assigned_at": now}
                for (name, source), fids in labels.items()
                for f in fids
            ],
        )
    if face_ids:
        bump_generation(s, len(face_ids))
    return results


def _ensure_people(s: Session, names: Sequence[str]) -> dict[str, int]:
    """``name -> person id`` for ``names``, creating the missing people."""
    for name in names:
        _check_name(name)
    ids: dict[str, int] = {}
    for start in range(0, len(names), _IN_CHUNK):
        part = list(names[start : start + _IN_CHUNK])
        ids.update(
            {
                r[1]: r[0]
                for r in s.execute(select(Person.id, Person.name).where(Person.name.in_(part)))
            }
        )
    missing = [n for n in names if n not in ids]
    if missing:
        now = _utcnow()
        new_ids = s.scalars(
            sa.insert(Person).returning(Person.id, sort_by_parameter_order=True),
            [{"name": n, "created_at": now} for n in missing],
        ).all()
        ids.update(zip(missing, (int(i) for i in new_ids), strict=True))
    return ids


def photo_by_path(s: Session, path: str) -> PhotoStat | None:
    p = s.scalar(select(Photo).where(Photo.path == path))
    return None if p is None else _stat(p)


def photos_by_hash(s: Session, content_hash: str) -> list[PhotoStat]:
    """Stored photos with this content hash (copies or an earlier location), by id."""
    rows = s.scalars(
        select(Photo).where(Photo.content_hash == content_hash).order_by(Photo.id)
    ).all()
    return [_stat(p) for p in rows]


def photo_stats(s: Session, paths: Iterable[str] | None = None) -> dict[str, PhotoStat]:
    """``path -> PhotoStat`` for the given paths that are stored (all photos when ``None``)."""
    out: dict[str, PhotoStat] = {}
    if paths is None:
        for p in s.scalars(select(Photo)):
            out[p.path] = _stat(p)
        return out
    wanted = list(dict.fromkeys(paths))
    for start in range(0, len(wanted), _IN_CHUNK):
        part = wanted[start : start + _IN_CHUNK]
        for p in s.scalars(select(Photo).where(Photo.path.in_(part))):
            out[p.path] = _stat(p)
    return out


def failed_photos(s: Session) -> list[PhotoStat]:
    rows = s.scalars(
        select(Photo).where(Photo.status == PhotoStatus.FAILED).order_by(Photo.path)
    ).all()
    return [_stat(p) for p in rows]


def touch_photo(s: Session, photo_id: int, *, size: int, mtime: float) -> None:
    """Record a new size/mtime for an unchanged file (same content hash)."""
    p = s.get(Photo, photo_id)
    if p is None:
        raise NotFoundError("photo", photo_id, f"no photo with id {photo_id}")
    p.size, p.mtime = size, mtime
    s.flush()


def move_photo(s: Session, photo_id: int, new_path: str, *, mtime: float | None = None) -> None:
    """Give a stored photo a new path (moved or renamed file); faces and labels are kept."""
    p = s.get(Photo, photo_id)
    if p is None:
        raise NotFoundError("photo", photo_id, f"no photo with id {photo_id}")
    taken = s.scalar(select(Photo.id).where(Photo.path == new_path, Photo.id != photo_id))
    if taken is not None:
        raise CollectionError(f"cannot move {p.path} to {new_path}: that path is already stored")
    p.path = new_path
    if mtime is not None:
        p.mtime = mtime
    s.flush()


def _delete(
    s: Session, table: type[Photo] | type[FaceRow], face_key: Any, ids: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Delete the rows of ``table`` with these ids and, with them, the faces whose
    ``face_key`` is one of them; the generation is bumped when faces go. Returns the removed
    face ids ``(n,) int64``."""
    removed: list[int] = []
    for part in _chunks(ids):
        removed += s.scalars(select(FaceRow.id).where(face_key.in_(part))).all()
        s.execute(sa.delete(table).where(table.id.in_(part)))
    s.expire_all()
    if removed:
        bump_generation(s, -len(removed))
    return np.array(sorted(removed), dtype=np.int64)


def delete_photos(s: Session, photo_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Delete photos with their faces, assignments and embeddings.

    Returns the removed face ids ``(n,) int64``; bumps the generation when there are any.
    """
    return _delete(s, Photo, FaceRow.photo_id, photo_ids)


# -- faces ------------------------------------------------------------------------------------


def _face_query() -> Any:
    return (
        select(
            FaceRow.id,
            FaceRow.photo_id,
            Photo.path,
            FaceRow.x1,
            FaceRow.y1,
            FaceRow.x2,
            FaceRow.y2,
            FaceRow.landmarks,
            FaceRow.score,
            FaceRow.model,
            Person.name,
            Assignment.source,
            FaceRow.cluster_id,
            Person.id,
        )
        .join(Photo, Photo.id == FaceRow.photo_id)
        .outerjoin(Assignment, Assignment.face_id == FaceRow.id)
        .outerjoin(Person, Person.id == Assignment.person_id)
    )


def _face_record(r: Any) -> FaceRecord:
    return FaceRecord(
        face_id=int(r[0]),
        photo_id=int(r[1]),
        photo=r[2],
        box=(float(r[3]), float(r[4]), float(r[5]), float(r[6])),
        landmarks=tuple(float(v) for v in r[7]),
        score=float(r[8]),
        model=r[9],
        person=r[10],
        source=None if r[11] is None else LabelSource(r[11]),
        cluster_id=r[12],
        person_id=None if r[13] is None else int(r[13]),
    )


def faces_by_ids(s: Session, face_ids: Sequence[int] | np.ndarray) -> dict[int, FaceRecord]:
    """``face_id -> FaceRecord`` for the ids that exist (``-1`` and unknown ids are skipped)."""
    out: dict[int, FaceRecord] = {}
    for part in _chunks(face_ids):
        for r in s.execute(_face_query().where(FaceRow.id.in_(part))):
            out[int(r[0])] = _face_record(r)
    return out


def face_record(s: Session, face_id: int) -> FaceRecord:
    """The face ``face_id``; :class:`NotFoundError` when there is none."""
    r = s.execute(_face_query().where(FaceRow.id == int(face_id))).first()
    if r is None:
        raise NotFoundError("face", face_id, f"no face with id {face_id}")
    return _face_record(r)


def face_embedding(s: Session, face_id: int) -> tuple[np.ndarray, str]:
    """``(embedding (D,) float32, model)`` of a stored face; :class:`NotFoundError` if none."""
    f = s.get(FaceRow, int(face_id))
    if f is None:
        raise NotFoundError("face", face_id, f"no face with id {face_id}")
    return f.vector(), f.model


def photo_record(s: Session, photo_id: int) -> PhotoRecord:
    """The photo ``photo_id``; :class:`NotFoundError` when there is none."""
    p = s.get(Photo, int(photo_id))
    if p is None:
        raise NotFoundError("photo", photo_id, f"no photo with id {photo_id}")
    n = s.scalar(select(func.count(FaceRow.id)).where(FaceRow.photo_id == p.id)) or 0
    return PhotoRecord(p.id, p.path, p.width, p.height, p.size, p.status, p.error, int(n))


def photo_face_areas(
    s: Session, photo_ids: Sequence[int]
) -> tuple[dict[int, list[tuple[int, float]]], set[int]]:
    """``({photo id: [(face id, box area)] by face id}, {photo ids with a labelled face})``."""
    faces: dict[int, list[tuple[int, float]]] = {}
    taken: set[int] = set()
    for part in _chunks(photo_ids):
        rows = s.execute(
            select(FaceRow.id, FaceRow.photo_id, FaceRow.x1, FaceRow.y1, FaceRow.x2, FaceRow.y2,
                   Assignment.face_id)
            .outerjoin(Assignment, Assignment.face_id == FaceRow.id)
            .where(FaceRow.photo_id.in_(part))
            .order_by(FaceRow.id)
        )  # fmt: skip
        for fid, pid, x1, y1, x2, y2, assigned in rows:
            faces.setdefault(int(pid), []).append((int(fid), max(x2 - x1, 0.0) * max(y2 - y1, 0.0)))
            if assigned is not None:
                taken.add(int(pid))
    return faces, taken


def faces_not_of_model(s: Session, model: str) -> list[tuple[int, int, list[float], str, str]]:
    """``(face id, photo id, landmarks, photo path, photo content hash)`` of the faces not
    embedded by ``model``, by photo then face id."""
    rows = s.execute(
        select(FaceRow.id, FaceRow.photo_id, FaceRow.landmarks, Photo.path, Photo.content_hash)
        .join(Photo, Photo.id == FaceRow.photo_id)
        .where(FaceRow.model != model)
        .order_by(FaceRow.photo_id, FaceRow.id)
    )
    return [(int(f), int(p), list(lm), path, h) for f, p, lm, path, h in rows]


def faces_of_photo(s: Session, photo_id: int) -> list[FaceRecord]:
    rows = s.execute(_face_query().where(FaceRow.photo_id == photo_id).order_by(FaceRow.id))
    return [_face_record(r) for r in rows]


def delete_faces(s: Session, face_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Delete faces (not their photos). Returns the ids removed ``(n,) int64``."""
    return _delete(s, FaceRow, FaceRow.id, face_ids)


def update_embeddings(
    s: Session, face_ids: Sequence[int] | np.ndarray, xb: np.ndarray, model: str
) -> int:
    """Replace the embeddings of faces (re-embedding with ``model``). Bumps the generation.

    ``face_ids`` ``(n,) int64``, ``xb`` ``(n, D) float32`` with ``D`` the model's dim.
    Returns the number of faces updated.
    """
    m = s.get(ModelRecord, model)
    if m is None:
        raise ModelError(f"model {model!r} is not registered in this collection")
    ids = np.asarray(face_ids, dtype=np.int64).reshape(-1)
    xb = np.asarray(xb, dtype=np.float32)
    if xb.shape != (len(ids), m.dim):
        raise ValueError(f"xb must have shape ({len(ids)}, {m.dim}), got {xb.shape}")
    params = [
        {"fid": int(i), "emb": _embedding_bytes(x, m.dim, f"face {int(i)}"), "model": model}
        for i, x in zip(ids, xb, strict=True)
    ]
    if not params:
        return 0
    stmt = (
        sa.update(FaceRow.__table__)  # type: ignore[arg-type]
        .where(FaceRow.__table__.c.id == sa.bindparam("fid"))
        .values(embedding=sa.bindparam("emb"), model=sa.bindparam("model"))
    )
    s.connection().execute(stmt, params)
    s.expire_all()
    bump_generation(s)
    return len(params)


def _model_filter(stmt: Any, models: Sequence[str] | None) -> Any:
    return stmt if models is None else stmt.where(FaceRow.model.in_(list(models)))


def face_count(s: Session, models: Sequence[str] | None = None) -> int:
    """Number of faces (of the given models)."""
    return int(s.scalar(_model_filter(select(func.count(FaceRow.id)), models)) or 0)


def face_ids(s: Session, models: Sequence[str] | None = None) -> np.ndarray:
    """All face ids (of the given models), sorted, ``(n,) int64``."""
    stmt = _model_filter(select(FaceRow.id), models).order_by(FaceRow.id)
    return np.array(s.scalars(stmt).all(), dtype=np.int64)


def load_embeddings(
    s: Session,
    *,
    models: Sequence[str] | None = None,
    labelled: bool | None = None,
    chunk_size: int = 50_000,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Embeddings in face-id order, in chunks: yields ``(ids (n,) int64, xb (n, D) float32)``.

    ``models``: only faces embedded by these models. ``labelled``: ``True`` only faces with a
    person, ``False`` only faces without, ``None`` all. Chunks are read by key range, so memory
    stays at one chunk; read inside one session for a consistent snapshot.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    last = -1
    dim: int | None = None
    while True:
        stmt = _model_filter(select(FaceRow.id, FaceRow.embedding), models)
        if labelled is not None:
            has = select(Assignment.face_id).where(Assignment.face_id == FaceRow.id).exists()
            stmt = stmt.where(has if labelled else ~has)
        rows = s.execute(stmt.where(FaceRow.id > last).order_by(FaceRow.id).limit(chunk_size)).all()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        blob = b"".join(r[1] for r in rows)
        n_values = len(blob) // 4
        if n_values % len(rows):
            raise CollectionError(
                "embeddings of different sizes in one collection: "
                f"{len(blob)} bytes for {len(rows)} faces from face {ids[0]}"
            )
        d = n_values // len(rows)
        if dim is None:
            dim = d
        lengths = {len(r[1]) for r in rows}
        if lengths != {4 * dim}:
            raise CollectionError(
                f"embeddings of different sizes in one collection: {sorted(lengths)} bytes "
                f"(expected {4 * dim}) among faces {ids[0]}..{ids[-1]}; restrict to one model"
            )
        xb = np.frombuffer(blob, dtype="<f4").astype(np.float32).reshape(len(rows), dim)
        yield ids, xb
        last = int(ids[-1])
        if len(rows) < chunk_size:
            return


def load_all_embeddings(
    s: Session,
    *,
    models: Sequence[str] | None = None,
    labelled: bool | None = None,
    dim: int | None = None,
    chunk_size: int = 50_000,
) -> tuple[np.ndarray, np.ndarray]:
    """All embeddings: ``(ids (N,) int64, xb (N, D) float32)``, sorted by id.

    ``dim`` gives the shape of an empty result (``(0, dim)``) and is checked otherwise.
    """
    id_parts: list[np.ndarray] = []
    x_parts: list[np.ndarray] = []
    for ids, xb in load_embeddings(s, models=models, labelled=labelled, chunk_size=chunk_size):
        if dim is not None and xb.shape[1] != dim:
            raise CollectionError(f"stored embeddings have dim {xb.shape[1]}, expected {dim}")
        if x_parts and xb.shape[1] != x_parts[0].shape[1]:
            raise CollectionError(
                f"embeddings of dims {x_parts[0].shape[1]} and {xb.shape[1]} in one collection"
            )
        id_parts.append(ids)
        x_parts.append(xb)
    if not id_parts:
        return np.empty(0, dtype=np.int64), np.empty((0, dim or 0), dtype=np.float32)
    return np.concatenate(id_parts), np.ascontiguousarray(np.concatenate(x_parts))


def face_arrays(s: Session) -> FaceArrays:
    """Face, photo, person and cluster ids of every face, sorted by face id (-1 for none)."""
    rows = s.execute(
        select(FaceRow.id, FaceRow.photo_id, Assignment.person_id, FaceRow.cluster_id)
        .outerjoin(Assignment, Assignment.face_id == FaceRow.id)
        .order_by(FaceRow.id)
    ).all()
    a = np.array(
        [[r[0], r[1], -1 if r[2] is None else r[2], -1 if r[3] is None else r[3]] for r in rows],
        dtype=np.int64,
    ).reshape(-1, 4)
    return FaceArrays(*(np.ascontiguousarray(a[:, j]) for j in range(4)))


def labelled_face_ids(s: Session) -> np.ndarray:
    """Ids of faces that have a person, sorted ``(n,) int64``."""
    return np.array(
        s.scalars(select(Assignment.face_id).order_by(Assignment.face_id)).all(), dtype=np.int64
    )


# -- people -----------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise CollectionError(f"a person's name must be 1..255 characters, got {name!r}")
    if name != name.strip():
        raise CollectionError(f"a person's name must not start or end with spaces: {name!r}")
    return name


def get_person(s: Session, name: str) -> Person | None:
    return s.scalar(select(Person).where(Person.name == name))


def find_person(s: Session, person: int | str) -> Person:
    """A person by id (``int``) or name (``str``); :class:`NotFoundError` when unknown."""
    if isinstance(person, str):
        return _require_person(s, person)
    p = s.get(Person, int(person))
    if p is None:
        raise NotFoundError("person", person, f"no person with id {person}")
    return p


def _require_person(s: Session, name: str) -> Person:
    p = get_person(s, name)
    if p is None:
        raise NotFoundError("person", name, f"no person named {name!r} (see `facesearch people`)")
    return p


def ensure_person(s: Session, name: str) -> Person:
    """The person called ``name``, created if needed."""
    p = get_person(s, _check_name(name))
    if p is None:
        p = Person(name=name)
        s.add(p)
        s.flush()
    return p


def assign(
    s: Session,
    face_ids: Sequence[int] | np.ndarray,
    person: str,
    source: LabelSource,
    *,
    replace: bool = True,
) -> int:
    """Give faces to ``person`` (created if needed). Returns the number of faces assigned.

    ``replace=False`` leaves faces that already have a person alone (e.g. propagation must
    not override a manual label). Unknown face ids raise :class:`CollectionError`.
    """
    source = LabelSource(source)
    p = ensure_person(s, person)
    ids = sorted({int(i) for i in np.asarray(face_ids, dtype=np.int64).reshape(-1)})
    n = 0
    for part in _chunks(ids):
        found = set(s.scalars(select(FaceRow.id).where(FaceRow.id.in_(part))).all())
        if len(found) != len(part):
            missing = sorted(set(part) - found)
            raise NotFoundError("face", missing[0], f"no faces with ids {missing[:10]}")
        taken = set(s.scalars(select(Assignment.face_id).where(Assignment.face_id.in_(part))).all())
        if replace and taken:
            s.execute(sa.delete(Assignment).where(Assignment.face_id.in_(sorted(taken))))
            taken = set()
        rows = [
            {"face_id": f, "person_id": p.id, "source": source, "assigned_at": _utcnow()}
            for f in part
            if f not in taken
        ]
        if rows:
            s.execute(sa.insert(Assignment), rows)
        n += len(rows)
    s.expire_all()
    return n


def unassign(s: Session, face_ids: Sequence[int] | np.ndarray) -> int:
    """Remove the person of faces. Returns the number of assignments removed."""
    n = 0
    for part in _chunks(face_ids):
        n += _rowcount(s.execute(sa.delete(Assignment).where(Assignment.face_id.in_(part))))
    s.expire_all()
    return n


def rename_person(s: Session, old: str, new: str) -> None:
    p = _require_person(s, old)
    _check_name(new)
    if new == old:
        return
    if get_person(s, new) is not None:
        raise CollectionError(
            f"cannot rename {old!r} to {new!r}: {new!r} exists; merge them instead "
            f"(`facesearch people merge {old!r} {new!r}`)"
        )
    p.name = new
    s.flush()


def merge_people(s: Session, source: str, target: str) -> int:
    """Move every face (and cluster) of ``source`` to ``target`` and delete ``source``.

    Returns the number of faces moved; assignment sources are kept.
    """
    if source == target:
        raise CollectionError(f"cannot merge {source!r} into itself")
    src = _require_person(s, source)
    dst = _require_person(s, target)
    n = _rowcount(
        s.execute(
            sa.update(Assignment).where(Assignment.person_id == src.id).values(person_id=dst.id)
        )
    )
    s.execute(sa.update(Cluster).where(Cluster.person_id == src.id).values(person_id=dst.id))
    s.execute(sa.delete(Person).where(Person.id == src.id))
    s.expire_all()
    return int(n)


def person_face_ids(s: Session, name: str) -> np.ndarray:
    """Ids of ``name``'s faces, sorted ``(n,) int64``."""
    p = _require_person(s, name)
    return np.array(
        s.scalars(
            select(Assignment.face_id)
            .where(Assignment.person_id == p.id)
            .order_by(Assignment.face_id)
        ).all(),
        dtype=np.int64,
    )


def delete_person(s: Session, name: str, *, faces: bool = False) -> np.ndarray:
    """Delete a person and their assignments; with ``faces`` also their faces.

    The photos stay (so re-indexing does not bring the faces back). Returns the removed face
    ids ``(n,) int64`` (empty without ``faces``).
    """
    p = _require_person(s, name)
    theirs = person_face_ids(s, name)
    removed = delete_faces(s, theirs) if faces else np.empty(0, dtype=np.int64)
    s.execute(sa.delete(Person).where(Person.id == p.id))
    s.expire_all()
    return removed


def people(
    s: Session, *, limit: int | None = None, offset: int = 0, ids: Sequence[int] | None = None
) -> list[PersonSummary]:
    """People with face and photo counts, by name (``ids``: only those; ``limit`` /
    ``offset``: one page)."""
    stmt = (
        select(
            Person.id,
            Person.name,
            func.count(Assignment.face_id),
            func.count(sa.distinct(FaceRow.photo_id)),
        )
        .outerjoin(Assignment, Assignment.person_id == Person.id)
        .outerjoin(FaceRow, FaceRow.id == Assignment.face_id)
        .group_by(Person.id, Person.name)
        .order_by(Person.name, Person.id)
        .offset(offset)
        .limit(limit)
    )
    if ids is not None:
        stmt = stmt.where(Person.id.in_([int(i) for i in ids]))
    return [PersonSummary(int(r[0]), r[1], int(r[2]), int(r[3])) for r in s.execute(stmt)]


def people_count(s: Session) -> int:
    return int(s.scalar(select(func.count(Person.id))) or 0)


def person_face_page(s: Session, person_id: int, *, limit: int, offset: int) -> list[int]:
    """Face ids of a person, ascending, one page."""
    stmt = (
        select(Assignment.face_id)
        .where(Assignment.person_id == person_id)
        .order_by(Assignment.face_id)
        .offset(offset)
        .limit(limit)
    )
    return [int(i) for i in s.scalars(stmt)]


def person_face_count(s: Session, person_id: int) -> int:
    stmt = select(func.count(Assignment.face_id)).where(Assignment.person_id == person_id)
    return int(s.scalar(stmt) or 0)


# -- clusters ---------------------------------------------------------------------------------


def create_cluster(
    s: Session, *, person_id: int | None = None, name: str | None = None, manual: bool = False
) -> int:
    c = Cluster(person_id=person_id, name=name, manual=manual)
    s.add(c)
    s.flush()
    return int(c.id)


def set_cluster(s: Session, face_ids: Sequence[int] | np.ndarray, cluster_id: int | None) -> int:
    """Put faces in a cluster (``None``: in none). Returns the number of faces updated."""
    n = 0
    for part in _chunks(face_ids):
        n += _rowcount(
            s.execute(sa.update(FaceRow).where(FaceRow.id.in_(part)).values(cluster_id=cluster_id))
        )
    s.expire_all()
    return n


def cluster_summaries(
    s: Session,
    *,
    unnamed: bool | None = None,
    ids: Sequence[int] | None = None,
    limit: int | None = None,
    offset: int = 0,
    samples: int = 0,
) -> list[ClusterSummary]:
    """Stored clusters, largest first (then by id), with up to ``samples`` face ids each.

    ``unnamed``: ``True`` only clusters without a person, ``False`` only named ones, ``None``
    all. ``ids``: only these clusters.
    """
    size = func.count(FaceRow.id)
    stmt = (
        select(Cluster.id, size, Cluster.person_id, Person.name, Cluster.name, Cluster.manual)
        .join(FaceRow, FaceRow.cluster_id == Cluster.id)
        .outerjoin(Person, Person.id == Cluster.person_id)
        .group_by(Cluster.id, Cluster.person_id, Person.name, Cluster.name, Cluster.manual)
        .order_by(size.desc(), Cluster.id)
        .offset(offset)
        .limit(limit)
    )
    if unnamed is not None:
        stmt = stmt.where(
            Cluster.person_id.is_(None) if unnamed else Cluster.person_id.is_not(None)
        )
    if ids is not None:
        stmt = stmt.where(Cluster.id.in_([int(i) for i in ids]))
    rows = s.execute(stmt).all()
    picked: dict[int, list[int]] = {int(r[0]): [] for r in rows}
    if samples > 0 and picked:
        for part in _chunks(sorted(picked)):
            q = select(FaceRow.cluster_id, FaceRow.id).where(FaceRow.cluster_id.in_(part))
            for cid, fid in s.execute(q.order_by(FaceRow.cluster_id, FaceRow.id)):
                if cid is not None and len(picked[int(cid)]) < samples:
                    picked[int(cid)].append(int(fid))
    return [
        ClusterSummary(int(r[0]), int(r[1]), r[2], r[3], r[4], bool(r[5]), tuple(picked[int(r[0])]))
        for r in rows
    ]


def cluster_records(s: Session) -> dict[int, ClusterRecord]:
    """Every stored cluster by id."""
    rows = s.execute(select(Cluster.id, Cluster.person_id, Cluster.name, Cluster.manual))
    return {int(r[0]): ClusterRecord(int(r[0]), r[1], r[2], bool(r[3])) for r in rows}


def person_names(s: Session) -> dict[int, str]:
    """``person id -> name`` of every person."""
    return {int(i): n for i, n in s.execute(select(Person.id, Person.name))}


def manual_cluster_ids(s: Session) -> frozenset[int]:
    """Ids of the clusters named, merged or split by hand (kept by re-clustering)."""
    return frozenset(int(c) for c in s.scalars(select(Cluster.id).where(Cluster.manual)))


def require_cluster(s: Session, cluster_id: int) -> ClusterRecord:
    """A cluster by id; :class:`NotFoundError` when there is none."""
    c = s.get(Cluster, int(cluster_id))
    if c is None:
        raise NotFoundError(
            "cluster",
            cluster_id,
            f"no cluster with id {cluster_id} (`facesearch cluster` lists the cluster ids)",
        )
    return ClusterRecord(int(c.id), c.person_id, c.name, bool(c.manual))


def update_cluster(
    s: Session,
    cluster_id: int,
    *,
    person_id: int | None = None,
    name: str | None = None,
    manual: bool | None = None,
) -> None:
    """Set a cluster's person, name or manual flag (``None``: unchanged)."""
    values: dict[str, Any] = {}
    if person_id is not None:
        values["person_id"] = person_id
    if name is not None:
        values["name"] = name
    if manual is not None:
        values["manual"] = manual
    if values:
        s.execute(sa.update(Cluster).where(Cluster.id == int(cluster_id)).values(**values))
        s.expire_all()


def delete_clusters(
    s: Session, cluster_ids: Sequence[int] | None = None, *, automatic: bool = False
) -> None:
    """Delete clusters (their faces are in none afterwards): the ``cluster_ids``, or with
    ``automatic`` every cluster not made by hand."""
    if automatic:
        auto = select(Cluster.id).where(Cluster.manual.is_(False))
        s.execute(sa.update(FaceRow).where(FaceRow.cluster_id.in_(auto)).values(cluster_id=None))
        s.execute(sa.delete(Cluster).where(Cluster.manual.is_(False)))
    for part in _chunks(cluster_ids if cluster_ids is not None else []):
        s.execute(sa.update(FaceRow).where(FaceRow.cluster_id.in_(part)).values(cluster_id=None))
        s.execute(sa.delete(Cluster).where(Cluster.id.in_(part)))
    s.expire_all()


def delete_empty_clusters(s: Session) -> None:
    used = select(FaceRow.cluster_id).where(FaceRow.cluster_id.is_not(None)).distinct()
    s.execute(sa.delete(Cluster).where(Cluster.id.not_in(used)))


def new_clusters(s: Session, n: int) -> list[int]:
    """Insert ``n`` automatic clusters in one statement; their ids, in insertion order."""
    if n == 0:
        return []
    now = _utcnow()
    rows = [{"manual": False, "created_at": now, "updated_at": now} for _ in range(n)]
    stmt = sa.insert(Cluster).returning(Cluster.id, sort_by_parameter_order=True)
    return [int(r[0]) for r in s.execute(stmt, rows)]


def set_clusters(s: Session, face_ids: np.ndarray, cluster_ids: np.ndarray) -> None:
    """``faces.cluster_id = cluster_ids[i]`` for ``face_ids[i]`` (both ``(n,) int64``), one
    executemany."""
    if not len(face_ids):
        return
    table = FaceRow.__table__
    stmt = (
        sa.update(table)  # type: ignore[arg-type]
        .where(table.c.id == sa.bindparam("fid"))
        .values(cluster_id=sa.bindparam("cid"))
    )
    params = [{"fid": int(i), "cid": int(c)} for i, c in zip(face_ids, cluster_ids, strict=True)]
    s.connection().execute(stmt, params)
    s.expire_all()


def cluster_labels(s: Session, cluster_id: int) -> list[tuple[int, str | None, int | None]]:
    """``(face id, label source value or None, person id or None)`` of a cluster's faces."""
    rows = s.execute(
        select(FaceRow.id, Assignment.source, Assignment.person_id)
        .outerjoin(Assignment, Assignment.face_id == FaceRow.id)
        .where(FaceRow.cluster_id == int(cluster_id))
    )
    return [
        (int(fid), None if src is None else LabelSource(src).value, pid) for fid, src, pid in rows
    ]


def cluster_photos(s: Session, cluster_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(face id, photo id, cluster id)`` of the faces of the clusters."""
    rows = s.execute(
        select(FaceRow.id, FaceRow.photo_id, FaceRow.cluster_id).where(
            FaceRow.cluster_id.in_([int(c) for c in cluster_ids])
        )
    )
    return [(int(f), int(p), int(c)) for f, p, c in rows if c is not None]


def cluster_count(s: Session, *, unnamed: bool | None = None) -> int:
    """Clusters with at least one face (``unnamed`` as :func:`cluster_summaries`)."""
    stmt = select(func.count(sa.distinct(FaceRow.cluster_id))).join(
        Cluster, Cluster.id == FaceRow.cluster_id
    )
    if unnamed is not None:
        stmt = stmt.where(
            Cluster.person_id.is_(None) if unnamed else Cluster.person_id.is_not(None)
        )
    return int(s.scalar(stmt) or 0)


def cluster_face_page(
    s: Session, cluster_id: int, *, limit: int | None, offset: int = 0
) -> list[int]:
    """Face ids of a cluster, ascending, one page."""
    stmt = (
        select(FaceRow.id)
        .where(FaceRow.cluster_id == cluster_id)
        .order_by(FaceRow.id)
        .offset(offset)
        .limit(limit)
    )
    return [int(i) for i in s.scalars(stmt)]


# -- counts -----------------------------------------------------------------------------------


def counts(s: Session) -> Counts:
    by_status = {
        r[0]: r[1] for r in s.execute(select(Photo.status, func.count()).group_by(Photo.status))
    }
    return Counts(
        photos=int(sum(by_status.values())),
        faces=face_count(s),
        people=int(s.scalar(select(func.count(Person.id))) or 0),
        labelled_faces=int(s.scalar(select(func.count(Assignment.face_id))) or 0),
        failed_photos=int(by_status.get(PhotoStatus.FAILED, 0)),
        no_face_photos=int(by_status.get(PhotoStatus.NO_FACE, 0)),
        clusters=int(s.scalar(select(func.count(Cluster.id))) or 0),
    )
