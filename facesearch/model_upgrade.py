"""Model upgrades of a collection: register a new model, search old vectors with it, re-embed.

A collection's faces each record the model that embedded them; the **active** model is the one
queries are embedded with, and the vector index holds the faces of its *space*: the active
model and every registered model compatible with it (``models.compatible_with``). Two models
are compatible only when one was trained with the harmonic loss against the other (or against
a model of its lineage): ``facesearch train ... --compatible-with OLD``.

Registering a model (:func:`add_model`, ``facesearch model add MODEL``)
-------------------------------------------------------------------------
The model file's meta names what it is compatible with (``compatible_with``, ``lineage``). It
is registered when one of those names is a model of the collection's active space; it becomes
the active model, so queries are embedded with it and compared **directly** with the stored
(old) vectors: nothing is re-embedded. A model that is not compatible is refused with
:class:`~facesearch.errors.IncompatibleModelError` and nothing stored changes.

Re-embedding (:func:`reindex_collection`, ``facesearch reindex --model MODEL``)
-----------------------------------------------------------------------------------
Backfills the stored faces with the model's vectors, photo by photo: each photo is read again,
checked against its stored content hash, and its stored faces are aligned from their stored
landmarks (no detection) and embedded. Like ``facesearch index``, results are committed every
``batch_size`` photos (one transaction each, the vector index following in memory, its file
saved every :data:`~facesearch.collection.CHECKPOINT_SECONDS` and at the end), so a killed run
loses at most one batch and a rerun continues with the faces not yet re-embedded (their
``model`` column says which). A photo whose file is gone or changed is skipped and reported:
its faces keep their old vectors (run ``facesearch index`` first to update it).

- A **compatible** model is registered and made active first: old and new vectors share one
  space, so the collection stays fully searchable throughout (readers search the index file
  as last saved, old and new vectors mixed).
- An **incompatible** model is refused unless ``re_embed_all`` (``--re-embed-all``) is given.
  Then it is registered but not used: the active model stays the old one until *every* face
  has been re-embedded, and only then does the new model become active (the index is rebuilt
  from its vectors). While it runs, queries (with the old model) find the faces not yet
  re-embedded; a face moves to the new space as soon as its batch is committed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from facesearch import store as st
from facesearch.collection import ACTIVE_MODEL_KEY
from facesearch.errors import (
    CollectionError,
    IncompatibleModelError,
    ModelError,
    require_positive,
)

if TYPE_CHECKING:
    from facesearch.collection import Collection
    from facesearch.models.npengine import NumpyEmbedder
    from facesearch.models.sface import Embedder
    from facesearch.pipeline import FacePipeline

logger = logging.getLogger(__name__)

SHIPPED = "sface"
#: Default photos per SQL transaction of a reindex run.
REINDEX_BATCH: int = 64
_READ_CHUNK = 1 << 20


# -- compatibility ------------------------------------------------------------------------------


def _lineage(meta: Mapping[str, Any]) -> list[str]:
    """Names ``meta``'s vectors are declared comparable with, nearest first."""
    names: list[str] = []
    cw = meta.get("compatible_with")
    if isinstance(cw, Mapping) and cw.get("name"):
        names.append(str(cw["name"]))
    names += [str(n) for n in meta.get("lineage") or [] if str(n) not in names]
    return names


def _describe(meta: Mapping[str, Any], source: str | None) -> str:
    name = str(meta.get("name"))
    return f"model {name!r}" + (f" ({source})" if source and source != name else "")


def compatible_base(
    collection: Collection, meta: Mapping[str, Any], *, source: str | None = None
) -> str | None:
    """The registered model of the collection's active space ``meta``'s model is compatible with.

    Returns the model's own name when it is already registered in the active space, the
    nearest model of its lineage (``compatible_with``, then ``lineage``) that is registered
    in the active space, or ``None`` when the collection has no model yet (anything goes).
    Raises :class:`IncompatibleModelError` otherwise, naming both models and what to do.
    ``source``: the file the meta came from, for the message.
    """
    with collection.session() as s:
        active = st.get_meta(s, ACTIVE_MODEL_KEY)
        if active is None:
            return None
        active_info = st.get_model(s, active)
        _, space = st.model_space(s, active)
    name = str(meta.get("name"))
    dim = meta.get("dim")
    what = _describe(meta, source)
    if active_info is not None and dim is not None and int(dim) != active_info.dim:
        raise IncompatibleModelError(
            f"{what} makes {dim}-dimensional vectors; collection {collection.name!r} holds "
            f"{active_info.dim}-dimensional vectors of model {active!r}. Nothing was changed."
        )
    if name in space:
        return name
    for candidate in _lineage(meta):
        if candidate in space:
            return candidate
    declared = ", ".join(_lineage(meta)) or "none"
    old = active if active == SHIPPED else (active_info.path if active_info else None) or active
    raise IncompatibleModelError(
        f"{what} cannot search collection {collection.name!r}: its stored vectors are of "
        f"{'model' if len(space) == 1 else 'models'} {', '.join(space)} (active: {active}), "
        f"and {name!r} was not trained to be compatible with any of them (its model file "
        f"declares compatible_with: {declared}). Nothing was changed. Train it with "
        f"'facesearch train ... --compatible-with {old}', or re-embed every face with it: "
        f"'facesearch reindex --model {source or name} --re-embed-all'"
    )


