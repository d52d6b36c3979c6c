"""A face collection: the SQL store (the truth) plus the vectors (a rebuildable copy): the FAISS
index file, or a Milvus collection.

Layout of a collection folder ``HOME/NAME/``::

    collection.json   name, id, format, database URL when not the default (password never
                      stored), where the vectors are kept when not in vectors.faiss
    faces.db          the SQLite store (absent with ``--db postgresql+psycopg://...``)
    vectors.faiss     the vector index (see :mod:`facesearch.vectors`)
    vectors.faiss.pq  its search accelerator (index type pq), a cache of vectors.faiss
    vectors.milvus.db a milvus-lite folder, with ``--vectors milvus-lite``
    write.lock        the writer lock (``fcntl.flock``), holding the writer's pid

Vectors in Milvus
-----------------
:meth:`Collection.set_vectors` (``facesearch index --vectors``) keeps the vectors in Milvus
instead (:mod:`facesearch.milvus_vectors`): a server ``milvus://host:port/name`` or a
milvus-lite folder. The copy is treated as the FAISS file is: its recorded model, dim, count
and generation are compared with SQL when it is first used and it is rebuilt from SQL when it
is behind; a change is committed to SQL, then applied to Milvus at once (there is no file to
save). A reader that cannot rebuild it (a writer holds the lock) searches it as it is; a reader
of a milvus-lite folder held by another process searches a flat copy built in memory from SQL,
and a writer is refused (:class:`~facesearch.milvus_vectors.MilvusBusyError`). The index type
setting is the FAISS file's: the Milvus copy is always searched exactly (``FLAT``).

Opening
-------
:meth:`Collection.open` is cheap: it reads ``collection.json``, connects, and checks the schema
revision (one query). It never upgrades an existing database: an older schema raises
:class:`CollectionError` asking for ``facesearch db upgrade``; a new collection
(``create=True``) is created at the newest schema. The vector index is loaded on first use of
:attr:`Collection.vectors`, memory-mapped, after comparing its trailer (model, dim, count,
generation) with SQL (a few one-row queries: the face count is recorded in ``meta`` next
to the generation, so no face row is read).

Writers and readers
-------------------
Every change goes through a :class:`Collection` method that holds the writer lock (taken for
the call, or for a whole block with ``with collection.lock(): ...``). A second writer waits up
to ``lock_timeout`` seconds, then gets ``collection 'X' is being written by pid N``. Readers
never take the lock and never block.

A change is committed to SQL first (bumping the face generation in the same transaction), then
applied to the in-memory index; the index file is saved when the outermost lock is released
(or by :meth:`Collection.save_index`). A crash in between leaves the file at an older
generation: the next opener sees the mismatch and rebuilds the index from SQL, with a log
message. While a writer holds the lock, readers search the index file as it is (faces added
since are not found yet; faces deleted since are dropped from results) instead of rebuilding.

The index holds the faces of the active model's *space*: the active model and every model
compatible with it (``models.compatible_with``, harmonic training). Faces of other models stay
in SQL until re-embedded.

Index type
----------
Stored in the database (``meta.index_type``): ``auto`` (default), ``flat``, ``pq`` or ``ivf``
(see :mod:`facesearch.vectors`). ``auto`` is exact (flat) up to
:data:`facesearch.vectors.AUTO_APPROX_ABOVE` faces and ``pq`` (exact vectors plus a PQ
fast-scan accelerator, exact re-ranking) above; it switches back to flat below half that.
flat <-> pq switches keep the vectors (the accelerator is trained or dropped, no SQL read); an
``ivf`` index left by an older ``auto`` collection is rebuilt as ``pq``/``flat`` at the next
write. The pq accelerator retrains itself from the stored vectors when the count has grown by
:data:`facesearch.vectors.PQ_RETRAIN_FACTOR` since training, and is rebuilt by the next writer
when its sidecar file (``vectors.faiss.pq``) is missing or stale. An IVF index is retrained
(rebuilt from SQL) when the collection has grown or shrunk by a factor
:data:`IVF_RETRAIN_FACTOR` since training.

Not thread-safe: use one :class:`Collection` per thread.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from facesearch import store as st
from facesearch import vectors as vectors_module
from facesearch.errors import (
    CollectionError,
    IncompatibleModelError,
    IndexMismatchError,
    LockedError,
    NotFoundError,
    StorageError,
    describe_os_error,
)
from facesearch.interrupts import complete, critical_section
from facesearch.milvus_vectors import (
    DEFAULT_COLLECTION,
    MilvusBusyError,
    MilvusMissingError,
    MilvusTarget,
    MilvusVectors,
)
from facesearch.types import Match
from facesearch.vectors import (
    AUTO_APPROX_ABOVE,
    KINDS,
    VectorIndex,
    VectorStore,
    resolve_kind,
    sidecar_path,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "collection.json"
DB_NAME = "faces.db"
INDEX_NAME = "vectors.faiss"
LOCK_NAME = "write.lock"
#: ``--vectors milvus-lite``: a milvus-lite folder inside the collection folder, of this name.
MILVUS_LITE = "milvus-lite"
LITE_NAME = "vectors.milvus.db"
#: ``--vectors faiss``: the FAISS index file (the default).
FAISS = "faiss"
#: A long write (indexing, re-embedding) saves the vector index file at least this often (s).
CHECKPOINT_SECONDS: float = 60.0
#: Seconds a writer waits for another writer before giving up.
DEFAULT_LOCK_TIMEOUT: float = 10.0
#: An IVF index is rebuilt when the face count leaves [trained / F, trained * F].
IVF_RETRAIN_FACTOR: float = 4.0
#: ``meta`` keys.
INDEX_TYPE_KEY = "index_type"
ACTIVE_MODEL_KEY = "active_model"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CONFIG_FORMAT = 1


def _check_collection_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise CollectionError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def normalize_vectors_spec(spec: str) -> str | None:
    """The ``--vectors`` value as ``collection.json`` records it: ``None`` for ``faiss``,
    :data:`MILVUS_LITE`, a checked ``milvus://`` URI, or the absolute path of a milvus-lite
    folder. Raises :class:`CollectionError` naming what is wrong."""
    spec = spec.strip()
    if spec == FAISS:
        return None
    if spec == MILVUS_LITE:
        return spec
    target = MilvusTarget.parse(spec)  # checks it (scheme, host, port, name, no credentials)
    return target.uri if target.lite else spec


def milvus_name(collection: str) -> str:
    """The Milvus collection of a facesearch collection when its target names none:
    ``facesearch_<name>``, with the characters Milvus does not take as ``_``."""
    return "facesearch_" + re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", collection))


def _public_url(url: str) -> str:
    """The URL without its password (what ``collection.json`` records)."""
    u = st.normalize_url(url)
    if u.password is not None:
        u = u.set(password=None)
    return u.render_as_string(hide_password=False)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StopRequested(Exception):
    """A long write's ``should_stop`` said so after a commit: the run ends there."""


