"""1:K identification: the library against a brute-force oracle, and ``facesearch query``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import (
    BACKENDS,
    composite,
    index_library,
    pg_module_url,  # noqa: F401
    run_cli,
    use_shared_pipeline,
)
from dbhelpers import DIM, make_face, unit_vectors

import facesearch.identify as search_mod
from facesearch import store as st
from facesearch.collection import Collection
from facesearch.distance import DEFAULT_IDENTIFY_THRESHOLD, DEFAULT_THRESHOLD, pairwise_distance
from facesearch.identify import group_matches, identify_vectors
from facesearch.types import Face, Match

# -- the library, on synthetic unit vectors --------------------------------------------------------


def _at_distance(q: np.ndarray, d: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at distance ``d = 2 - 2 cos`` from unit ``q``."""
    u = rng.standard_normal(q.shape).astype(np.float64)
    u -= u.dot(q) * q
    u /= np.linalg.norm(u)
    cos = 1.0 - d / 2.0
    v = cos * q + np.sqrt(max(0.0, 1.0 - cos * cos)) * u
    return (v / np.linalg.norm(v)).astype(np.float32)


def _fill(col: Collection, xb: np.ndarray, people: list[str | None], seed: int = 0) -> np.ndarray:
    """One photo per vector; returns the face ids ``(n,) int64`` in order."""
    rng = np.random.default_rng(seed)
    photos = []
    for i, (x, person) in enumerate(zip(xb, people, strict=True)):
        face = make_face(rng)
        face = Face(face.detection, np.asarray(x, dtype=np.float32), "sface")
        photos.append(
            st.NewPhoto(
                path=f"/p/{i:04d}.jpg",
                content_hash=f"{i:064x}",
                size=1,
                mtime=1.0,
                faces=(face,),
                labels=(person,),
                label_source=st.LabelSource.MANUAL,
            )
        )
    added = col.add_photos(photos)
    return np.array([a.face_ids[0] for a in added], dtype=np.int64)


@pytest.fixture
def col(tmp_path: Path) -> Iterator[Collection]:
    c = Collection.open(tmp_path, "q", create=True)
    yield c
    c.close()


def test_verdict_is_the_nearest_labelled_face_even_beyond_k(col: Collection) -> None:
    rng = np.random.default_rng(1)
    q = unit_vectors(rng, 1)[0].astype(np.float64)
    # 40 unlabelled faces nearer than any labelled one: the search must widen past k
    xb = [_at_distance(q, 0.05 + 0.005 * i, rng) for i in range(40)]
    xb += [_at_distance(q, 0.6, rng), _at_distance(q, 0.9, rng), _at_distance(q, 2.5, rng)]
    people: list[str | None] = [None] * 40 + ["Ada", "Bob", "Cy"]
    ids = _fill(col, np.stack(xb), people)
    (r,) = identify_vectors(col, q[None].astype(np.float32), k=3, threshold=1.0)
    assert r.person == "Ada"
    assert r.distance == pytest.approx(0.6, abs=1e-4)
    assert [m.face_id for m in r.matches] == list(ids[:3])
    assert all(m.person is None for m in r.matches)
    assert [(g.person, g.count) for g in r.groups] == [(None, 3)]
    # Ada beyond tau: unknown; the nearest labelled face's distance is still reported
    (r,) = identify_vectors(col, q[None].astype(np.float32), k=3, threshold=0.5)
    assert r.person is None and r.distance == pytest.approx(0.6, abs=1e-4)
    # the unlabelled neighbours already reach tau: no labelled face can be nearer, search stops
    (r,) = identify_vectors(col, q[None].astype(np.float32), k=3, threshold=0.1)
    assert r.person is None and r.distance is None
    (r,) = identify_vectors(col, q[None].astype(np.float32), k=45, threshold=0.7)
    assert r.person == "Ada"
    assert [g.person for g in r.groups] == [None, "Ada", "Bob", "Cy"]
    assert [g.count for g in r.groups] == [40, 1, 1, 1]


def _oracle(
    xb: np.ndarray, ids: np.ndarray, people: list[str | None], xq: np.ndarray, k: int, tau: float,
    exclude: list[set[int]],
) -> list[tuple[str | None, list[int], float | None]]:  # fmt: skip
    D = pairwise_distance(xq, xb)  # (nq, nb)
    out = []
    for qi in range(len(xq)):
        order = [j for j in np.argsort(D[qi], kind="stable") if int(ids[j]) not in exclude[qi]]
        top = [int(ids[j]) for j in order[:k]]
        lab = next((j for j in order if people[j] is not None), None)
        dist = None if lab is None else float(D[qi, lab])
        person = people[lab] if lab is not None and D[qi, lab] < tau else None
        out.append((person, top, dist))
    return out