def _register(
    collection: Collection,
    meta: Mapping[str, Any],
    source: str | None,
    *,
    compatible_with: str | None,
    activate: bool,
) -> st.ModelInfo:
    name = str(meta["name"])
    shipped = name == SHIPPED and (source is None or source == SHIPPED)
    return collection.register_model(
        name,
        int(meta["dim"]),
        compatible_with=None if compatible_with == name else compatible_with,
        file_hash=None
        if shipped or not meta.get("weights_sha256")
        else str(meta["weights_sha256"]),
        path=None if shipped or source is None else os.path.abspath(source),
        threshold=None if shipped else meta.get("threshold"),
        activate=activate,
    )


def register_pipeline_model(collection: Collection, pipeline: FacePipeline) -> st.ModelInfo:
    """Register the pipeline's embedding model in the collection (the first becomes active).

    Raises :class:`IncompatibleModelError` when the collection already holds faces of a model
    whose vectors cannot be compared with this one's.
    """
    emb = pipeline.embedder
    name = pipeline.model_name
    meta: dict[str, Any] = {**(getattr(emb, "meta", None) or {}), "name": name, "dim": emb.dim}
    meta.setdefault("threshold", getattr(emb, "threshold", None))
    cw = meta.get("compatible_with")
    cw_name = str(cw["name"]) if isinstance(cw, Mapping) and cw.get("name") else None
    with collection.session() as s:
        active = st.get_meta(s, ACTIVE_MODEL_KEY)
        known = st.model_names(s)
        space = set(st.model_space(s, active)[1]) if active is not None else set()
    if active is not None and name not in space and (cw_name is None or cw_name not in space):
        raise IncompatibleModelError(
            f"collection {collection.name!r} holds faces of model {active!r}; the vectors of "
            f"model {name!r} cannot be compared with them: index with --model {active} "
            "(or make a new collection with --collection NAME)"
        )
    source = None if name == SHIPPED else str(pipeline.config.model)
    base = cw_name if cw_name in known else None
    return _register(collection, meta, source, compatible_with=base, activate=False)


def add_model(
    collection: Collection, model: str | os.PathLike[str], *, activate: bool = True
) -> st.ModelInfo:
    """Register ``model`` (``'sface'`` or a model file) in the collection and make it active.

    The model must be compatible with the collection's active model (:func:`compatible_base`);
    otherwise :class:`IncompatibleModelError` and nothing changes. Stored faces keep their
    vectors: queries embedded with the new model are compared with them directly.
    """
    from facesearch.models.modelfile import read_meta

    source = os.fspath(model)
    meta = read_meta(source)
    with collection.lock():
        base = compatible_base(collection, meta, source=source)
        info = _register(collection, meta, source, compatible_with=base, activate=activate)
    logger.info(
        "collection %r: model %r registered (compatible with %r)%s",
        collection.name,
        info.name,
        base,
        ", active" if activate else "",
    )
    return info


def use_model(collection: Collection, name: str) -> st.ModelInfo:
    """Make the registered model ``name`` the active one (it must be in the active space)."""
    with collection.lock():
        with collection.session() as s:
            info = st.get_model(s, name)
            active = st.get_meta(s, ACTIVE_MODEL_KEY)
            known = [m.name for m in st.list_models(s)]
            space = st.model_space(s, active)[1] if active is not None else []
        if info is None:
            raise ModelError(
                f"model {name!r} is not registered in collection {collection.name!r} "
                f"(registered: {', '.join(known) or 'none'}); register a file with "
                "'facesearch model add FILE'"
            )
        if name not in space:
            raise IncompatibleModelError(
                f"model {name!r} is not compatible with collection {collection.name!r}'s active "
                f"model {active!r}: its queries could not be compared with the stored vectors. "
                f"Nothing was changed (re-embed with 'facesearch reindex --model FILE "
                "--re-embed-all' to move the collection to it)"
            )
        return collection.register_model(info.name, info.dim, activate=True)


