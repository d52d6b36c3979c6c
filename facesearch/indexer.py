"""Index photo folders into a collection: walk, plan, decode, detect + embed, commit.

:func:`index_paths` is the engine behind ``facesearch index PATH...``. It prints nothing: it
logs through :mod:`logging`, reports progress through a callback and returns an
:class:`IndexReport`.

Walking
-------
Each PATH is a folder (walked recursively, sorted) or a file. Symbolic links are followed, to
files and to folders (a link to a folder already walked from this PATH, such as a link cycle,
is skipped); a link whose target is gone is skipped and counted (``broken_links``). Hidden
files and folders (name starting with ``.``) are skipped. What is an image is decided by the
file, not its name: a suffix of :data:`facesearch.image.SUPPORTED_SUFFIXES` is taken as one,
any other file is taken when its first bytes are those of a supported format
(:func:`facesearch.image.sniff_format`; counted in ``by_content``), and the rest is skipped
and counted (``skipped_other``, listed at ``-vv``). A file named explicitly is indexed even if
hidden. ``nothing_indexed`` lists the PATHs that hold files none of which could be indexed.

Paths
-----
One rule everywhere (indexing, ``--labels folders`` and label CSVs, ``--prune``, moved files,
``enroll``, ``evaluate cluster``): a photo is stored under the path it was found by, made
absolute (``os.path.abspath``: ``..`` and ``.`` collapsed) but **not resolved**: a photo found
through a symbolic link keeps the link's path, and ``--labels folders`` names it after the
folder the link is in. The same file reached by two paths is two photos (like a copy). A
stored photo whose path no longer leads to a file (deleted, renamed, or a link now broken)
is gone: moved when its content turns up at a new path, pruned by ``--prune``.

Incremental runs
----------------
For every file found, in this order:

``unchanged``  a stored photo has the same path, size and mtime: the file is not even read.
``touched``    same path, other size or mtime, same content (sha256 of the bytes): only the
               size and mtime are updated (counted as unchanged).
``moved``      a new path whose content hash is that of a stored photo whose file no longer
               exists (anywhere): the stored photo takes the new path and keeps its faces,
               labels and clusters; nothing is decoded.
``updated``    same path, other content: the photo is decoded again and replaces the old row
               (old faces, labels and vectors removed).
``new``        anything else (including a copy of a photo that still exists elsewhere).

``prune``: stored photos *under the given PATHs* whose file no longer exists (and that were
not moved) are deleted with their faces and vectors. Without it they are only counted
(``missing``). Photos stored from other folders are never pruned by a run on these PATHs.

A photo that cannot be read or processed is stored with status ``failed`` and its error text,
and reported; the run goes on. A failed photo whose file has not changed is not retried.

Speed
-----
Files are read, hashed and decoded by ``workers`` threads (Pillow and hashlib release the GIL)
while the pipeline's workers (:meth:`FacePipeline.workers`, one per core, one thread each)
run the networks on tasks of a few photos: up to :data:`DETECT_BATCH` photos or
:data:`DETECT_PIXELS` pixels per round, cut into one task per worker. Up to two tasks per
worker are out at a time, and results are taken oldest first, so photos are stored in the order
read while the workers never wait for one another or for a commit. Photos are decoded at full
resolution: the detector downscales internally, and alignment samples the full-resolution
pixels, which is what a query does too (so a photo indexed and the same photo queried give the
same embedding).

Given :class:`~facesearch.pipeline.Models` (or a function that builds the pipeline), the
networks load only once a photo needs them, and the read threads read ahead meanwhile; the
engine is chosen then for the photos left (:meth:`PipelineConfig.resolved`).

Commits and interruptions
-------------------------
Results are committed to SQL every ``batch_size`` photos (one transaction each). The writer
lock is held for the whole run (a second writer waits
:attr:`~facesearch.collection.Collection.lock_timeout` seconds, then is refused). The vector
index file is saved every :data:`CHECKPOINT_SECONDS` and at the end. If the process is killed,
everything committed stays; the next run skips those photos (unchanged) and the collection
rebuilds the vector index from SQL if the file is behind. Ctrl-C stops the run cleanly after the
current step (``IndexReport.interrupted``); the open batch is not committed.

Labels
------
``labels="folders"``: the name of the photo's parent folder is the person
(``photos/Ada_Lovelace/1.jpg`` -> ``Ada_Lovelace``, taken literally). ``labels=FILE.csv``: rows
``path,person`` (an optional header row ``path,person``; paths relative to the CSV's folder or
absolute); photos not in the file stay unlabelled.

A labelled photo gives its label to **one** face, the *clearly dominant* one: its only face,
or the largest face (box area) when it is at least :data:`DOMINANCE_RATIO` times the area of
the second largest. Otherwise no face gets the label and the photo is counted in
``labels_skipped``. Labels are only given to photos none of whose faces has a person yet:
re-running with labels labels photos indexed earlier without them, and never overrides a person
set by hand or by an earlier run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facesearch.collection import CHECKPOINT_SECONDS, StopRequested
from facesearch.errors import FacesearchError, ImageError, require_positive
from facesearch.image import (
    SUPPORTED_SUFFIXES,
    PixelBudget,
    decode_pixels,
    default_decode_megapixels,
    default_workers,
    image_size,
    load_image,
    load_image_reduced,
    open_file,
    sniff_format,
)
from facesearch.interrupts import critical_section
from facesearch.model_upgrade import register_pipeline_model
from facesearch.pipeline import Models
from facesearch.types import Face

if TYPE_CHECKING:
    from facesearch.collection import Collection
    from facesearch.pipeline import FacePipeline
    from facesearch.store import NewPhoto, PhotoStat

logger = logging.getLogger(__name__)

#: The largest face gets a photo's label when its area is at least this many times the second's.
DOMINANCE_RATIO: float = 2.0
#: Photos per round of tasks (at most; fewer when ``batch_size`` is smaller), cut into one task
#: per pipeline worker.
DETECT_BATCH: int = 16
#: A round is closed early when its photos hold this many pixels: bounds memory, and smaller
#: tasks keep both workers busy (bench/results/history.md).
DETECT_PIXELS: int = 24_000_000
#: Default photos per SQL transaction.
COMMIT_BATCH: int = 64
#: While the pipeline loads (index_paths with a loader), up to this many photos, or photos
#: whose files hold this many bytes, are read and decoded ahead.
READ_AHEAD_PHOTOS: int = 256
READ_AHEAD_BYTES: int = 16 << 20
#: Bytes read at a time when hashing.
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """How :func:`index_paths` runs.

    ``labels``: ``None`` (unlabelled), ``"folders"`` or the path of a ``path,person`` CSV.
    ``prune``: delete stored photos under the PATHs whose file is gone. ``batch_size``: photos
    per SQL commit. ``workers``: decode threads. ``index_type``: ``auto`` | ``flat`` | ``ivf``
    to change the collection's setting, ``None`` to keep it. ``aligned``: every photo read is a
    face crop on the alignment template, stored with that one face, not detected
    (:meth:`FacePipeline.aligned_faces`; a photo of another shape is recorded as failed).
    """

    labels: str | None = None
    prune: bool = False
    batch_size: int = COMMIT_BATCH
    workers: int = field(default_factory=default_workers)
    index_type: str | None = None
    aligned: bool = False
    #: Read and hash every stored file again, even when its size and mtime are unchanged
    #: (a file edited in place with both kept, e.g. by a tool that restores the mtime).
    rehash: bool = False
    #: Megapixels being decoded or decoded and waiting for the networks, at most, across the
    #: read threads (a photo larger than that is decoded alone): bounds the memory of a run.
    decode_megapixels: float = field(default_factory=default_decode_megapixels)

    def __post_init__(self) -> None:
        require_positive(batch_size=self.batch_size, workers=self.workers)


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress event: ``done`` of ``total`` photos to process, ``faces`` found and
    ``failed`` photos (unreadable) so far."""

    total: int
    done: int
    faces: int
    failed: int = 0


