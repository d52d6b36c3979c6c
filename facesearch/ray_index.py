"""Index photo folders with the networks on a Ray cluster: the driver plans and writes, Ray
Data reads and embeds.

:func:`index_paths_ray` does what :func:`facesearch.indexer.index_paths` does, with the same
plan and the same commits; only the decode + detect + embed step moves to Ray:

- **Driver** (this process): walks the PATHs, compares them with SQL and hashes the files that
  could be touched or moved (:func:`facesearch.indexer.plan`: unchanged, touched and moved
  photos are never sent; a new path while no stored photo has gone missing can be neither, so
  its hash is taken by the worker from the bytes it embeds and the driver does not read it),
  holds the writer lock, and stores the results in the order of the files, ``batch_size``
  photos per transaction, exactly as a local run (:class:`facesearch.indexer._Run`).
- **Workers**: a Ray Data ``map_batches`` over the photos to decode, with an actor pool of
  :class:`EmbedActor` (one CPU each): each actor builds its :class:`~facesearch.pipeline.
  FacePipeline` once, on one thread, reads each file itself (so photos must be readable by the
  workers at the same path: a shared file system), checks its content hash, decodes, detects and
  embeds. Batches are dicts of numpy arrays; faces travel as packed float64 detections and
  float32 embeddings, so the stored values are the worker's bits.

Same photos and faces as a local run with the same engine. The embedding bits of a face depend
on which crops share its forward pass (a crop alone rounds differently from one among others;
measured max |difference| 9.1e-7 on unit vectors), so vectors are equal bit for bit when the
Ray batches are the local run's tasks (:data:`BATCH_PHOTOS` photos: the local task size at the
default commit batch on 2 cores, as long as no photo fails or closes a task by its pixels), and
within float32 rounding otherwise (tested). A worker
that dies mid-run: Ray restarts the actor and runs its batches again; the driver receives each
photo once (results in order), and stores it once. A driver that dies: the photos committed stay,
and the next run (Ray or local) skips them as unchanged.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from facesearch.errors import ArgumentError, OptionalDependencyError
from facesearch.indexer import (
    IndexReport,
    IndexSettings,
    Progress,
    WalkResult,
    _at_full_size,
    _decode_side,
    _handle,
    _Job,
    _Labeler,
    _Read,
    _read,
    _Run,
    drive,
    finish_plan,
    plan,
)
from facesearch.model_upgrade import register_pipeline_model
from facesearch.pipeline import Models, PipelineConfig
from facesearch.types import DETECTOR_PASSES, Detection, Face

if TYPE_CHECKING:
    from facesearch.collection import Collection
    from facesearch.pipeline import FacePipeline

logger = logging.getLogger(__name__)

#: Photos per ``map_batches`` batch (one actor call). 8: the local run's task size on 2 workers.
BATCH_PHOTOS: int = 8
#: Object store of a local cluster started here (bytes): batches are a few MB.
LOCAL_OBJECT_STORE: int = 256 << 20
#: Columns of a detection row: box (4), landmarks (10), score (1), the pass that found it (its
#: index in DETECTOR_PASSES), float64.
_DET = 16
_INSTALL = "pip install 'facesearch[ray]'"
#: ``--ray`` with no address: a cluster started here for the run.
LOCAL = "local"
_ADDRESS = re.compile(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}")


def parse_address(value: str) -> str | None:
    """``--ray``'s value as :class:`RaySettings` takes it: ``local`` -> ``None`` (a cluster
    started here), ``auto`` (the cluster running on this machine), ``HOST:PORT`` (its GCS) or
    ``ray://HOST:PORT`` (Ray Client). Raises :class:`ArgumentError` for anything else."""
    value = value.strip()
    if value == LOCAL:
        return None
    if value == "auto" or _ADDRESS.fullmatch(value):
        return value
    hint = (
        " (a path? write --ray after the PATHs, or --ray=local)"
        if os.path.exists(value) or "/" in value
        else ""
    )
    raise ArgumentError(
        f"--ray: {value!r} is not 'local', 'auto', HOST:PORT or ray://HOST:PORT{hint}"
    )


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise OptionalDependencyError(f"indexing on Ray needs Ray Data: {_INSTALL}") from exc
    return ray


