"""Model files made by ``facesearch train``: save, load, and check compatibility.

A model file is ``torch.save`` of a plain dict (loaded back with ``weights_only=True``, so a
file cannot run code)::

    {"format": "facesearch-model", "format_version": 1, "architecture": "sface",
     "meta": {...}, "state_dict": {name: tensor}}

``meta`` is JSON-like (str, int, float, bool, None, lists, dicts) and travels with the
weights, as timm's configs do:

=====================  ===============================================================
``name``               identity of the model: ``<file stem>-<weights_sha256[:10]>``
``architecture``       ``"sface"``
``format_version``     1
``dim``                embedding size (128)
``weights_sha256``     sha256 over the state dict (names, dtypes, shapes, bytes)
``parent``             ``{"name", "sha256"}`` of the model it was fine-tuned from; sha256 of
                       the parent's *file* (the shipped weight file for ``sface``)
``compatible_with``    ``{"name", "sha256"}`` of the old model of a harmonic training, or None
``lineage``            names this model's vectors can be compared with (``compatible_with``
                       and, transitively, that model's own lineage)
``threshold``          tau calibrated on the validation people (None without validation)
``data``               training data summary: folder name, people, images, split
``settings``           every training setting
``validation``         accuracy before/after on the validation pairs
``created``            UTC time, ISO 8601
=====================  ===============================================================

The shipped model is called ``sface``; :func:`shipped_meta` gives its meta in the same shape.
Two models are :func:`compatible` when they are the same model or one is in the other's
lineage (harmonic training is the only way to enter a lineage; sibling models trained
against the same old model are **not** declared compatible with each other).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facesearch.errors import IncompatibleModelError, ModelError

if TYPE_CHECKING:
    import torch

    from facesearch.models.sface import Embedder, SFace

log = logging.getLogger(__name__)

FORMAT: str = "facesearch-model"
FORMAT_VERSION: int = 1
ARCHITECTURE: str = "sface"
SHIPPED: str = "sface"
#: Suffix used by ``facesearch train`` for model files (any name is accepted on load).
SUFFIX: str = ".pt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict: sorted names, dtypes, shapes and raw bytes (CPU, contiguous)."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shipped_meta() -> dict[str, Any]:
    """Meta of the shipped model ``sface``, in the shape of a model file's meta."""
    from facesearch.distance import DEFAULT_THRESHOLD
    from facesearch.models.sface_weights import EMBEDDING_DIM, WEIGHTS_FILE

    return {
        "name": SHIPPED,
        "architecture": ARCHITECTURE,
        "format_version": FORMAT_VERSION,
        "dim": EMBEDDING_DIM,
        "sha256": file_sha256(WEIGHTS_FILE) if WEIGHTS_FILE.is_file() else None,
        "parent": None,
        "compatible_with": None,
        "lineage": [],
        "threshold": DEFAULT_THRESHOLD,
    }


