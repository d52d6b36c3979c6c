"""A collection whose vectors are kept in Milvus (milvus-lite): identification, search and
clustering equal to the FAISS flat index's on the shared labelled photos; the copy rebuilt
after it is dropped or left behind; a delete that stays deleted after a killed process; a
milvus-lite folder held by another process; moving the vectors between stores; the CLI.

The stored faces are the reference SFace features of the shared photos (``sface_yunet.jsonl``:
detections and features of ``photos/``, labelled by folder, and ``groups/``), so no network
runs here: what is tested is the vector store under the same collection code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pip install 'facesearch[milvus]'")
pytest.importorskip("milvus_lite", reason="pip install 'facesearch[milvus]'")

from facesearch import api  # noqa: E402
from facesearch import store as st  # noqa: E402
from facesearch.collection import INDEX_NAME, LITE_NAME, Collection  # noqa: E402
from facesearch.distance import shipped_threshold  # noqa: E402
from facesearch.errors import CollectionError  # noqa: E402
from facesearch.identify import identify_vectors  # noqa: E402
from facesearch.milvus_vectors import MilvusBusyError, MilvusVectors  # noqa: E402
from facesearch.store import NewPhoto  # noqa: E402
from facesearch.types import Detection, Face  # noqa: E402
from facesearch.vectors import VectorIndex  # noqa: E402
from tests.collhelpers import collection_args, make_library, run_cli, use_shared_pipeline  # noqa: E402


def _face(entry: dict[str, Any]) -> Face:
    x, y, w, h = entry["box"]
    lm = tuple((float(a), float(b)) for a, b in entry["landmarks"])
    feature = np.asarray(entry["feature"], dtype=np.float32)
    det = Detection((x, y, x + w, y + h), lm, float(entry["score"]))  # type: ignore[arg-type]
    return Face(det, feature / np.linalg.norm(feature), "sface")


@pytest.fixture(scope="module")
def reference_faces(reference: Path) -> tuple[list[NewPhoto], np.ndarray]:
    """The shared labelled photos as stored photos (``photos/``: the largest face labelled with
    the folder; ``groups/``: unlabelled faces), and the LFW faces as queries of people who are
    not stored, ``(n, 128) float32``."""
    photos, strangers = [], []
    for line in (reference / "sface_yunet.jsonl").read_text().splitlines():
        item = json.loads(line)
        faces = tuple(_face(f) for f in item["faces"])
        path = str(item["image"])
        if path.startswith("lfw/"):
            strangers.extend(f.embedding for f in faces)
            continue
        if not faces or not path.startswith(("photos/", "groups/")):
            continue
        labels: tuple[str | None, ...] = ()
        if path.startswith("photos/"):
            largest = max(range(len(faces)), key=lambda i: faces[i].detection.area)
            labels = tuple(path.split("/")[1] if i == largest else None for i in range(len(faces)))
        photos.append(
            NewPhoto(path, f"{len(photos):064x}", 1000 + len(photos), 1.0, 640, 480, faces, labels)
        )
    return photos, np.stack(strangers)


def make_collection(home: Path, name: str, photos: list[NewPhoto], vectors: str) -> Collection:
    col = Collection.open(home, name, create=True)
    col.set_index_type("flat")
    col.set_vectors(vectors)
    col.add_photos(photos)
    return col


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, reference_faces: tuple[list[NewPhoto], np.ndarray]
) -> Iterator[tuple[Collection, Collection]]:
    """The same photos in a collection with the FAISS flat index and one with milvus-lite."""
    home = tmp_path_factory.mktemp("milvus-pair")
    photos, _ = reference_faces
    flat = make_collection(home, "flat", photos, "faiss")
    milvus = make_collection(home, "milvus", photos, "milvus-lite")
    try:
        yield flat, milvus
    finally:
        flat.close()
        milvus.close()


def stored(col: Collection) -> tuple[np.ndarray, np.ndarray]:
    with col.session() as s:
        return st.load_all_embeddings(s)


def same_matches(got: list[list[Any]], want: list[list[Any]]) -> None:
    """Equal neighbours (ids, people, photos); distances within float32 rounding."""
    assert [[(m.face_id, m.person, m.photo) for m in row] for row in got] == [
        [(m.face_id, m.person, m.photo) for m in row] for row in want
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose([m.distance for m in g], [m.distance for m in w], atol=1e-5)


def same_identifications(got: list[Any], want: list[Any]) -> None:
    """Equal verdicts, neighbours and groups; distances within float32 rounding (the two
    stores sum the inner products in another order)."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.person == w.person
        assert [m.face_id for m in g.matches] == [m.face_id for m in w.matches]
        assert [m.person for m in g.matches] == [m.person for m in w.matches]
        np.testing.assert_allclose(
            [m.distance for m in g.matches], [m.distance for m in w.matches], atol=1e-5
        )
        assert (g.distance is None) == (w.distance is None)
        if g.distance is not None:
            assert g.distance == pytest.approx(w.distance, abs=1e-5)
        assert [(p.person, p.count, p.face_id) for p in g.groups] == [
            (p.person, p.count, p.face_id) for p in w.groups
        ]


