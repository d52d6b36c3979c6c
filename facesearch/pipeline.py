"""The face pipeline: decode -> detect -> align -> embed.

Only this module composes the stages. Everything is passed in explicitly: a
:class:`FacePipeline` owns one detector and one embedder, built from a
:class:`PipelineConfig`; there is no module-level model.

Faces from several photos are embedded in one batch (:meth:`FacePipeline.faces_batch`),
which is where most of the indexing speed comes from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from facesearch.errors import ArgumentError, NoFaceError
from facesearch.types import Detection, Face

if TYPE_CHECKING:
    from facesearch.models.npengine import EngineThreads, NumpyDetector, NumpyEmbedder
    from facesearch.models.sface import Embedder
    from facesearch.models.yunet import Detector
    from facesearch.models.yunet_decode import DetectorConfig

#: ``PipelineConfig.engine`` values: PyTorch; plain numpy (shipped SFace only; no torch import);
#: ``auto``: chosen by :meth:`PipelineConfig.resolved` for the work at hand.
ENGINES = ("auto", "torch", "numpy")
#: What a threshold is for: 1:1 verification or 1:K identification.
Purpose = Literal["verify", "identify"]
#: Without the native kernels the numpy engine is slower per face than torch, which takes
#: seconds to load: ``auto`` still takes numpy when the estimated numpy work
#: (NUMPY_SECONDS_PER_PHOTO per photo plus NUMPY_SECONDS_PER_MB per MB of files) is at most
#: SMALL_RUN_SECONDS (bench/results/history.md has the measurements behind these values).
SMALL_RUN_SECONDS: float = 2.0
NUMPY_SECONDS_PER_PHOTO: float = 0.15
NUMPY_SECONDS_PER_MB: float = 0.7

log = logging.getLogger(__name__)

ImageSource = str | os.PathLike[str] | bytes


def _default_detector_config() -> DetectorConfig:
    from facesearch.models.yunet_decode import DetectorConfig

    return DetectorConfig()


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of the whole pipeline.

    ``model``: ``"sface"`` (shipped) or the path of a model file made by ``facesearch train``.
    ``flip``: embed each face and its mirror image and average (see README, "Flip").
    ``threads``: cores to use (``None``: one per core, at most 8). A batch of several photos
    is cut into ``threads`` parts run side by side, each on one thread (intra-op threads mostly
    wait on each other with these small convolutions); a single photo runs on
    ``threads`` intra-op threads (torch) or element-wise threads (numpy engine).
    ``engine``: ``"torch"``; ``"numpy"`` (:mod:`facesearch.models.npengine`): the same
    networks without importing torch, the shipped model only; or ``"auto"``, which
    :meth:`resolved` turns into one of the two (a :class:`FacePipeline` resolves its
    configuration when built).
    """

    detector: DetectorConfig = field(default_factory=_default_detector_config)
    model: str = "sface"
    flip: bool = False
    batch_size: int | None = None  # crops per forward pass; None: the embedder's default
    threads: int | None = None
    engine: str = "torch"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ArgumentError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.engine == "numpy" and self.model != "sface":
            raise ArgumentError(
                f"the numpy engine runs the shipped model 'sface' only, not {self.model!r}: "
                "use engine 'torch' (or 'auto') for a model file"
            )
        if self.threads is not None and self.threads < 1:
            raise ArgumentError(f"threads must be >= 1, got {self.threads}")

    def with_model(self, model: str) -> PipelineConfig:
        """These settings for another model; a model file cannot keep engine ``numpy``."""
        engine = self.engine if model == "sface" or self.engine == "torch" else "auto"
        return replace(self, model=model, engine=engine)

    def resolved(self, *, photos: int | None = None, megabytes: float = 0.0) -> PipelineConfig:
        """This configuration with a concrete engine: the one place the engine is chosen.

        ``auto`` is numpy for the shipped model when the native kernels are built (as fast
        per face as torch, and no torch import), or when the work is known to be small
        (``photos`` photos holding ``megabytes`` MB of files, see :data:`SMALL_RUN_SECONDS`);
        torch otherwise. ``torch`` and ``numpy`` stay as they are.
        """
        if self.engine != "auto":
            return self
        engine = "torch"
        if self.model == "sface":
            from facesearch.native import native_available

            small = photos is not None and (
                photos * NUMPY_SECONDS_PER_PHOTO + megabytes * NUMPY_SECONDS_PER_MB
                <= SMALL_RUN_SECONDS
            )
            if native_available() or small:
                engine = "numpy"
        return replace(self, engine=engine)


