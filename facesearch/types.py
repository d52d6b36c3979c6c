"""Frozen value types shared by every stage.

Coordinates are pixels of the *original* photo (after EXIF orientation), x to the right,
y down. Boxes are ``(x1, y1, x2, y2)``. Landmarks are 5 points in YuNet / ArcFace order:
image-left eye, other eye, nose tip, image-left mouth corner, other mouth corner.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Box = tuple[float, float, float, float]
Point = tuple[float, float]

#: How a face was found (``Detection.detector_pass``, stored per face): ``default``, the
#: detector at its settings; ``upscaled``, the second pass on the photo upscaled, run only when
#: the first found nothing (:data:`facesearch.pipeline.FALLBACK_UPSCALE`); ``aligned``, not
#: detected: the photo was given as a face crop on the alignment template (``--aligned``).
DETECTOR_PASSES: tuple[str, ...] = ("default", "upscaled", "aligned")


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected face: box, 5 landmarks, detector score in [0, 1], and the pass that found it
    (one of :data:`DETECTOR_PASSES`)."""

    box: Box
    landmarks: tuple[Point, Point, Point, Point, Point]
    score: float
    detector_pass: str = "default"

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> Point:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)

    def landmarks_array(self) -> np.ndarray:
        """Landmarks as a ``(5, 2) float32`` array."""
        return np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)

    def to_dict(self) -> dict[str, object]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
            "detector_pass": self.detector_pass,
        }


@dataclass(frozen=True, slots=True)
class Face:
    """A detected face with its embedding: ``(D,) float32``, unit norm."""

    detection: Detection
    embedding: np.ndarray = field(repr=False)
    model: str = "sface"


@dataclass(frozen=True, slots=True)
class Match:
    """One nearest-neighbour hit in a collection."""

    face_id: int
    distance: float
    person: str | None
    photo: str