@dataclass(slots=True)
class IndexReport:
    """What a run did. Photo counts are per file found; ``no_face`` is part of new + updated."""

    files: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    failed: int = 0
    no_face: int = 0
    faces_added: int = 0
    faces_upscaled: int = 0  # of faces_added: found by the fallback's upscaled pass
    labels_given: int = 0
    labels_skipped: int = 0
    labels_not_found: int = 0
    pruned: int = 0
    missing: int = 0
    skipped_hidden: int = 0
    skipped_other: int = 0
    by_content: int = 0  # of files: no image suffix, taken by their content
    broken_links: int = 0
    #: PATHs given that hold files of which none could be indexed (not images, or failed)
    nothing_indexed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Folders that could not be listed, ``(path, reason)``: their stored photos are kept.
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Photos decoded (or attempted) in this run."""
        return self.new + self.updated + self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "moved": self.moved,
            "failed": self.failed,
            "no_face": self.no_face,
            "faces_added": self.faces_added,
            "faces_upscaled": self.faces_upscaled,
            "labels_given": self.labels_given,
            "labels_skipped": self.labels_skipped,
            "labels_not_found": self.labels_not_found,
            "pruned": self.pruned,
            "missing": self.missing,
            "skipped_hidden": self.skipped_hidden,
            "skipped_other": self.skipped_other,
            "by_content": self.by_content,
            "broken_links": self.broken_links,
            "nothing_indexed": list(self.nothing_indexed),
            "seconds": round(self.seconds, 3),
            "interrupted": self.interrupted,
            "failures": [{"path": p, "error": e} for p, e in self.failures],
            "unreadable_folders": len(self.unreadable),
            "unreadable": [{"path": p, "error": e} for p, e in self.unreadable],
        }


# -- walking ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalkResult:
    """Files found by :func:`walk`: absolute paths, sorted per folder, no duplicates.

    ``by_content``: how many of ``files`` have no image suffix and were taken by their content.
    ``skipped_other``: files that are not images (by content); ``broken_links``: symbolic links
    whose target is gone. ``root_files[i]``: every file found under ``roots[i]`` (images,
    hidden, other, broken links).
    """

    files: tuple[str, ...]
    skipped_hidden: int
    skipped_other: int
    roots: tuple[str, ...]
    by_content: int = 0
    broken_links: int = 0
    root_files: tuple[int, ...] = ()
    #: Folders that could not be listed (permission denied, I/O error): ``(path, reason)``.
    unreadable: tuple[tuple[str, str], ...] = ()


def _supported(name: str) -> bool:
    return Path(name).suffix.lower() in SUPPORTED_SUFFIXES


class _Walk:
    """What :func:`walk` has found so far."""

    def __init__(self) -> None:
        self.files: dict[str, None] = {}
        self.hidden: set[str] = set()
        self.other: set[str] = set()
        self.broken: set[str] = set()
        self.by_content: set[str] = set()
        self.seen = 0  # files met under the current root

    def file(self, path: str, *, hidden: bool = False) -> None:
        self.seen += 1
        if hidden:
            self.hidden.add(path)
        elif not os.path.exists(path):  # a symbolic link whose target is gone
            self.broken.add(path)
            logger.debug("skipping %s: a symbolic link to nothing", path)
        elif _supported(path):
            self.files.setdefault(path)
        elif sniff_format(path) is not None:
            self.files.setdefault(path)
            self.by_content.add(path)
            logger.debug("%s: an image without an image suffix, taken by its content", path)
        else:
            self.other.add(path)
            logger.debug("skipping %s: not an image (by its content)", path)


def walk(paths: Iterable[str | os.PathLike[str]]) -> WalkResult:
    """Image files under ``paths`` (folders recursively, or files), see the module doc."""
    found = _Walk()
    roots: list[str] = []
    counts: list[int] = []
    unreadable: list[tuple[str, str]] = []

    def cannot_list(exc: OSError) -> None:
        where = os.fspath(exc.filename) if exc.filename is not None else "?"
        unreadable.append((where, exc.strerror or str(exc)))
        logger.warning("cannot read the folder %s: %s (its photos are skipped)", where, exc)

    for given in paths:
        root = os.path.abspath(os.fspath(given))
        roots.append(root)
        found.seen = 0
        if not os.path.isdir(root):
            found.file(root)
            counts.append(found.seen)
            continue
        walked = {_folder_id(root)}  # real folders, against link cycles and double walks
        for folder, dirnames, filenames in os.walk(root, onerror=cannot_list, followlinks=True):
            kept = []
            for d in sorted(dirnames):
                sub = os.path.join(folder, d)
                if d.startswith("."):
                    found.hidden.add(sub)
                    continue
                key = _folder_id(sub)
                if key is None or key in walked:
                    logger.debug("skipping %s: a link to a folder walked already", sub)
                    continue
                walked.add(key)
                kept.append(d)
            dirnames[:] = kept
            for name in sorted(filenames):
                found.file(os.path.join(folder, name), hidden=name.startswith("."))
        counts.append(found.seen)
    return WalkResult(
        tuple(found.files),
        len(found.hidden),
        len(found.other),
        tuple(roots),
        by_content=len(found.by_content),
        broken_links=len(found.broken),
        root_files=tuple(counts),
        unreadable=tuple(unreadable),
    )


def _folder_id(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of the folder ``path`` (links followed); ``None`` if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# -- labels -------------------------------------------------------------------------------------


def folder_label(path: str) -> str:
    """The person of ``path`` under ``--labels folders``: its parent folder's name.

    A folder name that is not valid UTF-8 (old disks and archives often hold Latin-1 names)
    is read as Windows-1252, then Latin-1, so ``Jos\\xe9`` names José.
    """
    name = os.path.basename(os.path.dirname(path))
    raw = os.fsencode(name)
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return name  # pragma: no cover - latin-1 decodes any bytes


def csv_rows(
    path: str | os.PathLike[str], header: Sequence[str], what: str
) -> Iterator[tuple[int, list[str]]]:
    """``(line number, cells stripped)`` of the non-empty rows of the UTF-8 CSV file ``path``,
    a first row equal to ``header`` (any case) left out. :class:`FacesearchError` naming the
    file (``what`` it is) when it cannot be read or is not a UTF-8 CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                cells = [c.strip() for c in row]
                if not any(cells):
                    continue
                if lineno == 1 and [c.lower() for c in cells[: len(header)]] == list(header):
                    continue
                yield lineno, cells
    except OSError as exc:
        raise FacesearchError(f"cannot read the {what} {path}: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FacesearchError(f"{path} is not a UTF-8 CSV file: {exc}") from exc


def csv_photo(csv_path: str | os.PathLike[str], cell: str) -> str:
    """The photo path of a CSV cell: relative paths from the CSV's folder, made absolute but
    not resolved (the path rule of the module doc)."""
    base = os.path.dirname(os.path.abspath(csv_path))
    return os.path.abspath(os.path.join(base, os.path.expanduser(cell)))


def read_labels_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """``absolute photo path -> person`` from a ``path,person`` CSV (optional header row).

    Relative paths are taken from the CSV's folder. Raises :class:`FacesearchError` naming the
    line for a malformed row, an empty name, or a path given twice with different people.
    """
    out: dict[str, str] = {}
    for lineno, cells in csv_rows(path, ("path", "person"), "labels file"):
        if len(cells) != 2 or not cells[0] or not cells[1]:
            raise FacesearchError(f"{path} line {lineno}: expected 'path,person', got {cells!r}")
        photo = csv_photo(path, cells[0])
        if out.get(photo, cells[1]) != cells[1]:
            raise FacesearchError(
                f"{path} line {lineno}: {cells[0]} is given to {out[photo]!r} and to {cells[1]!r}"
            )
        out[photo] = cells[1]
    return out


def dominant_face(areas: Sequence[float]) -> int | None:
    """Index of the face that gets a photo's label, or ``None`` (see the module doc).

    ``areas``: box areas of the photo's faces, in pixels^2.
    """
    if not areas:
        return None
    if len(areas) == 1:
        return 0
    order = np.argsort(-np.asarray(areas, dtype=np.float64), kind="stable")
    first, second = float(areas[order[0]]), float(areas[order[1]])
    return int(order[0]) if first >= DOMINANCE_RATIO * second else None


class _Labeler:
    def __init__(self, labels: str | None) -> None:
        self.mode = labels
        self.table: dict[str, str] | None = None
        if labels is not None and labels != "folders":
            self.table = read_labels_csv(labels)

    def __call__(self, path: str) -> str | None:
        if self.mode is None:
            return None
        if self.table is None:
            return folder_label(path) or None
        return self.table.get(path)


# -- the engine ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Job:
    """One file to read: where it is and what SQL knows of it."""

    path: str
    size: int
    mtime: float
    old: PhotoStat | None  # a stored photo at this path (changed since)
    label: str | None


@dataclass(slots=True)
class _Read:
    """What a worker thread made of a job."""

    job: _Job
    content_hash: str = ""
    image: np.ndarray | None = None
    error: str | None = None
    same_as_old: bool = False
    maybe_moved: bool = False
    pixels: int = 0  # of the decode budget, held until the decoded photo is dropped
    scale: float = 1.0  # full-resolution pixels per pixel of image (a reduced JPEG decode)
    full_size: tuple[int, int] = (0, 0)  # (width, height) of the photo at full resolution


def _sha256(path: str) -> tuple[bytes, str]:
    """``(bytes, sha256 hex)`` of a regular file (:class:`ImageError` for anything else)."""
    h = hashlib.sha256()
    chunks = []
    with open_file(path) as f:
        while chunk := f.read(_READ_CHUNK):
            h.update(chunk)
            chunks.append(chunk)
    return b"".join(chunks), h.hexdigest()


def _read(
    job: _Job,
    moved_hashes: frozenset[str] | set[str],
    budget: PixelBudget | None = None,
    ticket: int = -1,
    long_side: int | None = None,
    aligned: bool = False,
    *,
    decode: bool = True,
) -> _Read:
    """Worker: read, hash and (unless unchanged or moved, or ``decode`` is false) decode one
    file.

    With ``budget``, the decode waits for ``ticket``'s turn and its pixels (the result holds
    them in ``pixels`` until the photo is dropped); a read that decodes nothing passes its turn.
    With ``long_side``, a JPEG far larger than that is decoded reduced (DCT scaling) to a long
    side still ``>= long_side`` (:func:`facesearch.pipeline.reduced_decode_side`).
    ``aligned``: the file must be a face crop on the template (never decoded reduced).
    """
    out = _Read(job)
    try:
        _decode(out, job, moved_hashes, budget, ticket, long_side, aligned, decode)
    finally:
        if budget is not None and not out.pixels:
            budget.skip(ticket)
    return out


def _decode(
    out: _Read,
    job: _Job,
    moved_hashes: frozenset[str] | set[str],
    budget: PixelBudget | None,
    ticket: int,
    long_side: int | None = None,
    aligned: bool = False,
    decode: bool = True,
) -> None:
    try:
        data, out.content_hash = _sha256(job.path)
    except ImageError as exc:
        out.error = exc.reason
        return
    except OSError as exc:
        out.error = f"cannot read the file ({exc.strerror or exc})"
        return
    if job.old is not None and job.old.content_hash == out.content_hash:
        out.same_as_old = True
        return
    if out.content_hash in moved_hashes:
        out.maybe_moved = True
        return
    if not decode:
        return
    if budget is not None:
        try:
            pixels = decode_pixels(data, long_side) if data else 0
        except ImageError:
            pixels = 0  # the decode below says what is wrong
        out.pixels = budget.acquire(ticket, pixels)
    try:
        source = data or job.path
        if long_side is None or aligned:
            out.image = load_image(source)
        else:
            out.image, out.scale = load_image_reduced(source, long_side)
        height, width = out.image.shape[:2]
        if out.scale != 1.0:  # the oriented full size, from the header
            width, height = image_size(source)
        out.full_size = (int(width), int(height))
        if aligned:
            from facesearch.align import template_landmarks

            template_landmarks(out.image.shape[1], out.image.shape[0])  # ValueError: not a crop
    except ValueError as exc:
        out.image, out.error = None, str(exc)
    except ImageError as exc:
        out.error = exc.reason
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        out.error = f"{type(exc).__name__}: {exc}"
    if out.image is None and budget is not None and out.pixels:
        budget.release(out.pixels)
        out.pixels = 0


def _open_workers(
    stack: contextlib.ExitStack, pipeline: FacePipeline
) -> Callable[..., Future[object]]:
    """The pipeline's workers, open until ``stack`` closes."""
    workers = pipeline.workers()
    submit = workers.__enter__()
    stack.push(workers.__exit__)
    return submit


def _at_full_size(faces: Sequence[Face], scale: float) -> tuple[Face, ...]:
    """Faces found in a photo decoded at 1/``scale``, in full-resolution pixels."""
    if scale == 1.0:
        return tuple(faces)
    out = []
    for f in faces:
        d = f.detection
        det = dataclasses.replace(
            d,
            box=(d.box[0] * scale, d.box[1] * scale, d.box[2] * scale, d.box[3] * scale),
            landmarks=tuple((x * scale, y * scale) for x, y in d.landmarks),  # type: ignore[arg-type]
        )
        out.append(dataclasses.replace(f, detection=det))
    return tuple(out)


def _decode_side(pipeline: object) -> int:
    """The long side reduced decodes keep for ``pipeline`` (its detector's settings when they
    are known, else the defaults)."""
    from facesearch.pipeline import reduced_decode_side

    config = getattr(pipeline, "config", None)
    return reduced_decode_side(getattr(config, "detector", None))


class _Run:
    """State of one :func:`index_paths` call (main thread only)."""

    def __init__(
        self,
        collection: Collection,
        pipeline: FacePipeline | Models | Callable[[], FacePipeline],
        settings: IndexSettings,
        progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.col = collection
        # models or a function that builds the pipeline: load_pipeline, when first needed
        self.loader = pipeline if isinstance(pipeline, Models) or callable(pipeline) else None
        self.pipe: FacePipeline | None = None
        self.should_stop = should_stop
        self.budget: PixelBudget | None = None  # the decode budget of the reads (_index)
        self.decode_side = _decode_side(pipeline)  # reduced JPEG decodes keep this long side
        self.jobs: list[_Job] = []  # every file to read, in order
        self.settings = settings
        self.progress = progress
        self.report = IndexReport()
        self.pending: list[NewPhoto] = []
        self.pending_stats: list[tuple[bool, bool]] = []  # (updated, failed) per pending photo
        self.batch: list[_Read] = []  # the open task
        self.batch_pixels = 0
        self.inflight: deque[tuple[list[_Read], Future[Any] | None]] = deque()
        self.submit: Callable[..., Future[Any]] | None = None
        self.stack: contextlib.ExitStack | None = None  # holds the pipeline's workers open
        self.task_photos = self.task_pixels = self.max_inflight = 1
        self.total = 0
        self.done = 0
        self.faces = 0
        self.last_checkpoint = time.monotonic()
        self.indexed: set[str] = set()  # paths stored as photos read (ok or without a face)
        if self.loader is None:
            self.set_pipeline(pipeline)  # type: ignore[arg-type]

    def load_pipeline(self, first: _Job) -> None:
        """Build the pipeline (for the photos from ``first`` on), register its model and open
        its workers on ``stack``."""
        assert self.loader is not None
        if isinstance(self.loader, Models):
            left_jobs = self.jobs[self.jobs.index(first) :] if first in self.jobs else []
            megabytes = sum(j.size for j in left_jobs) / 1e6
            pipeline = self.loader.pipeline(photos=len(left_jobs), megabytes=megabytes)
        else:
            pipeline = self.loader()
        register_pipeline_model(self.col, pipeline)
        self.set_pipeline(pipeline)
        assert self.stack is not None, "the pipeline is loaded inside _index"
        self.submit = _open_workers(self.stack, pipeline)

    def set_pipeline(self, pipeline: FacePipeline) -> None:
        """Photos go to the pipeline's workers in tasks of a few photos; up to
        ``max_inflight`` tasks are out at a time, so the workers never wait for each other or
        for a commit."""
        self.pipe = pipeline
        workers = max(1, int(getattr(pipeline, "threads", 1) or 1))
        self.task_photos = max(1, min(DETECT_BATCH, self.settings.batch_size) // workers)
        self.task_pixels = max(1, DETECT_PIXELS // workers)
        self.max_inflight = 2 * workers

    # -- progress -----------------------------------------------------------------------------

    def _tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(Progress(self.total, self.done, self.faces, self.report.failed))

    # -- decoded photos -> NewPhoto -----------------------------------------------------------

    def add_read(self, r: _Read) -> None:
        """A photo read: into the open task (or, unreadable, straight into the queue of
        results, behind the photos before it)."""
        if r.image is not None and self.pipe is None:
            self.load_pipeline(r.job)
        if r.image is None:
            self.send_task()
            self.inflight.append(([r], None))
        else:
            self.batch.append(r)
            self.batch_pixels += int(r.image.shape[0]) * int(r.image.shape[1])
            if len(self.batch) >= self.task_photos or self.batch_pixels >= self.task_pixels:
                self.send_task()
        self.collect(wait=False)

    def send_task(self) -> None:
        """Hand the open task (photos) to a pipeline worker."""
        batch, self.batch, self.batch_pixels = self.batch, [], 0
        if not batch:
            return
        assert self.submit is not None and self.pipe is not None, "sent inside _index's workers"
        images = [r.image for r in batch]
        self.inflight.append((batch, self.submit(self.faces_batch, images)))

    def faces_batch(self, images: list[np.ndarray]) -> list[list[Face]]:
        """The faces of decoded photos: detected, or (``aligned``) each photo's one face."""
        assert self.pipe is not None
        if self.settings.aligned:
            return [[f] for f in self.pipe.aligned_faces(images)]
        return self.pipe.faces_batch(images)

    def collect(self, *, wait: bool) -> None:
        """Results of finished tasks, oldest first (photos are queued in the order read).

        ``wait=False``: take what is done, and wait only while more than
        :attr:`max_inflight` tasks are out (this bounds memory). ``wait=True``: all of them.
        """
        while self.inflight:
            batch, fut = self.inflight[0]
            pending = fut is not None and not fut.done()
            if pending and not wait and len(self.inflight) <= self.max_inflight:
                return
            self.inflight.popleft()
            self._finish(batch, fut)

    def _finish(self, batch: list[_Read], fut: Future[Any] | None) -> None:
        if fut is None:  # not decoded: recorded with its error
            for r in batch:
                self._queue_photo(r, (), None)
            self._tick(len(batch))
            return
        try:
            results: list[list[Face] | str] = list(fut.result())
        except Exception as exc:  # noqa: BLE001 - isolate the photo that fails
            logger.debug("task of %d photos failed (%s): one by one", len(batch), exc)
            results = []
            assert self.pipe is not None
            for r in batch:
                try:
                    results.append(self.faces_batch([r.image])[0])  # type: ignore[list-item]
                except Exception as one:  # noqa: BLE001
                    results.append(f"processing failed ({type(one).__name__}: {one})")
        for r, res in zip(batch, results, strict=True):
            if isinstance(res, str):
                r.error, r.image = res, None
                self._queue_photo(r, (), None)
            else:
                self._queue_photo(r, _at_full_size(res, r.scale), r.full_size)
            r.image = None
            self.release(r)
        self._tick(len(batch))

    def release(self, r: _Read) -> None:
        """``r``'s decoded photo is dropped: its pixels go back to the decode budget."""
        if r.pixels and self.budget is not None:
            self.budget.release(r.pixels)
        r.pixels = 0

    def finish(self) -> None:
        """Send the open task and take every result."""
        self.send_task()
        self.collect(wait=True)

    def _queue_photo(self, r: _Read, faces: tuple[Face, ...], size: tuple[int, int] | None) -> None:
        """Queue the photo of ``r`` with ``faces``; ``size``: its ``(width, height)`` at full
        resolution when decoded. Commits every ``batch_size`` photos."""
        from facesearch import store as st

        labels: tuple[str | None, ...] = ()
        if r.job.label is not None and faces:
            chosen = dominant_face([f.detection.area for f in faces])
            if chosen is None:
                self.report.labels_skipped += 1
                logger.info(
                    "%s: %d faces and none clearly the largest: label %r not given",
                    r.job.path,
                    len(faces),
                    r.job.label,
                )
            else:
                labels = tuple(r.job.label if i == chosen else None for i in range(len(faces)))
        photo = st.NewPhoto(
            path=r.job.path,
            content_hash=r.content_hash,
            size=r.job.size,
            mtime=r.job.mtime,
            width=None if size is None else size[0],
            height=None if size is None else size[1],
            faces=faces,
            labels=labels,
            label_source=st.LabelSource.CSV
            if self.settings.labels not in (None, "folders")
            else st.LabelSource.FOLDER,
            error=r.error,
        )
        self.pending.append(photo)
        self.pending_stats.append((r.job.old is not None, r.error is not None))
        self.faces += len(faces)
        if len(self.pending) >= self.settings.batch_size:
            self.commit()

    def _count(self, photos: list[NewPhoto], stats: list[tuple[bool, bool]]) -> None:
        rep = self.report
        for photo, (updated, failed) in zip(photos, stats, strict=True):
            if not failed:
                self.indexed.add(photo.path)
            if failed:
                rep.failed += 1
                rep.failures.append((photo.path, photo.error or ""))
            elif updated:
                rep.updated += 1
            else:
                rep.new += 1
            if not failed and not photo.faces:
                rep.no_face += 1
            rep.faces_added += len(photo.faces)
            rep.faces_upscaled += sum(f.detection.detector_pass == "upscaled" for f in photo.faces)
            rep.labels_given += sum(1 for label in photo.labels if label is not None)

    def commit(self) -> None:
        """One transaction for the pending photos (replacing stored rows of updated files)."""
        if not self.pending:
            return
        photos, stats = self.pending, self.pending_stats
        with critical_section("a commit"):  # the report counts what SQL holds
            self.col.add_photos(photos, replace=True)
            self.pending, self.pending_stats = [], []
            self._count(photos, stats)
        logger.debug("committed %d photos", len(photos))
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS:
            self.col.save_index()
            self.last_checkpoint = time.monotonic()
        if self.should_stop is not None and self.should_stop():
            raise StopRequested


def index_paths(
    collection: Collection,
    pipeline: FacePipeline | Models | Callable[[], FacePipeline],
    paths: Sequence[str | os.PathLike[str]],
    settings: IndexSettings | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IndexReport:
    """Index the photos under ``paths`` into ``collection`` (see the module doc).

    ``pipeline``: the pipeline, the :class:`Models` to build it from, or a function that
    builds it. Models or a function are used only when the first photo that needs the
    networks has been read, while the next photos are read and decoded in the background; a
    run where every photo is unchanged never loads them.

    Holds the collection's writer lock for the whole run. ``progress`` is called after every
    photo or batch of photos processed; ``should_stop`` after every commit (``True``: stop
    there). Returns the report; on Ctrl-C or a stop the report says ``interrupted`` and holds
    what was committed.
    """
    settings = settings or IndexSettings()
    run = _Run(collection, pipeline, settings, progress, should_stop)
    return drive(run, paths, _index)


def drive(
    run: _Run,
    paths: Sequence[str | os.PathLike[str]],
    body: Callable[[_Run, WalkResult, _Labeler], None],
) -> IndexReport:
    """Walk ``paths``, take the writer lock and run ``body`` (the read and embed loop: local
    threads, or :mod:`facesearch.ray_index`); Ctrl-C keeps what was committed."""
    started = time.monotonic()
    collection, settings = run.col, run.settings
    labeler = _Labeler(settings.labels)  # read the CSV before taking the lock
    found = walk(paths)
    rep = run.report
    rep.files = len(found.files)
    rep.skipped_hidden, rep.skipped_other = found.skipped_hidden, found.skipped_other
    rep.by_content, rep.broken_links = found.by_content, found.broken_links
    rep.unreadable = list(found.unreadable)
    if found.skipped_hidden or found.skipped_other or found.broken_links:
        logger.info(
            "skipped %d hidden files or folders, %d files that are not images and %d links to "
            "nothing",
            found.skipped_hidden,
            found.skipped_other,
            found.broken_links,
        )
    if labeler.table is not None:
        rep.labels_not_found = len(set(labeler.table) - set(found.files))
        if rep.labels_not_found:
            logger.warning(
                "%d photos named in %s were not found under the given paths",
                rep.labels_not_found,
                settings.labels,
            )
    with collection.lock():
        if settings.index_type is not None and settings.index_type != collection.index_type:
            collection.set_index_type(settings.index_type)
        if run.pipe is not None:  # given built; a loader's is registered when it is called
            register_pipeline_model(collection, run.pipe)
        try:
            body(run, found, labeler)
        except (KeyboardInterrupt, StopRequested):
            rep.interrupted = True
            logger.warning("interrupted: the photos committed so far are kept")
    if not rep.interrupted:
        rep.nothing_indexed = _nothing_indexed(found, run.indexed)
        for root in rep.nothing_indexed:
            logger.warning("nothing could be indexed from %s", root)
    rep.seconds = time.monotonic() - started
    return rep


def _nothing_indexed(found: WalkResult, indexed: set[str]) -> list[str]:
    """The roots that hold files none of which is stored as a photo read (see IndexReport)."""
    out = []
    for root, n in zip(found.roots, found.root_files, strict=True):
        under = root.rstrip(os.sep) + os.sep
        if n and not any(p == root or p.startswith(under) for p in indexed):
            out.append(root)
    return out


@dataclass(slots=True)
class Plan:
    """What a run must do with the files found (see *Incremental runs*).

    ``jobs``: files to read, in order; ``gone``: stored photos whose file no longer exists, by
    content hash (candidates for moves); ``gone_under_roots``: those under the PATHs (for
    ``--prune``); ``relabel``: stored photo id -> person; ``claimed``: ids of gone photos
    found again (moved).
    """

    jobs: list[_Job]
    gone: dict[str, list[PhotoStat]]
    gone_under_roots: list[PhotoStat]
    relabel: dict[int, str]
    claimed: set[int] = field(default_factory=set)

    @property
    def moved_hashes(self) -> frozenset[str]:
        return frozenset(self.gone)


def plan(run: _Run, found: WalkResult, labeler: _Labeler) -> Plan:
    """Compare the files found with SQL: unchanged ones are counted (and queued for labels),
    the others become jobs. Sets ``run.total`` and ``run.jobs``."""
    from facesearch import store as st

    col, rep, settings = run.col, run.report, run.settings
    with col.session() as s:
        stored = st.photo_stats(s)
    walked = set(found.files)
    jobs: list[_Job] = []
    relabel: dict[int, str] = {}  # photo id -> person, for photos already stored
    for path in found.files:
        label = labeler(path)
        try:
            info = os.stat(path)
        except OSError as exc:
            jobs.append(_Job(path, 0, 0.0, stored.get(path), label))
            logger.debug("cannot stat %s: %s", path, exc)
            continue
        old = stored.get(path)
        if (
            old is not None
            and not settings.rehash
            and old.size == info.st_size
            and old.mtime == info.st_mtime
        ):
            rep.unchanged += 1
            if old.status is not st.PhotoStatus.FAILED:
                run.indexed.add(path)
            if label is not None and old.status is st.PhotoStatus.OK:
                relabel[old.id] = label
            continue
        jobs.append(_Job(path, int(info.st_size), float(info.st_mtime), old, label))
    # stored photos whose file is gone: candidates for moves, and for --prune
    gone: dict[str, list[PhotoStat]] = {}
    gone_under_roots: list[PhotoStat] = []
    roots = [r.rstrip(os.sep) + os.sep for r in found.roots]
    unlisted = tuple(p.rstrip(os.sep) + os.sep for p, _ in found.unreadable)
    for path, stat in stored.items():
        if path in walked or path.startswith(unlisted) or os.path.exists(path):
            continue  # a link to nothing is gone; under a folder not listed: not known to be
        gone.setdefault(stat.content_hash, []).append(stat)
        if any(path.startswith(r) or path == r[:-1] for r in roots):
            gone_under_roots.append(stat)
    run.total = len(jobs)
    run.jobs = jobs
    logger.info(
        "%d image files: %d unchanged, %d to read; %d stored photos no longer found",
        len(found.files),
        rep.unchanged,
        len(jobs),
        sum(len(v) for v in gone.values()),
    )
    if run.progress is not None:
        run.progress(Progress(run.total, 0, 0))
    return Plan(jobs, gone, gone_under_roots, relabel)


def finish_plan(run: _Run, p: Plan) -> None:
    """After the jobs: prune (or count) the photos under the PATHs whose files are gone and
    were not moved, and label stored photos."""
    lost = [s for s in p.gone_under_roots if s.id not in p.claimed]
    if lost:
        if run.settings.prune:
            with critical_section("a commit"):
                run.col.remove_photos([s.id for s in lost])
                run.report.pruned = len(lost)
            logger.info("pruned %d photos whose files are gone", len(lost))
        else:
            run.report.missing = len(lost)
    if p.relabel:
        _label_stored(run, p.relabel)


def _index(run: _Run, found: WalkResult, labeler: _Labeler) -> None:
    """The local loop: read threads hash and decode, the pipeline's workers embed."""
    settings = run.settings
    p = plan(run, found, labeler)
    jobs, gone, claimed, relabel = p.jobs, p.gone, p.claimed, p.relabel
    moved_hashes = p.moved_hashes
    window = 2 * settings.workers + 2  # decoded photos waiting, besides the open batch
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="facesearch-read")
    budget = run.budget = PixelBudget(settings.decode_megapixels)
    tickets = iter(range(len(jobs)))
    try:
        with contextlib.ExitStack() as stack:
            queue: deque[tuple[Future[_Read], int, int]] = deque()  # (read, file size, ticket)
            it: Iterator[_Job] = iter(jobs)
            queued_bytes = 0

            def take(fut: Future[_Read], ticket: int) -> _Read:
                """The read's result. Reads are granted pixels in order and this thread takes
                them in order, so a read can only wait for pixels held by photos taken
                before it: then the open task is sent and every result collected, which
                gives those pixels back."""
                while True:
                    try:
                        return fut.result(timeout=0.05)
                    except FutureTimeout:
                        if budget.blocked(ticket):
                            run.finish()

            def fill() -> None:
                """Keep ``window`` reads out; while the pipeline is not loaded yet, read further
                ahead (up to READ_AHEAD_PHOTOS photos or READ_AHEAD_BYTES of files)."""
                nonlocal queued_bytes
                while len(queue) < window or (
                    run.pipe is None
                    and len(queue) < READ_AHEAD_PHOTOS
                    and queued_bytes < READ_AHEAD_BYTES
                ):
                    job = next(it, None)
                    if job is None:
                        return
                    ticket = next(tickets)
                    read = pool.submit(
                        _read, job, moved_hashes, budget, ticket, run.decode_side, settings.aligned
                    )
                    queue.append((read, job.size, ticket))
                    queued_bytes += job.size

            run.stack = stack
            if run.pipe is not None:
                run.submit = _open_workers(stack, run.pipe)
            fill()
            while queue:
                fut, size, ticket = queue.popleft()
                queued_bytes -= size
                r = take(fut, ticket)
                fill()
                _handle(run, r, gone, claimed, relabel)  # may load the pipeline: reads go on
            run.finish()
        run.commit()
    finally:
        run.submit = run.stack = None
        budget.close()  # reads waiting for pixels go on (and end) at once
        pool.shutdown(wait=True, cancel_futures=True)
    finish_plan(run, p)


def _handle(
    run: _Run,
    r: _Read,
    gone: dict[str, list[PhotoStat]],
    claimed: set[int],
    relabel: dict[int, str],
) -> None:
    from facesearch import store as st

    col, rep = run.col, run.report
    job = r.job
    if r.same_as_old and job.old is not None:
        with critical_section("a commit"):
            col.touch_photo(job.old.id, size=job.size, mtime=job.mtime)
            rep.unchanged += 1
        if job.old.status is not st.PhotoStatus.FAILED:
            run.indexed.add(job.path)
        if job.label is not None and job.old.status.value == "ok":
            relabel[job.old.id] = job.label
        run._tick(1)
        return
    if r.maybe_moved:
        source = next((p for p in gone.get(r.content_hash, []) if p.id not in claimed), None)
        if source is None:  # two new copies of one vanished photo: the second is decoded
            r.maybe_moved = False
            r = _read(job, frozenset(), aligned=run.settings.aligned)
        else:
            claimed.add(source.id)
            with critical_section("a commit"):
                if job.old is not None:  # the file at this path was replaced by a moved photo
                    col.remove_photos([job.old.id])
                col.move_photo(source.id, job.path, mtime=job.mtime)
                rep.moved += 1
            if source.status is not st.PhotoStatus.FAILED:
                run.indexed.add(job.path)
            logger.info("%s was moved to %s: faces and labels kept", source.path, job.path)
            if job.label is not None and source.status.value == "ok":
                relabel[source.id] = job.label
            run._tick(1)
            return
    run.add_read(r)


def _label_stored(run: _Run, relabel: dict[int, str]) -> None:
    """Give labels to stored photos none of whose faces has a person (dominant-face rule)."""
    from facesearch import store as st

    col, rep = run.col, run.report
    csv_labels = run.settings.labels not in (None, "folders")
    source = st.LabelSource.CSV if csv_labels else st.LabelSource.FOLDER
    with col.session() as s:
        faces, taken = st.photo_face_areas(s, sorted(relabel))
    by_person: dict[str, list[int]] = {}
    for pid, person in relabel.items():
        if pid in taken or pid not in faces:
            continue
        chosen = dominant_face([a for _, a in faces[pid]])
        if chosen is None:
            rep.labels_skipped += 1
            continue
        by_person.setdefault(person, []).append(faces[pid][chosen][0])
    if not by_person:
        return
    with col.lock():
        for person, face_ids in sorted(by_person.items()):
            with critical_section("a commit"):
                rep.labels_given += col.assign(face_ids, person, source, replace=False)
    logger.info("labelled %d faces of photos indexed earlier", sum(map(len, by_person.values())))


def enroll_photos(
    collection: Collection,
    pipeline: FacePipeline,
    name: str,
    images: Sequence[str | os.PathLike[str]],
    *,
    aligned: bool = False,
) -> tuple[int, list[tuple[str, str]]]:
    """``facesearch enroll``: give the largest face of each photo to person ``name``.

    Each photo is recorded in the collection with all its faces (a photo already stored with
    the same content keeps its faces and is not decoded again; a changed one is replaced); its
    largest face (box area) is assigned to ``name`` with source ``enroll``, replacing any
    earlier person of that face. Returns ``(photos enrolled, [(path, error message)])``: a photo
    that cannot be read or has no face is skipped and reported. ``aligned``: each photo is a
    face crop on the template, its one face embedded without detection.
    """
    from facesearch import store as st
    from facesearch.errors import NoFaceError

    if not name.strip() or name != name.strip() or len(name) > 255:
        raise FacesearchError(
            f"a person's name must be 1..255 characters without spaces at either end, got {name!r}"
        )
    errors: list[tuple[str, str]] = []
    done = 0
    with collection.lock():
        register_pipeline_model(collection, pipeline)
        for given in images:
            path = os.path.abspath(os.fspath(given))
            try:
                info = os.stat(path)
                data, content_hash = _sha256(path)
            except ImageError as exc:
                errors.append((path, str(exc)))
                continue
            except OSError as exc:
                errors.append((path, str(ImageError(path, exc.strerror or str(exc)))))
                continue
            with collection.session() as s:
                old = st.photo_by_path(s, path)
                stored = (
                    st.faces_of_photo(s, old.id)
                    if old is not None and old.content_hash == content_hash
                    else None
                )
            if stored:
                largest = max(stored, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                collection.assign([largest.face_id], name, st.LabelSource.ENROLL)
                done += 1
                continue
            try:
                image = load_image(data) if data else load_image(path)
            except ImageError as exc:
                errors.append((path, str(ImageError(path, exc.reason))))
                continue
            try:
                faces = pipeline.photo_faces(image, aligned=aligned)
            except ValueError as exc:  # aligned, and not a crop on the template
                errors.append((path, str(ImageError(path, str(exc)))))
                continue
            if not faces:
                errors.append((path, str(NoFaceError(path))))
                continue
            chosen = max(range(len(faces)), key=lambda i: faces[i].detection.area)
            collection.add_photos(
                [
                    st.NewPhoto(
                        path=path,
                        content_hash=content_hash,
                        size=int(info.st_size),
                        mtime=float(info.st_mtime),
                        width=int(image.shape[1]),
                        height=int(image.shape[0]),
                        faces=tuple(faces),
                        labels=tuple(name if i == chosen else None for i in range(len(faces))),
                        label_source=st.LabelSource.ENROLL,
                    )
                ],
                replace=True,
            )
            done += 1
    return done, errors


__all__ = [
    "StopRequested",
    "enroll_photos",
    "CHECKPOINT_SECONDS",
    "COMMIT_BATCH",
    "DETECT_BATCH",
    "DETECT_PIXELS",
    "DOMINANCE_RATIO",
    "IndexReport",
    "IndexSettings",
    "Progress",
    "WalkResult",
    "default_workers",
    "dominant_face",
    "folder_label",
    "index_paths",
    "read_labels_csv",
    "walk",
]