def model_name(path: str | os.PathLike[str], weights_hash: str) -> str:
    """The name a model file saved at ``path`` gets: ``<stem>-<hash[:10]>``."""
    return f"{Path(path).stem}-{weights_hash[:10]}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_torch_save(obj: object, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fp:
            torch.save(obj, fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a model file is shareable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(
    path: str | os.PathLike[str], module: SFace, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``module``'s weights and ``meta`` to ``path`` atomically; return the full meta.

    ``name``, ``architecture``, ``format_version``, ``dim`` and ``weights_sha256`` are filled
    in here (a caller's values for them are overwritten).
    """
    from facesearch.models.sface import SFace

    if not isinstance(module, SFace):
        raise ModelError(
            f"only the {ARCHITECTURE!r} architecture can be saved, got {type(module).__name__}"
        )
    path = Path(path)
    sd = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    digest = weights_sha256(sd)
    full = dict(meta)
    full.update(
        name=model_name(path, digest),
        architecture=ARCHITECTURE,
        format_version=FORMAT_VERSION,
        dim=int(module.embedding_dim),
        weights_sha256=digest,
    )
    full.setdefault("lineage", [])
    try:  # plain JSON types only: the file must load with weights_only=True
        full = json.loads(json.dumps(full, allow_nan=True))
    except TypeError as e:
        raise ModelError(f"model meta must hold JSON values only: {e}") from e
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "meta": full,
        "state_dict": sd,
    }
    _atomic_torch_save(payload, path)
    log.info("saved model %s to %s", full["name"], path)
    return full


def read_model_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of a model file; :class:`ModelError` if it is not one we can use."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"model file not found: {path} (use 'sface' for the shipped model, or a file made by "
            "'facesearch train')"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, KeyError, ...)
        raise ModelError(
            f"{path} is not a facesearch model file (cannot be read by torch.load: {e})"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        seen = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelError(
            f"{path} is not a facesearch model file (format {seen!r}, expected {FORMAT!r}); "
            "make one with 'facesearch train'"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{path} has model file format version {version!r}; this facesearch reads version "
            f"{FORMAT_VERSION} (upgrade facesearch, or re-train the model)"
        )
    arch = payload.get("architecture")
    if arch != ARCHITECTURE:
        raise ModelError(
            f"{path} holds a {arch!r} model; facesearch embeds with {ARCHITECTURE!r} only"
        )
    sd, meta = payload.get("state_dict"), payload.get("meta")
    if not isinstance(sd, dict) or not isinstance(meta, dict):
        raise ModelError(f"{path} is damaged: no state_dict/meta")
    return sd, meta


def read_meta(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Meta of ``'sface'`` or of a model file (the weights are read but not built)."""
    if str(name_or_path) == SHIPPED:
        return shipped_meta()
    return read_model_file(name_or_path)[1]


def load_model(name_or_path: str | os.PathLike[str]) -> tuple[SFace, dict[str, Any]]:
    """A trainable :class:`SFace` (eval mode) and its meta: ``'sface'`` or a model file."""
    from facesearch.models.sface import SFace, load_sface

    if str(name_or_path) == SHIPPED:
        return load_sface(), shipped_meta()
    sd, meta = read_model_file(name_or_path)
    module = SFace()
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelError(
            f"{name_or_path} does not fit the {ARCHITECTURE!r} architecture: {e}"
        ) from e
    got = weights_sha256(sd)
    if meta.get("weights_sha256") not in (None, got):
        raise ModelError(
            f"{name_or_path}: weights do not match their recorded sha256 "
            f"({got[:12]} vs {str(meta.get('weights_sha256'))[:12]}); the file is damaged"
        )
    return module.eval(), meta


def load_embedder(
    name_or_path: str | os.PathLike[str], *, batch_size: int = 64, flip: bool = False
) -> Embedder:
    """The :class:`~facesearch.models.sface.Embedder` of ``'sface'`` or of a model file.

    The embedder gets ``.name`` (the model's name), ``.dim``, ``.meta`` (see the module
    docstring) and ``.threshold`` (the model's calibrated tau, or None).
    """
    from facesearch.models.sface import Embedder

    if str(name_or_path) == SHIPPED:  # fused weights from the cache, module loaded on demand
        module, meta = None, shipped_meta()
    else:
        module, meta = load_model(name_or_path)
    emb = Embedder(module, name=str(meta["name"]), batch_size=batch_size, flip=flip)
    emb.meta = meta  # type: ignore[attr-defined]
    emb.threshold = meta.get("threshold")  # type: ignore[attr-defined]
    return emb


def _lineage(meta: Mapping[str, Any]) -> set[str]:
    names = set(meta.get("lineage") or [])
    cw = meta.get("compatible_with")
    if isinstance(cw, Mapping) and cw.get("name"):
        names.add(str(cw["name"]))
    return names


def compatible(model_a_meta: Mapping[str, Any], model_b_meta: Mapping[str, Any]) -> bool:
    """Can vectors of model A be compared with vectors of model B?

    True when they are the same model (same name), or one was trained with the harmonic loss
    against the other or against a model in the other's lineage (transitively). The
    embedding sizes must agree.
    """
    a, b = str(model_a_meta.get("name")), str(model_b_meta.get("name"))
    da, db = model_a_meta.get("dim"), model_b_meta.get("dim")
    if da is not None and db is not None and int(da) != int(db):
        return False
    if a == b:
        return True
    return b in _lineage(model_a_meta) or a in _lineage(model_b_meta)


def check_compatible(model_a_meta: Mapping[str, Any], model_b_meta: Mapping[str, Any]) -> None:
    """Raise :class:`IncompatibleModelError` unless :func:`compatible` holds."""
    if not compatible(model_a_meta, model_b_meta):
        a, b = model_a_meta.get("name"), model_b_meta.get("name")
        raise IncompatibleModelError(
            f"vectors of model {a!r} cannot be compared with vectors of model {b!r}: neither was "
            f"trained to be compatible with the other (train with "
            f"'facesearch train ... --compatible-with {b}', or re-embed with 'facesearch reindex')"
        )