def test_identify_search_and_cluster_equal_faiss_flat(
    pair: tuple[Collection, Collection], reference_faces: tuple[list[NewPhoto], np.ndarray]
) -> None:
    flat, milvus = pair
    assert isinstance(flat.vectors, VectorIndex) and flat.vectors.kind == "flat"
    assert isinstance(milvus.vectors, MilvusVectors)
    ids, xb = stored(flat)
    np.testing.assert_array_equal(stored(milvus)[0], ids)
    assert len(ids) > 100
    tau = shipped_threshold("identify")
    own = [{int(i)} for i in ids]  # leave one out: each stored face finds the others
    want = identify_vectors(flat, xb, k=5, threshold=tau, exclude=own)
    got = identify_vectors(milvus, xb, k=5, threshold=tau, exclude=own)
    same_identifications(got, want)
    assert sum(1 for r in want if r.person is not None) > 30  # the verdicts are not all unknown
    strangers = reference_faces[1]
    same_identifications(
        identify_vectors(milvus, strangers, k=5, threshold=tau),
        identify_vectors(flat, strangers, k=5, threshold=tau),
    )
    for fid in ids[::17]:
        a = api.search_faces(flat, face_id=int(fid), k=8)[0].matches
        b = api.search_faces(milvus, face_id=int(fid), k=8)[0].matches
        assert [m.face_id for m in a] == [m.face_id for m in b]
    rep_flat, rep_milvus = api.cluster(flat), api.cluster(milvus)  # reads SQL on both
    assert rep_flat.clusters
    # the same clusters; cohesion's margin comes from the searched distances (float32 rounding)
    assert [dataclasses.replace(e, cohesion=None) for e in rep_milvus.entries] == [
        dataclasses.replace(e, cohesion=None) for e in rep_flat.entries
    ]
    for got_e, want_e in zip(rep_milvus.entries, rep_flat.entries, strict=True):
        assert (got_e.cohesion is None) == (want_e.cohesion is None)
        if want_e.cohesion is not None:
            assert got_e.cohesion == pytest.approx(want_e.cohesion, abs=1e-5)
    info = api.collection_info(milvus)
    assert info.consistent and info.data["index"]["store"] == "milvus"
    assert info.data["index"]["faces"] == len(ids)


def small(
    tmp_path: Path, reference_faces: tuple[list[NewPhoto], np.ndarray], n: int = 20
) -> Collection:
    return make_collection(tmp_path, "small", reference_faces[0][:n], "milvus-lite")


