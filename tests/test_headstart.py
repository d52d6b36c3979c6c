"""The numpy engine standing in for torch while it loads (head start) and in small runs."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import shared_pipeline

from facesearch import headstart, indexer
from facesearch.collection import Collection
from facesearch.indexer import IndexSettings, index_paths
from facesearch.models.yunet import DetectorConfig
from facesearch.pipeline import PipelineConfig

pytestmark = pytest.mark.skipif(not headstart.enabled(), reason="needs os.fork")


def _library(tmp_path: Path, data: Path) -> Path:
    """Six LFW photos, a group photo, a small photo without faces, a broken file."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for f in sorted((data / "lfw" / "images").glob("*/*.jpg"))[:6]:
        shutil.copy(f, lib / f.name)
    shutil.copy(data / "groups" / "two_people.jpg", lib / "two_people.jpg")
    shutil.copy(data / "negatives" / "coins.png", lib / "coins.png")
    (lib / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return lib


def _assert_same_faces(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.model == w.model == "sface"
        np.testing.assert_allclose(g.detection.box, w.detection.box, atol=0.05)
        assert float(np.dot(g.embedding, w.embedding)) > 0.99999


def test_child_computes_what_the_torch_pipeline_computes(tmp_path: Path, data: Path) -> None:
    lib = _library(tmp_path, data)
    paths = sorted(str(p) for p in lib.iterdir()) + [str(lib / "missing.jpg")]
    sizes = [Path(p).stat().st_size if Path(p).exists() else 0 for p in paths]
    head = headstart.HeadStart(paths, PipelineConfig(), sizes)
    assert head.finished(120), "the child did not finish 9 photos in 2 minutes"
    done = head.stop()
    # the broken and the missing file are left to the indexer
    assert set(done) == set(paths) - {str(lib / "broken.jpg"), str(lib / "missing.jpg")}
    from facesearch.image import load_image

    pipe = shared_pipeline()
    for path, (sha, faces) in done.items():
        data_bytes = Path(path).read_bytes()
        assert sha == hashlib.sha256(data_bytes).hexdigest()
        _assert_same_faces(faces, pipe.faces_batch([load_image(data_bytes)])[0])
    assert len(done[str(lib / "two_people.jpg")][1]) == 2
    assert done[str(lib / "coins.png")][1] == []
    assert head.stop() == {}  # once only


def test_stopped_early_returns_only_whole_results(tmp_path: Path, data: Path) -> None:
    lib = _library(tmp_path, data)
    paths = sorted(str(p) for p in lib.iterdir())
    head = headstart.HeadStart(paths, PipelineConfig())
    done = head.stop()  # at once: the child is killed while it loads or works
    assert set(done) <= set(paths)


def test_off_switch_and_other_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACESEARCH_HEAD_START", "0")
    assert not headstart.enabled()
    assert headstart.HeadStart([str(tmp_path / "a.jpg")], PipelineConfig()).stop() == {}
    with pytest.raises(ValueError, match="shipped model"):
        headstart.HeadStart([], PipelineConfig(model=str(tmp_path / "m.fsm")))
    assert headstart.same_work(PipelineConfig(), PipelineConfig(engine="numpy"))
    assert not headstart.same_work(PipelineConfig(), PipelineConfig(flip=True))
    other = PipelineConfig(detector=DetectorConfig(score_threshold=0.8))
    assert not headstart.same_work(PipelineConfig(), other)


def _stored(db: Path) -> list[tuple[str, float, bytes]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT p.path, f.x1, f.embedding FROM faces f JOIN photos p ON p.id = f.photo_id "
            "ORDER BY p.id, f.id"
        ).fetchall()


@pytest.mark.parametrize("same_config", [True, False])
def test_index_with_a_head_start_stores_what_it_stores_without(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, same_config: bool
) -> None:
    lib = _library(tmp_path, data)
    heads: list[headstart.HeadStart] = []

    class Recorded(headstart.HeadStart):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            heads.append(self)

    monkeypatch.setattr(headstart, "HeadStart", Recorded)
    monkeypatch.setattr(indexer, "SMALL_RUN_SECONDS", 0.0)  # a "large" run: torch is loaded
    monkeypatch.setattr(indexer, "native_available", lambda: False)  # ... as without the C kernels

    def slow_loader() -> Any:  # torch "loads" until the child has done every photo
        assert heads and heads[-1].finished(120)
        return shared_pipeline()

    settings = IndexSettings(batch_size=3, workers=2)
    expected = PipelineConfig() if same_config else PipelineConfig(flip=True)
    with Collection.open(tmp_path, "with", create=True) as col:
        rep = index_paths(col, slow_loader, [lib], settings, loader_config=expected)
    with Collection.open(tmp_path, "without", create=True) as col:
        ref = index_paths(col, shared_pipeline(), [lib], settings)
    assert (rep.new, rep.failed, rep.faces_added) == (ref.new, ref.failed, ref.faces_added)
    assert (rep.new, rep.failed) == (8, 1)
    got, want = _stored(tmp_path / "with" / "faces.db"), _stored(tmp_path / "without" / "faces.db")
    assert [r[0] for r in got] == [r[0] for r in want]  # same photos, same order
    for g, w in zip(got, want, strict=True):
        assert abs(g[1] - w[1]) < 0.05
        cos = float(np.frombuffer(g[2], np.float32) @ np.frombuffer(w[2], np.float32))
        assert cos > 0.99999
    assert len(heads) == 1
    # the child's faces were used (numpy and torch differ in the last float32 bits) only when
    # the pipeline loaded is the one the head start was computed for
    differs = sum(g[2] != w[2] for g, w in zip(got, want, strict=True))
    assert (differs > 0) == same_config


def test_a_small_run_uses_the_numpy_engine_and_never_loads_torch(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small run, or any run when the native kernels are built (the numpy engine is then as
    fast per face as torch, and starts ~2 s sooner): the numpy engine, torch never loaded."""
    lib = _library(tmp_path, data)  # 9 files, 0.2 MB
    monkeypatch.setattr(indexer, "SMALL_RUN_SECONDS", 100.0)
    monkeypatch.setattr(indexer, "native_available", lambda: False)
    calls: list[int] = []

    def loader() -> Any:
        calls.append(1)
        return shared_pipeline()

    settings = IndexSettings(batch_size=3, workers=2)
    with Collection.open(tmp_path, "small", create=True) as col:
        rep = index_paths(col, loader, [lib], settings, loader_config=PipelineConfig())
        assert col.active_model is not None and col.active_model.name == "sface"
    with Collection.open(tmp_path, "torch", create=True) as col:
        ref = index_paths(col, shared_pipeline(), [lib], settings)
    assert calls == []
    assert (rep.new, rep.failed, rep.faces_added) == (ref.new, ref.failed, ref.faces_added)
    got, want = _stored(tmp_path / "small" / "faces.db"), _stored(tmp_path / "torch" / "faces.db")
    assert [r[0] for r in got] == [r[0] for r in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g[1] - w[1]) < 0.05
        assert float(np.frombuffer(g[2], np.float32) @ np.frombuffer(w[2], np.float32)) > 0.99999

    # more work than the limit: with the native kernels the numpy engine runs it all the same
    monkeypatch.setattr(indexer, "SMALL_RUN_SECONDS", 1.0)  # 9 photos: 1.35 s + 0.2 MB
    monkeypatch.setattr(indexer, "native_available", lambda: True)
    with Collection.open(tmp_path, "large-native", create=True) as col:
        index_paths(col, loader, [lib], settings, loader_config=PipelineConfig())
    assert calls == []
    # without them, the loader runs (and the head start beside it)
    monkeypatch.setattr(indexer, "native_available", lambda: False)
    with Collection.open(tmp_path, "large", create=True) as col:
        index_paths(col, loader, [lib], settings, loader_config=PipelineConfig())
    assert calls == [1]
    # a model file is never replaced by the numpy engine
    with Collection.open(tmp_path, "model", create=True) as col:
        monkeypatch.setattr(indexer, "SMALL_RUN_SECONDS", 100.0)
        index_paths(col, loader, [lib], settings, loader_config=PipelineConfig(model="m.fsm"))
    assert calls == [1, 1]
