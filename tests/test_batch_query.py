"""Many queries in one process: ``query IMG... FOLDER`` and ``verify --pairs``, streamed.

Every batch answer is checked against the one-photo call (:func:`api.identify`,
:func:`api.verify`) as the oracle.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collhelpers import (
    PEOPLE,
    STRANGERS,
    collection_args,
    make_library,
    run_cli,
    shared_pipeline,
    use_shared_pipeline,
)
from PIL import Image

from facesearch import api
from facesearch.errors import ArgumentError
from facesearch.pipeline import FacePipeline, PipelineConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def models() -> api.Models:
    """Models on the test process's shared networks (torch, two workers: tasks side by side)."""
    shared = shared_pipeline()
    return api.Models(
        PipelineConfig(engine="torch", threads=2),
        factory=lambda c: FacePipeline(c, detector=shared.detector, embedder=shared.embedder),
    )


@pytest.fixture(scope="module")
def library(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The test library indexed with labels, and query photos: strangers, a folder of people
    (with a photo without a face), a broken file."""
    root = tmp_path_factory.mktemp("batch")
    lib = make_library(data, root)
    home = root / "home"
    with api.open_collection(home, create=True) as col:
        api.index_paths(col, [lib], models=models(), labels="folders", workers=1)
    probes = root / "probes"
    (probes / "people").mkdir(parents=True)
    for person in PEOPLE:  # a photo of each person not in the library
        shutil.copyfile(data / "photos" / person / f"{person[4:].lower()}4.png",
                        probes / "people" / f"{person}.png")  # fmt: skip
    shutil.copyfile(data / "negatives" / "white.png", probes / "people" / "white.png")
    strangers = [data / "photos" / s for s in STRANGERS]
    broken = probes / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    return {"home": home, "lib": lib, "probes": probes, "strangers": strangers, "broken": broken}


def test_identify_photos_equals_one_query_at_a_time(library: dict[str, Any]) -> None:
    photos = [*library["strangers"], library["probes"] / "people", library["broken"]]
    with api.open_collection(library["home"]) as col:
        got = list(api.identify_photos(col, photos, models=models(), k=3))
        expected_sources = [
            str(library["strangers"][0]),
            str(library["strangers"][1]),
            *sorted(str(p) for p in (library["probes"] / "people").iterdir()),
            str(library["broken"]),
        ]
        assert [g.source for g in got] == expected_sources
        for item in got:
            if item.source.endswith(("white.png", "broken.jpg")):
                assert item.result is None and item.error is not None
                want = "no face found" if item.source.endswith("white.png") else "cannot read"
                assert want in item.error
                continue
            one = api.identify(col, item.source, models=models(), k=3)
            assert item.result is not None
            assert [f.person for f in item.result.faces] == [f.person for f in one.faces]
            for a, b in zip(item.result.faces, one.faces, strict=True):
                assert [m.face_id for m in a.matches] == [m.face_id for m in b.matches]
                assert a.distance == pytest.approx(b.distance, abs=1e-4)


def test_identify_photos_streams(library: dict[str, Any]) -> None:
    """The first answer comes before the photos are all read: a long input is not loaded."""
    pulled = 0

    def photos() -> Iterator[Path]:
        nonlocal pulled
        for _ in range(200):
            pulled += 1
            yield library["strangers"][0]

    with api.open_collection(library["home"]) as col:
        stream = api.identify_photos(col, photos(), models=models())
        first = next(stream)
        assert first.result is not None and pulled < 100
        stream.close()  # stops the workers


def test_cli_query_many_photos_streams_json_lines(
    library: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    args = collection_args(library["home"], None)
    people = library["probes"] / "people"
    res = run_cli(["query", *library["strangers"], people, "--json", *args], ok=False)
    assert res.exit_code == 1  # white.png has no face; the others are answered
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 2 + len(list(people.iterdir()))
    assert rows[0]["image"] == str(library["strangers"][0]) and rows[0]["faces"]
    assert all(r["faces"][0]["detector_pass"] == "default" for r in rows if "faces" in r)
    assert [r for r in rows if "error" in r] == [
        {"image": str(people / "white.png"), "error": f"no face found in {people / 'white.png'}"}
    ]
    text = run_cli(["query", *library["strangers"], *args]).stdout
    assert text.startswith(f"== {library['strangers'][0]}\nface 1 [")
    assert f"== {library['strangers'][1]}\nface 1 [" in text


def test_verify_pairs_csv(library: dict[str, Any], data: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    use_shared_pipeline(monkeypatch)
    lib = library["lib"]
    csv = tmp_path / "pairs.csv"
    rows = [
        ("BBT_Amy/amy1.png", "BBT_Amy/amy2.png"),
        ("BBT_Amy/amy1.png", "BBT_Raj/raj1.png"),
        ("BBT_Raj/raj2.png", "BBT_Raj/raj3.png"),
        ("BBT_Amy/amy1.png", "misc/empty.jpg"),
    ]
    for f in ("BBT_Amy", "BBT_Raj", "misc"):
        (tmp_path / f).symlink_to(lib / f, target_is_directory=True)
    csv.write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in rows))
    pairs = api.read_pairs_csv(csv)
    assert pairs[0] == (str(tmp_path / rows[0][0]), str(tmp_path / rows[0][1]))
    got = list(api.verify_pairs(pairs, models=models()))
    for item, (a, b) in zip(got[:3], pairs[:3], strict=True):
        one = api.verify(a, b, models=models())
        assert item.verification is not None
        assert item.verification.distance == pytest.approx(one.distance, abs=1e-4)
        assert item.verification.same == one.same
    assert [g.verification.same for g in got[:3] if g.verification] == [True, False, True]
    assert got[3].verification is None and "empty file" in (got[3].error or "")

    res = run_cli(["verify", "--pairs", csv, "--json"], ok=False)
    assert res.exit_code == 1
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [line.get("same") for line in lines] == [True, False, True, None]
    assert lines[3]["a"] == pairs[3][0] and "empty file" in lines[3]["error"]
    text = run_cli(["verify", "--pairs", csv], ok=False).stdout.splitlines()
    assert text[1].endswith("different people") and len(text) == 3

    bad = tmp_path / "bad.csv"
    bad.write_text("a.png,b.png\nonly-one.png\n")
    with pytest.raises(ArgumentError, match=r"bad.csv line 2: expected 'a,b'"):
        api.read_pairs_csv(bad)
    res = run_cli(["verify", "--pairs", bad], ok=False)
    assert res.exit_code != 0 and "line 2" in res.stderr
    res = run_cli(["verify", pairs[0][0]], ok=False)
    assert res.exit_code == 2 and "give IMAGE_A and IMAGE_B, or --pairs" in res.stderr


def test_identify_photos_and_verify_pairs_of_aligned_crops(
    library: dict[str, Any], data: Path, tmp_path: Path
) -> None:
    """``aligned``: each crop is embedded as it is, as the one-photo calls do; a photo of
    another shape gets its error, the others are answered."""
    from photosets import make_crops

    sources = [data / "photos" / p / f"{p[4:].lower()}4.png" for p in list(PEOPLE)[:2]]
    crops = make_crops(shared_pipeline(), sources, tmp_path, ("arcface112",))["arcface112"]
    wide = tmp_path / "wide.png"  # 2:1, not on the template
    Image.new("RGB", (224, 112), "white").save(wide)
    with api.open_collection(library["home"]) as col:
        got = list(api.identify_photos(col, [*crops, wide], models=models(), aligned=True))
        assert [g.source for g in got] == [str(p) for p in (*crops, wide)]
        for item, crop in zip(got[:2], crops, strict=True):
            one = api.identify(col, crop, models=models(), aligned=True)
            assert item.result is not None and len(item.result.faces) == 1
            assert item.result.faces[0].person == one.faces[0].person is not None
            assert item.result.faces[0].distance == pytest.approx(one.faces[0].distance, abs=1e-4)
        assert got[2].result is None and "template" in (got[2].error or "")
    pair = list(api.verify_pairs([(crops[0], sources[0])], models=models(), aligned=False))
    assert pair[0].verification is not None  # a crop also works through detection
    same = list(api.verify_pairs([(crops[0], crops[0])], models=models(), aligned=True))
    assert same[0].verification is not None and same[0].verification.distance < 1e-4