def query_model(collection: Collection) -> str:
    """What to embed queries with: ``'sface'`` or the active model's file (checked to exist)."""
    active = collection.active_model
    if active is None or (active.name == SHIPPED and not active.path):
        return SHIPPED
    if not active.path or not os.path.isfile(active.path):
        raise ModelError(
            f"collection {collection.name!r} uses model {active.name!r}, whose file "
            f"{active.path or '(unknown)'} is not found: put it back, or register another "
            "compatible model with 'facesearch model add FILE'"
        )
    return str(active.path)


def check_query_embedder(collection: Collection, embedder: Embedder | NumpyEmbedder) -> None:
    """Refuse an embedder whose vectors cannot be compared with the collection's index.

    The embedder's model must be registered in the active space, and a model file must still
    be the one registered (same weights sha256); :class:`IncompatibleModelError` /
    :class:`ModelError` otherwise.
    """
    name = str(embedder.name)
    meta = getattr(embedder, "meta", None) or {}
    collection.check_query_models([name])
    with collection.session() as s:
        info = st.get_model(s, name)
    digest = meta.get("weights_sha256")
    if info is not None and info.file_hash and digest and digest != info.file_hash:
        raise ModelError(
            f"the model file loaded as {name!r} has weights sha256 {str(digest)[:12]}..., but "
            f"collection {collection.name!r} registered {name!r} with {info.file_hash[:12]}...: "
            "the file was replaced. Put the registered file back, or register the new one with "
            "'facesearch model add FILE'"
        )


# -- re-embedding -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReindexSettings:
    """How :func:`reindex_collection` runs.

    ``batch_size``: photos per SQL commit (an interrupted run loses at most one batch).
    ``workers``: threads reading and decoding photos. ``re_embed_all``: accept an incompatible
    model (see the module doc).
    """

    batch_size: int = REINDEX_BATCH
    workers: int = 2
    re_embed_all: bool = False

    def __post_init__(self) -> None:
        require_positive(batch_size=self.batch_size, workers=self.workers)


@dataclass(frozen=True, slots=True)
class ReindexProgress:
    """``done`` of ``total`` faces to re-embed handled (re-embedded or skipped)."""

    total: int
    done: int


@dataclass(slots=True)
class ReindexReport:
    """What a reindex run did (face counts unless named otherwise)."""

    model: str
    compatible: bool
    faces: int = 0  # faces in the collection
    todo: int = 0  # faces of other models when the run started
    reembedded: int = 0
    skipped: int = 0  # faces whose photo could not be read, or changed since indexed
    photos: int = 0  # photos re-embedded
    active: bool = False  # the model is the active one at the end
    remaining: int = 0  # faces still of other models at the end
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)  # (photo, reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "compatible": self.compatible,
            "faces": self.faces,
            "todo": self.todo,
            "reembedded": self.reembedded,
            "skipped": self.skipped,
            "photos": self.photos,
            "active": self.active,
            "remaining": self.remaining,
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }


@dataclass(slots=True)
class _PhotoJob:
    path: str
    content_hash: str
    face_ids: list[int]
    landmarks: list[np.ndarray]  # (5, 2) float32 each


@dataclass(slots=True)
class _Loaded:
    job: _PhotoJob
    image: np.ndarray | None = None
    error: str | None = None


