"""The public library API: everything a user or a server does with facesearch.

Every function takes what it works on explicitly: an open :class:`Collection` (from
:func:`open_collection`) and, for anything that runs the networks, a :class:`Models` the caller
holds (built once from a :class:`PipelineConfig`, its networks loaded on first use and reused
by every later call: a server keeps one for its lifetime; there is no module-level model).
Results are frozen dataclasses with ``to_dict()`` (JSON-ready); every listing is a
:class:`Page` (``limit`` / ``offset``).

Writes hold the collection's writer lock for the call (one transaction per mutation; a second
writer waits ``lock_timeout`` seconds, then gets :class:`LockedError`); reads never take it.
Long writes (:func:`index_paths`, :func:`reindex`) report progress through a callback and stop
cleanly at the next commit when ``should_stop`` says so (a ``threading.Event`` or a function).

Errors, for a server to map: :class:`NotFoundError` (unknown face, photo, person, cluster or
collection: 404), :class:`LockedError` (another writer: 409), :class:`ImageError` (a bad
image: 422), :class:`ArgumentError` (a bad argument: 422), any other
:class:`FacesearchError` (400). People are named by integer id or by name (``int | str``).

Importing this module imports neither torch nor SQLAlchemy: they load when first needed, so
that a one-shot command starts fast.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from facesearch.errors import (
    ArgumentError,
    CollectionError,
    FacesearchError,
    ImageError,
    IncompatibleModelError,
    LockedError,
    ModelError,
    NoFaceError,
    NotFoundError,
)
from facesearch.identify import Identification
from facesearch.models.modelfile import SHIPPED_MODELS
from facesearch.pipeline import FacePipeline, Models, PipelineConfig
from facesearch.types import Detection, Face, Match

if TYPE_CHECKING:
    from facesearch.cluster_algorithms import ClusterConfig
    from facesearch.collection import Collection
    from facesearch.collection_clusters import (
        ClusterEvaluation,
        ClusterReport,
        RunStats,
        Suggestion,
    )
    from facesearch.indexer import IndexReport, Progress
    from facesearch.model_upgrade import ReindexProgress, ReindexReport
    from facesearch.store import ClusterSummary, FaceRecord
    from facesearch.train.data import CropMode
    from facesearch.train.loop import TrainSettings
    from facesearch.train.run import TrainRun

logger = logging.getLogger(__name__)

#: An image to read: a file path, the bytes of a file, or an ``(H, W, 3) uint8`` RGB array.
ImageInput = str | os.PathLike[str] | bytes | np.ndarray
#: A person: integer id or name.
PersonRef = int | str
#: Stop signal of a long write: an event, or a function returning ``True`` to stop.
StopSignal = threading.Event | Callable[[], bool]
#: The largest page a listing returns.
MAX_LIMIT = 1000

T = TypeVar("T")


# -- models -------------------------------------------------------------------------------------


def _models(models: Models | None) -> Models:
    return models if models is not None else Models()


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: ``items`` from ``offset``, at most ``limit``, of ``total``."""

    items: tuple[T, ...]
    total: int
    limit: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [_as_dict(i) for i in self.items],
            "total": self.total,
            "limit": self.limit,
            "offset": self.offset,
        }


def _threshold(threshold: float | None) -> float | None:
    """A distance threshold given by a caller: ``None`` or a finite number in [0, 4]."""
    if threshold is None:
        return None
    t = float(threshold)
    if not math.isfinite(t) or not 0.0 <= t <= 4.0:
        raise ArgumentError(f"threshold must be a finite number in [0, 4], got {threshold!r}")
    return t


def _as_dict(item: object) -> object:
    to_dict = getattr(item, "to_dict", None)
    return to_dict() if callable(to_dict) else item


def _box(box: Sequence[float]) -> list[float]:
    return [round(float(v), 1) for v in box]


@dataclass(frozen=True, slots=True)
class FaceInfo:
    """A stored face: box ``[x1, y1, x2, y2]`` and 5 landmarks in photo pixels, detector
    score, the model that embedded it, its photo, person and cluster (``None``: none), and how
    it was found (``detector_pass``: ``default``, ``upscaled`` or ``aligned``)."""

    id: int
    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...]
    score: float
    model: str
    photo_id: int
    photo_path: str
    person_id: int | None
    person: str | None
    label_source: str | None
    cluster_id: int | None
    detector_pass: str = "default"

    @classmethod
    def of(cls, r: FaceRecord) -> FaceInfo:
        pts = tuple((r.landmarks[i], r.landmarks[i + 1]) for i in range(0, len(r.landmarks), 2))
        return cls(
            r.face_id, r.box, pts, r.score, r.model, r.photo_id, r.photo, r.person_id, r.person,
            None if r.source is None else r.source.value, r.cluster_id, r.detector_pass,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "box": _box(self.box),
            "landmarks": [[round(x, 2), round(y, 2)] for x, y in self.landmarks],
            "score": round(self.score, 4),
            "model": self.model,
            "photo": {"id": self.photo_id, "path": self.photo_path},
            "person": None
            if self.person_id is None
            else {"id": self.person_id, "name": self.person},
            "label_source": self.label_source,
            "cluster": self.cluster_id,
            "detector_pass": self.detector_pass,
        }


@dataclass(frozen=True, slots=True)
class PhotoInfo:
    """A stored photo: id, path, pixel size (``None`` when not decoded), file bytes, status."""

    id: int
    path: str
    width: int | None
    height: int | None
    bytes: int
    status: str
    error: str | None
    faces: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "bytes": self.bytes,
            "status": self.status,
            "error": self.error,
            "faces": self.faces,
        }


@dataclass(frozen=True, slots=True)
class PersonInfo:
    """A person: id, name, and how many faces and photos are theirs."""

    id: int
    name: str
    faces: int
    photos: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "faces": self.faces, "photos": self.photos}


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """A stored cluster: id, size, its person when named, a few sample face ids."""

    id: int
    size: int
    person_id: int | None
    person: str | None
    manual: bool
    sample_face_ids: tuple[int, ...]

    @classmethod
    def of(cls, c: ClusterSummary) -> ClusterInfo:
        return cls(c.id, c.size, c.person_id, c.person, c.manual, c.sample_face_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "person": None
            if self.person_id is None
            else {"id": self.person_id, "name": self.person},
            "manual": self.manual,
            "sample_face_ids": list(self.sample_face_ids),
        }


@dataclass(frozen=True, slots=True)
class RejectionInfo:
    """A rejection: face ``face_id`` is not ``person`` (id and name), or was taken out of
    cluster ``cluster_id`` by hand (the other is ``None``); ``created_at`` UTC."""

    face_id: int
    person_id: int | None
    person: str | None
    cluster_id: int | None
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_id": self.face_id,
            "person": None
            if self.person_id is None
            else {"id": self.person_id, "name": self.person},
            "cluster": self.cluster_id,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    """Every face of a photo, left to right, identified against a collection with ``threshold``."""

    faces: tuple[Identification, ...]
    threshold: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "faces": [f.to_dict() for f in self.faces],
            "threshold": round(self.threshold, 4),
            "model": self.model,
        }


