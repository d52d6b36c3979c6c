"""1:K identification: who is this face, among the people of a collection?

For every query face:

- the ``k`` nearest stored faces (labelled or not), nearest first, with their person (or
  ``None``: an unlabelled face), photo and distance d;
- the same faces grouped by person (best distance, count, the photo of the best one);
- a verdict: the person of the **nearest labelled face** when its distance is below the
  threshold tau (``d < tau``, as :func:`facesearch.distance.same_person`), else unknown
  (``person = None``).

The nearest labelled face is often among the ``k`` nearest; when it is not, the search is
widened (``k`` x 8 per round, up to :data:`MAX_WIDE_K`) until a labelled face is found or the
neighbours are already at or beyond tau (then no labelled face can be within tau). Only above
:data:`MAX_WIDE_K` is the labelled-face id list read from SQL for a restricted search. So a
query costs one vector search and one SQL lookup of ``k`` rows in the usual case, whatever
the size of the collection.
"""

from __future__ import annotations

import logging
from collections.abc import Collection as AbstractSet
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from facesearch.distance import DEFAULT_IDENTIFY_THRESHOLD
from facesearch.types import Face, Match

if TYPE_CHECKING:
    from facesearch.collection import Collection

logger = logging.getLogger(__name__)

#: Widest plain k-NN search made to find the nearest labelled face.
MAX_WIDE_K: int = 4096
#: Growth of ``k`` between rounds.
_GROWTH = 8


@dataclass(frozen=True, slots=True)
class PersonGroup:
    """The neighbours of one person (``None``: unlabelled faces) among the ``k`` nearest."""

    person: str | None
    distance: float  # best (smallest) distance
    count: int
    photo: str  # photo of the best face
    face_id: int  # the best face