@dataclass(frozen=True, slots=True)
class RaySettings:
    """Where and how wide to run.

    ``address``: ``None`` starts a local cluster of ``workers`` CPUs in this machine (ended with
    the run); ``"auto"`` joins the cluster running here (``ray start``); else a cluster address
    (``host:port``, ``ray://host:10001``). A Ray already initialised in this process is used as
    it is. ``workers``: actors, one CPU each (default: the cluster's CPUs). ``batch_photos``:
    photos per actor call.
    """

    address: str | None = None
    workers: int | None = None
    batch_photos: int = BATCH_PHOTOS

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ArgumentError(f"Ray workers must be >= 1, got {self.workers}")
        if self.batch_photos < 1:
            raise ArgumentError(f"batch_photos must be >= 1, got {self.batch_photos}")
        if self.address is not None and parse_address(self.address) is None:
            raise ArgumentError("RaySettings.address: None starts a local cluster, not 'local'")


# -- the workers --------------------------------------------------------------------------------


class EmbedActor:
    """A Ray Data ``map_batches`` callable: the networks, loaded once per actor, on one thread.

    Input batch: ``path`` ``(n,)`` str, ``sha256`` ``(n,)`` str (the driver's hash).
    Output batch: ``path``, ``sha256`` (of the bytes embedded), ``error`` (``""``: none),
    ``width``/``height`` ``(n,) int64`` (``-1``: not decoded), ``faces`` ``(n,) int64``,
    ``det`` bytes of ``(faces, 16) float64`` (box, landmarks, score, pass) and ``emb`` bytes of
    ``(faces, D) float32``; CPU accounting: ``work_cpu`` (this call's thread, per photo),
    ``pid``, ``proc_cpu0``/``proc_cpu1`` (the process's CPU clock at the call's start and end),
    ``wall0``/``wall1`` (the machine's monotonic clock at the call's start and end).
    """

    def __init__(self, config: PipelineConfig, aligned: bool = False) -> None:
        from facesearch.pipeline import FacePipeline

        self.pipe = FacePipeline(replace(config, threads=1))
        self.aligned = aligned  # every photo is a face crop on the template (--aligned)
        self.decode_side = _decode_side(self.pipe)  # reduced JPEG decodes, as a local run
        self._blas: Callable[[], Any] | None = None
        if self.pipe.config.engine == "numpy":
            from facesearch.models import npengine

            self._blas = npengine.single_threaded_blas
        logger.info("embedding actor ready in pid %d", os.getpid())

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wall0, proc0, thread0 = time.monotonic(), time.process_time(), time.thread_time()
        reads = [
            _read(
                _Job(str(p), 0, 0.0, None, None),
                frozenset(),
                long_side=self.decode_side,
                aligned=self.aligned,
            )
            for p in batch["path"]
        ]
        decoded = [r for r in reads if r.image is not None]
        if self._blas is None:
            results = self._faces(decoded)
        else:
            with self._blas():
                results = self._faces(decoded)
        result_of: dict[int, list[Face] | str] = {
            id(r): res for r, res in zip(decoded, results, strict=True)
        }
        n, dim = len(reads), int(self.pipe.embedder.dim)
        out: dict[str, Any] = {
            "path": np.array([r.job.path for r in reads], dtype=object),
            "sha256": np.array([r.content_hash for r in reads], dtype=object),
            "error": np.empty(n, dtype=object),
            "width": np.full(n, -1, dtype=np.int64),
            "height": np.full(n, -1, dtype=np.int64),
            "faces": np.zeros(n, dtype=np.int64),
            "det": np.empty(n, dtype=object),
            "emb": np.empty(n, dtype=object),
        }
        for i, r in enumerate(reads):
            res = result_of.get(id(r), r.error or "")
            if r.image is not None:
                out["width"][i], out["height"][i] = r.full_size
            faces = list(_at_full_size(res, r.scale)) if isinstance(res, list) else []
            out["error"][i] = res if isinstance(res, str) else ""
            out["faces"][i] = len(faces)
            out["det"][i] = _pack_detections(faces).tobytes()
            emb = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, dim))
            out["emb"][i] = np.ascontiguousarray(emb, dtype=np.float32).tobytes()
        # CPU accounting (seconds): this call's thread per photo (read, decode, networks), and
        # the process's CPU clock at the call's start and end (Ray's own threads included)
        out["work_cpu"] = np.full(n, (time.thread_time() - thread0) / max(n, 1))
        out["pid"] = np.full(n, os.getpid(), dtype=np.int64)
        out["proc_cpu0"] = np.full(n, proc0)
        out["proc_cpu1"] = np.full(n, time.process_time())
        out["wall0"] = np.full(n, wall0)
        out["wall1"] = np.full(n, time.monotonic())
        return out

    def _faces(self, reads: list[Any]) -> list[list[Face] | str]:
        """Faces of the decoded photos in one batch; when the batch fails, photo by photo (the
        one that fails gets the error), as :meth:`facesearch.indexer._Run._finish` does."""
        if not reads:
            return []
        try:
            return list(self._batch([r.image for r in reads]))
        except Exception as exc:  # noqa: BLE001 - isolate the photo that fails
            logger.debug("batch of %d photos failed (%s): one by one", len(reads), exc)
        out: list[list[Face] | str] = []
        for r in reads:
            try:
                out.append(self._batch([r.image])[0])
            except Exception as one:  # noqa: BLE001
                out.append(f"processing failed ({type(one).__name__}: {one})")
        return out

    def _batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """As :meth:`facesearch.indexer._Run.faces_batch`: detected, or each crop's one face."""
        if self.aligned:
            return [[f] for f in self.pipe.aligned_faces(images)]
        return self.pipe.faces_batch(images)


