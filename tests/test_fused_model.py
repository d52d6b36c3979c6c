"""The fused model ``sface+dlib`` where ``sface`` goes: its configuration, its operating points,
and a collection indexed, searched, verified and clustered with it through the API.

The vectors themselves (the weighted concatenation, parity of each network with its oracle)
are tested in ``test_dlib.py``; moving a collection to the model and back in
``test_model_upgrade.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import PEOPLE, STRANGERS, make_library

from facesearch import api
from facesearch.distance import (
    DEFAULT_THRESHOLD,
    FUSED_IDENTIFY_THRESHOLD,
    FUSED_THRESHOLD,
    FUSED_VERIFY_THRESHOLD,
    shipped_threshold,
)
from facesearch.errors import ArgumentError, ModelError
from facesearch.models.modelfile import FUSED, read_meta
from facesearch.pipeline import PipelineConfig

N_FACES = sum(len(v) for v in PEOPLE.values())


@pytest.fixture(scope="module")
def fused_models() -> api.Models:
    """The fused model's networks, loaded once for the module."""
    return api.Models(PipelineConfig(model=FUSED, threads=1))


# -- configuration and operating points ------------------------------------------------------------


def test_the_fused_model_runs_on_the_numpy_engine() -> None:
    for engine in ("auto", "torch", "numpy"):
        assert PipelineConfig(model=FUSED, engine=engine).resolved(photos=10**6).engine == "numpy"
    assert PipelineConfig(engine="torch").with_model(FUSED).engine == "numpy"
    with pytest.raises(ArgumentError, match=r"sface\+dlib"):
        PipelineConfig(model="my-model.pt", engine="numpy")


def test_its_three_operating_points_are_recorded_with_it(fused_models: api.Models) -> None:
    meta = read_meta(FUSED)
    assert meta["name"] == FUSED and meta["dim"] == 256 and meta["dlib_sha256"]
    points = {"base": FUSED_THRESHOLD, "verify": FUSED_VERIFY_THRESHOLD}
    points["identify"] = FUSED_IDENTIFY_THRESHOLD
    assert (meta["threshold"], meta["verify_threshold"], meta["identify_threshold"]) == tuple(
        points.values()
    )
    # 1:K is stricter than the base point, 1:1 (accuracy-fitted) looser, as for sface
    assert FUSED_IDENTIFY_THRESHOLD < FUSED_THRESHOLD < FUSED_VERIFY_THRESHOLD
    for purpose, tau in points.items():
        assert shipped_threshold(purpose, FUSED) == tau
        assert fused_models.threshold(purpose) == tau  # type: ignore[arg-type]
    assert shipped_threshold("base") == DEFAULT_THRESHOLD
    with pytest.raises(ValueError, match="not a shipped model"):
        shipped_threshold("verify", "my-model.pt")


def test_training_and_the_torch_embedder_refuse_it() -> None:
    from facesearch.models.modelfile import load_embedder, load_model

    for load in (load_model, load_embedder):
        with pytest.raises(ModelError, match="training"):
            load(FUSED)


def test_it_embeds_photos_not_crops(fused_models: api.Models, data: Path) -> None:
    pipe = fused_models.pipeline()
    image = api.load(data / "photos" / "BBT_Raj" / "raj1.png")
    (face,) = pipe.faces(image)
    assert face.model == FUSED and face.embedding.shape == (256,)
    with pytest.raises(ModelError, match="photo and landmarks"):
        pipe.embed(np.zeros((1, 112, 112, 3), np.uint8))
    emb = pipe.embedder
    lm = [face.detection.landmarks_array()]
    emb.flip = True  # type: ignore[misc]
    try:
        flipped = emb.embed_photos([image], [lm])[0]  # type: ignore[union-attr]
    finally:
        emb.flip = False  # type: ignore[misc]
    assert abs(float(np.linalg.norm(flipped)) - 1.0) < 1e-5
    assert 0.9 < float(flipped @ face.embedding) < 1.0 - 1e-6  # the mirror image counts


# -- a collection of the fused model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fused_collection(
    tmp_path_factory: pytest.TempPathFactory, data: Path, fused_models: api.Models
) -> dict[str, Any]:
    """The test library indexed with ``sface+dlib`` (no labels), SQLite."""
    root = tmp_path_factory.mktemp("fused")
    lib = make_library(data, root)
    with api.open_collection(root / "home", create=True) as col:
        report = api.index_paths(col, [lib], models=fused_models)
    return {"home": root / "home", "lib": lib, "report": report}


@pytest.fixture()
def fresh(fused_collection: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    import shutil

    shutil.copytree(fused_collection["home"], tmp_path / "home")
    with api.open_collection(tmp_path / "home") as col:
        yield col


def test_vectors_and_index_follow_the_model(fused_collection: dict[str, Any]) -> None:
    assert fused_collection["report"].faces_added == N_FACES
    with api.open_collection(fused_collection["home"]) as col:
        (entry,) = api.list_models(col).models
        assert (entry.name, entry.dim, entry.faces) == (FUSED, 256, N_FACES)
        assert entry.threshold == FUSED_THRESHOLD
        info = api.collection_info(col)
        assert info.consistent and col.vectors.dim == 256


def test_identify_and_search_with_the_fused_model(
    fresh: Any, data: Path, fused_models: api.Models
) -> None:
    photos = data / "photos"
    for person, files in PEOPLE.items():
        api.create_person(fresh, person)
        for f in files:
            (face,) = api.search_faces(fresh, image=photos / person / f, k=1)[0].matches
            api.assign_face(fresh, face.face_id, person)
    res = api.identify(fresh, photos / "BBT_Raj" / "raj5.png", models=fused_models)
    assert res.threshold == FUSED_IDENTIFY_THRESHOLD and res.model == FUSED
    assert res.faces[0].person == "BBT_Raj"
    assert res.faces[0].distance is not None and res.faces[0].distance < FUSED_IDENTIFY_THRESHOLD
    stranger = api.identify(fresh, photos / STRANGERS[0], models=api.Models())
    assert stranger.faces[0].person is None  # queries follow the collection's model
    assert stranger.model == FUSED


def test_verify_with_the_fused_model(data: Path, fused_models: api.Models) -> None:
    raj = data / "photos" / "BBT_Raj"
    same = api.verify(raj / "raj1.png", raj / "raj2.png", models=fused_models)
    assert same.same and same.threshold == FUSED_VERIFY_THRESHOLD and same.model == FUSED
    other = api.verify(raj / "raj1.png", data / "photos/BBT_Amy/amy1.png", models=fused_models)
    assert not other.same and other.distance > FUSED_VERIFY_THRESHOLD


def test_clustering_starts_from_the_models_tau(fresh: Any) -> None:
    rep = api.cluster(fresh)
    assert rep.threshold == FUSED_THRESHOLD
    clusters = rep.clusters
    assert len(clusters) == len(PEOPLE)  # sface's tau (1.274) on these vectors merges everyone
    for c in clusters:
        people = {Path(f.photo).parent.name for f in c.faces}
        assert len(people) == 1, people
    # the same faces clustered with the default rule started from sface's tau: one cluster
    from facesearch.cluster_algorithms import ClusterConfig

    wrong = api.cluster(fresh, config=dataclasses.replace(ClusterConfig(), tau=1.274), full=True)
    assert len(wrong.clusters) < len(PEOPLE)
