"""Face crops: the fallback's upscaled second pass, and ``--aligned`` crops embedded as they are.

The crops are made from LFW by facesearch's own detection and alignment
(:func:`photosets.make_crops`). Three of the sources give 112x112 ArcFace crops in which the
detector's first pass finds no face (best scores 0.880-0.886 against the 0.9 threshold) and the
2x upscaled pass does (0.932-0.938): the baseline of ``bench/crops.py`` on a known case.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import collection_args, run_cli, shared_pipeline, use_shared_pipeline
from photosets import make_crops

from facesearch import api
from facesearch.align import ARCFACE_TEMPLATE
from facesearch.errors import ImageError
from facesearch.image import load_image
from facesearch.pipeline import FacePipeline, PipelineConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: LFW images whose 112x112 crop the first pass misses and the upscaled pass finds.
MISSED = ("Juan_Carlos_Ferrero_0027", "Silvan_Shalom_0002", "Jacques_Chirac_0030")
#: LFW images whose crop the first pass finds.
FOUND = ("Aaron_Peirsol_0001", "Serena_Williams_0010")


def models(*, fallback: bool = True) -> api.Models:
    """Models on the test process's shared networks (torch, one thread)."""
    shared = shared_pipeline()
    return api.Models(
        PipelineConfig(engine="torch", threads=1, fallback=fallback),
        factory=lambda c: FacePipeline(c, detector=shared.detector, embedder=shared.embedder),
    )


def lfw(data: Path, name: str) -> Path:
    return data / "lfw" / "images" / name.rsplit("_", 1)[0] / f"{name}.jpg"


@pytest.fixture(scope="module")
def crops(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``variant -> [crop files]`` of MISSED then FOUND, and ``sources``."""
    sources = [lfw(data, n) for n in (*MISSED, *FOUND)]
    made = make_crops(
        shared_pipeline(),
        sources,
        tmp_path_factory.mktemp("crops"),
        ("arcface112", "arcface160", "sphere96x112", "box160"),
    )
    assert all(len(v) == len(sources) for v in made.values())
    return {"sources": sources, **made}


def test_upscaled_pass_finds_the_crops_the_first_pass_misses(crops: dict[str, Any]) -> None:
    files = crops["arcface112"]
    without = api.detect_photos(files, models=models(fallback=False))
    assert [len(p.detections) for p in without] == [0, 0, 0, 1, 1]
    found = api.detect_photos(files, models=models())
    for photo in found[: len(MISSED)]:
        (det,) = photo.detections
        assert det.detector_pass == "upscaled"
        assert det.score >= 0.9  # the same threshold, at twice the size
        # mapped back to the crop's pixels: the eyes where the template puts them
        eyes = det.landmarks_array()[:2]
        assert np.abs(eyes - ARCFACE_TEMPLATE[:2]).max() < 5, eyes
    assert [p.detections[0].detector_pass for p in found[len(MISSED) :]] == ["default", "default"]
    # the faces found at twice the size are the faces of the original photos
    for crop, source in zip(files, crops["sources"], strict=True):
        (a,) = api.photo_faces(crop, models=models())
        b = max(api.photo_faces(source, models=models()), key=lambda f: f.detection.area)
        assert float(np.sum((a.embedding - b.embedding) ** 2)) < 0.3


def test_fallback_finds_no_face_in_the_negatives(data: Path, tmp_path: Path) -> None:
    """The negatives (objects, textures, animals, text, noise) stay at 0 faces with the second
    pass on; 17 of them are small enough for it to run."""
    with api.open_collection(tmp_path, create=True) as col:
        rep = api.index_paths(col, [data / "negatives"], models=models(), workers=1)
    assert rep.files == 25 and rep.failed == 0
    assert rep.faces_added == 0 and rep.no_face == 25


def test_aligned_crop_embeds_as_the_photo_it_was_cut_from(crops: dict[str, Any]) -> None:
    m = models()
    for i, source in enumerate(crops["sources"]):
        image = load_image(source)
        face, _ = shared_pipeline().face_with_fallback(image)
        (a112,) = api.photo_faces(crops["arcface112"][i], models=m, aligned=True)
        assert a112.detection.detector_pass == "aligned"
        assert a112.detection.box == (0.0, 0.0, 112.0, 112.0) and a112.detection.score == 1.0
        # the PNG crop is exactly what the pipeline aligns: the same vector
        np.testing.assert_allclose(a112.embedding, face.embedding, atol=1e-6)
        (a160,) = api.photo_faces(crops["arcface160"][i], models=m, aligned=True)
        assert float(np.sum((a160.embedding - face.embedding) ** 2)) < 0.01
        (a96,) = api.photo_faces(crops["sphere96x112"][i], models=m, aligned=True)
        assert float(np.sum((a96.embedding - face.embedding) ** 2)) < 0.3


def test_aligned_refuses_what_is_not_a_crop_on_the_template(data: Path) -> None:
    photo = data / "groups" / "couple.jpg"
    with pytest.raises(ImageError, match=r"couple.jpg.*is not a face crop on the .*template"):
        api.photo_faces(photo, models=models(), aligned=True)
    with pytest.raises(ImageError, match="not a face crop"):
        api.verify(photo, photo, models=models(), aligned=True)


def test_cli_aligned_index_query_verify_enroll(
    crops: dict[str, Any], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    folder = Path(crops["arcface112"][0]).parents[1]  # arcface112/<Name>/<Name>_NNNN.png
    bad = tmp_path / "bad" / "couple.jpg"
    bad.parent.mkdir()
    bad.write_bytes((data / "groups" / "couple.jpg").read_bytes())
    home = tmp_path / "home"
    args = collection_args(home, None)
    res = run_cli(["index", folder, bad, "--aligned", "--labels", "folders", "--json", *args],
                  ok=False)  # fmt: skip
    assert res.exit_code == 1 and f"nothing could be indexed from {bad}" in res.stderr
    rep = json.loads(res.stdout)
    assert rep["files"] == 6 and rep["new"] == 5 and rep["failed"] == 1
    assert rep["faces_added"] == 5 and rep["faces_upscaled"] == 0
    assert "not a face crop on the alignment template" in rep["failures"][0]["error"]
    info = json.loads(run_cli(["info", "--json", *args]).stdout)
    assert info["faces_by_pass"] == {"aligned": 5}
    with api.open_collection(home) as col:
        page = api.list_faces(col, detector_pass="aligned")
        assert page.total == 5 and {f.detector_pass for f in page.items} == {"aligned"}
        assert api.list_faces(col, detector_pass="upscaled").total == 0
    q = json.loads(run_cli(["query", crops["arcface160"][1], "--aligned", "--json", *args]).stdout)
    assert q[0]["person"] == MISSED[1].rsplit("_", 1)[0]
    v = run_cli(["verify", crops["arcface112"][2], crops["arcface160"][2], "--aligned", "--json"])
    assert json.loads(v.stdout)["same"] is True
    e = run_cli(["enroll", "Someone", crops["sphere96x112"][3], "--aligned", *args])
    assert "enrolled 'Someone' from 1 photo" in e.stdout
    text = run_cli(["info", *args]).stdout
    assert "6 given as aligned crops" in text


def test_list_faces_checks_its_arguments(tmp_path: Path) -> None:
    from facesearch.errors import ArgumentError

    with api.open_collection(tmp_path, create=True) as col:
        with pytest.raises(ArgumentError, match="detector_pass must be one of"):
            api.list_faces(col, detector_pass="sideways")
        assert api.list_faces(col).total == 0