@dataclass(frozen=True, slots=True)
class FacePair:
    """One compared pair of :func:`verify`: face indexes in each photo, boxes and d."""

    face_a: int
    box_a: tuple[float, float, float, float]
    face_b: int
    box_b: tuple[float, float, float, float]
    distance: float
    same: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_a": self.face_a,
            "box_a": _box(self.box_a),
            "face_b": self.face_b,
            "box_b": _box(self.box_b),
            "distance": round(self.distance, 4),
            "same": self.same,
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """1:1 verification: ``same`` when the best pair's ``distance`` d is below ``threshold``.

    ``pairs``: the largest faces of the two photos (one pair), or every pair (``all_pairs``).
    """

    same: bool
    distance: float
    threshold: float
    model: str
    pairs: tuple[FacePair, ...]
    all_pairs: bool = False

    @property
    def best(self) -> FacePair:
        return min(self.pairs, key=lambda p: p.distance)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "distance": round(self.distance, 4),
            "threshold": self.threshold,
            "same": self.same,
        }
        if self.all_pairs:
            out["pairs"] = [p.to_dict() for p in self.pairs]
        else:
            out.update(box_a=_box(self.best.box_a), box_b=_box(self.best.box_b))
        out["model"] = self.model
        return out


@dataclass(frozen=True, slots=True)
class PhotoIdentification:
    """One photo of :func:`identify_photos`: its result, or why there is none (``error``: it
    cannot be read, or has no face)."""

    source: str
    result: IdentifyResult | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.result is None:
            return {"image": self.source, "error": self.error}
        return {"image": self.source, **self.result.to_dict()}


@dataclass(frozen=True, slots=True)
class PairVerification:
    """One pair of :func:`verify_pairs`: its verification, or why there is none."""

    image_a: str
    image_b: str
    verification: Verification | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"a": self.image_a, "b": self.image_b}
        if self.verification is None:
            out["error"] = self.error
        else:
            out.update(self.verification.to_dict())
        return out


@dataclass(frozen=True, slots=True)
class PhotoDetections:
    """The faces found in one photo (``error``: why it could not be read; no faces then)."""

    source: str
    detections: tuple[Detection, ...]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.source}
        if self.error is not None:
            out["error"] = self.error
        out["faces"] = [d.to_dict() for d in self.detections]
        return out


@dataclass(frozen=True, slots=True)
class SimilarFaces:
    """The nearest stored faces of one query face (``face_id`` for a stored face, else the
    detected ``face`` of a photo), nearest first."""

    matches: tuple[Match, ...]
    face_id: int | None = None
    face: Face | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_id": self.face_id,
            "box": None if self.face is None else _box(self.face.detection.box),
            "matches": [
                {"face_id": m.face_id, "distance": round(m.distance, 4), "person": m.person,
                 "photo": m.photo}
                for m in self.matches
            ],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class EnrollReport:
    """What :func:`enroll` did: photos enrolled for ``name``, and ``(path, error)`` failures."""

    name: str
    enrolled: int
    failures: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enrolled": self.enrolled,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
        }


@dataclass(frozen=True, slots=True)
class PersonDeleted:
    """What :func:`delete_person` did: the person, and their faces unlabelled or deleted."""

    id: int
    name: str
    faces_unlabelled: int
    faces_deleted: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "faces_unlabelled": self.faces_unlabelled,
            "faces_deleted": self.faces_deleted,
        }


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A registered embedding model; ``searchable``: its vectors are in the active space."""

    name: str
    dim: int
    faces: int
    compatible_with: str | None
    active: bool
    searchable: bool
    path: str | None
    threshold: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "faces": self.faces,
            "compatible_with": self.compatible_with,
            "active": self.active,
            "searchable": self.searchable,
            "path": self.path,
            "threshold": self.threshold,
        }


@dataclass(frozen=True, slots=True)
class ModelList:
    """The models of a collection and the active one (``None`` before anything is indexed)."""

    active: str | None
    models: tuple[ModelEntry, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"active": self.active, "models": [m.to_dict() for m in self.models]}


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """Counts, models, index type, size on disk and (when checked) the consistency of SQL and
    the vector index. ``data`` holds the whole report as :meth:`to_dict` returns it."""

    name: str
    photos: int
    faces: int
    people: int
    clusters: int
    active_model: str | None
    index_type: str | None
    consistent: bool | None
    data: dict[str, Any] = field(repr=False, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True, slots=True)
class SchemaUpgrade:
    """Schema revisions of a collection's database before and after :func:`upgrade_schema`."""

    before: str | None
    after: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after}


# -- collections ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CollectionRef:
    """Where a collection is, for :func:`identify` to open it itself (so a one-shot command
    can compute the photo's faces while the database is opened)."""

    home: str | os.PathLike[str]
    name: str = "default"
    db_url: str | None = None
    lock_timeout: float | None = None

    def open(self, *, create: bool = False) -> Collection:
        return open_collection(
            self.home, self.name, db_url=self.db_url, create=create, lock_timeout=self.lock_timeout
        )


def open_collection(
    home: str | os.PathLike[str],
    name: str = "default",
    *,
    db_url: str | None = None,
    create: bool = False,
    lock_timeout: float | None = None,
) -> Collection:
    """Open the collection ``home/name`` (``create``: make it when missing).

    ``db_url``: a SQLAlchemy URL (PostgreSQL) instead of SQLite in the folder. A writer waits
    ``lock_timeout`` seconds for another writer (default 10). Use it as a context manager, or
    call ``close()``. :class:`NotFoundError` when it is missing and not ``create``.
    """
    from facesearch.collection import DEFAULT_LOCK_TIMEOUT, Collection

    timeout = DEFAULT_LOCK_TIMEOUT if lock_timeout is None else float(lock_timeout)
    return Collection.open(home, name, db_url=db_url, create=create, lock_timeout=timeout)


def collection_info(collection: Collection, *, check: bool = True) -> CollectionInfo:
    """Counts, models, index, size on disk and (``check``: reads every id) consistency."""
    data = collection.info(check=check)
    consistency = data.get("consistency")
    return CollectionInfo(
        name=str(data["name"]),
        photos=int(data["photos"]),
        faces=int(data["faces"]),
        people=int(data["people"]),
        clusters=int(data["clusters"]),
        active_model=data["active_model"],
        index_type=data["index"].get("type"),
        consistent=None if consistency is None else bool(consistency["consistent"]),
        data=data,
    )


def upgrade_schema(
    home: str | os.PathLike[str], name: str = "default", *, db_url: str | None = None
) -> SchemaUpgrade:
    """Bring a collection's database to the newest schema (Alembic); holds the writer lock."""
    from facesearch.collection import upgrade_collection

    before, after = upgrade_collection(home, name, db_url)
    return SchemaUpgrade(before, after)


def iterate(listing: Callable[..., Page[T]], *args: Any, **kwargs: Any) -> Iterator[T]:
    """Every item of a paginated listing, page after page (``iterate(list_people, col)``)."""
    offset = 0
    while True:
        page = listing(*args, limit=MAX_LIMIT, offset=offset, **kwargs)
        yield from page.items
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return


# -- photos without a collection -------------------------------------------------------------------


def _source(image: ImageInput) -> str:
    if isinstance(image, np.ndarray):
        return "<array>"
    if isinstance(image, bytes):
        return "<bytes>"
    return os.fspath(image)


def load(image: ImageInput) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB of a path, file bytes or array (:class:`ImageError` if bad)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or not image.size:
            raise ImageError("<array>", f"expected an (H, W, 3) uint8 RGB array, got "
                             f"{image.shape} {image.dtype}")  # fmt: skip
        return np.ascontiguousarray(image)
    from facesearch.image import load_image

    return load_image(image if isinstance(image, bytes) else os.fspath(image))


