"""EarlyFaces: a photo's faces computed in a child process, errors raised in the parent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import ImageError
from facesearch.image import load_image
from facesearch.pipeline import FacePipeline, PipelineConfig
from facesearch.prefetch import EarlyFaces


@pytest.fixture(params=["fork", "in-process"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "in-process":
        monkeypatch.setenv("FACESEARCH_NO_FORK", "1")
    return str(request.param)


def test_faces_equal_the_numpy_pipeline(data: Path, mode: str) -> None:
    path = sorted((data / "groups").glob("*.jpg"))[0]
    size, dets, vecs = EarlyFaces(str(path)).result()
    want = FacePipeline(PipelineConfig(engine="numpy")).faces(load_image(path))
    assert size == load_image(path).shape[:2]
    assert len(dets) == len(want) >= 2 and vecs.shape == (len(want), 128)
    for d, v, f in zip(dets, vecs, want, strict=True):
        assert d.box == pytest.approx(f.detection.box)
        assert float(np.dot(v, f.embedding)) > 0.99999


def test_errors_of_the_child_are_raised_in_the_parent(data: Path, mode: str) -> None:
    early = EarlyFaces(str(data / "odd" / "not_an_image.jpg"))
    with pytest.raises(ImageError, match="not an image"):
        early.result()
    with pytest.raises(ImageError):  # the same error again, the child is gone
        early.result()
    missing = EarlyFaces(str(data / "no such file.jpg"))
    with pytest.raises(ImageError):
        missing.result()


def test_a_photo_without_faces(data: Path, mode: str) -> None:
    _, dets, vecs = EarlyFaces(str(data / "negatives" / "brick.png")).result()
    assert dets == [] and vecs.shape == (0, 128)


def test_cancel_stops_the_child(data: Path) -> None:
    path = sorted((data / "groups").glob("*.jpg"))[0]
    with EarlyFaces(str(path)) as early:
        pid = early._pid
        assert pid > 0
    assert early._pid == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left


def test_a_stuck_child_falls_back_to_the_parent(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import facesearch.prefetch as prefetch

    path = sorted((data / "groups").glob("*.jpg"))[0]
    monkeypatch.setattr(prefetch, "CHILD_TIMEOUT", 0.0)
    early = EarlyFaces(str(path))
    _, dets, vecs = early.result()  # the child had no time: computed here
    assert len(dets) >= 2 and vecs.shape == (len(dets), 128)
    assert early._pid == 0
