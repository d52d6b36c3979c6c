"""Face vectors in Milvus: a rebuildable copy of the embeddings held in SQL.

The same small interface as :class:`facesearch.vectors.VectorIndex` (:class:`VectorStore`):
``add``, ``remove``, ``search`` -> ``(D, I)`` with the FaceNet distance ``d = |a - b|^2 =
2 - 2 <a, b>`` on unit vectors (smallest first, ``-1`` / ``inf`` padding), ``count``,
``ids``, ``generation`` and ``model``, plus :meth:`MilvusVectors.rebuild` from SQL's arrays.
One client API (``pymilvus.MilvusClient``) serves both targets (:class:`MilvusTarget`):

- a **milvus-lite** folder on this machine (``faces.milvus.db``): for one machine and tests;
- a **Milvus cluster** ``milvus://host:port/collection`` (``MILVUS_TOKEN`` in the environment
  when the server wants one; it is never stored).

Layout
------
The name a collection is known by is an **alias** of a physical collection
``<name>__<token>`` with two fields, ``id`` (INT64 primary key: the SQL face id) and
``vector`` (FLOAT_VECTOR of ``dim``), indexed ``FLAT`` with metric ``IP``: exact search, so
results equal FAISS flat's (up to float rounding of the inner products, and the order of
exact ties). Consistency level ``Strong``: a search sees every write made before it.
:meth:`MilvusVectors.rebuild` fills a new physical collection and then moves the alias, so a
reader never sees a half-built copy; the old one (and any left by a rebuild that died) is
dropped after.

Staleness
---------
The physical collection's properties record ``facesearch.model``, ``facesearch.dim`` and
``facesearch.generation`` (the SQL face generation it reflects; ``-1`` for a copy never
filled). A change is applied to the vectors first and the generation written after, so a
writer that dies in between leaves the copy *behind* SQL, which the owner sees
(:meth:`MilvusVectors.mismatch`) and repairs by a rebuild, as with the FAISS file.

Adds are upserts (a retried add never stores a vector twice: Milvus does not enforce unique
primary keys on insert); removals delete by primary key and are durable (a deleted face is not
found after a restart); :meth:`MilvusVectors.remove` returns how many of the ids were held.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from facesearch.errors import CollectionError, OptionalDependencyError
from facesearch.vectors import _check_ids, _check_vectors

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


class VectorStore(Protocol):
    """What the collection needs of a vector store (FAISS :class:`~facesearch.vectors.
    VectorIndex` and :class:`MilvusVectors` both are one).

    ``xb``/``xq``: ``(n, d) float32`` unit vectors; ids ``(n,) int64`` SQL face ids;
    ``search`` returns ``D (nq, k) float32`` distances ``d = 2 - 2 ip`` ascending and
    ``I (nq, k) int64`` ids, ``-1`` / ``inf`` where there are fewer than ``k``.
    """

    dim: int
    model: str
    generation: int

    @property
    def count(self) -> int: ...

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray | Sequence[int]) -> int: ...

    def search(
        self, xq: np.ndarray, k: int, *, restrict_to: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray: ...


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise OptionalDependencyError(
            f"vectors in Milvus need pymilvus (and milvus-lite for a local file): {_INSTALL}"
        ) from exc
    return pymilvus


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
    format: int = FORMAT


class MilvusVectors:
    """Unit vectors keyed by face id in a Milvus collection (see the module doc).

    Open with :meth:`open`; ``model`` and ``generation`` are the owner's (the collection's)
    to set, and setting :attr:`generation` writes it to Milvus.
    """

    def __init__(self, client: Any, target: MilvusTarget, physical: str, meta: MilvusMetadata):
        self._client = client
        self.target = target
        self._physical = physical
        self.dim = meta.dim
        self.model = meta.model
        self._generation = meta.generation

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls, target: MilvusTarget | str, *, dim: int, model: str = "", create: bool = True
    ) -> MilvusVectors:
        """Connect to ``target`` and open its collection; a missing one is created empty at
        generation ``-1`` (``create``) or raises :class:`CollectionError`.

        A collection holding vectors of another ``dim`` raises :class:`CollectionError`:
        rebuild it (:meth:`rebuild`) or drop it (:meth:`drop`). ``model`` is the owner's
        model, recorded on creation; use :meth:`mismatch` to compare with SQL.
        """
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        target = MilvusTarget.parse(target) if isinstance(target, str) else target
        client = _connect(target)
        physical = _resolve(client, target.collection)
        if physical is None:
            if not create:
                raise CollectionError(
                    f"no Milvus collection {target.collection!r} at {target}: rebuild it from "
                    "the SQL store"
                )
            physical = _new_physical(client, target.collection, dim, model, generation=-1)
            _point_alias(client, target.collection, physical)
            logger.info("created the Milvus collection %s (empty)", target)
        meta = _read_metadata(client, physical)
        if meta.dim != dim:
            raise CollectionError(
                f"Milvus collection {target.collection!r} at {target} holds vectors of dim "
                f"{meta.dim}, not {dim}: rebuild it from the SQL store"
            )
        return cls(client, target, physical, meta)

    def close(self) -> None:
        """Close the connection (a milvus-lite folder is released)."""
        self._client.close()

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
        rows = self._client.query(self._physical, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __len__(self) -> int:
        return self.count

    @property
    def metadata(self) -> MilvusMetadata:
        """The properties as stored in Milvus now, and the live count."""
        return _read_metadata(self._client, self._physical)

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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        xq = _check_vectors(xq, self.dim, "xq")
        nq = len(xq)
        D = np.full((nq, k), np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 - FAISS vocabulary
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
                    self._physical,
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
        it = self._client.query_iterator(
            self._physical, batch_size=IDS_PER_EXPRESSION, filter="", output_fields=["id"]
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
                self._physical, filter=_in_ids(part), output_fields=["id", "vector"]
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
    ) -> int:
        """Replace the copy with the vectors of ``chunks`` (``(ids (n,) int64, xb (n, d)
        float32)`` pairs, e.g. :func:`facesearch.store.load_embeddings`), at ``generation``.

        The vectors go into a new physical collection; the alias moves to it when it is full,
        then the old one is dropped: searches meanwhile use the old copy. Returns the count.
        """
        model = self.model if model is None else model
        name = self.target.collection
        physical = _new_physical(self._client, name, self.dim, model, generation=-1)
        try:
            n = 0
            for ids, xb in chunks:
                xb = _check_vectors(xb, self.dim, "xb")
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
        self._physical, self.model, self._generation = physical, model, int(generation)
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
        if self._client.has_collection(name):  # a plain collection of that name
            self._client.drop_collection(name)
        _drop_others(self._client, name, keep=None)


# -- helpers ------------------------------------------------------------------------------------


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
    token = os.environ.get("MILVUS_TOKEN", "")
    try:
        return pymilvus.MilvusClient(uri=target.uri, token=token)
    except pymilvus.MilvusException as exc:
        raise CollectionError(f"cannot connect to Milvus at {target}: {exc.message}") from exc


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


def _new_physical(client: Any, name: str, dim: int, model: str, *, generation: int) -> str:
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
        index_params=index,
        consistency_level="Strong",
        properties={
            _PROP + "format": str(FORMAT),
            _PROP + "model": model,
            _PROP + "dim": str(int(dim)),
            _PROP + "generation": str(int(generation)),
        },
    )
    return physical


def _point_alias(client: Any, name: str, physical: str) -> None:
    current = _alias_target(client, name)
    if current is None:
        if client.has_collection(name):  # a plain collection of that name: ours, made earlier
            client.drop_collection(name)
        client.create_alias(physical, name)
        return
    if current != physical:
        client.alter_alias(physical, name)


def _drop_others(client: Any, name: str, *, keep: str | None) -> None:
    """Drop the physical collections of ``name`` other than ``keep`` (left by rebuilds)."""
    for other in client.list_collections():
        if other != keep and other.startswith(name + "__"):
            client.drop_collection(other)
            logger.debug("dropped the old Milvus collection %s", other)


def _read_metadata(client: Any, physical: str) -> MilvusMetadata:
    desc = client.describe_collection(physical)
    props = {str(k): str(v) for k, v in (desc.get("properties") or {}).items()}
    dim = next(int(f["params"]["dim"]) for f in desc["fields"] if f.get("name") == "vector")
    try:
        fmt = int(props.get(_PROP + "format", "0"))
        generation = int(props.get(_PROP + "generation", "-1"))
    except ValueError as exc:
        raise CollectionError(
            f"Milvus collection {physical!r} has unreadable facesearch properties ({exc}): "
            "drop it and it is rebuilt from SQL"
        ) from exc
    if fmt != FORMAT:
        raise CollectionError(
            f"Milvus collection {physical!r} has facesearch format {fmt}, this facesearch "
            f"writes {FORMAT}: drop it and it is rebuilt from SQL"
        )
    rows = client.query(physical, filter="", output_fields=["count(*)"])
    return MilvusMetadata(
        model=props.get(_PROP + "model", ""),
        dim=dim,
        generation=generation,
        count=int(rows[0]["count(*)"]) if rows else 0,
        physical=physical,
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
    "MilvusMetadata",
    "MilvusTarget",
    "MilvusVectors",
    "VectorStore",
]