@dataclass(frozen=True, slots=True)
class Identification:
    """The answer for one query face.

    ``person``: the verdict (``None``: unknown). ``distance``: distance to the nearest labelled
    face found (``None`` when no labelled face was found within the search, which implies none
    is within tau). ``matches``: the ``k`` nearest faces; ``groups``: the same by person.
    """

    person: str | None
    distance: float | None
    threshold: float
    matches: tuple[Match, ...]
    groups: tuple[PersonGroup, ...]
    face: Face | None = None

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return None if self.face is None else self.face.detection.box

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``box``, ``score``, ``landmarks``, ``person``, ``distance``,
        ``threshold``, ``matches``, ``groups``."""
        return {
            "box": None if self.box is None else [round(float(v), 1) for v in self.box],
            "score": None if self.face is None else round(float(self.face.detection.score), 4),
            "landmarks": None
            if self.face is None
            else [
                [round(float(x), 2), round(float(y), 2)] for x, y in self.face.detection.landmarks
            ],
            "person": self.person,
            "distance": None if self.distance is None else round(self.distance, 4),
            "threshold": round(self.threshold, 4),
            "matches": [
                {
                    "person": m.person,
                    "distance": round(m.distance, 4),
                    "photo": m.photo,
                    "face_id": m.face_id,
                }
                for m in self.matches
            ],
            "groups": [
                {
                    "person": g.person,
                    "distance": round(g.distance, 4),
                    "count": g.count,
                    "photo": g.photo,
                    "face_id": g.face_id,
                }
                for g in self.groups
            ],
        }


def group_matches(matches: Sequence[Match]) -> list[PersonGroup]:
    """Group matches by person (unlabelled faces together), nearest group first."""
    groups: dict[str | None, list[Match]] = {}
    for m in matches:
        groups.setdefault(m.person, []).append(m)
    out = []
    for person, ms in groups.items():
        best = min(ms, key=lambda m: m.distance)
        out.append(PersonGroup(person, best.distance, len(ms), best.photo, best.face_id))
    out.sort(key=lambda g: (g.distance, g.person or ""))
    return out


def identify_vectors(
    collection: Collection,
    xq: np.ndarray,
    *,
    k: int = 5,
    threshold: float = DEFAULT_IDENTIFY_THRESHOLD,
    exclude: AbstractSet[int] | Sequence[AbstractSet[int]] = frozenset(),
) -> list[Identification]:
    """Identify query embeddings ``xq`` ``(nq, D) float32`` (unit, the collection's space).

    ``exclude``: face ids never returned (one set for every query, or one set per query), e.g.
    a photo's own faces in a leave-one-out evaluation.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    xq = np.ascontiguousarray(np.asarray(xq, dtype=np.float32).reshape(len(xq), -1))
    nq = len(xq)
    if isinstance(exclude, Sequence) and not isinstance(exclude, (str, bytes)):
        if len(exclude) != nq:
            raise ValueError(f"exclude has {len(exclude)} sets for {nq} queries")
        excl: list[AbstractSet[int]] = list(exclude)
    else:
        excl = [exclude] * nq
    n_index = collection.vectors.count
    top: list[list[Match] | None] = [None] * nq
    nearest_labelled: list[Match | None] = [None] * nq
    todo = list(range(nq))
    k_cur = max(k, 16)
    while todo:
        extra = max((len(excl[i]) for i in todo), default=0)
        k_search = min(k_cur + extra, max(n_index, 1))
        rows = collection.search(xq[todo], k_search)
        still = []
        for qi, row in zip(todo, rows, strict=True):
            kept = [m for m in row if m.face_id not in excl[qi]]
            if top[qi] is None:
                top[qi] = kept[:k]
            labelled = next((m for m in kept if m.person is not None), None)
            exhausted = k_search >= n_index
            beyond = bool(row) and row[-1].distance >= threshold
            if labelled is not None or exhausted or beyond:
                nearest_labelled[qi] = labelled
            else:
                still.append(qi)
        todo = still
        if todo and k_cur * _GROWTH > MAX_WIDE_K:
            _restricted(collection, xq, todo, excl, nearest_labelled)
            break
        k_cur *= _GROWTH
    out = []
    for qi in range(nq):
        lab = nearest_labelled[qi]
        matches = tuple(top[qi] or ())
        person = lab.person if lab is not None and lab.distance < threshold else None
        out.append(
            Identification(
                person=person,
                distance=None if lab is None else lab.distance,
                threshold=float(threshold),
                matches=matches,
                groups=tuple(group_matches(matches)),
            )
        )
    return out


def _restricted(
    collection: Collection,
    xq: np.ndarray,
    todo: list[int],
    excl: list[AbstractSet[int]],
    nearest_labelled: list[Match | None],
) -> None:
    """The nearest labelled face by a search restricted to labelled ids (reads them from SQL)."""
    extra = max(len(excl[i]) for i in todo)
    logger.debug("no labelled face among the %d nearest: restricted search", MAX_WIDE_K)
    rows = collection.search(xq[todo], 1 + extra, labelled_only=True)
    for qi, row in zip(todo, rows, strict=True):
        nearest_labelled[qi] = next((m for m in row if m.face_id not in excl[qi]), None)


def identify_faces(
    collection: Collection,
    faces: Sequence[Face],
    *,
    k: int = 5,
    threshold: float = DEFAULT_IDENTIFY_THRESHOLD,
) -> list[Identification]:
    """:func:`identify_vectors` for detected faces; each result carries its face (box).

    Raises :class:`~facesearch.errors.IncompatibleModelError` when the faces were embedded by
    a model whose vectors cannot be compared with the collection's
    (:meth:`~facesearch.collection.Collection.check_query_models`).
    """
    if not faces:
        return []
    collection.check_query_models(sorted({f.model for f in faces}))
    xq = np.stack([np.asarray(f.embedding, dtype=np.float32) for f in faces])
    results = identify_vectors(collection, xq, k=k, threshold=threshold)
    return [
        Identification(r.person, r.distance, r.threshold, r.matches, r.groups, face)
        for r, face in zip(results, faces, strict=True)
    ]


__all__ = [
    "MAX_WIDE_K",
    "Identification",
    "PersonGroup",
    "group_matches",
    "identify_faces",
    "identify_vectors",
]