def _load(job: _PhotoJob) -> _Loaded:
    """Worker: read the photo, check its content hash, decode it."""
    from facesearch.errors import ImageError
    from facesearch.image import load_image

    out = _Loaded(job)
    h = hashlib.sha256()
    chunks = []
    try:
        with open(job.path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
                chunks.append(chunk)
    except OSError as exc:
        out.error = f"cannot read the file ({exc.strerror or exc})"
        return out
    if h.hexdigest() != job.content_hash:
        out.error = "the file changed since it was indexed (run 'facesearch index' on it first)"
        return out
    try:
        out.image = load_image(b"".join(chunks))
    except ImageError as exc:
        out.error = exc.reason
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def _plan(collection: Collection, model: str) -> tuple[int, list[_PhotoJob]]:
    """``(faces in the collection, photos with faces not of model)`` by photo id."""
    jobs: dict[int, _PhotoJob] = {}
    with collection.session(snapshot=True) as s:
        total = st.face_count(s)
        rows = st.faces_not_of_model(s, model)
        for fid, pid, landmarks, path, content_hash in rows:
            job = jobs.get(pid)
            if job is None:
                job = jobs[pid] = _PhotoJob(path, content_hash, [], [])
            job.face_ids.append(int(fid))
            job.landmarks.append(np.asarray(landmarks, dtype=np.float32).reshape(5, 2))
    return total, list(jobs.values())


def _remaining(collection: Collection, model: str) -> int:
    with collection.session() as s:
        return st.face_count(s) - st.face_count(s, [model])


def reindex_collection(
    collection: Collection,
    embedder: Embedder | NumpyEmbedder,
    settings: ReindexSettings | None = None,
    *,
    source: str | None = None,
    progress: Callable[[ReindexProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ReindexReport:
    """Re-embed the collection's faces with ``embedder``'s model (see the module doc).

    ``source``: the model file the embedder was loaded from (``None`` for ``sface``), recorded
    in the collection. Holds the writer lock for the whole run. ``should_stop`` is asked after
    every commit (``True``: stop there). Returns the report; on Ctrl-C or a stop the report
    says ``interrupted`` and everything committed is kept.
    """
    from facesearch.align import align_faces
    from facesearch.collection import CHECKPOINT_SECONDS, StopRequested

    settings = settings or ReindexSettings()
    started = time.monotonic()
    meta: Mapping[str, Any] = getattr(embedder, "meta", None) or {
        "name": str(embedder.name),
        "dim": int(embedder.dim),
    }
    name = str(meta["name"])
    with collection.lock():
        if collection.active_model is None:
            raise CollectionError(
                f"collection {collection.name!r} has no faces yet: nothing to re-embed "
                f"(`facesearch index PATH --collection {collection.name} --model MODEL` "
                "indexes with the model)"
            )
        try:
            base: str | None = compatible_base(collection, meta, source=source)
            compatible = True
        except IncompatibleModelError:
            if not settings.re_embed_all:
                raise
            base, compatible = None, False
        # A compatible model is used for queries at once: old and new vectors share a space.
        _register(collection, meta, source, compatible_with=base, activate=compatible)
        rep = ReindexReport(model=name, compatible=compatible)
        rep.faces, jobs = _plan(collection, name)
        rep.todo = sum(len(j.face_ids) for j in jobs)
        logger.info(
            "collection %r: %d of %d faces to re-embed with %r (%d photos)",
            collection.name,
            rep.todo,
            rep.faces,
            name,
            len(jobs),
        )
        done = 0
        if progress is not None:
            progress(ReindexProgress(rep.todo, 0))
        pend_ids: list[int] = []
        pend_x: list[np.ndarray] = []
        pend_photos = 0
        last_checkpoint = time.monotonic()

        def commit() -> None:
            nonlocal pend_ids, pend_x, pend_photos, last_checkpoint
            if pend_ids:
                collection.update_embeddings(
                    np.array(pend_ids, np.int64), np.concatenate(pend_x), name
                )
                rep.reembedded += len(pend_ids)
                rep.photos += pend_photos
            pend_ids, pend_x, pend_photos = [], [], 0
            if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                collection.save_index()
                last_checkpoint = time.monotonic()
            if should_stop is not None and should_stop():
                raise StopRequested

        window = 2 * settings.workers + 2
        pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="reindex-read")
        try:
            queue: deque[Future[_Loaded]] = deque()
            it: Iterator[_PhotoJob] = iter(jobs)
            for job in it:
                queue.append(pool.submit(_load, job))
                if len(queue) >= window:
                    break
            while queue:
                loaded = queue.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    queue.append(pool.submit(_load, nxt))
                job = loaded.job
                if loaded.image is None:
                    rep.skipped += len(job.face_ids)
                    rep.failures.append((job.path, loaded.error or "unreadable"))
                    logger.info("%s: %s; its faces keep their vectors", job.path, loaded.error)
                else:
                    crops = align_faces(loaded.image, job.landmarks)  # (n, 112, 112, 3)
                    pend_ids += job.face_ids
                    pend_x.append(embedder.embed(crops))  # (n, D) float32
                    pend_photos += 1
                    if pend_photos >= settings.batch_size:
                        commit()
                done += len(job.face_ids)
                if progress is not None:
                    progress(ReindexProgress(rep.todo, done))
            commit()
        except (KeyboardInterrupt, StopRequested):
            rep.interrupted = True
            logger.warning("interrupted: the faces committed so far keep their new vectors")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        rep.remaining = _remaining(collection, name)
        if not compatible and not rep.interrupted and rep.remaining == 0:
            collection.register_model(name, int(meta["dim"]), activate=True)
            collection.rebuild_index()
            logger.info(
                "collection %r: every face re-embedded, %r is active", collection.name, name
            )
        active = collection.active_model
        rep.active = active is not None and active.name == name
    rep.seconds = time.monotonic() - started
    return rep


__all__ = [
    "REINDEX_BATCH",
    "ReindexProgress",
    "ReindexReport",
    "ReindexSettings",
    "add_model",
    "check_query_embedder",
    "compatible_base",
    "query_model",
    "register_pipeline_model",
    "reindex_collection",
    "use_model",
]
