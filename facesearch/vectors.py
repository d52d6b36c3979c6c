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
    Exact search (``IndexIDMap(IndexFlatIP)``). The default up to :data:`AUTO_APPROX_ABOVE`
    vectors. Removal is exact.
``ivf``
    Approximate search (``IndexIVFFlat``, inner product) with native ids and native removal.
    ``nlist = clamp(round(IVF_NLIST_FACTOR * sqrt(n)), 1, n // 39)`` coarse cells trained by
    k-means on at most ``IVF_TRAIN_POINTS_PER_LIST * nlist`` vectors; ``nprobe`` is calibrated
    at training time: the smallest value in :data:`NPROBE_CANDIDATES` whose recall@10 against
    exact search reaches :data:`CALIBRATION_TARGET` on perturbed copies of training vectors
    (a new photo of a known face). Stored in the file; override with ``VectorIndex.nprobe``.
``auto``
    ``flat`` up to :data:`AUTO_APPROX_ABOVE` vectors (``n_hint``), ``ivf`` above.

HNSW is not offered: FAISS HNSW graphs cannot remove vectors, and a collection removes faces
(``--prune``, ``people delete --faces``) as a matter of course.

File format
-----------
One file, written atomically (temporary file in the same folder, fsync, ``os.replace``)::

    [FAISS index bytes][metadata JSON, UTF-8][u64 LE length of the JSON][8-byte magic]

FAISS ignores the trailer, so the file is loaded (and memory-mapped) by ``faiss.read_index``
directly; the trailer records model, dimension, count, generation, kind, IVF parameters and a
CRC-32 of the FAISS bytes. A file without the trailer (truncated, or not ours) or whose FAISS
part does not parse raises :class:`~facesearch.errors.IndexMismatchError`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import IndexMismatchError

logger = logging.getLogger(__name__)

#: Index kinds accepted by :meth:`VectorIndex.create` (``auto`` resolves to one of the others).
KINDS: tuple[str, ...] = ("flat", "ivf", "auto")
#: ``auto`` switches from exact to approximate search above this many vectors.
AUTO_APPROX_ABOVE: int = 200_000
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
UNIT_NORM_TOLERANCE: float = 1e-3

_MAGIC = b"FSVEC001"
_TRAILER = struct.Struct("<Q8s")  # JSON length, magic
_FORMAT = 1


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


def nlist_for(n: int) -> int:
    """Number of IVF cells for ``n`` vectors: ``clamp(round(2 sqrt(n)), 1, n // 39)``."""
    if n <= 0:
        return 1
    return int(max(1, min(round(IVF_NLIST_FACTOR * math.sqrt(n)), n // 39)))


def resolve_kind(kind: str, n_hint: int) -> str:
    """``auto`` -> ``flat`` up to :data:`AUTO_APPROX_ABOVE` vectors, ``ivf`` above."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "ivf" if n_hint > AUTO_APPROX_ABOVE else "flat"
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
    ) -> None:
        self._index = index
        self.kind = kind
        self.dim = dim
        self.model = model
        self.generation = generation
        self._nprobe = nprobe
        self.trained_on = trained_on
        self._mmapped = mmapped
        self._source = source
        self._nlist_request = nlist_request
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

        ``kind``: ``flat`` | ``ivf`` | ``auto`` (resolved with ``n_hint``, the expected number
        of vectors). An IVF index is trained on the first batch given to :meth:`add`, with
        ``nlist`` cells (default :func:`nlist_for` of that batch's size).
        """
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {nlist}")
        faiss = _faiss()
        kind = resolve_kind(kind, n_hint)
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim)) if kind == "flat" else None
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
        ``nprobe`` calibrated against exact search on it. ``dim`` is needed when ``nb == 0``.
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
    def mmapped(self) -> bool:
        """True when loaded memory-mapped (read-only); the first change reloads it in memory."""
        return self._mmapped

    # -- changes -----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, xb: np.ndarray) -> None:
        """Add ``xb`` ``(n, d) float32`` unit vectors under ``ids`` ``(n,) int64``.

        Ids must be unique within the batch and not already present (the caller, normally the
        collection, guarantees the latter: ids are SQL primary keys). An untrained IVF index is
        trained on this batch first and its ``nprobe`` calibrated on it.
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

    def remove(self, ids: np.ndarray | Sequence[int]) -> int:
        """Remove the vectors of ``ids`` ``(n,) int64``; unknown ids are ignored.

        Returns the number of vectors removed.
        """
        ids = np.ascontiguousarray(np.asarray(ids), dtype=np.int64).reshape(-1)
        if not len(ids) or self._index is None or not len(self):
            return 0
        self._ensure_writable()
        faiss = _faiss()
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        xq = _check_vectors(xq, self.dim, "xq")
        nq = len(xq)
        D = np.full((nq, k), np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)  # noqa: E741 - FAISS vocabulary
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
        if self.kind == "flat":
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

        Returns the metadata written to the trailer.
        """
        faiss = _faiss()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = self._index
        if index is None:  # an IVF index never given vectors: store an empty flat stand-in
            index = faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            os.close(fd)
            faiss.write_index(index, str(tmp))
            with open(tmp, "r+b") as f:
                crc = 0
                n_bytes = 0
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
                    n_bytes += len(chunk)
                meta = self.metadata
                meta = IndexMetadata(**{**asdict(meta), "faiss_bytes": n_bytes, "crc32": crc})
                blob = json.dumps(asdict(meta), sort_keys=True).encode("utf-8")
                f.seek(0, os.SEEK_END)
                f.write(blob)
                f.write(_TRAILER.pack(len(blob), _MAGIC))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        logger.debug("saved %s vector index to %s (%d vectors)", meta.kind, path, meta.count)
        return meta

    @staticmethod
    def read_metadata(path: str | Path) -> IndexMetadata:
        """The trailer of an index file, without loading the index.

        Raises ``FileNotFoundError`` when missing, ``IndexMismatchError`` when the file is
        truncated or not a facesearch index.
        """
        path = Path(path)
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size < _TRAILER.size:
                raise _corrupt(path, f"only {size} bytes")
            f.seek(size - _TRAILER.size)
            n_json, magic = _TRAILER.unpack(f.read(_TRAILER.size))
            if magic != _MAGIC:
                raise _corrupt(path, "no facesearch trailer at the end (truncated?)")
            if n_json > size - _TRAILER.size:
                raise _corrupt(path, f"trailer claims {n_json} bytes of metadata in {size}")
            f.seek(size - _TRAILER.size - n_json)
            try:
                raw = json.loads(f.read(n_json).decode("utf-8"))
                meta = IndexMetadata(**raw)
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

    @classmethod
    def load(
        cls, path: str | Path, *, mmap: bool = True, verify: bool | None = None
    ) -> VectorIndex:
        """Load an index written by :meth:`save`.

        ``mmap``: memory-map the vectors (flat: ``IO_FLAG_MMAP_IFC``; ivf: ``IO_FLAG_MMAP``)
        so that opening is cheap and pages are shared between processes; the index is then
        read-only until the first change, which reloads it into memory. ``verify``: check the
        CRC-32 of the FAISS bytes (default: only when not memory-mapped).
        Raises ``FileNotFoundError`` or :class:`~facesearch.errors.IndexMismatchError`.
        """
        faiss = _faiss()
        path = Path(path)
        meta = cls.read_metadata(path)
        if verify if verify is not None else not mmap:
            _verify_crc(path, meta)
        flags = 0
        if mmap:
            flags = faiss.IO_FLAG_MMAP_IFC if meta.kind == "flat" else faiss.IO_FLAG_MMAP
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise _corrupt(path, f"FAISS cannot read it: {first}") from exc
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
        return cls(
            index,
            kind,
            meta.dim,
            model=meta.model,
            generation=meta.generation,
            nprobe=meta.nprobe,
            trained_on=meta.trained_on,
            mmapped=bool(flags) and index is not None,
            source=path,
        )

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
        self._mmapped = False

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


def _verify_crc(path: Path, meta: IndexMetadata) -> None:
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
