"""Many photos through one pipeline, for many queries in one process.

:func:`stream_faces` turns photos into their faces with the networks loaded once: ``workers``
threads decode photos ahead (Pillow releases the GIL) while the pipeline's workers
(:meth:`FacePipeline.workers`, one per core) detect and embed tasks of a few photos side by
side; results come out in input order, one photo at a time, as soon as they are ready. A photo
that cannot be read (or, ``aligned``, is not a crop on the template) gives its error and the
stream goes on.

:func:`expand_photos` is what ``facesearch query PATH...`` reads: files as given, folders
walked as ``facesearch index`` walks them. :func:`read_pairs_csv` reads the pairs of
``facesearch verify --pairs FILE.csv``.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from facesearch.errors import ArgumentError, ImageError
from facesearch.image import default_workers
from facesearch.types import Face

if TYPE_CHECKING:
    from facesearch.pipeline import FacePipeline

logger = logging.getLogger(__name__)

#: Photos per task of a pipeline worker: small tasks keep every worker busy and the first
#: result early; crops of the photos of a task are embedded in one batch.
TASK_PHOTOS: int = 4


@dataclass(frozen=True, slots=True)
class PhotoFaces:
    """The faces of one photo of a stream (``error``: why there are none to give)."""

    source: str
    faces: tuple[Face, ...] = ()
    error: str | None = None


@dataclass(slots=True)
class _Task:
    sources: list[str]
    images: list[np.ndarray | None]  # None: not decoded
    errors: list[str | None]
    future: Future[Any] | None = None


def stream_faces(
    pipeline: FacePipeline,
    images: Iterable[Any],
    *,
    load: Callable[[Any], np.ndarray],
    source: Callable[[Any], str],
    aligned: bool = False,
    workers: int | None = None,
) -> Iterator[PhotoFaces]:
    """The faces of each of ``images`` (anything ``load`` decodes to ``(H, W, 3) uint8``;
    ``source`` names it), in input order.

    ``aligned``: each photo is one face crop on the template, not detected
    (:meth:`FacePipeline.aligned_faces`). ``workers``: decode threads (default one per core,
    at most 4). Up to two tasks per pipeline worker are in flight and a few photos are
    decoded ahead, so memory stays bounded whatever the number of photos.
    """
    from facesearch.align import template_landmarks

    threads = max(1, int(getattr(pipeline, "threads", 1) or 1))
    max_tasks = 2 * threads
    reads: deque[tuple[str, Future[np.ndarray]]] = deque()
    tasks: deque[_Task] = deque()
    it = iter(images)
    with (
        ThreadPoolExecutor(
            workers or default_workers(), thread_name_prefix="facesearch-read"
        ) as pool,
        pipeline.workers() as submit,
    ):

        def read_more() -> None:
            while len(reads) < max_tasks * TASK_PHOTOS:
                item = next(it, None)
                if item is None:
                    return
                reads.append((source(item), pool.submit(load, item)))

        def embed(batch: list[np.ndarray]) -> list[list[Face]]:
            if aligned:
                return [[f] for f in pipeline.aligned_faces(batch)]
            return pipeline.faces_batch(batch)

        def send(task: _Task) -> None:
            todo = [im for im in task.images if im is not None]
            if todo:
                task.future = submit(embed, todo)
            tasks.append(task)

        read_more()
        task = _Task([], [], [])
        while reads or task.sources or tasks:
            while reads and len(task.sources) < TASK_PHOTOS:
                name, fut = reads.popleft()
                image: np.ndarray | None = None
                error: str | None = None
                try:
                    image = fut.result()
                    if aligned:
                        template_landmarks(image.shape[1], image.shape[0])
                except ImageError as exc:
                    image, error = None, str(exc)
                except ValueError as exc:  # aligned, and not a crop on the template
                    image, error = None, str(ImageError(name, str(exc)))
                task.sources.append(name)
                task.images.append(image)
                task.errors.append(error)
                read_more()
            if task.sources and (len(task.sources) >= TASK_PHOTOS or not reads):
                send(task)
                task = _Task([], [], [])
            # hand out finished tasks, oldest first; wait only when enough are in flight
            while tasks and (
                tasks[0].future is None
                or tasks[0].future.done()
                or len(tasks) >= max_tasks
                or not (reads or task.sources)
            ):
                yield from _results(tasks.popleft(), embed)


def _results(
    task: _Task, embed: Callable[[list[np.ndarray]], list[list[Face]]]
) -> Iterator[PhotoFaces]:
    found: list[list[Face] | str] = []
    if task.future is not None:
        try:
            found = list(task.future.result())
        except Exception as exc:  # noqa: BLE001 - isolate the photo that fails
            logger.debug("task of %d photos failed (%s): one by one", len(task.sources), exc)
            for im in task.images:
                if im is None:
                    continue
                try:
                    found.append(embed([im])[0])
                except Exception as one:  # noqa: BLE001
                    found.append(f"processing failed ({type(one).__name__}: {one})")
    it = iter(found)
    for name, image, error in zip(task.sources, task.images, task.errors, strict=True):
        if image is None:
            yield PhotoFaces(name, (), error)
            continue
        faces = next(it)
        if isinstance(faces, str):
            yield PhotoFaces(name, (), str(ImageError(name, faces)))
        else:
            yield PhotoFaces(name, tuple(faces))


def expand_photos(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The photos of ``paths``: a file as given (made absolute), a folder walked as
    ``facesearch index`` walks it (recursively, by content, links followed, hidden skipped).
    A path that does not exist stays, to be reported as the photo that cannot be read."""
    from facesearch.indexer import walk

    out: list[str] = []
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        out.extend(walk([path]).files if os.path.isdir(path) else [path])
    return out


def read_pairs_csv(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``[(photo a, photo b)]`` from a CSV of rows ``a,b`` (an optional header ``a,b``; more
    columns are ignored). Relative paths are taken from the CSV's folder, made absolute but not
    resolved. :class:`ArgumentError` naming the line for a row without two paths."""
    from facesearch.indexer import csv_photo, csv_rows

    out: list[tuple[str, str]] = []
    for lineno, cells in csv_rows(path, ("a", "b"), "pairs file"):
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ArgumentError(f"{path} line {lineno}: expected 'a,b', got {cells!r}")
        out.append((csv_photo(path, cells[0]), csv_photo(path, cells[1])))
    return out


__all__ = ["TASK_PHOTOS", "PhotoFaces", "expand_photos", "read_pairs_csv", "stream_faces"]
