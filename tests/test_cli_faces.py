"""`facesearch detect`, `verify` and `evaluate lfw` through click's CliRunner, on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from facesearch.cli import main
from facesearch.distance import DEFAULT_VERIFY_THRESHOLD

REPO = Path(__file__).resolve().parents[1]
OBAMA = REPO / "examples/photos/Barack_Obama"
BIDEN = REPO / "examples/photos/Joe_Biden"


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def test_verify_same_person() -> None:
    code, out = run("verify", OBAMA / "obama1.jpg", OBAMA / "obama2.jpg", "--json")
    assert code == 0, out
    r = json.loads(out)
    assert r["same"] is True
    assert r["threshold"] == DEFAULT_VERIFY_THRESHOLD
    assert 0.0 <= r["distance"] < r["threshold"]
    assert len(r["box_a"]) == 4 and r["box_a"][0] < r["box_a"][2]


def test_verify_different_people_readable_output() -> None:
    code, out = run("verify", OBAMA / "obama1.jpg", BIDEN / "biden.jpg")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("distance")
    assert lines[1] == f"threshold {DEFAULT_VERIFY_THRESHOLD:.3f}"
    assert lines[2] == "different people"


def test_verify_threshold_option_decides() -> None:
    code, out = run(
        "verify", OBAMA / "obama1.jpg", BIDEN / "biden.jpg", "--json", "--threshold", "4"
    )
    assert code == 0 and json.loads(out)["same"] is True


def test_verify_all_pairs_in_group_photo() -> None:
    group = REPO / "examples/query/two_people.jpg"
    code, out = run("verify", group, OBAMA / "obama1.jpg", "--all", "--json")
    assert code == 0, out
    r = json.loads(out)
    assert len(r["pairs"]) == 2  # two faces in A x one in B
    assert sum(p["same"] for p in r["pairs"]) == 1  # Obama matches, Biden does not
    assert r["same"] is True and r["distance"] == min(p["distance"] for p in r["pairs"])


def test_verify_no_face_is_a_clear_error(data: Path) -> None:
    code, out = run("verify", OBAMA / "obama1.jpg", data / "negatives/brick.png")
    assert code == 1
    assert "no face found in" in out and "brick.png" in out


def test_verify_broken_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a jpeg")
    code, out = run("verify", bad, OBAMA / "obama1.jpg")
    assert code == 1
    assert "cannot read image" in out and "broken.jpg" in out


def test_detect_no_false_face_on_negatives(data: Path) -> None:
    files = sorted(p for p in (data / "negatives").iterdir() if p.is_file())
    code, out = run("detect", *files, "--json")
    assert code == 0, out
    faces = {Path(r["image"]).name: len(r["faces"]) for r in json.loads(out)}
    assert len(faces) == len(files)
    assert sum(faces.values()) == 0, faces


def test_detect_odd_files_never_crash(data: Path) -> None:
    files = sorted(p for p in (data / "odd").iterdir() if p.is_file())
    res = CliRunner().invoke(main, ["detect", "--json", *map(str, files)])
    assert res.exception is None or isinstance(res.exception, SystemExit)
    items = json.loads(res.stdout)
    assert len(items) == len(files)
    errors = [i for i in items if "error" in i]
    assert errors, "the broken files (empty, text, truncated) must be reported"
    assert res.exit_code == 1  # some files could not be read


@pytest.mark.slow
def test_evaluate_lfw_view1_format(data: Path, tmp_path: Path) -> None:
    """A small View 1 style pairs file: scored at the default tau, fitted figure beside it."""
    lfw = data / "lfw"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(
        "3\n"
        "Aaron_Peirsol\t1\t2\n"
        "Abdullah_Gul\t1\t2\n"
        "Adam_Sandler\t1\t2\n"
        "Aaron_Peirsol\t1\tAbdullah_Gul\t3\n"
        "Adam_Sandler\t3\tAaron_Peirsol\t3\n"
        "Abdullah_Gul\t4\tAdam_Sandler\t2\n"
    )
    code, out = run("evaluate", "lfw", "--pairs", pairs, "--images", lfw / "images", "--json")
    assert code == 0, out
    r = json.loads(out)
    for key in ("accuracy", "accuracy_std", "val_at_far_1e-3", "auc", "threshold"):
        assert key in r
    assert r["n_pairs"] == 6
    assert r["images"] == 10
    assert r["accuracy"] == 1.0 and r["auc"] == 1.0
