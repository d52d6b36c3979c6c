"""Faces of the next photos computed in a forked child while the networks load.

Loading PyTorch and the models takes ~2.5 s of one core before ``facesearch index`` can run
them; the other core only reads files meanwhile. :class:`HeadStart` forks a child process that
runs the same networks with the numpy engine (:mod:`facesearch.models.npengine`, no torch, its
weights loaded in ~0.2 s) on the next photos of the run, the smallest files first, and writes
the faces of each one to a pipe as it goes. When the networks are loaded,
:meth:`HeadStart.stop` ends the child and returns the faces of the photos it finished; the
indexer stores those instead of running them again. Measured on 2 cores: the child finishes
~28 of 500 LFW photos (the run: 14.0 -> 13.6 s) and ~42 of 167 large photos (19.3 -> 18.6 s),
means of alternating runs.

Same results: the child reads, hashes and decodes the file as the indexer does (its
``_sha256``, then :func:`facesearch.image.load_image` on the bytes) and runs the same pipeline
configuration (detector settings, shipped model, flip), the numpy engine instead of torch; its
outputs agree with torch's to float32 rounding (``tests/test_npengine.py``). Each result
carries the sha256 of the bytes it was computed from, and the indexer uses it only for a file
with that hash. A photo the child cannot process is left to the indexer.

Only with ``os.fork`` (Linux, macOS); ``FACESEARCH_HEAD_START=0`` turns it off. The child is a
plain process: it ignores the terminal, dies with the parent (Linux), and leaves through
``os._exit`` without touching the parent's files or database connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from facesearch.pipeline import PipelineConfig
    from facesearch.types import Face

logger = logging.getLogger(__name__)

#: At most this many photos are given to the child (it is stopped long before, normally).
MAX_PHOTOS: int = 1024
_HEADER = struct.Struct("<I")
_PIPE_BYTES = 1 << 20  # room for ~1000 photos' results before the child would block
_F_SETPIPE_SZ = 1031  # Linux fcntl


def enabled() -> bool:
    """Whether a head start can be used here (``os.fork`` exists, not turned off)."""
    return hasattr(os, "fork") and os.environ.get("FACESEARCH_HEAD_START", "1") != "0"


def same_work(config: PipelineConfig, other: PipelineConfig) -> bool:
    """Whether pipelines of these two configurations compute the same faces (engine aside)."""
    return (config.model, config.flip, config.detector) == (other.model, other.flip, other.detector)


class HeadStart:
    """Fork a child computing the faces of ``paths`` with ``config`` on numpy.

    ``config``: the configuration of the pipeline being loaded; it must be the shipped model
    (:class:`ValueError` otherwise). ``sizes``: the files' sizes in bytes; the child then takes
    the smallest files first (of the first :data:`MAX_PHOTOS`): the photo it is working on when
    stopped is lost, and more photos are done in the time (on 167 large photos it finished 0-5
    photos in file order). Without ``os.fork`` nothing is started and :meth:`stop` returns
    ``{}``.
    """

    def __init__(
        self, paths: Sequence[str], config: PipelineConfig, sizes: Sequence[int] | None = None
    ) -> None:
        if config.model != "sface":
            raise ValueError(
                f"a head start runs the shipped model 'sface' only, not {config.model}"
            )
        self.paths = list(paths[:MAX_PHOTOS])
        if sizes is not None:
            order = sorted(range(len(self.paths)), key=lambda i: sizes[i])
            self.paths = [self.paths[i] for i in order]
        self.config = config
        self._pid = 0
        self._fd = -1
        self._reaped = False
        if not self.paths or not enabled():
            return
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            import fcntl

            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_BYTES)
        with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child never returns
            code = 1
            try:
                os.close(r)
                _child(self.paths, config, w)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        self._pid, self._fd = pid, r
        logger.debug("head start: child %d on the next %d photos", pid, len(self.paths))

    def finished(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to finish every photo; whether it has."""
        if not self._pid:
            return True
        deadline = time.monotonic() + timeout
        while True:
            pid, _ = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                self._reaped = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stop(self) -> dict[str, tuple[str, list[Face]]]:
        """End the child; ``{path: (sha256 of the bytes, faces)}`` of the photos it finished."""
        if not self._pid:
            return {}
        if not self._reaped:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(self._pid, 0)
        self._pid = 0
        chunks = []
        with os.fdopen(self._fd, "rb") as fp:  # the write end closed with the child: reads to EOF
            while chunk := fp.read(1 << 16):
                chunks.append(chunk)
        self._fd = -1
        data = b"".join(chunks)
        out: dict[str, tuple[str, list[Face]]] = {}
        pos = 0
        while pos + _HEADER.size <= len(data):
            (n,) = _HEADER.unpack_from(data, pos)
            if pos + _HEADER.size + n > len(data):
                break  # cut off by the kill
            path, sha, faces = pickle.loads(data[pos + _HEADER.size : pos + _HEADER.size + n])
            out[path] = (sha, faces)
            pos += _HEADER.size + n
        logger.debug("head start: %d photos done by the child", len(out))
        return out


def _child(paths: list[str], config: PipelineConfig, fd: int) -> None:
    """In the child: quiet, one thread, then each photo's faces to ``fd`` as they come."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        os.close(devnull)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # die with the parent
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:
                return
    logging.disable(logging.CRITICAL)
    from facesearch.image import load_image
    from facesearch.indexer import _sha256  # the content hash exactly as the indexer takes it
    from facesearch.pipeline import FacePipeline

    pipe = FacePipeline(replace(config, engine="numpy", threads=1))
    for path in paths:
        try:
            data, sha = _sha256(path)
            faces = pipe.faces_batch([load_image(data)])[0]
        except Exception:  # noqa: BLE001 - the indexer reads it again and reports the error
            continue
        msg = pickle.dumps((path, sha, faces), protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(msg)) + msg)
        while view:  # blocks while the pipe is full: the parent reads once it stops the child
            view = view[os.write(fd, view) :]


__all__ = ["MAX_PHOTOS", "HeadStart", "enabled", "same_work"]
