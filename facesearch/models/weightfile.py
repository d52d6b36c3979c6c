"""Converted weight files (``.npz``): the arrays of a network and a ``__meta__`` JSON entry.

Written by the converters in ``scripts/`` (``convert_sface.py``, ``convert_dlib.py``); read here,
checked against the input and output the code of the network expects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from facesearch.errors import ModelError


def read_weight_file(
    path: Path, *, network: str, fmt: str, script: str, expected: Mapping[str, object]
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the ``network`` weight file ``path`` (arrays as stored, under their
    names). :class:`ModelError` when it cannot be read, is not such a file, has another format
    than ``fmt`` (re-create it with ``script``) or a ``meta`` value differs from ``expected``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ModelError(f"cannot read {network} weights {path}: {e}") from e
    raw = arrays.pop("__meta__", None)
    if raw is None:
        raise ModelError(f"{path} is not a converted {network} weight file (no __meta__ entry)")
    meta = json.loads(raw.tobytes().decode("utf-8"))
    if meta.get("format") != fmt:
        raise ModelError(
            f"{path}: weight format {meta.get('format')!r}, expected {fmt!r}; "
            f"re-create it with {script}"
        )
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ModelError(f"{path}: {key} is {meta.get(key)!r}, this code expects {value!r}")
    return meta, arrays