class WriterLock:
    """An exclusive ``fcntl.flock`` on a lock file that records the holder's pid.

    The kernel drops the lock when the holder exits, however it exits, so a killed writer
    never leaves a stale lock. Not re-entrant (the collection counts nesting).
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def where(self) -> str:
        """Where the lock lives, for messages."""
        return str(self.path)

    def holder(self) -> str | None:
        """Who holds (or last held) the lock, ``pid N``, if recorded."""
        try:
            return f"pid {int(self.path.read_bytes().split()[0])}"
        except (OSError, ValueError, IndexError):
            return None

    def try_acquire(self) -> bool:
        """Take the lock if free; ``False`` if another process holds it or it cannot be made."""
        if self._fd is not None:
            raise RuntimeError(f"{self.what}: writer lock already held by this object")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        try:  # the holder's pid, for messages only: a full disk must not stop a writer here
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            logger.debug("could not record the pid in %s: %s", self.path, exc)
        self._fd = fd
        return True

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (``math.inf``: forever).

        Raises :class:`CollectionError` naming the holder's pid when it stays taken.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        delay = 0.05
        announced = False
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                who = self.holder() or "another process"
                raise LockedError(
                    f"{self.what} is being written by {who} (lock {self.where}); "
                    "wait for it to finish and try again"
                )
            if not announced:
                logger.info(
                    "%s is being written by %s: waiting up to %.0f s",
                    self.what,
                    self.holder(),
                    timeout,
                )
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


class AdvisoryLock(WriterLock):
    """The writer lock of a collection stored in PostgreSQL: a session-level
    ``pg_advisory_lock`` held on a connection of its own while the lock is held.

    It lives where the data lives, so writers in different homes (or machines) sharing the
    database exclude each other. The server drops it when that connection ends, however the
    holder ends (the kernel of a killed process closes its socket). The key is derived from the
    database and schema names; the holder names itself in ``application_name``.
    """

    NAMESPACE = "facesearch-writer"

    def __init__(self, engine: Any, what: str) -> None:
        super().__init__(Path(), what)
        self.engine = engine
        self._conn: Any = None
        self._key: int | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    @property
    def where(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"PostgreSQL advisory lock {self._key} in {url}"

    def try_acquire(self) -> bool:
        if self._conn is not None:
            raise RuntimeError(f"{self.what}: writer lock already held by this object")
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            self._key = self._key or st.advisory_key(conn, self.NAMESPACE)
            if not st.try_advisory_lock(conn, self._key):
                conn.close()
                return False
            st.set_application_name(
                conn, f"facesearch writer pid {os.getpid()} on {socket.gethostname()}"
            )
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        self._conn = conn
        return True

    def holder(self) -> str | None:
        if self._key is None:
            return None
        try:
            with self.engine.connect() as conn:
                return st.advisory_lock_holder(conn, self._key)
        except Exception as exc:  # noqa: BLE001 - only for a message
            logger.debug("the lock holder is unknown: %s", exc)
            return None

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:  # a pooled connection keeps session locks: never hand it back holding one
            conn.invalidate()
        finally:
            conn.close()


def writer_lock(store: st.Store, folder: Path, what: str) -> WriterLock:
    """The writer lock of a collection, where its data lives: an advisory lock in PostgreSQL,
    or a lock file beside the SQLite database (``write.lock`` in the collection folder for the
    default database there, ``<database>.write.lock`` for one given with ``--db``)."""
    if store.dialect == "postgresql":
        return AdvisoryLock(store.engine, what)
    database = store.url.database
    if not database or database == ":memory:" or Path(database).parent == folder.resolve():
        return WriterLock(folder / LOCK_NAME, what)
    return WriterLock(Path(database + ".write.lock"), what)


@dataclass(frozen=True, slots=True)
class _Expected:
    """What the vector index must match, read from SQL."""

    model: str  # the space's root model
    dim: int
    space: tuple[str, ...]
    count: int
    generation: int


class Collection:
    """A named collection of photos, faces and people. Use :meth:`open`."""

    def __init__(
        self,
        name: str,
        folder: Path,
        store: st.Store,
        *,
        lock_timeout: float,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.folder = folder
        self.store = store
        self.lock_timeout = lock_timeout
        self._config: dict[str, Any] = dict(config or {})
        self._lock = writer_lock(store, folder, f"collection {name!r}")
        self._lock_depth = 0
        # FAISS (VectorIndex), the Milvus copy, or (a reader of a busy milvus-lite folder) an
        # in-memory FAISS copy built from SQL
        self._vectors: VectorStore | None = None
        self._milvus: MilvusVectors | None = None  # the open Milvus copy, kept until close
        self._space_of_vectors: tuple[str, ...] = ()  # the models whose faces _vectors holds
        self._stale = False
        self._dirty = False

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        home: str | os.PathLike[str],
        name: str = "default",
        db_url: str | None = None,
        create: bool = False,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    ) -> Collection:
        """Open the collection ``home/name/`` (SQLite inside it, or the database ``db_url``).

        ``create``: make it (folder, database at the newest schema) when missing; otherwise a
        missing collection raises :class:`CollectionError` saying how to create it. A
        PostgreSQL URL given at creation is recorded without its password; later opens may
        omit ``db_url`` (the password then comes from ``PGPASSWORD`` or ``~/.pgpass``) or must
        give the same database.
        """
        _check_collection_name(name)
        home = Path(home)
        folder = home / name
        what = f"collection {name!r}"
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            if not create:
                raise NotFoundError(
                    "collection",
                    name,
                    f"no {what} in {home}: create it by indexing photos into it "
                    f"(`facesearch index PATH --collection {name}`)",
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    describe_os_error(exc, f"making the folder of {what} (--home {home}):")
                ) from exc
            creating = WriterLock(folder / LOCK_NAME, what)
            creating.acquire(lock_timeout)
            try:
                if not config_path.is_file():  # nobody created it while we waited
                    url = db_url or _sqlite_url(folder)
                    store = st.Store.open(url, create=True, what=what)
                    try:
                        _claim_store(store, name)
                    except BaseException:
                        store.close()
                        creating.release()
                        _remove_if_empty(folder)
                        raise
                    config: dict[str, Any] = {
                        "format": _CONFIG_FORMAT,
                        "name": name,
                        "id": uuid.uuid4().hex,
                        "db_url": None if db_url is None else _public_url(db_url),
                        "created_at": datetime.now(timezone.utc).isoformat(),
                    }
                    _write_json_atomic(config_path, config)
                    logger.info("created %s in %s", what, folder)
                    return cls(name, folder, store, lock_timeout=lock_timeout, config=config)
            finally:
                creating.release()
        config = _read_config(config_path)
        stored = config.get("db_url")
        if db_url is not None and stored is None:
            raise CollectionError(
                f"{what} keeps its database in {folder / DB_NAME}; it was not created with "
                "--db: drop --db"
            )
        if db_url is not None and stored is not None and _public_url(db_url) != stored:
            raise CollectionError(f"{what} uses the database {stored}, not {_public_url(db_url)}")
        url = db_url or stored or _sqlite_url(folder)
        store = st.Store.open(url, create=create, what=what)
        try:
            _claim_store(store, name, claim=False)
        except BaseException:
            store.close()
            raise
        return cls(name, folder, store, lock_timeout=lock_timeout, config=config)

    def close(self) -> None:
        """Save pending index changes, release the lock, close the database connections (and
        the Milvus connection)."""
        try:
            if self._lock.held:
                try:
                    complete("saving the vector index", self._flush)
                finally:
                    self._lock.release()
                    self._lock_depth = 0
        finally:
            self._vectors = None
            self._close_milvus()
            self.store.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, {str(self.folder)!r})"

    @property
    def index_path(self) -> Path:
        """The FAISS index file (used when the vectors are not in Milvus)."""
        return self.folder / INDEX_NAME

    # -- where the vectors live ---------------------------------------------------------------

    @property
    def vectors_spec(self) -> str | None:
        """Where the vectors are kept: ``None`` for the FAISS file, else the Milvus target as
        recorded (``milvus://host:port/name``, :data:`MILVUS_LITE` or a milvus-lite folder)."""
        spec = self._config.get("vectors")
        return str(spec) if spec else None

    @property
    def milvus_target(self) -> MilvusTarget | None:
        """The Milvus copy's target, or ``None`` (the FAISS file)."""
        spec = self.vectors_spec
        if spec is None:
            return None
        if spec == MILVUS_LITE:
            return MilvusTarget.parse(str(self.folder / LITE_NAME), collection=DEFAULT_COLLECTION)
        return MilvusTarget.parse(spec, collection=milvus_name(self.name))

    def set_vectors(self, spec: str) -> bool:
        """Keep the vectors in ``spec`` from now on: ``faiss`` (the FAISS file in the folder),
        ``milvus://host:port[/name]`` (a Milvus server; ``name`` defaults to
        ``facesearch_<collection>``), :data:`MILVUS_LITE` (a milvus-lite folder inside the
        collection folder) or the path of a milvus-lite folder (``*.db``).

        The new copy is built from SQL first, then recorded in ``collection.json``, then the old
        copy is removed (the FAISS file, or the Milvus collection). Returns ``False`` when the
        vectors are already kept there. Raises :class:`CollectionError` for a bad ``spec``.
        """
        new = normalize_vectors_spec(spec)
        if new == self.vectors_spec:
            return False
        with self.lock():
            old_target = self.milvus_target
            config = dict(self._config)
            config["vectors"] = new
            config.setdefault("id", uuid.uuid4().hex)
            previous = self._config
            self._vectors = None
            self._close_milvus()
            self._config = config
            try:
                if self._has_model():
                    with self.store.session() as s:
                        exp = self._require_expected(s)
                    self._vectors = self._rebuild_and_save(
                        f"moved to {new or INDEX_NAME}", exp, log=False
                    )
                _write_json_atomic(self.folder / CONFIG_NAME, config)
            except BaseException:
                self._vectors = None
                self._close_milvus()
                self._config = previous
                raise
            self._dirty = False
            logger.info("collection %r: vectors now in %s", self.name, new or INDEX_NAME)
            self._remove_old_copy(old_target)
        return True

    def _remove_old_copy(self, old: MilvusTarget | None) -> None:
        """Remove the copy the vectors were kept in before :meth:`set_vectors`."""
        if old is None:
            for path in (self.index_path, sidecar_path(self.index_path)):
                path.unlink(missing_ok=True)
            return
        try:
            with MilvusVectors.open(old, owner=self.uid, create=False) as mv:
                mv.drop()
        except MilvusMissingError:
            pass
        except CollectionError as exc:  # unreachable, or not ours: left alone
            logger.warning("collection %r: old Milvus copy %s left: %s", self.name, old, exc)
        if old.lite and Path(old.uri) == self.folder.absolute() / LITE_NAME:  # ours alone
            shutil.rmtree(old.uri, ignore_errors=True)

    @property
    def uid(self) -> str:
        """The collection's id (``collection.json``), recorded as the owner of its Milvus
        copy."""
        return str(self._config.get("id") or "")

    def _open_milvus(self, *, create: bool) -> MilvusVectors:
        """The Milvus copy's connection, opened once (:class:`MilvusMissingError` when the copy
        does not exist and not ``create``; :class:`MilvusBusyError` for a milvus-lite folder
        open in another process)."""
        if self._milvus is None:
            target = self.milvus_target
            assert target is not None
            try:
                self._milvus = MilvusVectors.open(target, owner=self.uid, create=False)
            except MilvusMissingError:
                if not create:
                    raise
                with self.store.session() as s:
                    exp = self._require_expected(s)
                self._milvus = MilvusVectors.open(
                    target, dim=exp.dim, model=exp.model, owner=self.uid, create=True
                )
        return self._milvus

    def _close_milvus(self) -> None:
        mv, self._milvus = self._milvus, None
        if mv is not None:
            mv.close()

    @contextmanager
    def session(self, *, snapshot: bool = False) -> Iterator[Session]:
        """A store session (one transaction). Do not change faces through it: use the
        collection's methods, which keep the vector index in step."""
        with self.store.session(snapshot=snapshot) as s:
            yield s

    # -- settings -----------------------------------------------------------------------------

    @property
    def active_model(self) -> st.ModelInfo | None:
        """The model queries are embedded with (the first registered, unless changed)."""
        with self.store.session() as s:
            name = st.get_meta(s, ACTIVE_MODEL_KEY)
            return None if name is None else st.get_model(s, name)

    def register_model(
        self,
        name: str,
        dim: int,
        *,
        compatible_with: str | None = None,
        file_hash: str | None = None,
        path: str | None = None,
        threshold: float | None = None,
        activate: bool = False,
    ) -> st.ModelInfo:
        """Register an embedding model; ``activate`` makes it the model queries use.

        The first model registered becomes active. Activating a model of another space
        (not compatible) makes the index hold that space's faces (rebuilt on next use).
        """
        with self.lock(), self.store.session() as s:
            info = st.register_model(
                s,
                name,
                dim,
                compatible_with=compatible_with,
                file_hash=file_hash,
                path=path,
                threshold=threshold,
            )
            current = st.get_meta(s, ACTIVE_MODEL_KEY)
            switch = (activate or current is None) and current != name
            if switch:
                st.set_meta(s, ACTIVE_MODEL_KEY, name)
        if switch:
            self._vectors = None  # the space may change: reload under the lock
        return info

    @property
    def index_type(self) -> str:
        """The index type setting: ``auto`` | ``flat`` | ``pq`` | ``ivf``."""
        with self.store.session() as s:
            return st.get_meta(s, INDEX_TYPE_KEY, "auto") or "auto"

    def set_index_type(self, kind: str) -> VectorStore | None:
        """Change the index type setting and rebuild the index when it changes its kind.

        With the vectors in Milvus (always exact, ``FLAT``) only ``auto`` and ``flat`` are
        accepted; the setting is kept for the FAISS file.
        """
        if kind not in KINDS:
            raise CollectionError(f"unknown index type {kind!r}: use one of {', '.join(KINDS)}")
        self._check_kind_for_milvus(kind)
        with self.lock():
            with self.store.session() as s:
                st.set_meta(s, INDEX_TYPE_KEY, kind)
                has_model = st.get_meta(s, ACTIVE_MODEL_KEY) is not None
            if not has_model:
                return None
            vi = self._vectors_for_write()
            if isinstance(vi, VectorIndex) and self._wanted_kind(vi.kind, vi.count) != vi.kind:
                return self.rebuild_index()
            return vi

    def _check_kind_for_milvus(self, kind: str) -> None:
        if self.vectors_spec is not None and kind not in ("auto", "flat"):
            raise CollectionError(
                f"collection {self.name!r} keeps its vectors in Milvus ({self.milvus_target}), "
                f"searched exactly (FLAT): index type {kind!r} is the FAISS file's; use 'flat' "
                "or 'auto', or move the vectors back with --vectors faiss"
            )

    # -- the vector index ---------------------------------------------------------------------

    @property
    def vectors(self) -> VectorStore:
        """The vectors, loaded on first use and checked against SQL: the FAISS index file
        (memory-mapped) or the Milvus copy (:attr:`vectors_spec`).

        Missing, unreadable or mismatched (model, dim, count, generation) -> rebuilt from SQL
        with a log message, and saved when no other writer holds the lock. Raises
        :class:`CollectionError` when the collection has no model yet (nothing indexed).
        """
        if self._vectors is None:
            self._vectors = self._load_vectors()
        return self._vectors

    @property
    def vectors_stale(self) -> bool:
        """True when :attr:`vectors` is an older index kept because a writer is active."""
        return self._stale

    def refresh(self) -> None:
        """Forget the loaded index (a long-lived reader calls this to see newer changes)."""
        if not self._lock.held:
            self._vectors = None
            self._stale = False

    def rebuild_index(self, kind: str | None = None) -> VectorStore:
        """Rebuild the index from SQL (optionally setting the index type first) and save it."""
        with self.lock():
            if kind is not None:
                if kind not in KINDS:
                    raise CollectionError(
                        f"unknown index type {kind!r}: use one of {', '.join(KINDS)}"
                    )
                self._check_kind_for_milvus(kind)
                with self.store.session() as s:
                    st.set_meta(s, INDEX_TYPE_KEY, kind)
            if self.vectors_spec is not None:
                vi: VectorStore = self._fill_milvus()
                self._vectors = vi
                return vi
            vi = self._build_from_sql()
            self._vectors = vi
            self._dirty = True
            self._flush()
            return vi

    def save_index(self) -> None:
        """Write pending index changes now (a checkpoint during a long write; the Milvus copy
        takes every change as it is made)."""
        if not self._lock.held:
            raise CollectionError(f"collection {self.name!r}: save_index needs the writer lock")
        self._flush()

    def _expected(self, s: Session) -> _Expected | None:
        active = st.get_meta(s, ACTIVE_MODEL_KEY)
        if active is None:
            return None
        model = st.get_model(s, active)
        if model is None:
            raise CollectionError(
                f"collection {self.name!r}: the active model {active!r} is not registered"
            )
        root, space = st.model_space(s, active)
        every_model = st.model_names(s)
        # O(1) recorded count when the index holds every model's faces (the usual case)
        count = st.recorded_face_count(s) if every_model <= set(space) else st.face_count(s, space)
        return _Expected(
            model=root,
            dim=model.dim,
            space=tuple(space),
            count=count,
            generation=st.get_generation(s),
        )

    def _has_model(self) -> bool:
        with self.store.session() as s:
            return st.get_meta(s, ACTIVE_MODEL_KEY) is not None

    @staticmethod
    def _space(s: Session) -> tuple[str, ...]:
        """The models whose faces the index holds (empty before any model is registered)."""
        active = st.get_meta(s, ACTIVE_MODEL_KEY)
        return () if active is None else tuple(st.model_space(s, active)[1])

    def _require_expected(self, s: Session) -> _Expected:
        exp = self._expected(s)
        if exp is None:
            raise CollectionError(
                f"collection {self.name!r} has no faces yet: index photos into it "
                f"(`facesearch index PATH --collection {self.name}`)"
            )
        return exp

    @staticmethod
    def _mismatch(vi: VectorStore, exp: _Expected) -> str | None:
        if isinstance(vi, MilvusVectors):  # its properties and count, read from Milvus
            return vi.mismatch(
                model=exp.model, dim=exp.dim, generation=exp.generation, count=exp.count
            )
        if vi.model != exp.model or vi.dim != exp.dim:
            return (
                f"it holds model {vi.model!r} dim {vi.dim}, the collection uses "
                f"{exp.model!r} dim {exp.dim}"
            )
        if vi.generation != exp.generation or vi.count != exp.count:
            return (
                f"it is at generation {vi.generation} with {vi.count} faces, SQL at generation "
                f"{exp.generation} with {exp.count}"
            )
        return None

    def _load_vectors(self, broken: str | None = None) -> VectorStore:
        """The vectors, checked (see :meth:`VectorIndex.load`) and compared with SQL, or
        rebuilt from SQL (``broken``: the FAISS file failed a check while searched)."""
        writer = self._lock.held
        with self.store.session() as s:
            exp = self._require_expected(s)
        self._space_of_vectors = exp.space
        self._stale = False
        if self.vectors_spec is not None:
            return self._load_milvus(exp, writer)
        loaded: VectorIndex | None = None
        try:
            if broken is not None:
                raise IndexMismatchError(broken)
            loaded = VectorIndex.load(self.index_path, mmap=not writer)
        except FileNotFoundError:
            reason = "it is missing"
        except IndexMismatchError as exc:
            reason = str(exc)
        else:
            mismatch = self._mismatch(loaded, exp)
            if mismatch is None:
                if (
                    writer
                    and loaded.kind == "pq"
                    and not loaded.accelerated
                    and len(loaded) >= vectors_module.PQ_MIN_TRAIN
                ):
                    self._dirty = True  # its sidecar was missing or stale: the flush rebuilds it
                return loaded
            reason = mismatch
        return self._repair(reason, exp, loaded)

    def _repair(self, reason: str, exp: _Expected, loaded: VectorStore | None) -> VectorStore:
        """The vectors do not reflect SQL (``reason``): a writer rebuilds them; a reader
        rebuilds them when it can take the writer lock, else searches ``loaded`` as it is
        while a writer runs (same model), or a copy built in memory from SQL."""
        if self._lock.held:
            return self._rebuild_and_save(reason, exp)
        got_lock = self._lock.try_acquire()
        try:
            if (
                not got_lock
                and loaded is not None
                and (loaded.model, loaded.dim) == (exp.model, exp.dim)
            ):
                logger.info(
                    "collection %r is being written by %s: searching its index as of "
                    "generation %d (SQL is at %d); faces added since are not searched yet",
                    self.name,
                    self._lock.holder(),
                    loaded.generation,
                    exp.generation,
                )
                self._stale = True
                return loaded
            return self._rebuild_and_save(reason, exp, save=got_lock)
        finally:
            if got_lock:
                self._lock.release()

    def _load_milvus(self, exp: _Expected, writer: bool) -> VectorStore:
        """The Milvus copy, checked against SQL (see :meth:`_repair`). A milvus-lite folder
        open in another process cannot be written: a writer gets :class:`MilvusBusyError`, a
        reader searches a copy built in memory from SQL."""
        try:
            mv: MilvusVectors | None = self._open_milvus(create=False)
        except MilvusMissingError:
            mv, reason = None, "it is missing"
        except MilvusBusyError as exc:
            if writer:
                raise
            logger.info("%s: searching a copy built from SQL", exc)
            return self._build_from_sql(kind="flat")
        if mv is not None:
            mismatch = self._mismatch(mv, exp)
            if mismatch is None:
                return mv
            reason = mismatch
        return self._repair(reason, exp, mv)

    def _rebuild_and_save(
        self, reason: str, exp: _Expected, *, save: bool = True, log: bool = True
    ) -> VectorStore:
        """Rebuild the vectors from SQL: the FAISS index (saved when ``save``: the writer lock
        is held) or the Milvus copy (only when ``save``; otherwise an in-memory FAISS copy)."""
        quiet = reason == "it is missing" and exp.count == 0
        level = (
            logging.DEBUG
            if quiet or not log
            else logging.INFO
            if reason == "it is missing"
            else logging.WARNING
        )
        milvus = self.vectors_spec is not None and save
        logger.log(
            level,
            "%s of collection %r: %s; rebuilding it from SQL (%d faces)",
            "Milvus copy" if milvus else "vector index",
            self.name,
            reason,
            exp.count,
        )
        vi: VectorStore = self._fill_milvus() if milvus else self._build_from_sql()
        if save:  # we hold the writer lock
            with self.store.session() as s:
                now = self._expected(s)
                if (
                    now is not None
                    and (now.model, now.dim, now.generation) == (vi.model, vi.dim, vi.generation)
                    and now.count != vi.count
                ):
                    logger.warning(
                        "collection %r: recorded face count %d, %d faces stored: recounted",
                        self.name,
                        now.count,
                        vi.count,
                    )
                    st.recount_faces(s)
                    now = self._expected(s)
            if isinstance(vi, VectorIndex) and now is not None and self._mismatch(vi, now) is None:
                try:
                    vi.save(self.index_path)
                except OSError as exc:  # a reader answers from memory (disk full, read-only)
                    if self._lock_depth:
                        raise
                    logger.warning(
                        "collection %r: could not save the rebuilt vector index (%s); "
                        "searching it in memory",
                        self.name,
                        exc,
                    )
        return vi

    def _build_from_sql(self, kind: str | None = None) -> VectorIndex:
        """A FAISS index of the SQL vectors (of ``kind``, default the setting's)."""
        started = time.monotonic()
        with self.store.session(snapshot=True) as s:
            exp = self._require_expected(s)
            self._space_of_vectors = exp.space
            setting: str = st.get_meta(s, INDEX_TYPE_KEY, "auto") or "auto"
            kind = kind or resolve_kind(setting, exp.count)
            if kind in ("flat", "pq"):  # streamed; a pq accelerator is trained once, at the end
                vi = VectorIndex.create(exp.dim, "flat", model=exp.model)
                for ids, xb in st.load_embeddings(s, models=exp.space):
                    vi.add(ids, xb)
                vi.convert(kind)
            else:
                ids, xb = st.load_all_embeddings(s, models=exp.space, dim=exp.dim)
                vi = VectorIndex.build(ids, xb, kind, dim=exp.dim, model=exp.model)
        vi.generation = exp.generation
        logger.info(
            "built %s index of collection %r: %d faces in %.1f s",
            vi.kind,
            self.name,
            vi.count,
            time.monotonic() - started,
        )
        return vi

    def _fill_milvus(self) -> MilvusVectors:
        """Rebuild the Milvus copy from SQL (writer lock held): a new physical collection,
        swapped in when full (:meth:`MilvusVectors.rebuild`)."""
        assert self._lock.held
        started = time.monotonic()
        mv = self._open_milvus(create=True)
        with self.store.session(snapshot=True) as s:
            exp = self._require_expected(s)
            self._space_of_vectors = exp.space
            n = mv.rebuild(
                st.load_embeddings(s, models=exp.space),
                generation=exp.generation,
                model=exp.model,
                dim=exp.dim,
            )
        logger.info(
            "built the Milvus copy %s of collection %r: %d faces in %.1f s",
            mv.target,
            self.name,
            n,
            time.monotonic() - started,
        )
        return mv

    def _wanted_kind(self, current: str, count: int) -> str:
        setting = self.index_type
        if setting != "auto":
            return setting
        if current == "pq" and count >= AUTO_APPROX_ABOVE // 2:
            return "pq"  # hysteresis: back to flat only well below the threshold
        return resolve_kind("auto", count)

    def _vectors_for_write(self) -> VectorStore:
        assert self._lock.held
        vi = self._vectors
        if (
            vi is None
            or self._stale
            or (isinstance(vi, VectorIndex) and (vi.mmapped or self.vectors_spec is not None))
        ):
            self._vectors = vi = self._load_vectors()
        return vi

    def _apply(
        self,
        vi: VectorStore,
        generation: int,
        *,
        removed: np.ndarray | None = None,
        added: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Apply a committed SQL change to the vectors (in memory for FAISS; the Milvus copy
        at once, its generation written last)."""
        if removed is not None and len(removed):
            vi.remove(removed)
        if added is not None and len(added[0]):
            vi.add(*added)
        vi.generation = generation
        self._dirty = True

    def _flush(self) -> None:
        vi = self._vectors
        if vi is None or not self._dirty:
            return
        if not isinstance(vi, VectorIndex) or self.vectors_spec is not None:
            self._dirty = False  # Milvus holds every change already
            return
        with critical_section("saving the vector index"):  # Ctrl-C: after the file agrees
            self._save_vectors(vi)

    def _save_vectors(self, vi: VectorIndex) -> None:
        wanted = self._wanted_kind(vi.kind, vi.count)
        retrain = (
            vi.kind == "ivf"
            and vi.trained_on
            and not (
                vi.trained_on / IVF_RETRAIN_FACTOR <= vi.count <= vi.trained_on * IVF_RETRAIN_FACTOR
            )
        )
        if wanted != vi.kind and {wanted, vi.kind} <= {"flat", "pq"}:
            logger.info(
                "collection %r: %d faces, switching the index to %s", self.name, vi.count, wanted
            )
            vi.convert(wanted)  # same vectors: the accelerator is trained or dropped
        elif wanted != vi.kind or retrain:
            logger.info(
                "collection %r: %d faces, rebuilding the index as %s", self.name, vi.count, wanted
            )
            vi = self._build_from_sql()
            self._vectors = vi
        vi.save(self.index_path)
        self._dirty = False

    # -- the writer lock ----------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[Collection]:
        """Hold the writer lock for a block of changes (re-entrant).

        Waits up to ``timeout`` seconds (default :attr:`lock_timeout`; ``math.inf`` forever).
        The index file is saved when the outermost block ends, also after an error.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        if self.store.read_only is not None:
            raise StorageError(f"{self.store.read_only}; collection {self.name!r} can only be read")
        self._lock.acquire(self.lock_timeout if timeout is None else timeout)
        self._lock_depth = 1
        try:
            _claim_store(self.store, self.name)  # a store made before stores knew their owner
        except BaseException:
            self._lock_depth = 0
            self._lock.release()
            raise
        self._vectors = None  # reload under the lock, writable and checked
        self._stale = False
        self._dirty = False
        ok = False
        try:
            yield self
            ok = True
        finally:
            try:  # also when Ctrl-C comes as the block ends: the file must follow SQL
                complete("saving the vector index", self._flush)
            except Exception as exc:
                if ok:
                    raise
                # the block's own error is the one reported; the file is rebuilt when next used
                logger.warning("collection %r: could not save the vector index: %s", self.name, exc)
            finally:
                self._lock_depth = 0
                self._lock.release()

    @property
    def locked(self) -> bool:
        """True while this object holds the writer lock."""
        return self._lock.held

    # -- changes ------------------------------------------------------------------------------

    def add_photo(self, photo: st.NewPhoto, *, replace: bool = False) -> st.AddedPhoto:
        """Add one photo (see :meth:`add_photos`)."""
        return self.add_photos([photo], replace=replace)[0]

    def add_photos(
        self, photos: Sequence[st.NewPhoto], *, replace: bool = False
    ) -> list[st.AddedPhoto]:
        """Add photos with their faces and labels in one transaction, then index the faces.

        Face models not yet registered are registered with the embedding's size (the first
        becomes active). ``replace``: a stored photo with the same path is replaced (its old
        faces are removed). Returns one :class:`~facesearch.store.AddedPhoto` per photo.
        """
        if not photos:
            return []
        with self.lock():
            self._register_face_models(photos)
            vi = self._vectors_for_write() if self._has_model() else None
            with critical_section("a commit and its vector-index update"):
                return self._add_photos(vi, photos, replace)

    def _add_photos(
        self, vi: VectorStore | None, photos: Sequence[st.NewPhoto], replace: bool
    ) -> list[st.AddedPhoto]:
        with self.store.session() as s:
            results = st.add_photos(s, photos, replace=replace)
            generation = st.get_generation(s)
            space = set(self._space(s))
        if vi is None:  # no model yet, so no faces: nothing to index
            return results
        ids: list[int] = []
        vecs: list[np.ndarray] = []
        for photo, res in zip(photos, results, strict=True):
            for face, face_id in zip(photo.faces, res.face_ids, strict=True):
                if face.model in space:
                    ids.append(face_id)
                    vecs.append(np.asarray(face.embedding, dtype=np.float32).reshape(-1))
        replaced = [i for r in results for i in r.replaced_face_ids]
        added = (
            np.array(ids, dtype=np.int64),
            np.stack(vecs) if vecs else np.empty((0, vi.dim), dtype=np.float32),
        )
        self._apply(vi, generation, removed=np.array(replaced, dtype=np.int64), added=added)
        return results

    def _register_face_models(self, photos: Sequence[st.NewPhoto]) -> None:
        dims: dict[str, int] = {}
        for p in photos:
            for f in p.faces:
                dims.setdefault(f.model, int(np.asarray(f.embedding).size))
        if not dims:
            return
        with self.store.session() as s:
            known = st.model_names(s)
        for name, dim in dims.items():
            if name not in known:
                logger.info("collection %r: registering model %r (dim %d)", self.name, name, dim)
                self.register_model(name, dim)

    def touch_photo(self, photo_id: int, *, size: int, mtime: float) -> None:
        with self.lock(), self.store.session() as s:
            st.touch_photo(s, photo_id, size=size, mtime=mtime)

    def move_photo(self, photo_id: int, new_path: str, *, mtime: float | None = None) -> None:
        """A moved or renamed file: new path, same faces and labels."""
        with self.lock(), self.store.session() as s:
            st.move_photo(s, photo_id, new_path, mtime=mtime)

    def remove_photos(self, photo_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Delete photos with their faces and vectors. Returns the removed face ids."""
        return self._remove(lambda s: st.delete_photos(s, photo_ids))

    def remove_faces(self, face_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Delete faces (not their photos) and their vectors. Returns the removed face ids."""
        return self._remove(lambda s: st.delete_faces(s, face_ids))

    def delete_person(self, name: str, *, faces: bool = False) -> np.ndarray:
        """Delete a person; with ``faces`` also their faces and vectors (photos stay).

        Returns the removed face ids (empty without ``faces``).
        """
        return self._remove(lambda s: st.delete_person(s, name, faces=faces))

    def _remove(self, change: Any) -> np.ndarray:
        with self.lock():
            vi = self._vectors_for_write() if self._has_model() else None
            with critical_section("a commit and its vector-index update"):
                with self.store.session() as s:
                    removed = change(s)
                    generation = st.get_generation(s)
                if vi is not None and len(removed):
                    self._apply(vi, generation, removed=removed)
        return removed

    def update_embeddings(
        self, face_ids: Sequence[int] | np.ndarray, xb: np.ndarray, model: str
    ) -> int:
        """Replace faces' embeddings with ``model``'s (``xb`` ``(n, D) float32``).

        The index follows: the faces leave it and come back if ``model`` is in the active
        space. Returns the number of faces updated.
        """
        ids = np.asarray(face_ids, dtype=np.int64).reshape(-1)
        with self.lock():
            vi = self._vectors_for_write()
            with critical_section("a commit and its vector-index update"):
                with self.store.session() as s:
                    n = st.update_embeddings(s, ids, xb, model)
                    generation = st.get_generation(s)
                    space = set(self._space(s))
                added = (ids, np.asarray(xb, dtype=np.float32)) if model in space else None
                self._apply(vi, generation, removed=ids, added=added)
        return n

    def assign(
        self,
        face_ids: Sequence[int] | np.ndarray,
        person: str,
        source: st.LabelSource = st.LabelSource.MANUAL,
        *,
        replace: bool = True,
    ) -> int:
        """Give faces to a person (created if needed). Returns the number assigned."""
        with self.lock(), self.store.session() as s:
            return st.assign(s, face_ids, person, source, replace=replace)

    def unassign(self, face_ids: Sequence[int] | np.ndarray) -> int:
        with self.lock(), self.store.session() as s:
            return st.unassign(s, face_ids)

    def rename_person(self, old: str, new: str) -> None:
        with self.lock(), self.store.session() as s:
            st.rename_person(s, old, new)

    def merge_people(self, source: str, target: str) -> int:
        """Move ``source``'s faces to ``target`` and delete ``source``. Returns faces moved."""
        with self.lock(), self.store.session() as s:
            return st.merge_people(s, source, target)

    # -- queries ------------------------------------------------------------------------------

    def search(
        self, xq: np.ndarray, k: int = 5, *, labelled_only: bool = False
    ) -> list[list[Match]]:
        """The ``k`` nearest stored faces of each query, nearest first.

        ``xq``: ``(nq, D) float32`` unit embeddings of the active model's space.
        ``labelled_only``: only faces that have a person. Faces the index returns but SQL no
        longer has (a stale index while a writer runs) are dropped, so a list can be shorter
        than ``k``.
        """
        vi: VectorStore = self.vectors
        restrict = None
        if labelled_only:
            with self.store.session() as s:
                restrict = st.labelled_face_ids(s)
        try:
            D, I = vi.search(xq, k, restrict_to=restrict)  # noqa: E741 - FAISS vocabulary
        except IndexMismatchError as exc:  # a block of a lazily checked file is corrupt
            self._vectors = vi = self._load_vectors(broken=str(exc))
            D, I = vi.search(xq, k, restrict_to=restrict)  # noqa: E741
        with self.store.session() as s:
            records = st.faces_by_ids(s, I[I >= 0])
        out: list[list[Match]] = []
        for dq, iq in zip(D, I, strict=True):
            row = []
            for dist, fid in zip(dq, iq, strict=True):
                rec = records.get(int(fid))
                if rec is not None:
                    row.append(Match(int(fid), float(dist), rec.person, rec.photo))
            out.append(row)
        return out

    def embedding(self, face_id: int) -> tuple[np.ndarray, str]:
        """``(embedding (D,) float32, model)`` of a stored face (:class:`NotFoundError`)."""
        with self.store.session() as s:
            return st.face_embedding(s, face_id)

    def check_query_models(self, models: Sequence[str]) -> None:
        """Raise :class:`IncompatibleModelError` unless queries embedded by ``models`` can be
        compared with the indexed vectors (each model registered in the active model's space).

        Costs no query once the index is loaded (the space is read with it).
        """
        _ = self.vectors
        space = self._space_of_vectors
        bad = sorted(set(models) - set(space))
        if bad:
            raise IncompatibleModelError(
                f"queries embedded by model {', '.join(map(repr, bad))} cannot be compared with "
                f"collection {self.name!r}'s vectors (models {', '.join(space)}): embed them with "
                "the collection's active model, or register a compatible model with "
                "'facesearch model add FILE'"
            )

    def check(self) -> dict[str, Any]:
        """Compare the index file (or the Milvus copy) with SQL, id by id (reads every id:
        O(faces)).

        Returns ``consistent`` (bool), ``index_status`` (``current`` | ``stale`` | ``missing``
        | ``corrupt`` | ``unavailable`` (Milvus unreachable or busy) | ``no_model``),
        ``sql_faces``, ``index_faces``, ``missing_from_index``, ``extra_in_index`` and
        ``reason`` (or ``None``).
        """
        with self.store.session(snapshot=True) as s:
            exp = self._expected(s)
            sql_ids = st.face_ids(s, list(exp.space)) if exp is not None else np.empty(0, np.int64)
        result: dict[str, Any] = {
            "sql_faces": int(len(sql_ids)),
            "index_faces": 0,
            "missing_from_index": int(len(sql_ids)),
            "extra_in_index": 0,
            "reason": None,
        }
        if exp is None:
            result.update(consistent=len(sql_ids) == 0, index_status="no_model")
            return result
        vi: VectorStore
        try:
            if self.vectors_spec is not None:
                vi = self._open_milvus(create=False)
            else:
                vi = VectorIndex.load(self.index_path, mmap=True, verify=True)
        except (FileNotFoundError, MilvusMissingError):
            why = "no index file" if self.vectors_spec is None else "no Milvus collection"
            result.update(consistent=False, index_status="missing", reason=why)
            return result
        except IndexMismatchError as exc:
            result.update(consistent=False, index_status="corrupt", reason=str(exc))
            return result
        except CollectionError as exc:  # Milvus: unreachable, busy, not a copy of ours
            result.update(consistent=False, index_status="unavailable", reason=str(exc))
            return result
        idx_ids = np.sort(vi.ids())
        missing = np.setdiff1d(sql_ids, idx_ids, assume_unique=True)
        extra = np.setdiff1d(idx_ids, sql_ids, assume_unique=True)
        reason = self._mismatch(vi, exp)
        ok = reason is None and not len(missing) and not len(extra)
        if reason is None and not ok:
            reason = f"{len(missing)} faces missing from the index, {len(extra)} extra"
        result.update(
            consistent=ok,
            index_status="current" if reason is None else "stale",
            index_faces=int(len(idx_ids)),
            missing_from_index=int(len(missing)),
            extra_in_index=int(len(extra)),
            reason=reason,
        )
        return result

    def info(self, *, check: bool = True) -> dict[str, Any]:
        """Counts, models, index type, size on disk and (``check``) a consistency check."""
        with self.store.session() as s:
            counts = st.counts(s)
            models = st.list_models(s)
            active = st.get_meta(s, ACTIVE_MODEL_KEY)
            generation = st.get_generation(s)
            setting = st.get_meta(s, INDEX_TYPE_KEY, "auto") or "auto"
            db_bytes = st.database_bytes(s)
        folder_bytes = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        target = self.milvus_target
        if target is not None:
            index = self._milvus_info(target, setting)
            if target.lite and Path(target.uri).is_relative_to(self.folder.absolute()):
                folder_bytes += int(index["bytes"] or 0)
        else:
            index = self._faiss_info(setting)
        out: dict[str, Any] = {
            "name": self.name,
            "folder": str(self.folder),
            "database": self.store.url.render_as_string(hide_password=True),
            "schema": st.schema_revision(self.store.engine),
            "photos": counts.photos,
            "faces": counts.faces,
            "people": counts.people,
            "labelled_faces": counts.labelled_faces,
            "faces_by_pass": counts.faces_by_pass,
            "failed_photos": counts.failed_photos,
            "no_face_photos": counts.no_face_photos,
            "clusters": counts.clusters,
            "generation": generation,
            "active_model": active,
            "models": [
                {
                    "name": m.name,
                    "dim": m.dim,
                    "compatible_with": m.compatible_with,
                    "faces": m.faces,
                    "file_hash": m.file_hash,
                    "threshold": m.threshold,
                }
                for m in models
            ],
            "index": index,
            "size_on_disk": folder_bytes + (db_bytes or 0),
            "database_bytes": db_bytes if db_bytes is not None else None,
        }
        if check:
            out["consistency"] = self.check()
        return out

    def _faiss_info(self, setting: str) -> dict[str, Any]:
        index: dict[str, Any] = {"setting": setting, "store": "faiss", "file": str(self.index_path)}
        try:
            meta = VectorIndex.read_metadata(self.index_path)
            index.update(
                type=meta.kind,
                faces=meta.count,
                generation=meta.generation,
                nlist=meta.nlist,
                nprobe=meta.nprobe,
                bytes=self.index_path.stat().st_size,
            )
            side = sidecar_path(self.index_path)
            if meta.kind == "pq" and side.is_file():  # the accelerator, part of the index
                index["bytes"] += side.stat().st_size
        except FileNotFoundError:
            index.update(type=None, faces=0, bytes=0)
        except IndexMismatchError as exc:
            index.update(type=None, faces=0, bytes=self.index_path.stat().st_size, error=str(exc))
        return index

    def _milvus_info(self, target: MilvusTarget, setting: str) -> dict[str, Any]:
        """The Milvus copy's part of :meth:`info`: ``bytes`` is the milvus-lite folder's size
        (``None`` for a server)."""
        index: dict[str, Any] = {"setting": setting, "store": "milvus", "target": str(target)}
        size = None
        if target.lite:
            folder = Path(target.uri)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        try:
            meta = self._open_milvus(create=False).metadata
            index.update(type="flat", faces=meta.count, generation=meta.generation, bytes=size)
        except MilvusMissingError:
            index.update(type=None, faces=0, bytes=size)
        except CollectionError as exc:  # unreachable, busy, not a copy of ours
            index.update(type=None, faces=0, bytes=size, error=str(exc))
        return index


#: ``meta`` key: the name of the collection a store belongs to.
OWNER_KEY = "collection"


def _claim_store(store: st.Store, name: str, *, claim: bool = True) -> None:
    """Refuse a store that belongs to another collection; ``claim``: record ``name`` as its
    collection when none is recorded yet."""
    with store.session() as s:
        owner = st.get_meta(s, OWNER_KEY)
        if owner is None and claim and store.read_only is None:
            st.set_meta(s, OWNER_KEY, name)
    if owner is not None and owner != name:
        where = store.url.render_as_string(hide_password=True)
        raise CollectionError(
            f"the database {where} belongs to collection {owner!r}, not {name!r}: open it with "
            f"--collection {owner} (several homes may share one collection's database on "
            "purpose, under its name: their writers take turns through the database), or give "
            f"collection {name!r} a database of its own (another --db)"
        )


def _remove_if_empty(folder: Path) -> None:
    """Remove a collection folder made for nothing (only its lock file in it)."""
    try:
        if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except OSError:
        pass


def _sqlite_url(folder: Path) -> str:
    return f"sqlite:///{(folder / DB_NAME).resolve()}"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise CollectionError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != _CONFIG_FORMAT:
        raise CollectionError(
            f"{path} is not a collection file this facesearch reads "
            f"(format {config.get('format') if isinstance(config, dict) else '?'})"
        )
    return config


def upgrade_collection(
    home: str | os.PathLike[str], name: str = "default", db_url: str | None = None
) -> tuple[str | None, str | None]:
    """``facesearch db upgrade``: bring a collection's database to the newest schema.

    Holds the writer lock. Returns ``(revision before, revision after)``.
    """
    _check_collection_name(name)
    folder = Path(home) / name
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CollectionError(
            f"no collection {name!r} in {home}: nothing to upgrade "
            f"(`facesearch index PATH --collection {name}` creates one)"
        )
    stored = _read_config(config_path).get("db_url")
    url = db_url or stored or _sqlite_url(folder)
    engine = st.make_engine(url)
    try:
        lock = writer_lock(st.Store(engine), folder, f"collection {name!r}")
        lock.acquire(DEFAULT_LOCK_TIMEOUT)
        try:
            before = st.schema_revision(engine)
            after = st.upgrade_database(engine)
        finally:
            lock.release()
    finally:
        engine.dispose()
    return before, after


__all__ = [
    "CHECKPOINT_SECONDS",
    "CONFIG_NAME",
    "DB_NAME",
    "DEFAULT_LOCK_TIMEOUT",
    "INDEX_NAME",
    "LOCK_NAME",
    "Collection",
    "StopRequested",
    "WriterLock",
    "upgrade_collection",
]