def test_a_dropped_copy_is_rebuilt_from_sql(
    tmp_path: Path,
    reference_faces: tuple[list[NewPhoto], np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with small(tmp_path, reference_faces) as col:
        ids, xb = stored(col)
        before = col.search(xb[:5], 3)
        target = col.milvus_target
    assert target is not None
    with MilvusVectors.open(target, create=False) as mv:  # someone drops the copy
        mv.drop()
    log = caplog.at_level(logging.INFO, logger="facesearch.collection")
    with log, Collection.open(tmp_path, "small") as col:
        assert col.search(xb[:5], 3) == before
        assert col.check()["consistent"]
    assert "Milvus copy of collection 'small': it is missing; rebuilding it" in caplog.text


def test_a_copy_left_behind_by_a_writer_that_died_is_rebuilt(
    tmp_path: Path,
    reference_faces: tuple[list[NewPhoto], np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with small(tmp_path, reference_faces) as col:
        ids, xb = stored(col)
        with monkeypatch.context() as mp:  # the vectors are deleted, the generation never written

            def died(self: MilvusVectors, value: int) -> None:
                raise RuntimeError("killed")

            mp.setattr(MilvusVectors, "generation", MilvusVectors.generation.setter(died))
            with pytest.raises(RuntimeError, match="killed"):
                col.remove_faces(ids[:2])
    log = caplog.at_level(logging.WARNING, logger="facesearch.collection")
    with log, Collection.open(tmp_path, "small") as col:
        assert col.check()["index_status"] == "stale"
        found = {m.face_id for row in col.search(xb[:4], 5) for m in row}
        assert not found & set(ids[:2].tolist())
        assert col.check()["consistent"]
        np.testing.assert_array_equal(col.vectors.ids(), ids[2:])
    assert "rebuilding it from SQL" in caplog.text and "generation" in caplog.text


def run_python(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_a_deleted_face_stays_deleted_after_the_process_is_killed(
    tmp_path: Path,
    reference_faces: tuple[list[NewPhoto], np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with small(tmp_path, reference_faces) as col:
        ids, xb = stored(col)
    gone = int(ids[3])
    proc = run_python(f"""
        import os, signal
        from facesearch.collection import Collection
        col = Collection.open({str(tmp_path)!r}, "small")
        col.remove_faces([{gone}])
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no exit handlers
    """)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    with caplog.at_level(logging.INFO), Collection.open(tmp_path, "small") as col:
        assert gone not in {m.face_id for m in col.search(xb[3:4], 5)[0]}
        assert gone not in set(col.vectors.ids().tolist())
        assert col.check()["consistent"]
    assert "rebuilding" not in caplog.text  # deleted in Milvus itself (its log), not repaired


def test_a_folder_held_by_another_process(
    tmp_path: Path,
    reference_faces: tuple[list[NewPhoto], np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """milvus-lite serves one process: a reader elsewhere searches a copy built from SQL, a
    writer is refused before anything changes."""
    with small(tmp_path, reference_faces) as col:
        ids, xb = stored(col)
        want = col.search(xb[:3], 4)
    holder = run_python(f"""
        from facesearch.collection import Collection
        col = Collection.open({str(tmp_path)!r}, "small")
        col.vectors.count
        print("holding", flush=True)
        input()
    """)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        with caplog.at_level(logging.INFO), Collection.open(tmp_path, "small") as col:
            same_matches(col.search(xb[:3], 4), want)  # in-memory FAISS against Milvus
            assert "open in another process" in caplog.text
            with pytest.raises(MilvusBusyError, match="one process at a time"):
                col.remove_faces(ids[:1])
            np.testing.assert_array_equal(stored(col)[0], ids)  # nothing changed
            assert col.check()["index_status"] == "unavailable"
    finally:
        holder.communicate("\n", timeout=60)
    with Collection.open(tmp_path, "small") as col:  # released: writes go through again
        assert len(col.remove_faces(ids[:1])) == 1 and col.check()["consistent"]


def test_moving_the_vectors_between_stores(
    tmp_path: Path, reference_faces: tuple[list[NewPhoto], np.ndarray]
) -> None:
    photos = reference_faces[0][:12]
    with Collection.open(tmp_path, "m", create=True) as col:
        col.add_photos(photos[:6])
        assert (col.folder / INDEX_NAME).is_file()
        assert col.set_vectors("milvus-lite") and not col.set_vectors("milvus-lite")
        assert not (col.folder / INDEX_NAME).exists() and (col.folder / LITE_NAME).is_dir()
        col.add_photos(photos[6:])
        with pytest.raises(CollectionError, match="index type 'pq' is the FAISS file's"):
            col.set_index_type("pq")
        n = col.vectors.count
    with Collection.open(tmp_path, "m") as col:  # kept by the collection
        assert col.vectors_spec == "milvus-lite" and isinstance(col.vectors, MilvusVectors)
        assert col.set_vectors("faiss")
        assert isinstance(col.vectors, VectorIndex) and col.vectors.count == n
        assert not (col.folder / LITE_NAME).exists()
        folder = tmp_path / "elsewhere" / "v.db"
        assert col.set_vectors(str(folder))
        assert col.milvus_target is not None and col.milvus_target.collection == "facesearch_m"
        assert col.check()["consistent"]
    for bad, message in [
        ("v.milvus", "must end in .db"),
        ("http://h:1/x", "is not milvus://"),
        ("milvus://u:pw@h:1/x", "MILVUS_TOKEN"),
    ]:
        with Collection.open(tmp_path, "m") as col, pytest.raises(CollectionError, match=message):
            col.set_vectors(bad)


def test_index_and_query_on_the_command_line(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    lib = make_library(data, tmp_path)
    home = tmp_path / "home"
    run_cli(["index", lib, "--labels", "folders", *collection_args(home, None, "flat")])
    args = collection_args(home, None, "milvus")
    run_cli(["index", lib, "--labels", "folders", *args])  # on FAISS first
    moved = run_cli(["index", lib, "--vectors", "milvus-lite", "--json", *args])
    assert json.loads(moved.stdout)["unchanged"] == 12  # nothing embedded again
    info = run_cli(["info", *args]).stdout
    assert "index         Milvus" in info and "consistency   ok" in info
    for photo in (lib / "BBT_Amy" / "amy2.png", lib / "BBT_Raj" / "raj1.png"):
        want = run_cli(["query", photo, "--json", *collection_args(home, None, "flat")])
        assert json.loads(run_cli(["query", photo, "--json", *args]).stdout) == json.loads(
            want.stdout
        )
    bad = run_cli(["index", lib, "--vectors", "faces", *args], ok=False)
    assert bad.exit_code == 2 and "must end in .db" in bad.stderr
