"""The FAISS vector index: a rebuildable cache of the face embeddings held in SQL.

Vocabulary (as in FAISS): ``d`` dimension, ``nb`` database size, ``nq`` number of queries,
``k`` neighbours, ``xb`` ``(nb, d) float32`` database vectors, ``xq`` ``(nq, d) float32``
queries, ``D`` ``(nq, k) float32`` distances, ``I`` ``(nq, k) int64`` ids.

Vectors are unit embeddings compared by inner product; the index reports the FaceNet distance
``d = |a - b|^2 = 2 - 2 <a, b>`` (0 identical .. 4 opposite), smallest first. Ids are face ids
(SQL primary keys). Missing neighbours (``k`` larger than the index) are padded with id ``-1``
and distance ``inf``.

Index kinds
-----------
``flat``
    Exact search (``IndexIDMap(IndexFlatIP)``). Removal is exact.
``pq``
    The same exact index plus an *accelerator*: a product quantizer with fast-scan
    (``IndexPQFastScan``: ``d / 2`` sub-quantizers of 4 bits, 32 bytes per 128-d vector) that
    holds the same vectors in the same storage order (position ``i`` of the accelerator is
    position ``i`` of the flat storage). A query scans all PQ codes for
    ``k * K_FACTOR`` candidates and re-ranks them exactly with the stored float vectors, so
    the distances and ids returned are exact; only a true neighbour missing from the
    candidates costs recall (:data:`K_FACTOR`).
    Searches with ``restrict_to`` are exact (flat). The accelerator is trained once the index
    holds :data:`PQ_MIN_TRAIN` vectors (below that exact search is used: it is below a
    millisecond anyway), on a seeded sample of at most :data:`PQ_TRAIN_SAMPLE` of them, and
    retrained when the count grows by :data:`PQ_RETRAIN_FACTOR` since. Removal is exact in
    both parts. Without a usable accelerator (too few vectors, sidecar missing, stale or
    corrupt) search is exact: slower, never wrong.
``ivf``
    Approximate search (``IndexIVFFlat``, inner product) with native ids and native removal.
    ``nlist = clamp(round(IVF_NLIST_FACTOR * sqrt(n)), 1, n // 39)`` coarse cells trained by
    k-means on at most ``IVF_TRAIN_POINTS_PER_LIST * nlist`` vectors; ``nprobe`` is calibrated
    at training time: the smallest value in :data:`NPROBE_CANDIDATES` whose recall@10 against
    exact search reaches :data:`CALIBRATION_TARGET` on perturbed copies of training vectors
    (a new photo of a known face). Stored in the file; override with ``VectorIndex.nprobe``.
    Kept as an explicit choice: face embeddings have little cluster structure, so at 1M it
    needs most cells for recall 0.95 (``pq`` is faster and exact-ranked).
``auto``
    ``flat`` up to :data:`AUTO_APPROX_ABOVE` vectors (``n_hint``), ``pq`` above.

HNSW is not offered: FAISS HNSW graphs cannot remove vectors, and a collection removes faces
(``--prune``, ``people delete --faces``) as a matter of course.

Threads
-------
FAISS parallelises with OpenMP. For one query (or a few) the threads only add synchronisation, and
OpenMP threads that spin while waiting make it many times slower on a busy machine
(bench/results/history.md). So searches of at most :data:`FEW_QUERIES` queries and the accelerator's
training and encoding run on one FAISS thread; larger batches use FAISS's setting.

File format
-----------
One file, written atomically (temporary file in the same folder, fsync, ``os.replace``)::

    [FAISS index bytes][metadata JSON, UTF-8][u64 LE length of the JSON][8-byte magic]

FAISS ignores the trailer, so the file is loaded (and memory-mapped) by ``faiss.read_index``
directly; the trailer records model, dimension, count, generation, kind, IVF parameters, a
CRC-32 of the FAISS bytes and one of each block of :data:`CHECK_ROWS` stored vectors with their
ids (flat storage). Every load checks the file before it is searched: whole, or, for a large
memory-mapped ``pq`` file, block by block as searches read the vectors (see :meth:`load`).
A file without the trailer (truncated, or not ours) or whose FAISS part does not parse raises
:class:`~facesearch.errors.IndexMismatchError`.

A ``pq`` index keeps its main file exactly as ``flat`` (the exact vectors; kind ``pq`` in the
trailer) and its accelerator in a sidecar ``<path>.pq``, written atomically after the main
file, same layout with its own magic and metadata (:class:`AcceleratorMetadata`: count,
generation, and the main file's FAISS byte count and CRC-32). A sidecar that is missing,
stale (it does not name the main file's CRC), truncated or corrupt (its own CRC-32 is checked
before FAISS parses it) is ignored with a log message: search is exact until the next
:meth:`VectorIndex.save` rebuilds it. It is a cache of a cache: losing it never loses data.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import math
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facesearch.distance import UNIT_NORM_TOLERANCE
from facesearch.errors import IndexMismatchError
from facesearch.interrupts import critical_section

logger = logging.getLogger(__name__)

#: Index kinds accepted by :meth:`VectorIndex.create` (``auto`` resolves to one of the others).
KINDS: tuple[str, ...] = ("flat", "pq", "ivf", "auto")
#: ``auto`` switches from exact (``flat``) to accelerated (``pq``) search above this many
#: vectors.
AUTO_APPROX_ABOVE: int = 50_000
#: A ``pq`` query re-ranks exactly ``k * K_FACTOR`` candidates found by the accelerator
#: (recall@10 0.995 on 1M SFace-like vectors; bench/results/history.md).
K_FACTOR: int = 50
#: Dimensions per PQ sub-quantizer (``M = d / 2``: 64 sub-quantizers of 4 bits for d = 128).
PQ_DIMS_PER_CODE: int = 2
PQ_NBITS: int = 4
#: The accelerator is trained once the index holds this many vectors. Below it exact search
#: takes under a millisecond, so an accelerator gains nothing, and a
#: 16-centroid codebook per sub-space is well fed (>= 600 points per centroid).
PQ_MIN_TRAIN: int = 10_000
#: The accelerator's codebook is trained on a seeded sample of at most this many vectors.
PQ_TRAIN_SAMPLE: int = 100_000
#: The codebook is retrained (from the stored vectors) when the count exceeds this factor
#: times the count it was trained at.
PQ_RETRAIN_FACTOR: float = 4.0
#: Searches of at most this many queries run on one FAISS thread (see *Threads*).
FEW_QUERIES: int = 16
#: ``nlist = IVF_NLIST_FACTOR * sqrt(n)``: 1,000 cells at 250k vectors, 2,000 at 1M.
IVF_NLIST_FACTOR: float = 2.0
#: k-means trains on at most this many vectors per cell (FAISS warns below 39).
IVF_TRAIN_POINTS_PER_LIST: int = 50
#: Recall@10 the calibrated ``nprobe`` reaches on the calibration queries (margin over 0.95).
CALIBRATION_TARGET: float = 0.97
#: ``nprobe`` values tried by the calibration, smallest first.
NPROBE_CANDIDATES: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: Number of calibration queries and the norm of the noise added to make them.
CALIBRATION_QUERIES: int = 256
CALIBRATION_NOISE: float = 0.7
#: Tolerance on ``| |x| - 1 |`` for vectors added or searched.

#: A reader checks a memory-mapped file of at most this many FAISS bytes whole (CRC-32, about
#: 50 ms for 32 MB here) when it opens it; a larger ``pq`` file is checked block by block, the
#: blocks of the vectors (and ids) each search reads, each block once per open. A writer loads
#: the file into memory and always checks it whole.
VERIFY_WHOLE_BYTES: int = 32 << 20
#: Vectors per checked block of the flat storage (32 KB of vectors at d = 128, with their ids).
CHECK_ROWS: int = 64

_MAGIC = b"FSVEC001"
_PQ_MAGIC = b"FSPQX001"
_TRAILER = struct.Struct("<Q8s")  # JSON length, magic
_FORMAT = 1
#: Suffix of the accelerator sidecar of a ``pq`` index file.
SIDECAR_SUFFIX = ".pq"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a hard dependency
        raise ImportError("the vector index needs FAISS: pip install faiss-cpu") from exc
    return faiss


@dataclass(frozen=True, slots=True)
class IndexMetadata:
    """What an index file was built from; stored in its trailer.

    ``model`` names the embedding space (the collection's root model), ``generation`` the SQL
    face generation the index reflects, ``count`` the number of vectors.
    """

    kind: str
    dim: int
    count: int
    model: str = ""
    generation: int = 0
    nlist: int = 0
    nprobe: int = 0
    trained_on: int = 0
    faiss_bytes: int = 0
    crc32: int = 0
    faiss_version: str = ""
    format: int = _FORMAT
    #: CRC-32 of each block of CHECK_ROWS stored vectors and their ids (flat storage order),
    #: ``(nblocks,) uint32`` little-endian, base64; empty in files written before it existed.
    block_crc32: str = ""


@dataclass(frozen=True, slots=True)
class AcceleratorMetadata:
    """The trailer of a ``pq`` index's sidecar: what main file the accelerator belongs to.

    ``main_faiss_bytes`` and ``main_crc32`` are those of the main file it was saved with;
    ``trained_on`` the vector count when its codebook was trained.
    """

    dim: int
    count: int
    generation: int
    m: int
    nbits: int
    trained_on: int
    main_faiss_bytes: int
    main_crc32: int
    faiss_bytes: int = 0
    crc32: int = 0
    format: int = _FORMAT


def sidecar_path(path: str | Path) -> Path:
    """Where the accelerator of the ``pq`` index file ``path`` lives: ``<path>.pq``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def pq_m(dim: int) -> int:
    """Number of PQ sub-quantizers for ``dim``: ``dim / PQ_DIMS_PER_CODE`` (>= 1, a divisor)."""
    m = max(1, dim // PQ_DIMS_PER_CODE)
    while dim % m:
        m -= 1
    return m


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` FAISS (OpenMP) threads, restoring the setting after."""
    faiss = _faiss()
    before = int(faiss.omp_get_max_threads())
    if before == n:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def nlist_for(n: int) -> int:
    """Number of IVF cells for ``n`` vectors: ``clamp(round(2 sqrt(n)), 1, n // 39)``."""
    if n <= 0:
        return 1
    return int(max(1, min(round(IVF_NLIST_FACTOR * math.sqrt(n)), n // 39)))


def resolve_kind(kind: str, n_hint: int) -> str:
    """``auto`` -> ``flat`` up to :data:`AUTO_APPROX_ABOVE` vectors, ``pq`` above."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "pq" if n_hint > AUTO_APPROX_ABOVE else "flat"
    return kind


def _check_vectors(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """Validate ``(n, dim)`` unit vectors; return them as C-contiguous float32."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x):
        norms = np.linalg.norm(x, axis=1)
        bad = np.abs(norms - 1.0)
        worst = int(np.argmax(bad))
        if not np.isfinite(norms).all() or bad[worst] > UNIT_NORM_TOLERANCE:
            raise ValueError(
                f"{what} must be unit vectors: row {worst} has norm {norms[worst]:.6f} "
                f"(tolerance {UNIT_NORM_TOLERANCE}); normalise embeddings before indexing"
            )
    return x


def _check_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(ids), dtype=np.int64)
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match the vectors, got {ids.shape}")
    if n and ids.min() < 0:
        raise ValueError(f"ids must be >= 0, got {int(ids.min())}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be unique within a batch")
    return ids


def padded_results(xq: np.ndarray, k: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A search's checked queries ``(nq, dim) float32`` and its results before any hit: ``D``
    ``(nq, k) float32`` all ``inf``, ``I`` ``(nq, k) int64`` all ``-1``. ``ValueError`` for
    ``k < 1`` or bad queries."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    xq = _check_vectors(xq, dim, "xq")
    D = np.full((len(xq), k), np.inf, dtype=np.float32)
    I = np.full((len(xq), k), -1, dtype=np.int64)  # noqa: E741 - FAISS vocabulary
    return xq, D, I


def _perturb(x: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near ``x``: ``normalise(x + noise * g / sqrt(d))``. ``(n, d) float32``."""
    g = rng.standard_normal(x.shape).astype(np.float32) * (noise / math.sqrt(x.shape[1]))
    y = x + g
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.ascontiguousarray(y, dtype=np.float32)


def recall_at_k(i_approx: np.ndarray, i_exact: np.ndarray) -> float:
    """Mean fraction of the exact ``k`` neighbours found: ``(nq, k), (nq, k) int64 -> float``."""
    hits = 0
    total = 0
    for a, e in zip(i_approx, i_exact, strict=True):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e))
        total += len(e)
    return hits / total if total else 1.0


class VectorStore(Protocol):
    """What a collection asks of the vectors of its faces, whatever holds them.

    :class:`VectorIndex` (FAISS, a file in the collection folder) implements it; another backend
    (a vector database) implements the same five operations. ``model``, ``dim`` and
    ``generation`` let the collection tell whether the store is current with SQL; rebuilding
    from SQL and the consistency check are the collection's
    (:meth:`~facesearch.collection.Collection.rebuild_index`,
    :meth:`~facesearch.collection.Collection.check`).
    """

    model: str
    dim: int
    generation: int

    @property
    def count(self) -> int: ...

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray | Sequence[int]) -> int: ...

    def search(
        self, xq: np.ndarray, k: int, *, restrict_to: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def ids(self) -> np.ndarray: ...


class VectorIndex:
    """Unit vectors keyed by face id; inner-product search reported as distance ``d``.

    Build with :meth:`create` (then :meth:`add`) or :meth:`build`; persist with :meth:`save`
    and :meth:`load`. ``model`` and ``generation`` are set by the owner (the collection) and
    travel with the file.
    """

    def __init__(
        self,
        index: Any,
        kind: str,
        dim: int,
        *,
        model: str = "",
        generation: int = 0,
        nprobe: int = 0,
        trained_on: int = 0,
        mmapped: bool = False,
        source: Path | None = None,
        nlist_request: int | None = None,
        accelerator: Any = None,
    ) -> None:
        self._index = index
        self._pq = accelerator  # kind pq: IndexPQFastScan in the flat storage's order, or None
        self.kind = kind
        self.dim = dim
        self.model = model
        self.generation = generation
        self._nprobe = nprobe
        self.trained_on = trained_on
        self._mmapped = mmapped
        self._source = source
        self._nlist_request = nlist_request
        # a lazily checked memory-mapped file: (block CRCs, blocks checked so far)
        self._blocks: tuple[np.ndarray, np.ndarray] | None = None
        if kind == "ivf" and nprobe:
            index.nprobe = nprobe

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        dim: int,
        kind: str = "auto",
        n_hint: int = 0,
        *,
        model: str = "",
        nlist: int | None = None,
    ) -> VectorIndex:
        """An empty index for ``dim``-dimensional unit vectors.

        ``kind``: ``flat`` | ``pq`` | ``ivf`` | ``auto`` (resolved with ``n_hint``, the
        expected number of vectors). An IVF index is trained on the first batch given to
        :meth:`add`, with ``nlist`` cells (default :func:`nlist_for` of that batch's size); a
        ``pq`` index trains its accelerator when it reaches :data:`PQ_MIN_TRAIN` vectors.
        """
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {nlist}")
        faiss = _faiss()
        kind = resolve_kind(kind, n_hint)
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim)) if kind in ("flat", "pq") else None
        return cls(index, kind, dim, model=model, nlist_request=nlist)

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        xb: np.ndarray,
        kind: str = "auto",
        *,
        dim: int | None = None,
        model: str = "",
        generation: int = 0,
    ) -> VectorIndex:
        """An index holding ``xb`` ``(nb, d) float32`` under ``ids`` ``(nb,) int64``.

        ``kind`` ``auto`` resolves with ``nb``; IVF is trained on (a sample of) ``xb`` and its
        ``nprobe`` calibrated against exact search on it; a ``pq`` accelerator is trained once
        (when ``nb >= PQ_MIN_TRAIN``). ``dim`` is needed when ``nb == 0``.
        """
        d = int(dim if dim is not None else np.asarray(xb).shape[-1])
        vi = cls.create(d, kind, n_hint=len(ids), model=model)
        vi.add(ids, xb)
        vi.generation = generation
        return vi

    # -- properties --------------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def count(self) -> int:
        """Number of vectors held."""
        return len(self)

    @property
    def nlist(self) -> int:
        """Number of IVF cells (0 for flat or untrained IVF)."""
        return int(self._index.nlist) if self.kind == "ivf" and self._index is not None else 0

    @property
    def nprobe(self) -> int:
        """IVF cells visited per query (0 for flat)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ValueError("nprobe only applies to an ivf index")
        if value < 1:
            raise ValueError(f"nprobe must be >= 1, got {value}")
        self._nprobe = int(value)
        if self._index is not None:
            self._index.nprobe = self._nprobe

    @property
    def metadata(self) -> IndexMetadata:
        """What this index holds (``faiss_bytes``/``crc32`` are filled in by :meth:`save`)."""
        return IndexMetadata(
            kind=self.kind,
            dim=self.dim,
            count=self.count,
            model=self.model,
            generation=self.generation,
            nlist=self.nlist,
            nprobe=self.nprobe,
            trained_on=self.trained_on,
            faiss_version=str(_faiss().__version__),
        )

    @property
    def accelerated(self) -> bool:
        """True when searches without ``restrict_to`` use the ``pq`` accelerator (trained and in
        step with the exact vectors); otherwise they are exact."""
        return self._pq is not None and int(self._pq.ntotal) == len(self)

    @property
    def mmapped(self) -> bool:
        """True when loaded memory-mapped (read-only); the first change reloads it in memory."""
        return self._mmapped

    # -- changes -----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        """Add ``xb`` ``(n, d) float32`` unit vectors under ``ids`` ``(n,) int64``.

        Ids must be unique within the batch and not already present (the caller, normally the
        collection, guarantees the latter: ids are SQL primary keys). An untrained IVF index is
        trained on this batch first and its ``nprobe`` calibrated on it. A ``pq`` index encodes
        the batch into its accelerator, or trains the accelerator on all the stored vectors when
        it reaches :data:`PQ_MIN_TRAIN` or has grown by :data:`PQ_RETRAIN_FACTOR` since.
        """
        xb = _check_vectors(xb, self.dim, "xb")
        ids = _check_ids(ids, len(xb))
        if not len(xb):
            return
        self._ensure_writable()
        if self.kind == "ivf" and (self._index is None or not self._index.is_trained):
            self._train(xb)
        self._index.add_with_ids(xb, ids)
        if self.kind == "ivf" and not self._nprobe:
            self.nprobe = self._calibrate(xb, ids)
        if self.kind == "pq":
            self._grow_accelerator(xb)

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove the vectors of ``ids`` ``(n,) int64``; unknown ids are ignored.

        Returns the number of vectors removed.
        """
        ids = np.ascontiguousarray(np.asarray(ids), dtype=np.int64).reshape(-1)
        if not len(ids) or self._index is None or not len(self):
            return 0
        self._ensure_writable()
        faiss = _faiss()
        if not self.accelerated:
            self._pq = None
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        # Both parts compact their storage in order (IndexFlatCodes / IndexFastScan remove_ids),
        # so removing the same positions from both keeps position i = position i.
        positions = np.flatnonzero(np.isin(self._stored_ids(), ids)).astype(np.int64)
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        if len(positions):
            self._pq.remove_ids(faiss.IDSelectorBatch(positions))
            self._clear_accelerator_tail()
        if removed != len(positions) or not self.accelerated:  # pragma: no cover - FAISS change
            logger.warning(
                "pq accelerator out of step after removing %d vectors (%d positions): dropped, "
                "search is exact until it is retrained",
                removed,
                len(positions),
            )
            self._pq = None
        return removed

    # -- queries -----------------------------------------------------------------------------

    def search(
        self, xq: np.ndarray, k: int, *, restrict_to: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest vectors of each query.

        ``xq``: ``(nq, d) float32`` unit vectors. ``restrict_to``: optional ``(m,) int64`` ids;
        only those are considered (e.g. the labelled faces).
        Returns ``D`` ``(nq, k) float32`` distances ``d = 2 - 2 ip`` in [0, 4], ascending, and
        ``I`` ``(nq, k) int64`` ids; missing neighbours are ``-1`` with distance ``inf``.
        """
        xq, D, I = padded_results(xq, k, self.dim)  # noqa: E741 - FAISS vocabulary
        nq = len(xq)
        if not nq or not len(self):
            return D, I
        faiss = _faiss()
        params = None
        if restrict_to is not None:
            allowed = np.ascontiguousarray(np.asarray(restrict_to), dtype=np.int64).reshape(-1)
            if not len(allowed):
                return D, I
            sel = faiss.IDSelectorBatch(allowed)
            if self.kind == "ivf":
                params = faiss.SearchParametersIVF(sel=sel, nprobe=max(self._nprobe, 1))
            else:
                params = faiss.SearchParameters(sel=sel)
        with faiss_threads(1) if nq <= FEW_QUERIES else contextlib.ExitStack():
            if params is None and self.kind == "pq" and self.accelerated:
                return self._search_accelerated(xq, k)
            self._check_blocks(None)  # an exact search reads every vector
            ip, I = self._index.search(xq, k, params=params)  # noqa: E741 (sel alive until here)
        found = I >= 0
        ip = np.where(found, ip, 0.0)  # FAISS pads with -FLT_MAX
        D = np.where(found, np.clip(2.0 - 2.0 * ip, 0.0, 4.0), np.inf).astype(np.float32)
        return D, np.ascontiguousarray(I, dtype=np.int64)

    def ids(self) -> np.ndarray:
        """All ids held, ``(n,) int64`` in storage order (not sorted)."""
        if self._index is None or not len(self):
            return np.empty(0, dtype=np.int64)
        faiss = _faiss()
        if self.kind in ("flat", "pq"):
            return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
        invlists = self._index.invlists
        parts = []
        for list_no in range(self._index.nlist):
            size = invlists.list_size(list_no)
            if size:
                ptr = invlists.get_ids(list_no)
                parts.append(np.array(faiss.rev_swig_ptr(ptr, size), dtype=np.int64))
                invlists.release_ids(list_no, ptr)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: str | Path) -> IndexMetadata:
        """Write the index atomically to ``path`` (temp file + fsync + ``os.replace``).

        A ``pq`` index then writes its accelerator to the sidecar ``<path>.pq`` (training it
        first if it is due and missing, e.g. after a stale sidecar); other kinds remove a
        sidecar left there. Returns the metadata written to the trailer. Ctrl-C waits until
        both files are written (:func:`facesearch.interrupts.critical_section`).
        """
        with critical_section("writing the vector index"):
            return self._save(Path(path))

    def _save(self, path: Path) -> IndexMetadata:
        faiss = _faiss()
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "pq":
            self.ensure_accelerator()
        index = self._index
        if index is None:  # an IVF index never given vectors: store an empty flat stand-in
            index = faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))
        base = self.metadata
        blocks = ""
        if self.kind in ("flat", "pq") and len(self):
            crcs = _block_crcs(self._stored_vectors(), self._stored_ids())
            blocks = base64.b64encode(crcs.astype("<u4").tobytes()).decode("ascii")

        def trailer(n_bytes: int, crc: int) -> IndexMetadata:
            return IndexMetadata(
                **{**asdict(base), "faiss_bytes": n_bytes, "crc32": crc, "block_crc32": blocks}
            )

        meta = _write_index_file(path, index, _MAGIC, trailer)
        side = sidecar_path(path)
        if self.kind == "pq" and self.accelerated:
            try:
                self._save_accelerator(side, meta)
            except OSError as exc:  # the main file is saved: searches fall back to exact
                logger.warning("could not write the pq accelerator %s: %s", side, exc)
                side.unlink(missing_ok=True)
        else:
            side.unlink(missing_ok=True)
        logger.debug("saved %s vector index to %s (%d vectors)", meta.kind, path, meta.count)
        return meta

    def _save_accelerator(self, side: Path, main: IndexMetadata) -> AcceleratorMetadata:
        def trailer(n_bytes: int, crc: int) -> AcceleratorMetadata:
            return AcceleratorMetadata(
                dim=self.dim,
                count=main.count,
                generation=main.generation,
                m=int(self._pq.M),
                nbits=int(self._pq.nbits),
                trained_on=self.trained_on,
                main_faiss_bytes=main.faiss_bytes,
                main_crc32=main.crc32,
                faiss_bytes=n_bytes,
                crc32=crc,
            )

        return _write_index_file(side, self._pq, _PQ_MAGIC, trailer)

    @staticmethod
    def read_metadata(path: str | Path) -> IndexMetadata:
        """The trailer of an index file, without loading the index.

        Raises ``FileNotFoundError`` when missing, ``IndexMismatchError`` when the file is
        truncated or not a facesearch index.
        """
        return _read_trailer(Path(path), _MAGIC, IndexMetadata)

    @classmethod
    def load(
        cls, path: str | Path, *, mmap: bool = True, verify: bool | None = None
    ) -> VectorIndex:
        """Load an index written by :meth:`save`.

        ``mmap``: memory-map the vectors (flat, pq: ``IO_FLAG_MMAP_IFC``; ivf:
        ``IO_FLAG_MMAP``) so that opening is cheap and pages are shared between processes; the
        index is then read-only until the first change, which reloads it into memory.
        ``verify``: check the CRC-32 of the whole file now (default: yes, except for a
        memory-mapped ``pq`` file larger than :data:`VERIFY_WHOLE_BYTES` with block checksums,
        whose blocks are checked as searches read them; a block that fails raises
        :class:`~facesearch.errors.IndexMismatchError` from :meth:`search`). A corrupt file
        is never searched. A ``pq`` index also reads its accelerator sidecar (always
        CRC-checked, in memory); when it is missing, stale or corrupt, a message is logged
        and search is exact.
        Raises ``FileNotFoundError`` or :class:`~facesearch.errors.IndexMismatchError`.
        """
        faiss = _faiss()
        path = Path(path)
        meta = cls.read_metadata(path)
        lazy = (
            verify is None
            and mmap
            and meta.kind == "pq"
            and bool(meta.block_crc32)
            and meta.faiss_bytes > VERIFY_WHOLE_BYTES
        )
        if verify is not False and not lazy:
            _verify_crc(path, meta)
        flags = 0
        if mmap:
            flags = faiss.IO_FLAG_MMAP_IFC if meta.kind in ("flat", "pq") else faiss.IO_FLAG_MMAP
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise _corrupt(path, f"FAISS cannot read it: {_first_line(exc)}") from exc
        kind = meta.kind
        if kind == "ivf" and not isinstance(index, faiss.IndexIVF):
            index = None if index.ntotal == 0 else index  # empty untrained IVF stand-in
            if index is not None:
                raise _corrupt(path, f"metadata says ivf, file holds {type(index).__name__}")
        if index is not None and (index.ntotal != meta.count or index.d != meta.dim):
            raise _corrupt(
                path,
                f"holds {index.ntotal} vectors of dim {index.d}, metadata says "
                f"{meta.count} of dim {meta.dim}",
            )
        accelerator, trained_on = None, meta.trained_on
        if kind == "pq":
            accelerator, trained_on = _load_accelerator(path, meta)
        vi = cls(
            index,
            kind,
            meta.dim,
            model=meta.model,
            generation=meta.generation,
            nprobe=meta.nprobe,
            trained_on=trained_on,
            mmapped=bool(flags) and index is not None,
            source=path,
            accelerator=accelerator,
        )
        if lazy:
            crcs = np.frombuffer(base64.b64decode(meta.block_crc32), dtype="<u4")
            if len(crcs) != (meta.count + CHECK_ROWS - 1) // CHECK_ROWS:
                raise _corrupt(path, f"{len(crcs)} block checksums for {meta.count} vectors")
            vi._blocks = (crcs, np.zeros(len(crcs), dtype=bool))
        return vi

    # -- flat <-> pq -------------------------------------------------------------------------

    def convert(self, kind: str) -> None:
        """Switch between ``flat`` and ``pq`` in place: the exact vectors stay, the
        accelerator is trained (when due) or dropped."""
        if kind not in ("flat", "pq") or self.kind not in ("flat", "pq"):
            raise ValueError(f"cannot convert a {self.kind} index to {kind} in place: rebuild it")
        if kind == self.kind:
            return
        self.kind = kind
        self._pq = None
        self.trained_on = 0
        if kind == "pq":
            self.ensure_accelerator()

    def ensure_accelerator(self) -> bool:
        """Train the ``pq`` accelerator now if the index has :data:`PQ_MIN_TRAIN` vectors and
        no usable accelerator (e.g. its sidecar was stale). Returns :attr:`accelerated`."""
        if self.kind == "pq" and not self.accelerated and len(self) >= PQ_MIN_TRAIN:
            self._train_accelerator()
        return self.accelerated

    # -- internals ---------------------------------------------------------------------------

    def _ensure_writable(self) -> None:
        """Reload a memory-mapped index into memory before changing it.

        FAISS aborts the process when a memory-mapped flat index is resized, so this is not
        optional. The file must still hold what was mapped (same generation and count).
        """
        if not self._mmapped:
            return
        assert self._source is not None
        fresh = VectorIndex.load(self._source, mmap=False)
        if (fresh.generation, fresh.count) != (self.generation, self.count):
            raise IndexMismatchError(
                f"vector index {self._source} changed on disk since it was opened "
                f"(generation {self.generation} -> {fresh.generation}); reopen the collection"
            )
        self._index = fresh._index
        self._blocks = None  # checked whole by the load into memory
        self._pq = fresh._pq  # read from the same sidecar: same storage order
        self.trained_on = fresh.trained_on
        self._mmapped = False

    def _check_blocks(self, blocks: np.ndarray | None) -> None:
        """Check, once per open, the blocks ``blocks`` (``None``: all) of a lazily checked
        file against their checksums; :class:`IndexMismatchError` naming the first that
        fails."""
        if self._blocks is None:
            return
        crcs, seen = self._blocks
        todo = np.flatnonzero(~seen) if blocks is None else blocks[~seen[blocks]]
        xb, ids = self._stored_vectors(), self._stored_ids()
        for b in todo.tolist():
            start = b * CHECK_ROWS
            crc = zlib.crc32(xb[start : start + CHECK_ROWS].data)
            if zlib.crc32(ids[start : start + CHECK_ROWS].data, crc) != int(crcs[b]):
                end = min(start + CHECK_ROWS, len(ids)) - 1
                where = self._source or Path("the vector index")
                raise _corrupt(where, f"vectors {start}..{end} fail their checksum")
            seen[b] = True
        if seen.all():
            self._blocks = None

    def _stored_vectors(self) -> np.ndarray:
        """The flat storage as a ``(n, d) float32`` view (no copy; memory-mapped when loaded
        so). Valid until the next change."""
        n = len(self)
        if not n:
            return np.empty((0, self.dim), dtype=np.float32)
        faiss = _faiss()
        flat = faiss.downcast_index(self._index.index)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _stored_ids(self) -> np.ndarray:
        """The ids in storage order, ``(n,) int64`` view of the ``IndexIDMap``'s ``id_map``."""
        n = len(self)
        if not n:
            return np.empty(0, dtype=np.int64)
        return _faiss().rev_swig_ptr(self._index.id_map.data(), n)

    def _clear_accelerator_tail(self) -> None:
        """Re-encode the accelerator's last, partly filled block of codes after a removal.

        ``IndexFastScan.remove_ids`` (FAISS 1.15) leaves the removed codes in the free slots
        of the last block of ``bbs`` vectors, and ``add`` ORs new codes into those slots, so a
        later add would store wrong codes (tested). Removing the last block's vectors shrinks
        the code table to whole blocks; adding them back (from the stored vectors: the same
        codes) fills a zeroed block.
        """
        faiss = _faiss()
        n = int(self._pq.ntotal)
        start = n - n % int(self._pq.bbs)
        if start == n:
            return
        self._pq.remove_ids(faiss.IDSelectorRange(start, n))
        with faiss_threads(1):
            self._pq.add(np.ascontiguousarray(self._stored_vectors()[start:n]))

    def _grow_accelerator(self, xb: np.ndarray) -> None:
        """Keep the accelerator in step after ``xb`` was appended to the flat storage."""
        n = len(self)
        in_step = self._pq is not None and int(self._pq.ntotal) == n - len(xb)
        if in_step and n <= self.trained_on * PQ_RETRAIN_FACTOR:
            with faiss_threads(1):
                self._pq.add(xb)
        elif n >= PQ_MIN_TRAIN:
            self._train_accelerator()
        else:
            self._pq = None

    def _train_accelerator(self) -> None:
        """Train a new accelerator on a seeded sample of the stored vectors and add them all."""
        faiss = _faiss()
        started = time.monotonic()
        xb = self._stored_vectors()
        n = len(xb)
        n_train = min(n, PQ_TRAIN_SAMPLE)
        rng = np.random.default_rng(1234)
        sample = xb if n_train == n else xb[np.sort(rng.choice(n, n_train, replace=False))]
        m = pq_m(self.dim)
        pq = faiss.IndexPQFastScan(self.dim, m, PQ_NBITS, faiss.METRIC_INNER_PRODUCT)
        step = 1 << 18
        with faiss_threads(1):  # see "Threads": spinning OpenMP threads make this 60x slower
            pq.train(np.ascontiguousarray(sample))
            for start in range(0, n, step):
                pq.add(xb[start : start + step])
        self._pq = pq
        self.trained_on = n
        logger.info(
            "trained the pq accelerator (%d x %d bits) on %d of %d vectors in %.1f s",
            m,
            PQ_NBITS,
            n_train,
            n,
            time.monotonic() - started,
        )

    def _search_accelerated(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k * K_FACTOR`` candidates by the accelerator, re-ranked exactly.

        ``xq`` ``(nq, d) float32`` -> ``D`` ``(nq, k) float32``, ``I`` ``(nq, k) int64``.
        """
        nq = len(xq)
        n = len(self)
        D = np.full((nq, k), np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 - FAISS vocabulary
        _, P = self._pq.search(xq, min(n, k * K_FACTOR))  # (nq, kc) storage positions
        self._check_blocks(np.unique(P[P >= 0] // CHECK_ROWS))  # the rows re-ranked below
        xb = self._stored_vectors()  # (n, d)
        id_map = self._stored_ids()  # (n,)
        kk = min(k, n)
        step = 64  # queries per block: the gathered candidates are (step, kc, d) float32
        for s in range(0, nq, step):
            p = P[s : s + step]  # (b, kc)
            valid = p >= 0
            p = np.where(valid, p, 0)
            ip = np.matmul(xb[p], xq[s : s + step, :, None])[..., 0]  # (b, kc)
            ip = np.where(valid, ip, -np.inf)
            order = np.argsort(-ip, axis=1, kind="stable")[:, :kk]  # (b, kk)
            top = np.take_along_axis(ip, order, 1)
            found = np.isfinite(top)
            D[s : s + step, :kk] = np.where(found, np.clip(2.0 - 2.0 * top, 0.0, 4.0), np.inf)
            I[s : s + step, :kk] = np.where(found, id_map[np.take_along_axis(p, order, 1)], -1)
        return D, I

    def _train(self, xb: np.ndarray) -> None:
        n = len(xb)
        nlist = max(1, min(self._nlist_request or nlist_for(n), n))
        index = _new_ivf(self.dim, nlist)
        n_train = min(n, IVF_TRAIN_POINTS_PER_LIST * nlist)
        rng = np.random.default_rng(1234)
        sample = xb if n_train == n else xb[np.sort(rng.choice(n, n_train, replace=False))]
        index.train(np.ascontiguousarray(sample))
        self._index = index
        self.trained_on = n
        self._nprobe = 0
        logger.info("trained IVF index: %d cells on %d of %d vectors", nlist, n_train, n)

    def _calibrate(self, xb: np.ndarray, ids: np.ndarray) -> int:
        """Smallest ``nprobe`` reaching :data:`CALIBRATION_TARGET` recall@10 on ``xb``.

        The index must hold exactly ``xb`` under ``ids``; queries are perturbed copies of a
        sample of ``xb`` and the truth is exact inner-product search over ``xb``.
        """
        faiss = _faiss()
        nlist = int(self._index.nlist)
        rng = np.random.default_rng(4321)
        nq = min(CALIBRATION_QUERIES, len(xb))
        xq = _perturb(xb[rng.choice(len(xb), nq, replace=False)], CALIBRATION_NOISE, rng)
        k = min(10, len(xb))
        _, i_exact = faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
        i_exact = ids[i_exact]
        candidates = [p for p in NPROBE_CANDIDATES if p < nlist] + [nlist]
        best = nlist
        for p in candidates:
            self._index.nprobe = p
            _, i_approx = self._index.search(xq, k)
            recall = recall_at_k(i_approx, i_exact)
            if recall >= CALIBRATION_TARGET:
                best = p
                break
        logger.info(
            "IVF nprobe calibrated to %d of %d cells (recall@%d %.3f)", best, nlist, k, recall
        )
        if best > nlist // 4:
            logger.warning(
                "IVF needs nprobe %d of %d cells for recall@%d %.2f: these vectors have little "
                "cluster structure and an exact (flat) index will be as fast",
                best,
                nlist,
                k,
                CALIBRATION_TARGET,
            )
        return best


def _new_ivf(dim: int, nlist: int) -> Any:
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    # The Python wrapper keeps ``quantizer`` alive as long as ``index`` (referenced_objects).
    index = faiss.IndexIVFFlat(quantizer, dim, int(nlist), faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.cp.seed = 1234
    index.cp.min_points_per_centroid = 1  # nlist_for() already keeps >= 39 points per cell
    index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
    return index


def _write_index_file(
    path: Path, index: Any, magic: bytes, trailer: Callable[[int, int], Any]
) -> Any:
    """Write ``index`` then the JSON of ``trailer(faiss_bytes, crc32)`` and the trailer struct
    to ``path``, atomically (temp file in the same folder, fsync, ``os.replace``)."""
    faiss = _faiss()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as exc:  # FAISS reports a failed write (disk full) as RuntimeError
            message = _first_line(exc)
            code = errno.ENOSPC if "No space left" in message else errno.EIO
            raise OSError(code, f"{os.strerror(code)} ({message})", str(path)) from exc
        with open(tmp, "r+b") as f:
            crc = 0
            n_bytes = 0
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
                n_bytes += len(chunk)
            meta = trailer(n_bytes, crc)
            blob = json.dumps(asdict(meta), sort_keys=True).encode("utf-8")
            f.seek(0, os.SEEK_END)
            f.write(blob)
            f.write(_TRAILER.pack(len(blob), magic))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return meta


def _read_trailer(path: Path, magic: bytes, cls: Any) -> Any:
    """The metadata dataclass ``cls`` stored in the trailer of ``path`` (see *File format*)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < _TRAILER.size:
            raise _corrupt(path, f"only {size} bytes")
        f.seek(size - _TRAILER.size)
        n_json, found = _TRAILER.unpack(f.read(_TRAILER.size))
        if found != magic:
            raise _corrupt(path, "no facesearch trailer at the end (truncated?)")
        if n_json > size - _TRAILER.size:
            raise _corrupt(path, f"trailer claims {n_json} bytes of metadata in {size}")
        f.seek(size - _TRAILER.size - n_json)
        try:
            raw = json.loads(f.read(n_json).decode("utf-8"))
            meta = cls(**raw)
        except (ValueError, TypeError) as exc:
            raise _corrupt(path, f"unreadable metadata ({exc})") from exc
    if meta.format != _FORMAT:
        raise _corrupt(path, f"format {meta.format}, this facesearch reads {_FORMAT}")
    if meta.faiss_bytes + n_json + _TRAILER.size != size:
        raise _corrupt(
            path,
            f"file has {size} bytes, metadata says {meta.faiss_bytes + n_json + _TRAILER.size}",
        )
    return meta


def _load_accelerator(path: Path, main: IndexMetadata) -> tuple[Any, int]:
    """The accelerator of the ``pq`` index file ``path`` and its ``trained_on``, or
    ``(None, 0)`` (logged) when its sidecar is missing, stale or corrupt."""
    faiss = _faiss()
    side = sidecar_path(path)
    try:
        am: AcceleratorMetadata = _read_trailer(side, _PQ_MAGIC, AcceleratorMetadata)
        if (am.main_faiss_bytes, am.main_crc32, am.count, am.generation, am.dim) != (
            main.faiss_bytes,
            main.crc32,
            main.count,
            main.generation,
            main.dim,
        ):
            why = (
                f"it belongs to another version of {path.name} (generation {am.generation}, "
                f"{am.count} vectors, crc {am.main_crc32:#010x}; the file is at generation "
                f"{main.generation}, {main.count} vectors, crc {main.crc32:#010x})"
            )
        else:
            _verify_crc(side, am)
            try:
                pq = faiss.read_index(str(side))
            except RuntimeError as exc:
                raise _corrupt(side, f"FAISS cannot read it: {_first_line(exc)}") from exc
            if not isinstance(pq, faiss.IndexPQFastScan) or (pq.ntotal, pq.d) != (
                main.count,
                main.dim,
            ):
                raise _corrupt(side, f"holds {type(pq).__name__} of {pq.ntotal} x {pq.d}")
            return pq, am.trained_on
    except FileNotFoundError:
        if main.count < PQ_MIN_TRAIN:
            return None, 0  # none is made below that size
        why = "it is missing"
    except IndexMismatchError as exc:
        why = str(exc)
    logger.warning(
        "pq accelerator %s not used: %s. Searches are exact (slower) until the index is saved "
        "again by a writer",
        side,
        why,
    )
    return None, 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else repr(exc)


def _block_crcs(xb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """CRC-32 of each block of :data:`CHECK_ROWS` vectors ``xb`` ``(n, d) float32`` and their
    ids ``(n,) int64``: ``(ceil(n / CHECK_ROWS),) uint32``."""
    n = len(ids)
    out = np.empty((n + CHECK_ROWS - 1) // CHECK_ROWS, dtype=np.uint32)
    for b, start in enumerate(range(0, n, CHECK_ROWS)):
        crc = zlib.crc32(xb[start : start + CHECK_ROWS].data)
        out[b] = zlib.crc32(ids[start : start + CHECK_ROWS].data, crc)
    return out


def _verify_crc(path: Path, meta: IndexMetadata | AcceleratorMetadata) -> None:
    crc = 0
    left = meta.faiss_bytes
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    if crc != meta.crc32:
        raise _corrupt(path, f"checksum {crc:#010x} differs from the recorded {meta.crc32:#010x}")


def _corrupt(path: Path, why: str) -> IndexMismatchError:
    return IndexMismatchError(
        f"vector index {path} is corrupt or unreadable: {why}. It is a cache of the SQL store: "
        "delete it and it is rebuilt on the next open"
    )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
