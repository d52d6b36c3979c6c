"""Faces of one photo computed in a forked child while the parent opens the collection.

``facesearch query`` spends most of its time before any face is seen: importing SQLAlchemy and
opening the collection (~0.8 s on a 2-core machine) and, independently, decoding the photo,
detecting and embedding its faces with the numpy engine (~0.2-0.5 s). Threads cannot overlap
the two well (imports hold the GIL), so the photo goes to a forked child process that sends back
``(detections, embeddings)`` through a pipe; the parent only waits for it when it needs the
faces. The child embeds with the shipped model (the numpy engine runs nothing else); a
collection with another active model uses the child's detections and embeds them itself.

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
from typing import Any

import numpy as np

from facesearch.types import Detection

#: Seconds to wait for the child's first byte before doing the work in the parent instead.
CHILD_TIMEOUT = 60.0


def _compute(path: str) -> tuple[tuple[int, int], list[Detection], np.ndarray]:
    """``(image size (h, w), detections, embeddings (N, 128))`` of the photo at ``path``."""
    from facesearch.align import align_faces
    from facesearch.image import load_image
    from facesearch.models.npengine import NumpyDetector, NumpyEmbedder

    img = load_image(path)
    dets = NumpyDetector().detect(img)
    crops = align_faces(img, [d.landmarks_array() for d in dets])
    return img.shape[:2], dets, NumpyEmbedder().embed(crops)


class EarlyFaces:
    """Start computing the faces of ``path`` now; :meth:`result` returns them."""

    def __init__(self, path: str) -> None:
        self.path = path
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
            try:
                payload = ("ok", _compute(path))
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
                self._done = ("ok", _compute(self.path))
            except Exception as e:  # noqa: BLE001 - raised below, like the child's
                self._done = ("error", e)
        kind, value = self._done
        if kind == "error":
            raise value
        return value  # type: ignore[no-any-return]

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
