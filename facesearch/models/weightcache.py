"""An on-disk cache of weights prepared for inference (dequantized, batch norms folded).

Preparing the shipped int8 weights is a noticeable part of a CLI command; the prepared float32
arrays read back from an uncompressed ``.npz`` much faster (bench/results/history.md). Entries are
keyed by what they were made with (a tag naming the preparation and its version, the source file's
path, size and modification time), so a changed weight file or a new preparation never reads an old
entry. Any problem with the cache (read-only home, a damaged or half-written file) falls back to
preparing in memory; the cache is never required.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where prepared weights are cached: ``$FACESEARCH_CACHE``, else
    ``$XDG_CACHE_HOME/facesearch``, else ``~/.cache/facesearch``."""
    env = os.environ.get("FACESEARCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "facesearch"


def cached_arrays(
    source: Path, tag: str, prepare: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``prepare()`` (arrays made from the file ``source``), through the cache.

    ``tag``: names the preparation and its version (e.g. ``"sface-np-1"``); change it whenever
    ``prepare`` changes what it makes.
    """
    st = source.stat()
    key = hashlib.sha256(
        f"{tag}:{source.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()
    ).hexdigest()[:20]
    name = tag.split("-", 1)[0]
    cached = cache_dir() / f"{name}-{key}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as e:
            log.warning("ignoring damaged weight cache %s: %s", cached, e)
    prepared = prepare()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".npz", dir=cached.parent)
        try:
            with os.fdopen(fd, "wb") as fp:
                np.savez(fp, allow_pickle=False, **prepared)
            os.replace(tmp, cached)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        log.debug("cannot cache prepared weights in %s: %s", cached.parent, e)
    return prepared


__all__ = ["cache_dir", "cached_arrays"]