def _megabytes(image: ImageInput) -> float:
    if isinstance(image, bytes):
        return len(image) / 1e6
    if isinstance(image, np.ndarray):
        return image.size / 1e7  # about what a JPEG of these pixels weighs
    try:
        return os.path.getsize(image) / 1e6
    except OSError:
        return 0.0


def detect(image: ImageInput, *, models: Models | None = None) -> tuple[Detection, ...]:
    """The faces of one photo (box, 5 landmarks, score), best score first."""
    pipe = _models(models).pipeline(photos=1, megabytes=_megabytes(image))
    return tuple(pipe.detect(load(image)))


def detect_photos(
    images: Sequence[ImageInput], *, models: Models | None = None
) -> tuple[PhotoDetections, ...]:
    """:func:`detect` for several photos; a photo that cannot be read gets its ``error``."""
    mb = sum(_megabytes(i) for i in images)
    pipe = _models(models).pipeline(photos=len(images), megabytes=mb)
    out = []
    for image in images:
        try:
            dets = tuple(pipe.detect(load(image)))
        except ImageError as exc:
            out.append(PhotoDetections(_source(image), (), exc.reason))
            continue
        out.append(PhotoDetections(_source(image), dets))
    return tuple(out)


def photo_faces(
    image: ImageInput, *, models: Models | None = None, aligned: bool = False
) -> tuple[Face, ...]:
    """Every face of one photo with its embedding (``(D,) float32``, unit norm).

    ``aligned``: the photo is a face crop on the alignment template (square, or 96x112),
    embedded as it is without detection (:class:`ImageError` for another shape).
    """
    pipe = _models(models).pipeline(photos=1, megabytes=_megabytes(image))
    return tuple(_faces(pipe, image, aligned))


def _faces(pipe: FacePipeline, image: ImageInput, aligned: bool) -> list[Face]:
    """The faces of a photo: detected, or its one face as an aligned crop."""
    img = load(image)
    try:
        return pipe.photo_faces(img, aligned=aligned)
    except ValueError as exc:  # not a crop on the template
        if not aligned:
            raise
        raise ImageError(_source(image), str(exc)) from exc


def _largest(pipe: FacePipeline, image: ImageInput, aligned: bool) -> Face:
    found = _faces(pipe, image, aligned)
    if not found:
        raise NoFaceError(_source(image))
    return max(found, key=lambda f: f.detection.area)


def verify(
    image_a: ImageInput,
    image_b: ImageInput,
    *,
    models: Models | None = None,
    threshold: float | None = None,
    all_pairs: bool = False,
    aligned: bool = False,
) -> Verification:
    """Are the faces of two photos the same person? The largest face of each, or every pair.

    ``threshold``: tau on d (default: the model's calibrated verification tau). ``aligned``:
    both photos are face crops on the template (:func:`photo_faces`).
    :class:`NoFaceError` when a photo has no face.
    """

    m = _models(models)
    pipe = m.pipeline(photos=2, megabytes=_megabytes(image_a) + _megabytes(image_b))
    threshold = _threshold(threshold)
    tau = m.threshold("verify") if threshold is None else threshold
    fa, fb = _faces(pipe, image_a, aligned), _faces(pipe, image_b, aligned)
    for src, found in ((image_a, fa), (image_b, fb)):
        if not found:
            raise NoFaceError(_source(src))
    return _verification(fa, fb, tau, pipe.model_name, all_pairs)


def _verification(
    fa: Sequence[Face], fb: Sequence[Face], tau: float, model: str, all_pairs: bool
) -> Verification:
    """Compare the faces of two photos (each with at least one): every pair, or the largest
    face of each."""
    from facesearch.distance import distance

    if all_pairs:
        pairs = []
        for i, a in enumerate(fa):
            for j, b in enumerate(fb):
                d = float(distance(a.embedding, b.embedding))
                pairs.append(FacePair(i, a.detection.box, j, b.detection.box, d, d < tau))
    else:
        a = max(fa, key=lambda f: f.detection.area)
        b = max(fb, key=lambda f: f.detection.area)
        d = float(distance(a.embedding, b.embedding))
        pairs = [FacePair(0, a.detection.box, 0, b.detection.box, d, d < tau)]
    best = min(pairs, key=lambda p: p.distance)
    return Verification(
        same=any(p.same for p in pairs),
        distance=best.distance,
        threshold=tau,
        model=model,
        pairs=tuple(pairs),
        all_pairs=all_pairs,
    )


#: Photos whose faces :func:`verify_pairs` keeps for the pairs still to come.
PAIR_CACHE_PHOTOS: int = 4096
#: Pairs :func:`verify_pairs` reads ahead; their photos are embedded together.
PAIR_WINDOW: int = 64


def verify_pairs(
    pairs: Iterable[tuple[ImageInput, ImageInput]],
    *,
    models: Models | None = None,
    threshold: float | None = None,
    all_pairs: bool = False,
    aligned: bool = False,
) -> Iterator[PairVerification]:
    """:func:`verify` for many pairs in one go, in input order, as they are ready.

    The networks load once; each photo is embedded once while its pairs are near (the last
    :data:`PAIR_CACHE_PHOTOS` photos are kept), the photos of :data:`PAIR_WINDOW` pairs at a
    time on every core. A pair with a photo that cannot be read or has no face gets its
    ``error``; the others go on.
    """
    from collections import OrderedDict
    from itertools import islice

    from facesearch.batch import stream_faces

    m = _models(models)
    pipe = m.pipeline()
    tau = m.threshold("verify") if threshold is None else float(threshold)
    cache: OrderedDict[Any, tuple[tuple[Face, ...], str | None]] = OrderedDict()
    it = iter(pairs)
    while window := list(islice(it, PAIR_WINDOW)):
        photos = {_key(x): x for pair in window for x in pair if _key(x) not in cache}
        found = stream_faces(pipe, list(photos.values()), load=load, source=_source,
                             aligned=aligned)  # fmt: skip
        for key, got in zip(photos, found, strict=True):
            cache[key] = (got.faces, got.error)
        for a, b in window:
            (fa, ea), (fb, eb) = cache[_key(a)], cache[_key(b)]
            for x in (a, b):
                cache.move_to_end(_key(x))
            error = ea or eb
            if error is None and not fa:
                error = str(NoFaceError(_source(a)))
            if error is None and not fb:
                error = str(NoFaceError(_source(b)))
            if error is not None:
                yield PairVerification(_source(a), _source(b), None, error)
            else:
                v = _verification(fa, fb, tau, pipe.model_name, all_pairs)
                yield PairVerification(_source(a), _source(b), v)
        while len(cache) > PAIR_CACHE_PHOTOS:
            cache.popitem(last=False)


