"""FacePipeline: photos split over parallel workers give the same faces, in input order, with
either engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facesearch.image import load_image
from facesearch.pipeline import FacePipeline, PipelineConfig


@pytest.fixture(scope="module")
def photos(data: Path) -> list[np.ndarray]:
    paths = (
        sorted((data / "groups").glob("*.jpg"))[:2]
        + sorted((data / "lfw" / "images").glob("A*/*.jpg"))[:4]
    )
    return [load_image(p) for p in paths]


@pytest.fixture(params=["torch", "numpy"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The engine; OpenBLAS's thread setting is restored."""
    from facesearch.models import npengine

    blas = npengine._openblas_threads()
    blas_threads = blas[0]() if blas is not None else None
    yield str(request.param)
    if blas is not None and blas_threads is not None:
        blas[1](blas_threads)


def test_parallel_parts_equal_one_part(photos: list[np.ndarray], engine: str) -> None:
    serial = FacePipeline(PipelineConfig(threads=1, engine=engine))
    parallel = FacePipeline(
        PipelineConfig(threads=2, engine=engine),
        detector=serial.detector,
        embedder=serial.embedder,
    )
    assert len(parallel._parts(photos)) == 2
    a, b = serial.faces_batch(photos), parallel.faces_batch(photos)
    assert [len(x) for x in a] == [len(x) for x in b]
    assert sum(len(x) for x in a) >= 6
    for fa, fb in zip(a, b, strict=True):
        for x, y in zip(fa, fb, strict=True):
            assert x.detection.box == pytest.approx(y.detection.box, abs=1e-3)
            assert float(x.embedding @ y.embedding) > 0.99999


def test_parts_are_contiguous_and_balanced_by_pixels() -> None:
    pipe = FacePipeline.__new__(FacePipeline)
    pipe.config = PipelineConfig(threads=2)
    pipe.threads = 2
    big, small = np.zeros((1000, 1000, 3), np.uint8), np.zeros((100, 100, 3), np.uint8)
    assert pipe._parts([big, small, small, small]) == [(0, 1), (1, 4)]
    assert pipe._parts([small] * 4) == [(0, 2), (2, 4)]
    assert pipe._parts([small]) == [(0, 1)]
    pipe.threads = 3
    parts = pipe._parts([small] * 7)
    assert parts[0][0] == 0 and parts[-1][1] == 7
    assert all(a < b for a, b in parts) and all(
        p[1] == q[0] for p, q in zip(parts, parts[1:], strict=False)
    )


def test_workers_run_tasks_side_by_side_in_submission_order(
    photos: list[np.ndarray], engine: str
) -> None:
    serial = FacePipeline(PipelineConfig(threads=1, engine=engine))
    pipe = FacePipeline(
        PipelineConfig(threads=2, engine=engine),
        detector=serial.detector,
        embedder=serial.embedder,
    )
    import threading

    from facesearch.models import npengine

    blas = npengine._openblas_threads()
    if blas is not None:
        blas[1](2)

    seen: set[str] = set()
    both = threading.Barrier(2, timeout=30)  # passes only if two tasks run at the same time

    def task(images: list[np.ndarray]) -> object:
        seen.add(threading.current_thread().name)
        both.wait()
        return pipe.faces_batch(images)  # on a worker: its part alone, no nested parts

    with pipe.workers() as submit:
        if engine == "numpy":  # one thread each while the workers run
            assert pipe.engine_threads is not None and pipe.engine_threads.count == 1
            assert blas is None or blas[0]() == 1
        futures = [submit(task, photos[:3]), submit(task, photos[3:])]
        got = [faces for f in futures for faces in f.result()]
    if engine == "numpy":
        assert pipe.engine_threads is not None
        assert pipe.engine_threads.count == 2, "restored on the way out"
    assert blas is None or blas[0]() == 2
    assert len(seen) == 2 and all(n.startswith("facesearch-infer") for n in seen)
    want = serial.faces_batch(photos)
    assert [len(x) for x in got] == [len(x) for x in want]
    for fa, fb in zip(got, want, strict=True):
        for x, y in zip(fa, fb, strict=True):
            assert float(x.embedding @ y.embedding) > 0.99999

    def boom() -> None:
        raise ValueError("bad photo")

    with pipe.workers() as submit:
        fut = submit(boom)
        with pytest.raises(ValueError, match="bad photo"):
            fut.result()
    # one thread: the task runs at once, in the caller's thread; errors come back the same way
    with serial.workers() as submit:
        fut = submit(lambda: threading.current_thread().name)
        assert fut.done() and fut.result() == threading.current_thread().name
        assert isinstance(submit(boom).exception(), ValueError)
