"""Faces of one photo computed in a forked child while the parent opens the collection.

A one-shot query spends most of its time before any face is seen: importing SQLAlchemy and
opening the collection and, independently, decoding the photo, detecting and embedding its
faces with the numpy engine. Threads cannot overlap the two well (imports hold the GIL), so the
photo goes to a forked child process that runs the pipeline (numpy engine, shipped model) and
sends back ``(detections, embeddings)`` through a pipe; the parent only waits for it when it
needs the faces. A collection with another active model uses the child's detections and embeds
them itself. :func:`facesearch.api.identify` uses it when it opens the collection itself
(bench/results/prefetch.md has what it saves).

Where ``os.fork`` is missing the work runs in the parent when :meth:`EarlyFaces.result` is
called. Any exception of the child (a broken photo: :class:`~facesearch.errors.ImageError`)
is raised again by :meth:`EarlyFaces.result` in the parent.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
from dataclasses import replace
from typing import Any

import numpy as np

from facesearch.pipeline import PipelineConfig
from facesearch.types import Detection, Face

#: Seconds to wait for the child's first byte before doing the work in the parent instead.
CHILD_TIMEOUT = 60.0


def _compute(
    path: str, config: PipelineConfig
) -> tuple[tuple[int, int], list[Detection], np.ndarray]:
    """``(image size (h, w), detections, embeddings (N, D) float32)`` of the photo at ``path``."""
    from facesearch.image import load_image
    from facesearch.pipeline import FacePipeline

    img = load_image(path)
    faces = FacePipeline(config).faces(img)
    dim = faces[0].embedding.shape[0] if faces else 128
    xb = np.stack([f.embedding for f in faces]) if faces else np.zeros((0, dim), np.float32)
    return (int(img.shape[0]), int(img.shape[1])), [f.detection for f in faces], xb


class EarlyFaces:
    """Start computing the faces of ``path`` now; :meth:`result` returns them.

    ``config``: the pipeline settings (detector, flip); the child runs them on the numpy
    engine with the shipped model.
    """

    def __init__(self, path: str, config: PipelineConfig | None = None) -> None:
        self.path = path
        base = config or PipelineConfig()
        self.config = replace(base, model="sface", engine="numpy")
        self._pid = 0
        self._fd = -1
        self._done: tuple[str, Any] | None = None
        if not hasattr(os, "fork") or os.environ.get("FACESEARCH_NO_FORK"):
            return
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: compute, send, exit without running the parent's cleanup
            os.close(r)
            with contextlib.suppress(OSError):  # never read (or stop on) the terminal
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
            payload: tuple[str, Any]
            try:
                payload = ("ok", _compute(path, self.config))
            except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
                payload = ("error", e)
            try:
                data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
                pickle.loads(data)  # an exception class that cannot be rebuilt fails here
            except Exception:  # noqa: BLE001
                err = payload[1]
                data = pickle.dumps(("error", RuntimeError(f"{type(err).__name__}: {err}")))
            with contextlib.suppress(OSError), os.fdopen(w, "wb") as out:
                out.write(data)
            os._exit(0)
        os.close(w)
        self._pid, self._fd = pid, r

    def result(self) -> tuple[tuple[int, int], list[Detection], np.ndarray]:
        """``(image size, detections, embeddings)``; raises what computing them raised."""
        if self._done is None and self._pid:
            ready, _, _ = select.select([self._fd], [], [], CHILD_TIMEOUT)
            if not ready:  # a stuck child must not hang the command: do the work here
                self.cancel()
            else:
                with os.fdopen(self._fd, "rb") as fp:
                    data = fp.read()
                self._fd = -1
                os.waitpid(self._pid, 0)
                self._pid = 0
                self._done = pickle.loads(data) if data else ("error", RuntimeError(
                    f"{self.path}: the process computing its faces died"
                ))  # fmt: skip
        if self._done is None:  # no child (no fork), or it was stuck
            try:
                self._done = ("ok", _compute(self.path, self.config))
            except Exception as e:  # noqa: BLE001 - raised below, like the child's
                self._done = ("error", e)
        kind: str = self._done[0]
        value: Any = self._done[1]
        if kind == "error":
            assert isinstance(value, BaseException)
            raise value
        faces: tuple[tuple[int, int], list[Detection], np.ndarray] = value
        return faces

    def faces(self) -> list[Face]:
        """The faces of :meth:`result` as :class:`Face` values (model ``sface``)."""
        _, dets, xb = self.result()
        return [Face(d, v, "sface") for d, v in zip(dets, xb, strict=True)]

    def cancel(self) -> None:
        """Stop the child if it still runs (the parent failed before it needed the faces)."""
        if self._pid:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(self._pid, 0)
            self._pid = 0
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EarlyFaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()