@pytest.mark.parametrize("max_wide_k", [4096, 16])
def test_identify_agrees_with_brute_force(
    col: Collection, monkeypatch: pytest.MonkeyPatch, max_wide_k: int
) -> None:
    monkeypatch.setattr(search_mod, "MAX_WIDE_K", max_wide_k)  # 16: the restricted fallback
    rng = np.random.default_rng(7)
    n_people, nb = 12, 300
    centres = unit_vectors(rng, n_people)
    who = rng.integers(0, n_people, nb)
    xb = centres[who] + 0.35 * rng.standard_normal((nb, DIM)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    labelled = rng.random(nb) < 0.15
    people = [f"P{w}" if lab else None for w, lab in zip(who, labelled, strict=True)]
    ids = _fill(col, xb, people)
    xq = centres[rng.integers(0, n_people, 25)] + 0.35 * rng.standard_normal((25, DIM))
    xq = (xq / np.linalg.norm(xq, axis=1, keepdims=True)).astype(np.float32)
    exclude = [set(rng.choice(ids, 3, replace=False).tolist()) for _ in range(25)]
    for k, tau in ((1, DEFAULT_THRESHOLD), (5, 0.4), (7, 1.0)):
        want = _oracle(xb, ids, people, xq, k, tau, exclude)
        got = identify_vectors(col, xq, k=k, threshold=tau, exclude=exclude)
        for (person, top, dist), r in zip(want, got, strict=True):
            assert r.person == person
            assert [m.face_id for m in r.matches] == top
            if r.distance is not None:  # found: the true nearest labelled face
                assert dist is not None and r.distance == pytest.approx(dist, abs=1e-4)
            else:  # not found: then none is within tau
                assert dist is None or dist >= tau


def test_group_matches() -> None:
    ms = [
        Match(1, 0.3, None, "/a.jpg"),
        Match(2, 0.4, "Ada", "/b.jpg"),
        Match(3, 0.2, "Ada", "/c.jpg"),
        Match(4, 0.9, "Bob", "/d.jpg"),
    ]
    groups = group_matches(ms)
    assert [(g.person, g.distance, g.count, g.photo, g.face_id) for g in groups] == [
        ("Ada", 0.2, 2, "/c.jpg", 3),
        (None, 0.3, 1, "/a.jpg", 1),
        ("Bob", 0.9, 1, "/d.jpg", 4),
    ]


def test_identify_reads_no_face_table_in_the_usual_case(
    col: Collection, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    xb = unit_vectors(rng, 50)
    _fill(col, xb, ["A" if i % 2 else None for i in range(50)])
    col.close()

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a query must not scan the face table")

    monkeypatch.setattr(st, "load_embeddings", forbidden)
    monkeypatch.setattr(st, "labelled_face_ids", forbidden)
    monkeypatch.setattr(st, "face_ids", forbidden)
    with Collection.open(tmp_path, "q") as again:
        (r,) = identify_vectors(again, xb[:1], k=5)
        assert again.vectors.mmapped
    assert r.matches[0].distance == pytest.approx(0.0, abs=1e-5)


# -- facesearch query -----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def library(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> Iterator[dict[str, Any]]:
    """The test library indexed with --labels folders (SQLite or PostgreSQL)."""
    yield index_library(request, tmp_path_factory, data)


def _table(entries: list[dict[str, Any]], tau: float) -> str:
    """The table ``facesearch query`` prints, rebuilt from its JSON."""
    lines = []
    for i, e in enumerate(entries, start=1):
        x1, y1, x2, y2 = (round(v) for v in e["box"])
        if e["person"] is not None:
            verdict = f"{e['person']} (d {e['distance']:.3f} < tau {tau:.3f})"
        elif e["distance"] is not None:
            verdict = f"unknown (nearest labelled face d {e['distance']:.3f} >= tau {tau:.3f})"
        else:
            verdict = f"unknown (no labelled face within tau {tau:.3f})"
        lines.append(f"face {i} [{x1}, {y1}, {x2}, {y2}]: {verdict}")
        names = [g["person"] or "(unlabelled)" for g in e["groups"]]
        w = max(12, *map(len, names))
        lines.append(f"  {'person':<{w}}  {'best d':>6}  {'faces':>5}  nearest photo")
        for name, g in zip(names, e["groups"], strict=True):
            lines.append(f"  {name:<{w}}  {g['distance']:>6.3f}  {g['count']:>5}  {g['photo']}")
    return "\n".join(lines) + "\n"


def test_query_a_new_photo_of_a_known_person(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    photo = data / "photos" / "BBT_Raj" / "raj4.png"  # not in the collection
    out = run_cli(["query", photo, "--json", *library["args"]]).stdout
    (entry,) = json.loads(out)
    assert entry["person"] == "BBT_Raj"
    assert 0 < entry["distance"] < DEFAULT_IDENTIFY_THRESHOLD == entry["threshold"]
    assert len(entry["box"]) == 4 and entry["box"][2] > entry["box"][0]
    assert len(entry["matches"]) == 5
    assert set(entry["matches"][0]) >= {"person", "distance", "photo", "face_id"}
    assert entry["matches"][0]["person"] == "BBT_Raj"
    assert entry["matches"][0]["photo"].startswith(str(library["lib"] / "BBT_Raj"))
    dists = [m["distance"] for m in entry["matches"]]
    assert dists == sorted(dists) and entry["distance"] == dists[0]
    assert sum(g["count"] for g in entry["groups"]) == 5
    table = run_cli(["query", photo, *library["args"]]).stdout
    assert table == _table([entry], DEFAULT_IDENTIFY_THRESHOLD)
    assert table.startswith(f"face 1 [{round(entry['box'][0])}, ")
    assert ": BBT_Raj (d " in table.splitlines()[0]


def test_query_options_k_and_threshold(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    photo = data / "photos" / "BBT_Amy" / "amy4.png"
    args = library["args"]
    (e,) = json.loads(run_cli(["query", photo, "-k", "2", "--json", *args]).stdout)
    assert len(e["matches"]) == 2 and e["person"] == "BBT_Amy"
    (strict,) = json.loads(run_cli(["query", photo, "--threshold", "0.01", "--json", *args]).stdout)
    assert strict["person"] is None and strict["threshold"] == 0.01
    assert strict["distance"] == e["distance"]  # the same nearest labelled face, beyond tau
    table = run_cli(["query", photo, "--threshold", "0.01", *args]).stdout
    assert f"unknown (nearest labelled face d {e['distance']:.3f} >= tau 0.010)" in table
    bad = run_cli(["query", photo, "-k", "0", *args], ok=False)
    assert bad.exit_code == 2 and "Invalid value for '-k'" in bad.stderr


def test_query_strangers_are_unknown(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    photo = data / "photos" / "BBT_Sheldon" / "sheldon1.png"
    (e,) = json.loads(run_cli(["query", photo, "--json", *library["args"]]).stdout)
    assert e["person"] is None
    assert e["distance"] is None or e["distance"] >= DEFAULT_IDENTIFY_THRESHOLD


def test_query_every_face_of_a_group_photo(
    library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    crops = data / "photos"
    photo = composite(
        [crops / "BBT_Penny" / "penny3.png", crops / "BBT_Amy" / "amy5.png"],
        [200, 200],
        library["root"] / "pair.png",
    )
    entries = json.loads(run_cli(["query", photo, "--json", *library["args"]]).stdout)
    assert [e["person"] for e in entries] == ["BBT_Penny", "BBT_Amy"]  # left to right
    assert entries[0]["box"][2] < entries[1]["box"][0]


def test_query_errors(library: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_shared_pipeline(monkeypatch)
    no_face = data / "negatives" / "white.png"
    r = run_cli(["query", no_face, *library["args"]], ok=False)
    assert (r.exit_code, r.stdout, r.stderr) == (1, "", f"Error: no face found in {no_face}\n")
    bad = data / "odd" / "not_an_image.jpg"
    r = run_cli(["query", bad, *library["args"]], ok=False)
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: cannot read image {bad}: not an image")
    r = run_cli(["query", no_face, "--home", library["root"] / "nothing"], ok=False)
    assert r.exit_code == 1
    assert r.stderr == (
        f"Error: no collection 'default' in {library['root'] / 'nothing'}: create it by "
        "indexing photos into it (`facesearch index PATH --collection default`)\n"
    )
    r = run_cli(["query", *library["args"]], ok=False)
    assert r.exit_code == 2 and "Missing argument 'IMAGE'" in r.stderr