def load_embedder(
    model: str = "sface",
    *,
    flip: bool = False,
    batch_size: int | None = None,
    engine: str = "torch",
    threads: EngineThreads | None = None,
) -> Embedder | NumpyEmbedder:
    """The embedder for ``model``: the shipped SFace, or a fine-tuned model file."""
    from facesearch.models.sface_weights import DEFAULT_BATCH_SIZE

    if engine == "numpy":
        from facesearch.models.modelfile import shipped_meta
        from facesearch.models.npengine import NumpyEmbedder

        emb = NumpyEmbedder(batch_size=batch_size or DEFAULT_BATCH_SIZE, flip=flip, threads=threads)
        emb.meta = shipped_meta()
        emb.threshold = emb.meta["threshold"]
        return emb
    from facesearch.models.modelfile import load_embedder as load_file

    return load_file(model, flip=flip, batch_size=batch_size or DEFAULT_BATCH_SIZE)


class Models:
    """The networks of one pipeline configuration, loaded on first use and kept.

    ``config.engine`` ``"auto"`` (the default here) lets :meth:`PipelineConfig.resolved` choose
    the engine for the work at hand; pipelines are cached per resolved configuration, so a
    long-running caller loads each network once. :meth:`for_model` gives the :class:`Models` of
    another embedding model with the same settings (a collection whose active model is a file).
    Safe to share between threads for loading; each pipeline is built once under a lock.
    ``factory`` builds a pipeline from a resolved configuration (default :class:`FacePipeline`).
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        *,
        factory: Callable[[PipelineConfig], FacePipeline] | None = None,
    ) -> None:
        self.config = config or PipelineConfig(engine="auto")
        self._factory = factory or FacePipeline
        self._pipelines: dict[PipelineConfig, FacePipeline] = {}
        self._others: dict[str, Models] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Models({self.config!r})"

    def engine(self, *, photos: int | None = None, megabytes: float = 0.0) -> str:
        """The engine a pipeline for this work would run (``torch`` or ``numpy``)."""
        return self.config.resolved(photos=photos, megabytes=megabytes).engine

    def pipeline(self, *, photos: int | None = None, megabytes: float = 0.0) -> FacePipeline:
        """The pipeline for ``photos`` photos of ``megabytes`` MB (``None``: many), built once."""
        config = self.config.resolved(photos=photos, megabytes=megabytes)
        with self._lock:
            pipe = self._pipelines.get(config)
            if pipe is None:
                pipe = self._pipelines[config] = self._factory(config)
        return pipe

    def for_model(self, model: str) -> Models:
        """The models of ``model`` (``sface`` or a model file) with these settings."""
        if model == self.config.model:
            return self
        with self._lock:
            other = self._others.get(model)
            if other is None:
                other = self._others[model] = Models(
                    self.config.with_model(model), factory=self._factory
                )
        return other

    def threshold(self, purpose: Purpose = "verify") -> float:
        """The model's calibrated tau for ``purpose`` (loads a model file's embedder)."""
        if self.config.model == "sface":
            from facesearch.distance import shipped_threshold

            return shipped_threshold(purpose)
        return self.pipeline().threshold(purpose)


class FacePipeline:
    """Detect, align and embed faces.

    >>> pipe = FacePipeline()
    >>> faces = pipe.faces(load_image("photo.jpg"))   # list[Face], embeddings (128,) unit
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        *,
        detector: Detector | NumpyDetector | None = None,
        embedder: Embedder | NumpyEmbedder | None = None,
    ) -> None:
        self.config = (config or PipelineConfig()).resolved()
        numpy_engine = self.config.engine == "numpy"
        self.threads = self.config.threads or max(1, min(8, os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()  # .serial: this thread is one of the parallel workers
        #: the numpy engine's element-wise threads, shared by its detector and embedder
        self.engine_threads: EngineThreads | None = None
        if numpy_engine:
            from facesearch.models.npengine import EngineThreads

            self.engine_threads = EngineThreads(
                self.config.threads or max(1, min(4, os.cpu_count() or 1))
            )
        else:
            import torch

            torch.set_num_threads(self.threads)
        if detector is None:
            if numpy_engine:
                from facesearch.models.npengine import NumpyDetector

                detector = NumpyDetector(self.config.detector, threads=self.engine_threads)
            else:
                from facesearch.models.yunet import Detector

                detector = Detector(self.config.detector)
        self.detector = detector
        self.embedder = embedder or load_embedder(
            self.config.model,
            flip=self.config.flip,
            batch_size=self.config.batch_size,
            engine=self.config.engine,
            threads=self.engine_threads,
        )

    @property
    def model_name(self) -> str:
        return str(self.embedder.name)

    def threshold(self, purpose: Purpose = "verify") -> float:
        """The calibrated tau of this pipeline's model for ``purpose``.

        The shipped SFace uses the LFW calibration of :mod:`facesearch.distance`; a model file
        carries its own verification tau (and an identification one when it recorded it; else
        the verification tau serves both).
        """
        from facesearch.distance import DEFAULT_THRESHOLD, shipped_threshold

        meta = getattr(self.embedder, "meta", None) or {}
        if purpose == "identify" and meta.get("identify_threshold") is not None:
            return float(meta["identify_threshold"])
        if self.model_name == "sface":
            return shipped_threshold(purpose)
        t = getattr(self.embedder, "threshold", None)
        return float(t) if t is not None else DEFAULT_THRESHOLD

    # -- stages -------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in ``image`` ``(H, W, 3) uint8 RGB``, best score first."""
        return self.detector.detect(image)

    def align(self, image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        """Aligned crops ``(N, 112, 112, 3) uint8`` sampled from the full-resolution image."""
        from facesearch.align import align_faces

        if not detections:
            return np.zeros((0, 112, 112, 3), np.uint8)
        return align_faces(image, np.stack([d.landmarks_array() for d in detections]))

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``(N, 112, 112, 3) uint8 -> (N, D) float32``, unit norm."""
        return self.embedder.embed(crops)

    # -- composed -----------------------------------------------------------------------
    def faces(self, image: np.ndarray) -> list[Face]:
        """Every face of one photo with its embedding."""
        return self.faces_batch([image])[0]

    def faces_batch(
        self, images: Sequence[np.ndarray], detections: Sequence[Sequence[Detection]] | None = None
    ) -> list[list[Face]]:
        """Faces of several photos; all their crops go through the embedder together.

        ``detections`` may be given (e.g. from :meth:`detect_batch`) to skip detection.
        With ``threads`` > 1 the photos are split into that many parts of
        about equal pixel counts, processed side by side; results are in input order and the
        same as one part at a time.
        """
        parts = self._parts(images)
        if len(parts) <= 1 or getattr(self._local, "serial", False):
            return self._faces_serial(images, detections)
        pool = self._workers_pool()
        with self._one_thread_each():
            futures = [
                pool.submit(
                    self._faces_serial,
                    images[a:b],
                    None if detections is None else detections[a:b],
                )
                for a, b in parts
            ]
            return [faces for f in futures for faces in f.result()]

    @contextlib.contextmanager
    def _one_thread_each(self) -> Iterator[None]:
        """While the workers run side by side: one thread each (torch's intra-op threads, or
        the numpy engine's element-wise threads and numpy's BLAS), restored afterwards."""
        if self.config.engine == "torch":
            import torch

            torch.set_num_threads(1)
            try:
                yield
            finally:
                torch.set_num_threads(self.threads)
            return
        from facesearch.models.npengine import single_threaded_blas

        engine_threads = {
            id(t): t
            for t in (
                self.engine_threads,
                getattr(getattr(self.detector, "net", None), "threads", None),
                getattr(getattr(self.embedder, "net", None), "threads", None),
            )
            if t is not None
        }
        with contextlib.ExitStack() as stack:
            for t in engine_threads.values():
                stack.enter_context(t.limited(1))
            with single_threaded_blas():
                yield

    @contextlib.contextmanager
    def workers(self) -> Iterator[Callable[..., Future[object]]]:
        """``submit(fn, *args) -> Future``: run ``fn`` (e.g. :meth:`faces_batch`, or a wrapper
        of it) on the pipeline's workers.

        With ``threads`` > 1, ``threads`` tasks run side by side, each on one thread (torch's, or
        the numpy engine's and OpenBLAS's), for as long as the block lasts; a :meth:`faces_batch`
        inside a task runs on its worker alone. A caller that keeps a few tasks in flight keeps
        every core busy, with no barrier between batches (this is how :mod:`facesearch.indexer`
        feeds photos). Otherwise ``fn`` runs at once in the calling thread. On the way out tasks
        not started are cancelled and running ones are waited for.
        """
        if self.threads <= 1:

            def run_now(fn: Callable[..., object], *args: object) -> Future[object]:
                fut: Future[object] = Future()
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the caller, as a pool would
                    fut.set_exception(exc)
                return fut

            yield run_now
            return
        pool = self._workers_pool()
        submitted: set[Future[object]] = set()  # not finished yet

        def submit(fn: Callable[..., object], *args: object) -> Future[object]:
            fut = pool.submit(self._as_worker, fn, *args)
            submitted.add(fut)
            fut.add_done_callback(submitted.discard)
            return fut

        with self._one_thread_each():
            try:
                yield submit
            finally:
                left = list(submitted)
                for f in left:
                    f.cancel()
                for f in left:
                    if not f.cancelled():
                        with contextlib.suppress(BaseException):
                            f.result()

    def _as_worker(self, fn: Callable[..., object], *args: object) -> object:
        self._local.serial = True
        try:
            return fn(*args)
        finally:
            self._local.serial = False

    def _workers_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="facesearch-infer")
        return self._pool

    def _parts(self, images: Sequence[np.ndarray]) -> list[tuple[int, int]]:
        """``[start, end)`` ranges of ``images`` for the parallel workers (contiguous, about
        equal pixel counts); one range when there is nothing to share."""
        n = len(images)
        workers = min(self.threads, n)
        if workers <= 1:
            return [(0, n)]
        pixels = np.cumsum([int(im.shape[0]) * int(im.shape[1]) for im in images])
        cuts = np.searchsorted(pixels, pixels[-1] * np.arange(1, workers) / workers, side="left")
        bounds = sorted({0, n, *(int(c) + 1 for c in cuts)})
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=False) if a < b]

    def _faces_serial(
        self, images: Sequence[np.ndarray], detections: Sequence[Sequence[Detection]] | None
    ) -> list[list[Face]]:
        if detections is None:
            detections = self.detector.detect_batch(list(images))
        crops = [self.align(img, dets) for img, dets in zip(images, detections, strict=True)]
        counts = [len(c) for c in crops]
        allcrops = np.concatenate(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
        xb = self.embed(allcrops)  # (sum(counts), D)
        out: list[list[Face]] = []
        i = 0
        for dets, n in zip(detections, counts, strict=True):
            out.append([Face(det, xb[i + j], self.model_name) for j, det in enumerate(dets)])
            i += n
        return out

    def largest_face(self, image: np.ndarray, source: str | Path = "<image>") -> Face:
        """The face with the largest box; :class:`NoFaceError` when there is none."""
        faces = self.faces(image)
        if not faces:
            raise NoFaceError(source)
        return max(faces, key=lambda f: f.detection.area)

    def face_with_fallback(self, image: np.ndarray) -> tuple[Face | None, bool]:
        """The central face of a single-face photo (e.g. LFW), with a fallback.

        First the normal detector; among several faces the one whose box centre is nearest
        the image centre (LFW's convention: the named person is centred). When none is found,
        detection is retried at a lower score threshold (0.5) and the face nearest the centre is
        taken. Returns ``(face or None, used_fallback)``.
        """
        dets = self.detector.detect(image)
        used = False
        if not dets:
            used = True
            low = self.detector.with_config(replace(self.detector.config, score_threshold=0.5))
            dets = low.detect(image)
            if not dets:
                return None, True
        h, w = image.shape[:2]
        cx, cy = w / 2.0, h / 2.0
        det = min(dets, key=lambda d: (d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2)
        return self.faces_batch([image], [[det]])[0][0], used
