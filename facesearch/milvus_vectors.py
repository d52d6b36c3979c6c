"""Face vectors in Milvus: a rebuildable copy of the embeddings held in SQL.

The same small interface as :class:`facesearch.vectors.VectorIndex` (:class:`~facesearch.vectors.
VectorStore`):
``add``, ``remove``, ``search`` -> ``(D, I)`` with the FaceNet distance ``d = |a - b|^2 =
2 - 2 <a, b>`` on unit vectors (smallest first, ``-1`` / ``inf`` padding), ``count``,
``ids``, ``generation`` and ``model``, plus :meth:`MilvusVectors.rebuild` from SQL's arrays.
One client API (``pymilvus.MilvusClient``) serves both targets (:class:`MilvusTarget`):

- a **milvus-lite** folder on this machine (its name ends in ``.db``, which is how pymilvus
  recognises one): for one machine and tests. milvus-lite runs inside the process that opens
  the folder and locks it: one process at a time (another gets :class:`MilvusBusyError`);
  closing the last :class:`MilvusVectors` of a folder releases it;
- a **Milvus cluster** ``milvus://host:port/collection`` (``MILVUS_TOKEN`` in the environment
  when the server wants one; it is never stored), for any number of processes.

Layout
------
The name a collection is known by is an **alias** of a physical collection
``<name>__<token>`` with two fields, ``id`` (INT64 primary key: the SQL face id) and
``vector`` (FLOAT_VECTOR of ``dim``), indexed ``FLAT`` with metric ``IP``: exact search, so
results equal FAISS flat's (up to float rounding of the inner products, and the order of
exact ties). Consistency level ``Strong``: a search sees every write made before it.
:meth:`MilvusVectors.rebuild` fills a new physical collection and then moves the alias, so a
reader never sees a half-built copy; the old one (and any left by a rebuild that died) is
dropped after. Reads go through the alias (a reader in another process follows a rebuild);
writes and properties go to the physical collection, which only the writer rebuilds. A copy
that is not loaded (milvus-lite after a restart) is loaded when opened.

Staleness
---------
The physical collection's properties record ``facesearch.model``, ``facesearch.dim``,
``facesearch.generation`` (the SQL face generation it reflects; ``-1`` for a copy never
filled) and ``facesearch.owner`` (the id of the facesearch collection whose copy it is: two
collections given the same Milvus collection are refused instead of overwriting each other).
A Milvus collection without these properties is not a copy of ours and is never dropped.
A change is applied to the vectors first and the generation written after, so a writer that
dies in between leaves the copy *behind* SQL, which the owner sees
(:meth:`MilvusVectors.mismatch`) and repairs by a rebuild, as with the FAISS file.

Adds are upserts (a retried add never stores a vector twice: Milvus does not enforce unique
primary keys on insert); removals delete by primary key and are durable (a deleted face is not
found after a restart); :meth:`MilvusVectors.remove` returns how many of the ids were held.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from facesearch.errors import CollectionError, OptionalDependencyError
from facesearch.vectors import VectorStore, _check_ids, _check_vectors, padded_results

logger = logging.getLogger(__name__)

#: Collection name used when a target names none (a milvus-lite folder, or ``milvus://h:p``).
DEFAULT_COLLECTION = "faces"
#: Rows per insert/upsert request (128-d: ~2.6 MB, far below Milvus's 64 MB message limit).
INSERT_BATCH = 5_000
#: Ids per ``id in [...]`` expression (delete, query, restricted search).
IDS_PER_EXPRESSION = 16_384
#: Milvus's largest ``limit`` (top-k) and number of queries per search request.
MAX_TOPK = 16_384
QUERIES_PER_REQUEST = 1_024
#: Format of the properties written here.
FORMAT = 1

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PROP = "facesearch."
_INSTALL = "pip install 'facesearch[milvus]'"


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise OptionalDependencyError(
            f"vectors in Milvus need pymilvus (and milvus-lite for a local file): {_INSTALL}"
        ) from exc
    return pymilvus


class MilvusMissingError(CollectionError):
    """The Milvus collection does not exist (never made, or dropped): rebuild it from SQL."""


class MilvusBusyError(CollectionError):
    """The milvus-lite folder is open in another process (milvus-lite serves one at a time)."""


@dataclass(frozen=True, slots=True)
class MilvusTarget:
    """Where the vectors live: ``uri`` as ``MilvusClient`` takes it, and the collection name.

    ``lite``: ``uri`` is a milvus-lite folder on this machine.
    """

    uri: str
    collection: str
    lite: bool

    @classmethod
    def parse(cls, spec: str, *, collection: str = DEFAULT_COLLECTION) -> MilvusTarget:
        """``milvus://host:port[/collection]`` (a cluster; ``milvus+https://`` over TLS) or
        the path of a milvus-lite folder (``collection`` names the collection in it).

        Raises :class:`CollectionError` naming what is wrong with ``spec``.
        """
        if "://" not in spec:
            if not spec.strip():
                raise CollectionError("empty Milvus target: give milvus://host:port/collection")
            path = Path(spec).expanduser()
            if path.suffix != ".db":
                raise CollectionError(
                    f"milvus-lite target {spec!r}: the folder's name must end in .db (that is "
                    "how pymilvus recognises a local folder), e.g. vectors.milvus.db"
                )
            if path.exists() and not path.is_dir():
                raise CollectionError(
                    f"milvus-lite target {spec!r} is a file; milvus-lite keeps a folder there "
                    "(give a new path, e.g. vectors.milvus.db)"
                )
            return cls(str(path.absolute()), _check_name(collection, spec), lite=True)
        parts = urlsplit(spec)
        schemes = {"milvus": "http", "milvus+http": "http", "milvus+https": "https"}
        if parts.scheme not in schemes:
            raise CollectionError(
                f"Milvus target {spec!r}: scheme {parts.scheme!r} is not milvus:// (or "
                "milvus+https://); a local milvus-lite folder is given as a plain path"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise CollectionError(f"Milvus target {spec!r}: {exc}") from exc
        if not parts.hostname or port is None:
            raise CollectionError(f"Milvus target {spec!r} needs a host and a port")
        if parts.username or parts.password:
            raise CollectionError(
                f"Milvus target {_redact(spec)}: give credentials in MILVUS_TOKEN, not in the URI "
                "(it is stored with the collection)"
            )
        name = parts.path.strip("/") or collection
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(f"{schemes[parts.scheme]}://{host}:{port}", _check_name(name, spec), False)

    def __str__(self) -> str:
        return self.uri if self.lite else f"{self.uri}/{self.collection}"


def _redact(spec: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", spec)


def _check_name(name: str, spec: str) -> str:
    if not _NAME.fullmatch(name) or "__" in name:
        raise CollectionError(
            f"Milvus target {_redact(spec)}: collection name {name!r} must be a letter or _ then "
            "letters, digits or _ (at most 128, no '__': physical copies use it)"
        )
    return name


@dataclass(frozen=True, slots=True)
class MilvusMetadata:
    """What a Milvus copy reflects (its properties) and holds (``count``)."""

    model: str
    dim: int
    generation: int
    count: int
    physical: str
    owner: str = ""
    format: int = FORMAT


class MilvusVectors:
    """Unit vectors keyed by face id in a Milvus collection (see the module doc).

    Open with :meth:`open`; ``model`` and ``generation`` are the owner's (the collection's)
    to set, and setting :attr:`generation` writes it to Milvus.
    """

    def __init__(self, client: Any, target: MilvusTarget, physical: str, meta: MilvusMetadata):
        self._client = client
        self.target = target
        self._physical = physical  # writes and properties
        self._name = target.collection  # reads: the alias, which follows rebuilds
        self.dim = meta.dim
        self.model = meta.model
        self.owner = meta.owner
        self._generation = meta.generation
        self._closed = False

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        target: MilvusTarget | str | os.PathLike[str],
        *,
        dim: int | None = None,
        model: str = "",
        owner: str = "",
        create: bool = True,
    ) -> MilvusVectors:
        """Connect to ``target`` and open its collection; a missing one is created empty at
        generation ``-1`` with ``dim`` (``create``), or raises :class:`MilvusMissingError`.

        ``dim``: the vectors' size; a copy of another size raises :class:`CollectionError`
        (rebuild it with :meth:`rebuild`, or drop it). ``None`` opens a copy of any size (the
        caller compares with :meth:`mismatch`). ``model`` and ``owner`` are recorded on
        creation; a copy recorded with another ``owner`` raises :class:`CollectionError`.
        """
        if dim is not None and dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not isinstance(target, MilvusTarget):
            target = MilvusTarget.parse(os.fspath(target))
        client = _connect(target)
        try:
            physical = _resolve(client, target.collection)
            if physical is None:
                if not create:
                    raise MilvusMissingError(
                        f"no Milvus collection {target.collection!r} at {target}: rebuild it "
                        "from the SQL store"
                    )
                if dim is None:
                    raise ValueError("dim is needed to create a Milvus collection")
                physical = _new_physical(
                    client, target.collection, dim, model, owner, generation=-1
                )
                _point_alias(client, target.collection, physical)
                logger.info("created the Milvus collection %s (empty)", target)
            meta = _read_metadata(client, physical)
            if owner and meta.owner and meta.owner != owner:
                raise CollectionError(
                    f"Milvus collection {target.collection!r} at {target} holds the vectors of "
                    "another facesearch collection: give this one its own "
                    "(--vectors milvus://HOST:PORT/NAME)"
                )
            if dim is not None and meta.dim != dim:
                raise CollectionError(
                    f"Milvus collection {target.collection!r} at {target} holds vectors of dim "
                    f"{meta.dim}, not {dim}: rebuild it from the SQL store"
                )
            _ensure_loaded(client, physical)
        except BaseException:
            _disconnect(client, target)
            raise
        return cls(client, target, physical, meta)

    def close(self) -> None:
        """Close the connection; the last one of a milvus-lite folder releases the folder."""
        if not self._closed:
            self._closed = True
            _disconnect(self._client, self.target)

    def __enter__(self) -> MilvusVectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusVectors({self.target}, generation={self._generation})"

    # -- state -----------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """The SQL face generation the copy reflects (``-1``: never filled)."""
        return self._generation

    @generation.setter
    def generation(self, value: int) -> None:
        """Record that the copy now reflects SQL generation ``value`` (written to Milvus)."""
        self._client.alter_collection_properties(
            self._physical, properties={_PROP + "generation": str(int(value))}
        )
        self._generation = int(value)

    @property
    def count(self) -> int:
        """Number of vectors held (a ``count(*)`` query)."""
        rows = self._client.query(self._name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __len__(self) -> int:
        return self.count

    @property
    def metadata(self) -> MilvusMetadata:
        """The properties as stored in Milvus now, and the live count."""
        return _read_metadata(self._client, self._name)

    def mismatch(self, *, model: str, dim: int, generation: int, count: int) -> str | None:
        """Why this copy does not reflect SQL (``None`` when it does): another model or dim, or
        another generation or count. Reads the properties and the count from Milvus."""
        meta = self.metadata
        if (meta.model, meta.dim) != (model, dim):
            return (
                f"it holds model {meta.model!r} dim {meta.dim}, the collection uses {model!r} "
                f"dim {dim}"
            )
        if (meta.generation, meta.count) != (generation, count):
            return (
                f"it is at generation {meta.generation} with {meta.count} faces, SQL at "
                f"generation {generation} with {count}"
            )
        return None

    # -- changes ---------------------------------------------------------------------------

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        """Upsert ``xb`` ``(n, d) float32`` unit vectors under ``ids`` ``(n,) int64``."""
        xb = _check_vectors(xb, self.dim, "xb")
        ids = _check_ids(ids, len(xb))
        _insert(self._client, self._physical, ids, xb, upsert=True)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Delete the vectors of ``ids`` ``(n,) int64``; unknown ids are ignored. Returns the
        number of vectors removed."""
        wanted = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        removed = 0
        for part in _id_chunks(wanted):
            held = self._client.query(
                self._physical, filter=_in_ids(part), output_fields=["id"], limit=len(part)
            )
            found = [int(r["id"]) for r in held]
            if found:
                self._client.delete(self._physical, ids=found)
                removed += len(found)
        return removed

    # -- queries ---------------------------------------------------------------------------

    def search(
        self, xq: np.ndarray, k: int, *, restrict_to: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest vectors of each query (see :class:`VectorStore`).

        ``restrict_to``: optional ``(m,) int64`` ids, the only ones considered. Exact ties are
        ordered by id. Raises ``ValueError`` for ``k`` above :data:`MAX_TOPK` (Milvus's limit)
        when the copy holds more vectors than that.
        """
        xq, D, I = padded_results(xq, k, self.dim)  # noqa: E741 - FAISS vocabulary
        nq = len(xq)
        n = self.count
        if not nq or not n:
            return D, I
        if restrict_to is None:
            filters = [""]
        else:
            allowed = np.unique(np.asarray(restrict_to, dtype=np.int64).reshape(-1))
            filters = [_in_ids(part) for part in _id_chunks(allowed)]
            if not filters:
                return D, I
        limit = min(k, n)
        if limit > MAX_TOPK:
            raise ValueError(
                f"k = {k} is above Milvus's largest top-k {MAX_TOPK} ({n} vectors held)"
            )
        ip = np.full((nq, limit * len(filters)), -np.inf, dtype=np.float32)
        found = np.full((nq, limit * len(filters)), -1, dtype=np.int64)
        for f, expr in enumerate(filters):
            for s in range(0, nq, QUERIES_PER_REQUEST):
                hits = self._client.search(
                    self._name,
                    data=xq[s : s + QUERIES_PER_REQUEST],
                    limit=limit,
                    filter=expr,
                    output_fields=["id"],
                    search_params={"metric_type": "IP"},
                    anns_field="vector",
                )
                for q, row in enumerate(hits, start=s):
                    for j, hit in enumerate(row):
                        ip[q, f * limit + j] = hit["distance"]
                        found[q, f * limit + j] = hit["id"]
        # nearest first, exact ties by id: sort by id, then stably by distance
        by_id = np.argsort(np.where(found >= 0, found, np.iinfo(np.int64).max), axis=1)
        ip, found = np.take_along_axis(ip, by_id, 1), np.take_along_axis(found, by_id, 1)
        order = np.argsort(-ip, axis=1, kind="stable")[:, :k]
        ip, found = np.take_along_axis(ip, order, 1), np.take_along_axis(found, order, 1)
        kk = ip.shape[1]
        hit = found >= 0
        D[:, :kk] = np.where(hit, np.clip(2.0 - 2.0 * ip, 0.0, 4.0), np.inf)
        I[:, :kk] = np.where(hit, found, -1)
        return D, I

    def ids(self) -> np.ndarray:
        """All ids held, ``(n,) int64`` sorted."""
        return np.sort(np.fromiter(self._iter_ids(), dtype=np.int64))

    def _iter_ids(self) -> Iterator[int]:
        with _quiet_iterator_setup():
            it = self._client.query_iterator(
                self._name, batch_size=IDS_PER_EXPRESSION, filter="", output_fields=["id"]
            )
        try:
            while rows := it.next():
                yield from (int(r["id"]) for r in rows)
        finally:
            it.close()

    def vectors(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids`` ``(n,) int64`` as ``(n, d) float32``, in that order.
        Raises ``KeyError`` naming an id not held."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        got: dict[int, np.ndarray] = {}
        for part in _id_chunks(np.unique(ids)):
            for r in self._client.query(
                self._name, filter=_in_ids(part), output_fields=["id", "vector"]
            ):
                got[int(r["id"])] = np.asarray(r["vector"], dtype=np.float32)
        missing = [int(i) for i in ids if int(i) not in got]
        if missing:
            raise KeyError(f"face ids not in the Milvus copy: {missing[:10]}")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, i in enumerate(ids):
            out[row] = got[int(i)]
        return out

    # -- rebuilding ------------------------------------------------------------------------

    def rebuild(
        self,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        *,
        generation: int,
        model: str | None = None,
        dim: int | None = None,
    ) -> int:
        """Replace the copy with the vectors of ``chunks`` (``(ids (n,) int64, xb (n, d)
        float32)`` pairs, e.g. :func:`facesearch.store.load_embeddings`), at ``generation``,
        recording ``model`` and ``dim`` (default: the copy's).

        The vectors go into a new physical collection; the alias moves to it when it is full,
        then the old one is dropped: searches meanwhile use the old copy. Returns the count.
        """
        model = self.model if model is None else model
        dim = self.dim if dim is None else int(dim)
        name = self.target.collection
        physical = _new_physical(self._client, name, dim, model, self.owner, generation=-1)
        try:
            n = 0
            for ids, xb in chunks:
                xb = _check_vectors(xb, dim, "xb")
                ids = _check_ids(ids, len(xb))
                _insert(self._client, physical, ids, xb, upsert=False)
                n += len(ids)
            self._client.alter_collection_properties(
                physical, properties={_PROP + "generation": str(int(generation))}
            )
        except BaseException:
            self._client.drop_collection(physical)
            raise
        _point_alias(self._client, name, physical)
        self._physical, self.model, self.dim = physical, model, dim
        self._generation = int(generation)
        _drop_others(self._client, name, keep=physical)
        logger.info(
            "rebuilt the Milvus copy %s: %d vectors at generation %d", self.target, n, generation
        )
        return n

    def drop(self) -> None:
        """Drop the copy (alias and physical collections). The object is unusable after."""
        name = self.target.collection
        if _alias_target(self._client, name) is not None:
            self._client.drop_alias(name)
        if self._client.has_collection(name) and _is_ours(self._client, name):  # a plain one
            self._client.drop_collection(name)
        _drop_others(self._client, name, keep=None)


# -- helpers ------------------------------------------------------------------------------------


#: Open clients per milvus-lite folder in this process: the last one closed releases the folder
#: (unless its server was started here by someone else: :data:`_lite_borrowed`).
_lite_users: dict[str, int] = {}
_lite_borrowed: set[str] = set()
_lite_lock = threading.Lock()


def _connect(target: MilvusTarget) -> Any:
    pymilvus = _pymilvus()
    if target.lite:
        try:
            import milvus_lite  # noqa: F401 - pymilvus starts it for a local path
        except ImportError as exc:
            raise OptionalDependencyError(
                f"a local Milvus folder ({target.uri}) needs milvus-lite: {_INSTALL}"
            ) from exc
        Path(target.uri).parent.mkdir(parents=True, exist_ok=True)
        with _lite_lock:
            if not _lite_users.get(target.uri):
                if _served_here(target.uri):
                    _lite_borrowed.add(target.uri)
                elif _held_elsewhere(Path(target.uri)):
                    raise MilvusBusyError(
                        f"the milvus-lite folder {target.uri} is open in another process "
                        "(milvus-lite serves one process at a time; several processes need a "
                        "Milvus server: --vectors milvus://HOST:PORT/NAME)"
                    )
            _lite_users[target.uri] = _lite_users.get(target.uri, 0) + 1
    token = os.environ.get("MILVUS_TOKEN", "")
    try:
        return pymilvus.MilvusClient(uri=target.uri, token=token)
    except pymilvus.MilvusException as exc:
        if target.lite:
            _release_lite(target.uri)
        raise CollectionError(f"cannot connect to Milvus at {target}: {exc.message}") from exc


def _served_here(folder: str) -> bool:
    """Whether milvus-lite already serves ``folder`` in this process."""
    from milvus_lite.server_manager import server_manager_instance

    return folder in getattr(server_manager_instance, "_servers", {})


def _held_elsewhere(folder: Path) -> bool:
    """Whether another process holds milvus-lite's lock on ``folder`` (``LOCK``, flock)."""
    lock = folder / "LOCK"
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _disconnect(client: Any, target: MilvusTarget) -> None:
    try:
        client.close()
    finally:
        if target.lite:
            _release_lite(target.uri)


def _release_lite(folder: str) -> None:
    with _lite_lock:
        left = _lite_users.get(folder, 0) - 1
        if left > 0:
            _lite_users[folder] = left
            return
        _lite_users.pop(folder, None)
        if folder in _lite_borrowed:  # started by someone else in this process: theirs to stop
            _lite_borrowed.discard(folder)
            return
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(folder)  # its lock too: another process may open it


def _ensure_loaded(client: Any, physical: str) -> None:
    """Load a released collection (milvus-lite after a restart) so that it can be searched."""
    state = client.get_load_state(physical).get("state")
    if getattr(state, "name", str(state)) != "Loaded":
        client.load_collection(physical)
        logger.debug("loaded the Milvus collection %s", physical)


class _DropIteratorTimestampNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


@contextmanager
def _quiet_iterator_setup() -> Iterator[None]:
    """pymilvus warns on every query iterator of a server that gives no MVCC timestamp
    (milvus-lite); it then uses the client's clock, which is right for a Strong collection."""
    log = logging.getLogger("pymilvus")
    note = _DropIteratorTimestampNote()
    log.addFilter(note)
    for handler in log.handlers:
        handler.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)
        for handler in log.handlers:
            handler.removeFilter(note)


def _alias_target(client: Any, name: str) -> str | None:
    """The collection the alias ``name`` points to, or ``None`` (no such alias). Looked up in
    the list, not by describing it: pymilvus logs a failed call as an error."""
    if name not in (client.list_aliases() or {}).get("aliases", []):
        return None
    return str(client.describe_alias(name)["collection_name"])


def _resolve(client: Any, name: str) -> str | None:
    """The physical collection behind ``name`` (an alias, or an older plain collection)."""
    target = _alias_target(client, name)
    if target is not None:
        return target
    return name if client.has_collection(name) else None


def _new_physical(
    client: Any, name: str, dim: int, model: str, owner: str, *, generation: int
) -> str:
    pymilvus = _pymilvus()
    physical = f"{name}__{secrets.token_hex(4)}"
    schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
    schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=int(dim))
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(
        physical,
        schema=schema,
        consistency_level="Strong",
        properties={
            _PROP + "format": str(FORMAT),
            _PROP + "model": model,
            _PROP + "dim": str(int(dim)),
            _PROP + "generation": str(int(generation)),
            _PROP + "owner": owner,
        },
    )
    # not waited for: waiting asks for a timestamp that milvus-lite does not serve, and a FLAT
    # index of an empty collection has nothing to build
    client.create_index(physical, index, sync=False)
    client.load_collection(physical)
    return physical


def _point_alias(client: Any, name: str, physical: str) -> None:
    current = _alias_target(client, name)
    if current is None:
        if client.has_collection(name):  # a plain collection of that name: ours, made earlier
            if not _is_ours(client, name):
                raise CollectionError(
                    f"a Milvus collection {name!r} exists and is not a facesearch copy: give "
                    "another name (--vectors milvus://HOST:PORT/NAME)"
                )
            client.drop_collection(name)
        client.create_alias(physical, name)
        return
    if current != physical:
        client.alter_alias(physical, name)


def _drop_others(client: Any, name: str, *, keep: str | None) -> None:
    """Drop the physical collections of ``name`` other than ``keep`` (left by rebuilds)."""
    for other in client.list_collections():
        if other != keep and other.startswith(name + "__") and _is_ours(client, other):
            client.drop_collection(other)
            logger.debug("dropped the old Milvus collection %s", other)


def _properties(client: Any, name: str) -> tuple[dict[str, str], Any]:
    desc = client.describe_collection(name)
    return {str(k): str(v) for k, v in (desc.get("properties") or {}).items()}, desc


def _is_ours(client: Any, name: str) -> bool:
    """Whether the collection ``name`` carries facesearch's properties."""
    return _PROP + "format" in _properties(client, name)[0]


def _read_metadata(client: Any, name: str) -> MilvusMetadata:
    """The properties and count of the collection ``name`` (an alias or a physical one)."""
    props, desc = _properties(client, name)
    if _PROP + "format" not in props:
        raise CollectionError(
            f"the Milvus collection {name!r} is not a facesearch copy (no facesearch "
            "properties): give another name (--vectors milvus://HOST:PORT/NAME)"
        )
    try:
        dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f.get("name") == "vector")
    except (StopIteration, KeyError, ValueError) as exc:
        raise CollectionError(f"the Milvus collection {name!r} has no vector field") from exc
    try:
        fmt = int(props.get(_PROP + "format", "0"))
        generation = int(props.get(_PROP + "generation", "-1"))
    except ValueError as exc:
        raise CollectionError(
            f"Milvus collection {name!r} has unreadable facesearch properties ({exc}): "
            "drop it and it is rebuilt from SQL"
        ) from exc
    if fmt != FORMAT:
        raise CollectionError(
            f"Milvus collection {name!r} has facesearch format {fmt}, this facesearch "
            f"writes {FORMAT}: drop it and it is rebuilt from SQL"
        )
    rows = client.query(name, filter="", output_fields=["count(*)"])
    return MilvusMetadata(
        model=props.get(_PROP + "model", ""),
        dim=dim,
        generation=generation,
        count=int(rows[0]["count(*)"]) if rows else 0,
        physical=str(desc.get("collection_name") or name),
        owner=props.get(_PROP + "owner", ""),
    )