def _pack_detections(faces: Sequence[Face]) -> np.ndarray:
    """``(n, 16) float64``: box, landmarks (x, y) x 5, score, detector pass of each face."""
    rows = [
        [
            *f.detection.box,
            *(c for pt in f.detection.landmarks for c in pt),
            f.detection.score,
            DETECTOR_PASSES.index(f.detection.detector_pass),
        ]
        for f in faces
    ]
    return np.array(rows, dtype=np.float64).reshape(len(faces), _DET)


def unpack_faces(det: bytes, emb: bytes, n: int, model: str) -> list[Face]:
    """The faces an :class:`EmbedActor` packed: ``n`` detections and ``(n, D) float32``."""
    d = np.frombuffer(det, dtype=np.float64).reshape(n, _DET).tolist()
    xb = np.frombuffer(emb, dtype=np.float32).reshape(n, -1) if n else np.zeros((0, 0))
    faces = []
    for row, e in zip(d, xb, strict=True):
        lm = row[4:14]
        det_ = Detection(
            box=(row[0], row[1], row[2], row[3]),
            landmarks=(
                (lm[0], lm[1]),
                (lm[2], lm[3]),
                (lm[4], lm[5]),
                (lm[6], lm[7]),
                (lm[8], lm[9]),
            ),
            score=row[14],
            detector_pass=DETECTOR_PASSES[int(row[15])],
        )
        faces.append(Face(det_, np.array(e, dtype=np.float32), model))
    return faces


# -- the driver ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerCpu:
    """CPU seconds the workers spent on a run's ``photos``: ``work_s`` in the calls' threads
    (read, decode, detect, embed), ``process_s`` in their processes from their first call to
    their last (Ray's threads included), over ``workers`` processes; ``busy_s``: wall seconds
    inside the calls, summed over the workers, against ``wall_s`` of the whole Ray stage (so
    ``busy_s / (workers * wall_s)`` is how much of the stage the workers had work, and
    ``work_s / busy_s`` how much of a core they got while they had it); ``first_call_s``: from
    the start of the stage to the first call (cluster, actors and their networks starting) and
    ``calls_s`` from there to the end of the last call (on one machine; the clocks of other
    nodes are not comparable)."""

    photos: int
    work_s: float
    process_s: float
    workers: int
    busy_s: float = 0.0
    wall_s: float = 0.0
    first_call_s: float = 0.0
    calls_s: float = 0.0


