"""facesearch: face search with FaceNet-style embeddings, FAISS and SQL.

Heavy modules (torch, faiss, sqlalchemy) are imported lazily so that the CLI starts fast.
"""

from __future__ import annotations

from facesearch.distance import (
    DEFAULT_IDENTIFY_THRESHOLD,
    DEFAULT_THRESHOLD,
    DEFAULT_VERIFY_THRESHOLD,
    distance,
    pairwise_distance,
)
from facesearch.errors import (
    CollectionError,
    FacesearchError,
    ImageError,
    IncompatibleModelError,
    ModelError,
    NoFaceError,
)
from facesearch.types import Detection, Face, Match

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_IDENTIFY_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "DEFAULT_VERIFY_THRESHOLD",
    "CollectionError",
    "Detection",
    "Face",
    "FacesearchError",
    "ImageError",
    "IncompatibleModelError",
    "Match",
    "ModelError",
    "NoFaceError",
    "distance",
    "pairwise_distance",
]