def _insert(client: Any, physical: str, ids: np.ndarray, xb: np.ndarray, *, upsert: bool) -> None:
    write = client.upsert if upsert else client.insert
    for s in range(0, len(ids), INSERT_BATCH):
        rows = [
            {"id": int(i), "vector": v}
            for i, v in zip(ids[s : s + INSERT_BATCH], xb[s : s + INSERT_BATCH], strict=True)
        ]
        write(physical, rows)


def _id_chunks(ids: np.ndarray) -> Iterator[np.ndarray]:
    for s in range(0, len(ids), IDS_PER_EXPRESSION):
        yield ids[s : s + IDS_PER_EXPRESSION]


def _in_ids(ids: np.ndarray) -> str:
    return "id in [" + ",".join(str(int(i)) for i in ids) + "]"


if TYPE_CHECKING:  # both stores are a VectorStore (mypy checks this)
    from facesearch.vectors import VectorIndex

    def _both_are_stores(a: VectorIndex, b: MilvusVectors) -> tuple[VectorStore, VectorStore]:
        return a, b


__all__ = [
    "DEFAULT_COLLECTION",
    "MilvusBusyError",
    "MilvusMetadata",
    "MilvusMissingError",
    "MilvusTarget",
    "MilvusVectors",
    "VectorStore",
]