class _RayRun(_Run):
    """A run whose photos to decode are collected, then embedded on Ray in one dataset."""

    def __init__(
        self,
        collection: Collection,
        models: Models,
        settings: IndexSettings,
        progress: Callable[[Progress], None] | None,
        ray_settings: RaySettings,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(collection, _never_called, settings, progress, should_stop)
        self.models = models
        # the engine is chosen here, once, for the workers (a run worth a cluster is large)
        self.config = replace(models.config.resolved(), threads=1)
        self.ray_settings = ray_settings
        self.to_embed: list[tuple[_Job, str]] = []  # (job, driver's sha256), in file order
        self.worker_cpu: WorkerCpu | None = None

    def add_read(self, r: _Read) -> None:
        """A photo to decode (hashed by the driver): kept for Ray, in file order (one the driver
        could not read too: the worker records its error, so the order stays that of the
        files, as in a local run)."""
        if self.pipe is None:  # the first one: register the model as a local run does
            pipe = self.models.pipeline()
            register_pipeline_model(self.col, pipe)
            self.pipe = pipe
        r.image = None
        self.to_embed.append((r.job, r.content_hash))

    def embed_on_ray(self) -> None:
        """Run the dataset and store its results, in file order, ``batch_size`` per commit."""
        if not self.to_embed:
            return
        assert self.pipe is not None
        model = self.pipe.model_name
        jobs = {job.path: (job, sha) for job, sha in self.to_embed}
        started = time.monotonic()
        work = 0.0
        spans: dict[int, tuple[float, float]] = {}  # worker pid -> process CPU clock span
        calls: dict[tuple[int, float], float] = {}  # (worker pid, call start) -> call wall s
        first, last = float("inf"), 0.0
        embedded = _embedded(self.to_embed, self.config, self.ray_settings, self.settings.aligned)
        for out in embedded:
            work += float(out["work_cpu"].sum())
            for pid, c0, c1 in zip(out["pid"], out["proc_cpu0"], out["proc_cpu1"], strict=True):
                a, b = spans.get(int(pid), (c0, c1))
                spans[int(pid)] = (min(a, c0), max(b, c1))
            for pid, w0, w1 in zip(out["pid"], out["wall0"], out["wall1"], strict=True):
                calls[int(pid), float(w0)] = float(w1 - w0)
                first, last = min(first, float(w0)), max(last, float(w1))
            for i in range(len(out["path"])):
                job, sha = jobs[str(out["path"][i])]
                r = _Read(job, str(out["sha256"][i]), error=str(out["error"][i]) or None)
                if sha and r.content_hash and r.content_hash != sha:
                    logger.warning("%s changed while it was indexed: stored as read", job.path)
                faces = unpack_faces(out["det"][i], out["emb"][i], int(out["faces"][i]), model)
                w, h = int(out["width"][i]), int(out["height"][i])
                self._queue_photo(r, tuple(faces), None if w < 0 else (w, h))
                self._tick(1)
        n, wall = len(self.to_embed), time.monotonic() - started
        busy = sum(calls.values())
        process = sum(b - a for a, b in spans.values())
        span = max(last - first, 0.0)
        self.worker_cpu = WorkerCpu(
            n, work, process, len(spans), busy, wall, max(first - started, 0.0), span
        )
        logger.info(
            "%d photos embedded on Ray in %.1f s (first call after %.1f s); workers: %.1f "
            "CPU-ms per photo reading and embedding, %.1f in their processes in all; in calls "
            "%.0f%% of the time from the first call to the last, on a core %.0f%% of that",
            n,
            wall,
            self.worker_cpu.first_call_s,
            1000 * work / n,
            1000 * process / n,
            100 * busy / max(len(spans) * span, 1e-9),
            100 * work / max(busy, 1e-9),
        )


def _never_called() -> FacePipeline:  # pragma: no cover - the Ray run builds no local loader
    raise AssertionError("a Ray run does not load a local pipeline")


def _embedded(
    work: list[tuple[_Job, str]], config: PipelineConfig, rs: RaySettings, aligned: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Output batches of the actor pool over ``work``, in its order."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        if rs.address is None:
            cpus = rs.workers or os.cpu_count() or 1
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE,
                log_to_driver=False,
            )
        else:
            ray.init(address=rs.address, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in file order
        ctx.enable_progress_bars = False
        workers = rs.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # Blocks of whole batches: a batch never straddles two blocks, so the batches are the
        # runs of batch_photos photos a local run embeds together (see the module doc)
        paths = np.array([job.path for job, _ in work], dtype=object)
        shas = np.array([sha for _, sha in work], dtype=object)
        rows = rs.batch_photos * max(1, -(-len(work) // (rs.batch_photos * 16 * workers)))
        ds = ray.data.from_arrow(
            [_table(paths[s : s + rows], shas[s : s + rows]) for s in range(0, len(work), rows)]
        )
        ds = ds.map_batches(
            EmbedActor,
            fn_constructor_kwargs={"config": config, "aligned": aligned},
            batch_size=rs.batch_photos,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        logger.info("embedding %d photos on %d Ray workers", len(work), workers)
        yield from ds.iter_batches(batch_size=rs.batch_photos, batch_format="numpy")
    finally:
        if started_here:
            ray.shutdown()


def _table(paths: np.ndarray, shas: np.ndarray) -> Any:
    """One input block: columns ``path`` and ``sha256`` (strings)."""
    import pyarrow as pa

    return pa.table(
        {"path": pa.array(list(paths), pa.string()), "sha256": pa.array(list(shas), pa.string())}
    )


def _ray_body(run: _Run, found: WalkResult, labeler: _Labeler) -> None:
    """:func:`facesearch.indexer.drive`'s body: hash on the driver, embed on Ray."""
    assert isinstance(run, _RayRun)
    p = plan(run, found, labeler)

    def hashed(job: _Job) -> _Read:
        if job.old is None and not p.gone:  # can be neither touched nor moved: the worker
            return _Read(job)  # hashes what it embeds, the driver need not read it
        return _read(job, p.moved_hashes, decode=False)

    with ThreadPoolExecutor(run.settings.workers, thread_name_prefix="facesearch-hash") as pool:
        for r in pool.map(hashed, p.jobs):
            _handle(run, r, p.gone, p.claimed, p.relabel)  # touched, moved, or to embed
    run.embed_on_ray()
    run.commit()
    finish_plan(run, p)


def index_paths_ray(
    collection: Collection,
    paths: Sequence[str | os.PathLike[str]],
    models: Models | PipelineConfig,
    settings: IndexSettings | None = None,
    ray_settings: RaySettings | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IndexReport:
    """:func:`facesearch.indexer.index_paths` with the networks on Ray (see the module doc).

    ``models``: the networks (or their configuration); each actor builds the pipeline of its
    resolved configuration with one thread, the driver builds one to register the model. Holds
    the collection's writer lock for the whole run. Returns the report; on Ctrl-C, or when
    ``should_stop`` says so after a commit, it says ``interrupted``.
    """
    settings = settings or IndexSettings()
    if isinstance(models, PipelineConfig):
        models = Models(models)
    run = _RayRun(
        collection, models, settings, progress, ray_settings or RaySettings(), should_stop
    )
    return drive(run, paths, _ray_body)


__all__ = [
    "BATCH_PHOTOS",
    "LOCAL",
    "EmbedActor",
    "RaySettings",
    "index_paths_ray",
    "parse_address",
    "unpack_faces",
]