def read_pairs_csv(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The pairs of photos of a CSV of rows ``a,b`` for :func:`verify_pairs` (relative paths
    from the CSV's folder; :class:`ArgumentError` naming the line of a malformed row)."""
    from facesearch.batch import read_pairs_csv as read

    return read(path)


def _key(image: ImageInput) -> Any:
    """What identifies a photo of :func:`verify_pairs` for its cache (an array by identity)."""
    if isinstance(image, np.ndarray):
        return ("array", id(image))
    if isinstance(image, bytes):
        import hashlib

        return ("bytes", hashlib.sha256(image).digest())
    return ("path", os.path.abspath(os.fspath(image)))


# -- identification and vector search --------------------------------------------------------------


def identify(
    collection: Collection | CollectionRef,
    image: ImageInput,
    *,
    models: Models | None = None,
    k: int = 5,
    threshold: float | None = None,
    aligned: bool = False,
) -> IdentifyResult:
    """Who is in the photo? 1:K identification of every face against the collection.

    Each face (left to right) gets its ``k`` nearest stored faces, grouped by person, and a
    verdict: the person of the nearest labelled face when its d is below ``threshold``
    (default: the active model's identification tau), else ``None``. Queries are embedded with
    the collection's active model. :class:`NoFaceError` when the photo has no face.
    ``aligned``: the photo is a face crop on the template (:func:`photo_faces`).

    Given a :class:`CollectionRef` and a file path, the photo's faces are computed in a forked
    child process (numpy engine) while this one opens the collection
    (:mod:`facesearch.prefetch`).
    """
    if k < 1 or k > MAX_LIMIT:
        raise ArgumentError(f"k must be in 1..{MAX_LIMIT}, got {k}")
    threshold = _threshold(threshold)
    from facesearch.prefetch import EarlyFaces

    m = _models(models)
    early = None
    if (
        not aligned
        and isinstance(collection, CollectionRef)
        and isinstance(image, (str, os.PathLike))
        and m.config.model == "sface"
        and m.engine(photos=1, megabytes=_megabytes(image)) == "numpy"
    ):
        early = EarlyFaces(os.fspath(image), m.config)
    try:
        if isinstance(collection, CollectionRef):
            with collection.open() as col:
                return _identify(col, image, m, early, k, threshold, aligned)
        return _identify(collection, image, m, early, k, threshold, aligned)
    finally:
        if early is not None:
            early.cancel()


def _identify(
    col: Collection,
    image: ImageInput,
    models: Models,
    early: Any,
    k: int,
    threshold: float | None,
    aligned: bool = False,
) -> IdentifyResult:
    from facesearch.identify import identify_faces
    from facesearch.model_upgrade import check_query_embedder, query_model

    _ = col.vectors  # fails early: no faces yet
    m = models.for_model(query_model(col))
    if early is not None and m.config.model == "sface":
        faces: list[Face] = early.faces()  # ImageError for a bad photo
    else:
        pipe = m.pipeline(photos=1, megabytes=_megabytes(image))
        if m.config.model != "sface":
            check_query_embedder(col, pipe.embedder)  # the registered model file, unchanged
        found = [early.faces()] if early is not None else None  # same detector
        if found is not None:
            faces = pipe.faces_batch([load(image)], [[f.detection for f in found[0]]])[0]
        else:
            faces = _faces(pipe, image, aligned)
    if not faces:
        raise NoFaceError(_source(image))
    tau = m.threshold("identify") if threshold is None else float(threshold)
    faces.sort(key=lambda f: (f.detection.box[0], f.detection.box[1]))
    rejected = _stored_rejections(col, image, faces)
    results = identify_faces(col, faces, k=k, threshold=tau, rejected=rejected)
    return IdentifyResult(tuple(results), tau, faces[0].model)


def identify_photos(
    collection: Collection,
    images: Iterable[ImageInput],
    *,
    models: Models | None = None,
    k: int = 5,
    threshold: float | None = None,
    aligned: bool = False,
) -> Iterator[PhotoIdentification]:
    """:func:`identify` for many photos in one go, in input order, as they are ready.

    A folder among ``images`` stands for its photos, walked as :func:`index_paths` walks
    (recursively, by content, links followed). The networks load once and the photos go
    through them on every core (:func:`facesearch.batch.stream_faces`); each batch of photos
    is searched at once. A photo that cannot be read or has no face gets its ``error``; the
    others go on.
    """
    if k < 1 or k > MAX_LIMIT:
        raise ArgumentError(f"k must be in 1..{MAX_LIMIT}, got {k}")
    from facesearch.batch import stream_faces
    from facesearch.identify import identify_faces
    from facesearch.model_upgrade import check_query_embedder, query_model

    _ = collection.vectors  # fails early: no faces yet
    m = _models(models).for_model(query_model(collection))
    pipe = m.pipeline()
    if m.config.model != "sface":
        check_query_embedder(collection, pipe.embedder)
    tau = m.threshold("identify") if threshold is None else float(threshold)
    found = stream_faces(pipe, _photos(images), load=load, source=_source, aligned=aligned)
    for photo in found:
        if photo.error is not None:
            yield PhotoIdentification(photo.source, None, photo.error)
            continue
        if not photo.faces:
            yield PhotoIdentification(photo.source, None, str(NoFaceError(photo.source)))
            continue
        faces = sorted(photo.faces, key=lambda f: (f.detection.box[0], f.detection.box[1]))
        rejected = _stored_rejections(collection, photo.source, faces)
        results = identify_faces(collection, faces, k=k, threshold=tau, rejected=rejected)
        yield PhotoIdentification(photo.source, IdentifyResult(tuple(results), tau, faces[0].model))


def _photos(images: Iterable[ImageInput]) -> Iterator[ImageInput]:
    """``images`` with every folder path replaced by the photos under it."""
    from facesearch.batch import expand_photos

    for image in images:
        if isinstance(image, (str, os.PathLike)) and os.path.isdir(image):
            yield from expand_photos([image])
        else:
            yield image


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _stored_rejections(col: Collection, image: ImageInput, faces: Sequence[Face]) -> list[set[str]]:
    """Per query face, the people it was rejected for, when the photo is one of the collection's
    (same bytes) and the face is a stored face of it (box overlap at least 0.5)."""
    import hashlib

    from facesearch import store as st

    none: list[set[str]] = [set() for _ in faces]
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, (str, os.PathLike)):
        try:
            data = Path(image).read_bytes()
        except OSError:
            return none
    else:
        return none
    digest = hashlib.sha256(data).hexdigest()
    with col.session() as s:
        stored = [r for p in st.photos_by_hash(s, digest) for r in st.faces_of_photo(s, p.id)]
        rejected = st.rejected_people(s, [r.face_id for r in stored]) if stored else {}
    if not rejected:
        return none
    out = []
    for f in faces:
        best = max(stored, key=lambda r: _iou(r.box, f.detection.box))
        same = _iou(best.box, f.detection.box) >= 0.5
        out.append(set(rejected.get(best.face_id, ())) if same else set())
    return out


def identify_face(
    collection: Collection, face_id: int, *, k: int = 5, threshold: float | None = None
) -> Identification:
    """Who is this stored face? :func:`identify` for a face of the collection: its ``k``
    nearest other faces (not of its own photo) and a verdict (nearest labelled face within
    ``threshold``, default the active model's identification tau), never a person the face was
    rejected for."""
    from facesearch import store as st
    from facesearch.collection_clusters import identify_threshold
    from facesearch.identify import identify_vectors

    if k < 1 or k > MAX_LIMIT:
        raise ArgumentError(f"k must be in 1..{MAX_LIMIT}, got {k}")
    with collection.session() as s:
        rec = st.face_record(s, int(face_id))
        own = {r.face_id for r in st.faces_of_photo(s, rec.photo_id)}
        rejected = st.rejected_people(s, [rec.face_id]).get(rec.face_id, set())
    xq, model = collection.embedding(rec.face_id)
    collection.check_query_models([model])
    tau = identify_threshold(collection) if threshold is None else float(threshold)
    (res,) = identify_vectors(
        collection, xq[None, :], k=k, threshold=tau, exclude=[own], rejected=[rejected]
    )
    return res


def search_faces(
    collection: Collection,
    *,
    face_id: int | None = None,
    image: ImageInput | None = None,
    k: int = 10,
    models: Models | None = None,
) -> tuple[SimilarFaces, ...]:
    """The ``k`` nearest stored faces of a stored face (``face_id``, itself left out) or of
    every face of a photo (``image``, embedded with the active model). Vector search only: no
    verdict (see :func:`identify`)."""
    if (face_id is None) == (image is None):
        raise ArgumentError("give exactly one of face_id and image")
    if k < 1 or k > MAX_LIMIT:
        raise ArgumentError(f"k must be in 1..{MAX_LIMIT}, got {k}")
    if face_id is not None:
        xq, model = collection.embedding(int(face_id))
        collection.check_query_models([model])
        rows = collection.search(xq[None, :], k + 1)
        matches = tuple(mt for mt in rows[0] if mt.face_id != face_id)[:k]
        return (SimilarFaces(matches, face_id=int(face_id)),)
    from facesearch.model_upgrade import query_model

    assert image is not None
    m = _models(models).for_model(query_model(collection))
    faces = sorted(
        m.pipeline(photos=1, megabytes=_megabytes(image)).faces(load(image)),
        key=lambda f: (f.detection.box[0], f.detection.box[1]),
    )
    if not faces:
        raise NoFaceError(_source(image))
    collection.check_query_models(sorted({f.model for f in faces}))
    xq = np.stack([f.embedding for f in faces]).astype(np.float32)
    rows = collection.search(xq, k)
    return tuple(SimilarFaces(tuple(r), face=f) for f, r in zip(faces, rows, strict=True))


# -- indexing ------------------------------------------------------------------------------------


def index_paths(
    collection: Collection,
    paths: Sequence[str | os.PathLike[str]],
    *,
    models: Models | None = None,
    model: str | None = None,
    labels: str | None = None,
    prune: bool = False,
    index_type: str | None = None,
    vectors: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: StopSignal | None = None,
    aligned: bool = False,
    rehash: bool = False,
) -> IndexReport:
    """Index the photos under ``paths`` (folders recursively, or files) into the collection.

    Incremental (unchanged photos skipped, moved ones keep their faces); ``labels``:
    ``"folders"`` or a ``path,person`` CSV; ``prune``: drop stored photos under ``paths``
    whose files are gone (never those under a folder that cannot be listed, which the report
    counts); ``rehash``: read every file again, even when its size and mtime are those stored
    (by default such a file is taken as unchanged unread); ``index_type``: change the vector
    index type; ``vectors``: where the vectors are kept from now on (:func:`set_vectors`).
    Embeds with ``model`` (``sface``, ``sface+dlib`` or a model file; default: the
    collection's active model, ``models``' for a new collection). A photo that cannot be read
    is recorded and reported, never fatal. Holds the writer lock for the run; committed every
    ``batch_size`` photos, where ``should_stop`` is checked (the report then says
    ``interrupted``). ``aligned``: every photo read is a face crop on the template, stored with
    that one face, not detected (:func:`photo_faces`).

    ``ray``: embed on a Ray cluster (:mod:`facesearch.ray_index`; ``pip install
    'facesearch[ray]'``): ``"local"`` starts one here for the run, ``"auto"`` joins the one
    running on this machine, ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` a remote one, whose
    workers must read the photos at the same paths. ``ray_workers``: actors (one CPU each;
    default: the cluster's CPUs). Stores the same faces as a run without Ray.
    """
    from facesearch.image import default_workers
    from facesearch.indexer import COMMIT_BATCH, IndexSettings
    from facesearch.indexer import index_paths as run_index

    settings = IndexSettings(
        labels=labels,
        prune=prune,
        batch_size=batch_size or COMMIT_BATCH,
        workers=workers or default_workers(),
        index_type=index_type,
        aligned=aligned,
        rehash=rehash,
    )
    ray_settings = None
    if ray is not None:
        from facesearch.ray_index import RaySettings, parse_address

        ray_settings = RaySettings(address=parse_address(ray), workers=ray_workers)
    elif ray_workers is not None:
        raise ArgumentError("ray_workers is for a run on Ray: give ray too")
    with collection.lock():  # before loading the networks: a second writer is refused at once
        if vectors is not None:
            collection.set_vectors(vectors)
        base = _models(models)
        m = base.for_model(model or _collection_model(collection, base))
        if ray_settings is not None:
            from facesearch.ray_index import index_paths_ray

            return index_paths_ray(
                collection, paths, m, settings, ray_settings, progress=progress,
                should_stop=_stopper(should_stop),
            )  # fmt: skip
        return run_index(
            collection, m, paths, settings, progress=progress, should_stop=_stopper(should_stop)
        )


def set_vectors(collection: Collection, vectors: str) -> bool:
    """Keep the collection's vectors in ``vectors`` from now on: ``"faiss"`` (the FAISS file
    in the collection folder, the default), ``"milvus-lite"`` (a milvus-lite folder in the
    collection folder), the path of a milvus-lite folder (``*.db``), or
    ``"milvus://HOST:PORT[/NAME]"`` (a Milvus server; ``pip install 'facesearch[milvus]'``).

    SQL stays the truth: the new copy is built from it, recorded in the collection, and the old
    copy removed. ``False`` when the vectors are kept there already.
    """
    return collection.set_vectors(vectors)


def _collection_model(collection: Collection, models: Models) -> str:
    """The model to embed with: the collection's active model, ``models``' for a new one."""
    active = collection.active_model
    if active is None:
        return models.config.model
    if active.name in SHIPPED_MODELS and not active.path:
        return str(active.name)
    if not active.path or not os.path.isfile(active.path):
        raise ModelError(
            f"collection {collection.name!r} uses model {active.name!r}, whose file "
            f"{active.path or '(unknown)'} is not found: give it with --model FILE"
        )
    return str(active.path)


def _stopper(signal: StopSignal | None) -> Callable[[], bool] | None:
    if signal is None:
        return None
    if isinstance(signal, threading.Event):
        return signal.is_set
    return signal


def enroll(
    collection: Collection,
    name: str,
    images: Sequence[str | os.PathLike[str]],
    *,
    models: Models | None = None,
    model: str | None = None,
    aligned: bool = False,
) -> EnrollReport:
    """Give the largest face of each photo to person ``name`` (created if needed).

    Each photo is recorded with all its faces (an indexed photo keeps its faces). A photo that
    cannot be read or has no face is reported in ``failures``; the others are enrolled.
    ``model``: as :func:`index_paths`. ``aligned``: each photo is a face crop on the template,
    its one face embedded without detection (:func:`photo_faces`).
    """
    from facesearch.indexer import enroll_photos

    with collection.lock():
        base = _models(models)
        m = base.for_model(model or _collection_model(collection, base))
        pipe = m.pipeline(photos=len(images))
        done, errors = enroll_photos(collection, pipe, name, images, aligned=aligned)
    return EnrollReport(name, done, tuple(errors))


# -- faces and photos ----------------------------------------------------------------------------


def get_face(collection: Collection, face_id: int) -> FaceInfo:
    """One stored face; :class:`NotFoundError` when there is none."""
    from facesearch import store as st

    with collection.session() as s:
        return FaceInfo.of(st.face_record(s, face_id))


def get_photo(collection: Collection, photo_id: int) -> PhotoInfo:
    """One stored photo; :class:`NotFoundError` when there is none."""
    from facesearch import store as st

    with collection.session() as s:
        p = st.photo_record(s, photo_id)
    return PhotoInfo(p.id, p.path, p.width, p.height, p.size, p.status.value, p.error, p.faces)


def photo_of_face(collection: Collection, face_id: int) -> PhotoInfo:
    """The photo a face was found in."""
    return get_photo(collection, get_face(collection, face_id).photo_id)


def assign_face(collection: Collection, face_id: int, person: PersonRef) -> FaceInfo:
    """Give a face to a person (a name is created if new; an id must exist): a manual label,
    replacing any earlier one."""
    name = person if isinstance(person, str) else get_person(collection, person).name
    _ = get_face(collection, face_id)
    collection.assign([int(face_id)], name)
    return get_face(collection, face_id)


def unassign_face(collection: Collection, face_id: int) -> FaceInfo:
    """Take a face's person away (it becomes unlabelled)."""
    _ = get_face(collection, face_id)
    collection.unassign([int(face_id)])
    return get_face(collection, face_id)


def list_faces(
    collection: Collection,
    *,
    detector_pass: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[FaceInfo]:
    """Stored faces by face id; ``detector_pass`` keeps those found that way (``default``,
    ``upscaled``: the fallback's second pass, ``aligned``: given as crops)."""
    from facesearch import store as st
    from facesearch.types import DETECTOR_PASSES

    _check_page(limit, offset)
    if detector_pass is not None and detector_pass not in DETECTOR_PASSES:
        raise ArgumentError(
            f"detector_pass must be one of {', '.join(DETECTOR_PASSES)}, got {detector_pass!r}"
        )
    with collection.session() as s:
        ids = st.face_page(s, detector_pass=detector_pass, limit=limit, offset=offset)
        total = st.face_pass_count(s, detector_pass)
    return _face_page(collection, ids, total, limit, offset)


def reject_face(collection: Collection, face_id: int, person: PersonRef) -> FaceInfo:
    """ "Face ``face_id`` is not ``person``", for good: the face loses that label and leaves a
    cluster named so; no later clustering run (full or incremental), proposal, ``assign``,
    identification verdict or suggestion gives it to them again. Giving the face to the
    person by hand (:func:`assign_face`) lifts it. Returns the face."""
    from facesearch.collection_clusters import reject_face as run

    run(collection, int(face_id), person)
    return get_face(collection, face_id)


def reject_cluster(collection: Collection, cluster_id: int, person: PersonRef) -> int:
    """ "Cluster ``cluster_id`` is not ``person``": :func:`reject_face` for each of its faces,
    in one transaction (no to the suggestion "is this group P?"; the faces stay together).
    :class:`CollectionError` for the cluster named so. Returns the rejections added."""
    from facesearch.collection_clusters import reject_cluster as run

    return run(collection, int(cluster_id), person)


def unreject_face(
    collection: Collection,
    face_id: int,
    person: PersonRef | None = None,
    *,
    cluster_id: int | None = None,
) -> FaceInfo:
    """Lift a rejection: of ``person``, or (``cluster_id``) of a cluster the face was taken
    out of. Labels and clusters stay as they are. :class:`NotFoundError` when there is no such
    rejection. Returns the face."""
    from facesearch.collection_clusters import unreject_face as run

    if (person is None) == (cluster_id is None):
        raise ArgumentError("give exactly one of person and cluster_id")
    run(collection, int(face_id), person, cluster_id=cluster_id)
    return get_face(collection, face_id)


def list_rejections(
    collection: Collection,
    *,
    face_id: int | None = None,
    person: PersonRef | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[RejectionInfo]:
    """Rejections by face id, optionally only those of one face or of one person."""
    from facesearch import store as st

    _check_page(limit, offset)
    with collection.session() as s:
        pid = None if person is None else st.find_person(s, person).id
        fid = None if face_id is None else st.face_record(s, int(face_id)).face_id
        rows = st.rejection_records(s, face_id=fid, person_id=pid, limit=limit, offset=offset)
        total = st.rejection_count(s, face_id=fid, person_id=pid)
    items = tuple(
        RejectionInfo(r.face_id, r.person_id, r.person, r.cluster_id, r.created_at.isoformat())
        for r in rows
    )
    return Page(items, total, limit, offset)


def suggestions(
    collection: Collection,
    *,
    limit: int = 50,
    offset: int = 0,
    samples: int = 6,
    cluster_threshold: float | None = None,
    face_threshold: float | None = None,
) -> Page[Suggestion]:
    """The queue of "is this P?" questions, most confident first: unnamed clusters within
    ``cluster_threshold`` (average linkage; default the verification tau) of a labelled
    person, and unlabelled faces in no cluster whose nearest labelled face is within
    ``face_threshold`` (default the identification tau); rejections honoured. Computed from
    every face on each call (as a report)."""
    from facesearch.collection_clusters import suggestions as run

    _check_page(limit, offset)
    if not 0 <= samples <= MAX_LIMIT:
        raise ArgumentError(f"samples must be in 0..{MAX_LIMIT}, got {samples}")
    for name, t in (("cluster_threshold", cluster_threshold), ("face_threshold", face_threshold)):
        if t is not None and not 0.0 < t <= 4.0:
            raise ArgumentError(f"{name} is a distance d in (0, 4], got {t}")
    items = run(
        collection, cluster_threshold=cluster_threshold, face_threshold=face_threshold,
        samples=samples,
    )  # fmt: skip
    return Page(tuple(items[offset : offset + limit]), len(items), limit, offset)


def delete_face(collection: Collection, face_id: int) -> None:
    """Delete a face: its row and its vector (the photo stays)."""
    _ = get_face(collection, face_id)
    collection.remove_faces([int(face_id)])


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ArgumentError(f"limit must be in 1..{MAX_LIMIT}, got {limit}")
    if offset < 0:
        raise ArgumentError(f"offset must be >= 0, got {offset}")


def _face_page(
    collection: Collection, ids: list[int], total: int, limit: int, offset: int
) -> Page[FaceInfo]:
    from facesearch import store as st

    with collection.session() as s:
        records = st.faces_by_ids(s, ids)
    items = tuple(FaceInfo.of(records[i]) for i in ids if i in records)
    return Page(items, total, limit, offset)


# -- people --------------------------------------------------------------------------------------


def list_people(collection: Collection, *, limit: int = 100, offset: int = 0) -> Page[PersonInfo]:
    """People by name, with face and photo counts."""
    from facesearch import store as st

    _check_page(limit, offset)
    with collection.session() as s:
        rows = st.people(s, limit=limit, offset=offset)
        total = st.people_count(s)
    return Page(
        tuple(PersonInfo(p.id, p.name, p.faces, p.photos) for p in rows), total, limit, offset
    )


def get_person(collection: Collection, person: PersonRef) -> PersonInfo:
    """One person by id or name; :class:`NotFoundError` when unknown."""
    from facesearch import store as st

    with collection.session() as s:
        p = st.find_person(s, person)
        (row,) = st.people(s, ids=[p.id])
    return PersonInfo(row.id, row.name, row.faces, row.photos)


def create_person(collection: Collection, name: str, *, face_ids: Sequence[int] = ()) -> PersonInfo:
    """A new person ``name``, optionally given faces (manual labels); :class:`ArgumentError`
    when the name exists or is not a valid name."""
    from facesearch import store as st

    with collection.lock(), collection.session() as s:
        if st.get_person(s, name) is not None:
            raise ArgumentError(f"a person named {name!r} exists already")
        st.ensure_person(s, name)
        if face_ids:
            st.assign(s, face_ids, name, st.LabelSource.MANUAL)
    return get_person(collection, name)


def person_faces(
    collection: Collection, person: PersonRef, *, limit: int = 100, offset: int = 0
) -> Page[FaceInfo]:
    """A person's faces by face id."""
    from facesearch import store as st

    _check_page(limit, offset)
    with collection.session() as s:
        pid = st.find_person(s, person).id
        ids = st.person_face_page(s, pid, limit=limit, offset=offset)
        total = st.person_face_count(s, pid)
    return _face_page(collection, ids, total, limit, offset)


def rename_person(collection: Collection, person: PersonRef, new_name: str) -> PersonInfo:
    """Rename a person (``new_name`` must not exist: :func:`merge_people` instead)."""
    old = get_person(collection, person)
    collection.rename_person(old.name, new_name)
    return get_person(collection, old.id)


def merge_people(collection: Collection, source: PersonRef, into: PersonRef) -> int:
    """Move ``source``'s faces to ``into`` and delete ``source``; returns the faces moved."""
    a, b = get_person(collection, source), get_person(collection, into)
    return collection.merge_people(a.name, b.name)


def delete_person(
    collection: Collection, person: PersonRef, *, delete_faces: bool = False
) -> PersonDeleted:
    """Delete a person; their faces stay, unlabelled, unless ``delete_faces`` (rows and
    vectors removed; the photos stay)."""
    with collection.lock():
        p = get_person(collection, person)
        removed = collection.delete_person(p.name, faces=delete_faces)
    return PersonDeleted(p.id, p.name, 0 if delete_faces else p.faces, len(removed))


# -- clusters ------------------------------------------------------------------------------------


def cluster(
    collection: Collection,
    *,
    config: ClusterConfig | None = None,
    full: bool = False,
    assign: bool = False,
) -> ClusterReport:
    """Cluster the faces without a person; incremental (only faces new since the last run)
    unless ``full``. ``assign``: label the clusters proposed as a person. Cluster ids are
    stable: a full run keeps the id of a cluster it finds again (Jaccard >= 0.5), an
    incremental one every id; rejections (:func:`reject_face`) are honoured by both. Returns
    the report (every face once, clusters with their cohesion) with the run's ``stats`` and
    ``assigned``."""
    import dataclasses

    from facesearch import collection_clusters as clustering

    with collection.lock():
        stats: RunStats = clustering.cluster_collection(collection, config, full=full)
        rep = clustering.report(collection)
        assigned = 0
        if assign and rep.clusters:
            assigned = clustering.apply_proposals(collection, rep)
            rep = clustering.report(collection)
    return dataclasses.replace(rep, stats=stats, assigned=assigned)


def cluster_report(collection: Collection) -> ClusterReport:
    """Every face of the collection once: clusters (largest first, with their person or the
    proposed one), labelled faces in no cluster by person, then faces alone."""
    from facesearch import collection_clusters as clustering

    return clustering.report(collection)


def export_clusters(report: ClusterReport, folder: str | os.PathLike[str]) -> dict[str, int]:
    """Write JPEG face crops of a report, a folder per cluster and per person (``folder`` new
    or empty). Returns ``{folder name: crops written}``."""
    from facesearch import collection_clusters as clustering

    return clustering.export(report, Path(folder))


def list_clusters(
    collection: Collection,
    *,
    unnamed: bool | None = True,
    limit: int = 50,
    offset: int = 0,
    samples: int = 6,
) -> Page[ClusterInfo]:
    """Stored clusters, largest first, each with up to ``samples`` face ids. ``unnamed``:
    ``True`` only clusters without a person (the default), ``False`` only named, ``None`` all."""
    from facesearch import store as st

    _check_page(limit, offset)
    if not 0 <= samples <= MAX_LIMIT:
        raise ArgumentError(f"samples must be in 0..{MAX_LIMIT}, got {samples}")
    with collection.session() as s:
        rows = st.cluster_summaries(s, unnamed=unnamed, limit=limit, offset=offset, samples=samples)
        total = st.cluster_count(s, unnamed=unnamed)
    return Page(tuple(ClusterInfo.of(c) for c in rows), total, limit, offset)


def get_cluster(collection: Collection, cluster_id: int, *, samples: int = 6) -> ClusterInfo:
    """One stored cluster; :class:`NotFoundError` when there is none."""
    from facesearch import store as st

    with collection.session() as s:
        rows = st.cluster_summaries(s, ids=[int(cluster_id)], samples=samples)
    if not rows:
        raise NotFoundError("cluster", cluster_id, f"no cluster with id {cluster_id}")
    return ClusterInfo.of(rows[0])


def cluster_faces(
    collection: Collection, cluster_id: int, *, limit: int = 100, offset: int = 0
) -> Page[FaceInfo]:
    """A cluster's faces by face id."""
    from facesearch import store as st

    _check_page(limit, offset)
    total = get_cluster(collection, cluster_id, samples=0).size
    with collection.session() as s:
        ids = st.cluster_face_page(s, int(cluster_id), limit=limit, offset=offset)
    return _face_page(collection, ids, total, limit, offset)


def name_cluster(collection: Collection, cluster_id: int, person: PersonRef) -> int:
    """Turn a cluster into a person (new, or an existing one gets its faces); returns the
    faces labelled. The cluster is kept by later runs."""
    from facesearch.collection_clusters import name_cluster as run

    name = person if isinstance(person, str) else get_person(collection, person).name
    return run(collection, cluster_id, name)


def merge_clusters(collection: Collection, cluster_ids: Sequence[int]) -> int:
    """Merge clusters into the first id (kept by later runs); returns the merged size."""
    from facesearch.collection_clusters import merge_clusters as run

    return run(collection, cluster_ids)


def split_cluster(
    collection: Collection,
    cluster_id: int,
    *,
    face_ids: Sequence[int] | None = None,
    threshold: float | None = None,
    linkage: str = "average",
) -> list[int]:
    """Split a cluster. ``face_ids``: those faces leave it for good (alone; later runs never
    put them back, and when the cluster is named they are not its person either); else
    without ``threshold`` every face goes back to being alone, with it they are re-clustered
    at that stricter threshold into new clusters. Returns the ids of the clusters made or
    kept."""
    from facesearch.collection_clusters import remove_from_cluster
    from facesearch.collection_clusters import split_cluster as run

    threshold = _threshold(threshold)
    if face_ids is not None:
        if threshold is not None:
            raise ArgumentError("give face_ids or threshold, not both")
        return remove_from_cluster(collection, cluster_id, face_ids)
    return run(collection, cluster_id, threshold, linkage)


def evaluate_clustering(
    folder: str | os.PathLike[str] | None = None,
    *,
    embeddings: str | os.PathLike[str] | None = None,
    config: ClusterConfig | None = None,
    models: Models | None = None,
) -> ClusterEvaluation:
    """Cluster a folder of photos (one subfolder per person) without its labels and score it
    against the subfolders (pairwise and BCubed precision / recall / F). The largest face of
    each photo takes part, embedded with ``models``' model. ``embeddings``: instead, an ``.npz``
    with ``xb`` ``(N, D)``, ``labels`` ``(N,)`` and optional ``photo_ids``, made by ``models``'
    model. The default thresholds start from that model's base tau unless ``config.tau``."""
    import dataclasses
    import tempfile

    from facesearch.cluster_algorithms import ClusterConfig
    from facesearch.collection_clusters import (
        evaluate_clusters,
        labelled_by_folder,
        load_labelled_npz,
    )

    if (folder is None) == (embeddings is None):
        raise ArgumentError("give a folder (one subfolder per person) or an embeddings file")
    m = _models(models)
    config = config or ClusterConfig()
    if config.tau is None:
        config = dataclasses.replace(config, tau=m.threshold("base"))
    if embeddings is not None:
        xb, true, photos = load_labelled_npz(embeddings)
        return evaluate_clusters(xb, true, config, photo_ids=photos)
    assert folder is not None
    with (
        tempfile.TemporaryDirectory(prefix="facesearch-eval-") as tmp,
        open_collection(tmp, "eval", create=True) as col,
    ):
        index_paths(col, [folder], models=m)
        xb, true, photos = labelled_by_folder(col, Path(folder))
    return evaluate_clusters(xb, true, config, photo_ids=photos)


# -- models ----------------------------------------------------------------------------------------


def list_models(collection: Collection) -> ModelList:
    """The registered models; the active one embeds queries."""
    from facesearch import store as st
    from facesearch.collection import ACTIVE_MODEL_KEY

    with collection.session() as s:
        active = st.get_meta(s, ACTIVE_MODEL_KEY)
        models = st.list_models(s)
        space = set(st.model_space(s, active)[1]) if active is not None else set()
    entries = tuple(
        ModelEntry(m.name, m.dim, m.faces, m.compatible_with, m.name == active, m.name in space,
                   m.path, m.threshold)
        for m in models
    )  # fmt: skip
    return ModelList(active, entries)


def _entry(collection: Collection, name: str) -> ModelEntry:
    return next(m for m in list_models(collection).models if m.name == name)


def add_model(collection: Collection, model: str | os.PathLike[str]) -> ModelEntry:
    """Register ``model`` (``sface``, ``sface+dlib`` or a model file compatible with the
    active model) and make it embed queries; :class:`IncompatibleModelError` otherwise,
    nothing changed."""
    from facesearch.model_upgrade import add_model as run

    return _entry(collection, run(collection, model).name)


def use_model(collection: Collection, name: str) -> ModelEntry:
    """Make the registered model ``name`` (compatible with the active one) embed queries."""
    from facesearch.model_upgrade import use_model as run

    return _entry(collection, run(collection, name).name)


def reindex(
    collection: Collection,
    model: str,
    *,
    models: Models | None = None,
    re_embed_all: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: Callable[[ReindexProgress], None] | None = None,
    should_stop: StopSignal | None = None,
) -> ReindexReport:
    """Re-embed the stored faces with ``model`` (``sface``, ``sface+dlib`` or a file), from
    the stored photos and landmarks. A compatible model is active at once; an incompatible
    one needs ``re_embed_all`` and becomes active when every face is done. Committed every
    ``batch_size`` photos, where ``should_stop`` is checked."""
    from facesearch.image import default_workers
    from facesearch.model_upgrade import REINDEX_BATCH, ReindexSettings, reindex_collection

    settings = ReindexSettings(
        batch_size=batch_size or REINDEX_BATCH,
        workers=workers or default_workers(),
        re_embed_all=re_embed_all,
    )
    with collection.lock():  # before loading the network: a second writer is refused at once
        embedder = _models(models).for_model(model).pipeline().embedder
        return reindex_collection(
            collection,
            embedder,
            settings,
            source=None if model in SHIPPED_MODELS else model,
            progress=progress,
            should_stop=_stopper(should_stop),
        )


# -- evaluation ------------------------------------------------------------------------------------


def evaluate_lfw(
    pairs: str | os.PathLike[str],
    images: str | os.PathLike[str],
    *,
    models: Models | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The LFW verification protocol over a pairs file (View 1 or View 2) and the images
    folder: 10-fold accuracy, VAL@FAR=1e-3, ROC AUC, thresholds. ``progress(done, total)``:
    images embedded so far."""
    from facesearch.evaluate import read_pairs
    from facesearch.lfw import evaluate_pairs

    pipe = _models(models).pipeline()
    count = {"done": 0, "total": 0}

    def total(n: int) -> None:
        count["total"] = n

    def step(n: int) -> None:
        count["done"] += n
        if progress is not None:
            progress(count["done"], count["total"])

    return evaluate_pairs(
        pipe,
        read_pairs(os.fspath(pairs)),
        Path(images),
        default_threshold=pipe.threshold("verify"),
        progress=step,
        on_total=total,
    )


# -- training --------------------------------------------------------------------------------------


def train_layers() -> tuple[str, ...]:
    """The embedder's layer names, first to last (``freeze_until`` takes one of them)."""
    from facesearch.train.split import STAGES

    return tuple(STAGES)


def check_train_layer(name: str) -> None:
    """:class:`ArgumentError` unless ``name`` is a layer ``freeze_until`` accepts."""
    from facesearch.train.split import stage_index

    try:
        stage_index(name)
    except ValueError as exc:
        raise ArgumentError(str(exc)) from exc


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: TrainSettings,
    *,
    crop_mode: CropMode = "detect",
    cache: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> TrainRun:
    """Fine-tune the embedder on ``data`` (one subfolder of photos per person) and write the
    model file ``out`` (its parent, data, settings and calibrated threshold recorded).
    ``threads``: torch's intra-op threads for the run."""
    import torch

    from facesearch.train.run import train_folder

    if threads:
        torch.set_num_threads(threads)
    return train_folder(
        data, out, settings, crop_mode=crop_mode, cache=cache, progress=progress
    )  # fmt: skip


__all__ = [
    "MAX_LIMIT",
    "ArgumentError",
    "ClusterInfo",
    "CollectionError",
    "CollectionInfo",
    "CollectionRef",
    "EnrollReport",
    "FaceInfo",
    "FacePair",
    "FacesearchError",
    "IdentifyResult",
    "Identification",
    "ImageError",
    "ImageInput",
    "IncompatibleModelError",
    "LockedError",
    "ModelEntry",
    "ModelError",
    "ModelList",
    "Models",
    "NoFaceError",
    "NotFoundError",
    "Page",
    "PersonDeleted",
    "PersonInfo",
    "PairVerification",
    "PersonRef",
    "PhotoDetections",
    "PhotoIdentification",
    "PhotoInfo",
    "PipelineConfig",
    "RejectionInfo",
    "SchemaUpgrade",
    "SimilarFaces",
    "StopSignal",
    "Verification",
    "add_model",
    "assign_face",
    "check_train_layer",
    "cluster",
    "cluster_faces",
    "cluster_report",
    "collection_info",
    "create_person",
    "delete_face",
    "delete_person",
    "detect",
    "detect_photos",
    "enroll",
    "evaluate_clustering",
    "evaluate_lfw",
    "export_clusters",
    "get_cluster",
    "get_face",
    "get_person",
    "get_photo",
    "identify",
    "identify_photos",
    "identify_face",
    "index_paths",
    "iterate",
    "list_clusters",
    "list_faces",
    "list_models",
    "list_people",
    "list_rejections",
    "load",
    "merge_clusters",
    "merge_people",
    "name_cluster",
    "open_collection",
    "person_faces",
    "photo_faces",
    "photo_of_face",
    "read_pairs_csv",
    "reindex",
    "reject_cluster",
    "reject_face",
    "rename_person",
    "search_faces",
    "set_vectors",
    "split_cluster",
    "suggestions",
    "train",
    "train_layers",
    "unassign_face",
    "unreject_face",
    "upgrade_schema",
    "use_model",
    "verify",
    "verify_pairs",
]
