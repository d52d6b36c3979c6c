"""Process-wide settings for speed, applied only by an entry point: never on import.

:func:`tune` is what ``facesearch`` (``facesearch.cli.run``) applies before anything else, and
what a long-running service that embeds photos calls once at start. :func:`pause_full_gc` /
:func:`resume_gc` bracket the start-up of a one-shot command. Each says why it pays; the
measurements are in ``bench/results/history.md``.
"""

from __future__ import annotations

import gc
import os
import sys

_tuned = False
_gc_thresholds: tuple[int, int, int] | None = None  # put aside by pause_full_gc


def tune() -> None:
    """Tune this process for the networks (only the first call acts).

    - ``OMP_WAIT_POLICY=PASSIVE`` (unless set): OpenMP threads that spin while waiting make
      torch several times slower whenever the cores are shared. Must come before torch is
      imported.
    - :func:`tune_malloc`.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tune_malloc()


def tune_malloc() -> None:
    """Keep freed network activations in the heap instead of returning them to the kernel.

    glibc serves the multi-MB activation buffers of every forward pass with mmap/munmap and
    trims the heap after each free, so each pass page-faults its memory in again; with these
    settings the same buffers are reused (peak memory unchanged). ``FACESEARCH_MALLOC=default``
    keeps glibc's own settings; other C libraries have no ``mallopt`` and are left alone. Only
    the first call acts.
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    if os.environ.get("FACESEARCH_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # the largest glibc accepts on 64-bit
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_top_pad, 64 << 20)


def pause_full_gc() -> None:
    """Put full garbage collections off while a command imports torch and SQLAlchemy (each
    full collection meanwhile walks their few hundred thousand long-lived objects)."""
    global _gc_thresholds
    if _gc_thresholds is None:
        _gc_thresholds = gc.get_threshold()
        g0, g1, g2 = _gc_thresholds
        gc.set_threshold(g0, g1, max(g2, 1000))


def resume_gc() -> None:
    """The heavy imports and models are loaded: freeze them out of the collector's way and
    restore its thresholds (nothing when :func:`pause_full_gc` was not called)."""
    global _gc_thresholds
    if _gc_thresholds is None:
        return
    gc.freeze()
    gc.set_threshold(*_gc_thresholds)
    _gc_thresholds = None


__all__ = ["pause_full_gc", "resume_gc", "tune", "tune_malloc"]
