"""Model upgrades of a collection: ``model add|use|list``, cross-model queries, ``reindex``.

Model files are made from the shipped weights in seconds:

- ``compat``: the embedding layer slightly perturbed, declared compatible with ``sface`` (as
  ``facesearch train --compatible-with sface`` records it); its vectors stay close to sface's.
- ``grand``: perturbed again from ``compat``, declared compatible with ``compat`` (lineage
  ``compat, sface``).
- ``other``: the 128 outputs of the embedding layer permuted, declared compatible with
  nothing. Distances between two of its vectors equal sface's, but its vectors cannot be
  compared with sface's: an incompatible model that works on its own.

After every change SQL and the vector index file agree (:func:`collhelpers.assert_agree`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collhelpers import (
    BACKENDS,
    assert_agree,
    collection_args,
    index_library,
    pg_module_url,  # noqa: F401
    run_cli,
    shared_pipeline,
)
from dbhelpers import private_schema

from facesearch import store as st
from facesearch.collection import Collection
from facesearch.errors import IncompatibleModelError

REPO = Path(__file__).resolve().parents[1]


# -- model files ----------------------------------------------------------------------------------


def _save_variant(path: Path, kind: str, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch

    from facesearch.distance import DEFAULT_IDENTIFY_THRESHOLD, DEFAULT_VERIFY_THRESHOLD
    from facesearch.models.modelfile import load_model, save_model

    base = "sface" if parent is None else str(parent["path"])
    model, _ = load_model(base)
    gen = torch.Generator().manual_seed(len(kind))
    with torch.no_grad():
        w = model.pre_fc1.weight
        if kind == "other":
            perm = torch.randperm(w.shape[0], generator=gen)
            model.pre_fc1.weight.copy_(w[perm])
            model.pre_fc1.bias.copy_(model.pre_fc1.bias[perm])
            for t in (
                model.fc1.weight,
                model.fc1.bias,
                model.fc1.running_mean,
                model.fc1.running_var,
            ):
                assert t is not None
                t.copy_(t[perm])
        else:
            w.add_(torch.randn(w.shape, generator=gen) * 0.02 * float(w.std()))
    if kind == "other":
        cw, lineage = None, []
    elif parent is None:
        cw, lineage = {"name": "sface"}, ["sface"]
    else:
        cw, lineage = {"name": parent["name"]}, [parent["name"], *parent["lineage"]]
    meta = {
        "parent": {"name": "sface" if parent is None else parent["name"]},
        "compatible_with": cw,
        "lineage": lineage,
        "threshold": DEFAULT_VERIFY_THRESHOLD,
        "identify_threshold": DEFAULT_IDENTIFY_THRESHOLD,
    }
    full = save_model(path, model, meta)
    full["path"] = str(path)
    return full


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("models")
    compat = _save_variant(out / "compat.pt", "compat")
    return {
        "compat": compat,
        "grand": _save_variant(out / "grand.pt", "grand", parent=compat),
        "other": _save_variant(out / "other.pt", "other"),
    }


@functools.lru_cache(maxsize=8)
def _pipeline(model: str) -> Any:
    """One pipeline per model file, sharing the detector of the shared sface pipeline."""
    from facesearch.pipeline import FacePipeline, PipelineConfig, load_embedder

    shared = shared_pipeline()
    if model == "sface":
        return shared
    return FacePipeline(
        PipelineConfig(model=model), detector=shared.detector, embedder=load_embedder(model)
    )


def use_pipelines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the CLI share pipelines per model; returns the models the commands asked for."""
    import facesearch.cli.options as cli_options

    asked: list[str] = []

    def make(config: Any) -> Any:
        asked.append(config.model)
        return _pipeline(config.model)

    monkeypatch.setattr(cli_options, "build_pipeline", make)
    return asked


# -- collections ----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def indexed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data: Path
) -> Iterator[dict[str, Any]]:
    """The test library indexed with sface (8 labelled faces of 3 people), once per module."""
    yield index_library(request, tmp_path_factory, data, use_pipelines)


@pytest.fixture()
def col_args(indexed: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh copy of the indexed collection for one test (SQLite: the folder is copied;
    PostgreSQL: a collection of its own, indexed again)."""
    if indexed["db"] is None:
        home = tmp_path / "home"
        shutil.copytree(indexed["home"], home)
        yield {**indexed, "home": home, "args": collection_args(home, None)}
        return
    home = tmp_path / "home"
    with private_schema() as url:
        with pytest.MonkeyPatch.context() as mp:
            use_pipelines(mp)
            run_cli(["index", indexed["lib"], "--labels", "folders", *collection_args(home, url)])
        yield {**indexed, "home": home, "db": url, "args": collection_args(home, url)}


def _snapshot(home: Path, db: str | None) -> dict[str, Any]:
    """Everything a refused command must leave as it was."""
    with Collection.open(home, db_url=db) as col, col.session() as s:
        models = st.list_models(s)
        active = st.get_meta(s, "active_model")
        ids, xb = st.load_all_embeddings(s, dim=128)
        face_models = sorted(
            (r.face_id, r.model) for r in st.faces_by_ids(s, st.face_ids(s)).values()
        )
    index = home / "default" / "vectors.faiss"
    return {
        "models": models,
        "active": active,
        "ids": ids.tolist(),
        "xb": xb.tobytes(),
        "face_models": face_models,
        "index": index.read_bytes(),
    }


def _face_models(home: Path, db: str | None) -> dict[str, int]:
    with Collection.open(home, db_url=db) as col, col.session() as s:
        return {m.name: m.faces for m in st.list_models(s) if m.faces}


def _assert_index_holds(home: Path, db: str | None, n: int) -> None:
    """The index file is current and holds the ``n`` faces of the active model's space."""
    with Collection.open(home, db_url=db) as col:
        report = col.check()
    assert report["consistent"] and report["index_status"] == "current", report
    assert (report["sql_faces"], report["index_faces"]) == (n, n), report


def _query(data: Path, args: list[str], photo: str = "BBT_Raj/raj5.png") -> dict[str, Any]:
    (e,) = json.loads(run_cli(["query", data / "photos" / photo, "--json", *args]).stdout)
    return e


# -- registering a compatible model ---------------------------------------------------------------


def test_model_add_makes_queries_use_the_new_model_on_the_old_vectors(
    col_args: dict[str, Any], models: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = use_pipelines(monkeypatch)
    home, db, args = col_args["home"], col_args["db"], col_args["args"]
    compat = models["compat"]
    before = _query(data, args)
    # the shipped model: embedded by the numpy engine (prefetch child), no torch pipeline
    assert before["person"] == "BBT_Raj" and asked == []
    index_before = (home / "default" / "vectors.faiss").read_bytes()

    out = run_cli(["model", "add", compat["path"], *args]).stdout.splitlines()
    assert out == [
        f"model {compat['name']} (compatible with sface) registered: queries are embedded with it",
        "8 faces keep their older vectors and are searched directly; "
        f"'facesearch reindex --model {compat['path']}' re-embeds them",
    ]
    listing = json.loads(run_cli(["model", "--json", *args]).stdout)
    assert listing["active"] == compat["name"]
    rows = {r["name"]: r for r in listing["models"]}
    assert (
        rows["sface"]["faces"] == 8 and rows["sface"]["searchable"] and not rows["sface"]["active"]
    )
    assert rows[compat["name"]] == {
        "name": compat["name"],
        "dim": 128,
        "faces": 0,
        "compatible_with": "sface",
        "active": True,
        "searchable": True,
        "path": os.path.abspath(compat["path"]),
        "threshold": compat["threshold"],
    }
    # Nothing stored changed: the old vectors are searched as they are.
    assert (home / "default" / "vectors.faiss").read_bytes() == index_before
    assert _face_models(home, db) == {"sface": 8}

    after = _query(data, args)
    assert asked[-1] == compat["path"]  # the query was embedded with the new model
    assert after["person"] == "BBT_Raj"
    assert [m["face_id"] for m in after["matches"]][:3] == [
        m["face_id"] for m in before["matches"]
    ][:3]
    assert after["distance"] != before["distance"]  # another model, close to sface's vectors
    assert_agree(home, db)

    # A model compatible with the new one (transitively with sface) can be added on top.
    grand = models["grand"]
    run_cli(["model", "add", grand["path"], *args])
    assert json.loads(run_cli(["model", "--json", *args]).stdout)["active"] == grand["name"]
    assert _query(data, args)["person"] == "BBT_Raj" and asked[-1] == grand["path"]
    # ... and an older one of the same space can be used again.
    assert run_cli(["model", "use", "sface", *args]).stdout == (
        "model sface is active: queries are embedded with it\n"
    )
    n_asked = len(asked)
    assert _query(data, args)["person"] == "BBT_Raj" and len(asked) == n_asked  # numpy engine
    table = run_cli(["model", *args]).stdout.splitlines()
    assert table[0].split() == ["model", "faces", "compatible", "with", "file"]
    assert any(line.startswith("* sface ") for line in table)
    assert table[-1].startswith("* active (embeds queries)")


def test_python_api_search_checks_the_query_model(
    col_args: dict[str, Any], models: dict[str, Any], data: Path
) -> None:
    from facesearch.identify import identify_faces
    from facesearch.image import load_image
    from facesearch.model_upgrade import add_model, query_model

    home, db = col_args["home"], col_args["db"]
    img = load_image(data / "photos" / "BBT_Amy" / "amy4.png")
    with Collection.open(home, db_url=db) as col:
        assert query_model(col) == "sface"
        compat_faces = _pipeline(models["compat"]["path"]).faces(img)
        with pytest.raises(IncompatibleModelError, match="register a compatible model"):
            identify_faces(col, compat_faces)  # not registered yet: refused
        add_model(col, models["compat"]["path"])
        assert query_model(col) == os.path.abspath(models["compat"]["path"])
        (r,) = identify_faces(col, compat_faces)
        assert r.person == "BBT_Amy"
        other_faces = _pipeline(models["other"]["path"]).faces(img)
        with pytest.raises(IncompatibleModelError, match=models["other"]["name"]):
            identify_faces(col, other_faces)


# -- refusing an incompatible model ---------------------------------------------------------------


def test_incompatible_model_is_refused_and_nothing_changes(
    col_args: dict[str, Any], models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_pipelines(monkeypatch)
    home, db, args = col_args["home"], col_args["db"], col_args["args"]
    other = models["other"]
    before = _snapshot(home, db)
    for cmd in (["model", "add", other["path"]], ["reindex", "--model", other["path"]]):
        res = run_cli([*cmd, *args], ok=False)
        assert res.exit_code == 1 and res.stdout == ""
        assert res.stderr.startswith(
            f"Error: model {other['name']!r} ({other['path']}) cannot search collection "
            "'default': its stored vectors are of model sface (active: sface), "
            f"and {other['name']!r} was not trained to be compatible with any of them (its model "
            "file declares compatible_with: none). Nothing was changed. Train it with "
            "'facesearch train ... --compatible-with sface', or re-embed every face with it: "
            f"'facesearch reindex --model {other['path']} --re-embed-all'"
        ), res.stderr
        assert _snapshot(home, db) == before
    res = run_cli(["model", "use", "ghost", *args], ok=False)
    assert res.exit_code == 1 and "model 'ghost' is not registered" in res.stderr
    assert _snapshot(home, db) == before


# -- reindex --------------------------------------------------------------------------------------


def test_reindex_compatible_model(
    col_args: dict[str, Any], models: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_pipelines(monkeypatch)
    home, db, args = col_args["home"], col_args["db"], col_args["args"]
    compat = models["compat"]
    res = run_cli(["reindex", "--model", compat["path"], "--batch-size", "3", "--json", *args])
    report = json.loads(res.stdout)
    assert {k: report[k] for k in ("model", "compatible", "faces", "todo", "reembedded")} == {
        "model": compat["name"],
        "compatible": True,
        "faces": 8,
        "todo": 8,
        "reembedded": 8,
    }
    assert report["skipped"] == 0 and report["photos"] == 8 and report["failures"] == []
    assert report["active"] is True and report["remaining"] == 0 and not report["interrupted"]
    assert _face_models(home, db) == {compat["name"]: 8}
    assert_agree(home, db)
    # The stored vectors are the new model's on the stored faces (aligned from the landmarks).
    from facesearch.image import load_image

    photo = col_args["lib"] / "BBT_Raj" / "raj1.png"
    (face,) = _pipeline(compat["path"]).faces(load_image(photo))
    with Collection.open(home, db_url=db) as col, col.session() as s:
        stat = st.photo_by_path(s, str(photo))
        assert stat is not None
        (rec,) = st.faces_of_photo(s, stat.id)
        ids, xb = st.load_all_embeddings(s, dim=128)
    np.testing.assert_allclose(xb[list(ids).index(rec.face_id)], face.embedding, atol=1e-5)
    assert _query(data, args)["person"] == "BBT_Raj"
    # A second run has nothing to do.
    out = run_cli(["reindex", "--model", compat["path"], *args]).stdout.splitlines()
    assert (
        out[0]
        == f"faces:   0 re-embedded with {compat['name']} (0 photos), 8 already were, 0 skipped"
    )
    assert out[2] == f"model:   {compat['name']} is active: queries are embedded with it"


def test_reindex_interrupted_then_resumed_searchable_throughout(
    col_args: dict[str, Any], models: dict[str, Any], data: Path
) -> None:
    from facesearch.identify import identify_faces
    from facesearch.image import load_image
    from facesearch.model_upgrade import ReindexProgress, ReindexSettings, reindex_collection

    home, db = col_args["home"], col_args["db"]
    compat = models["compat"]
    pipe = _pipeline(compat["path"])
    query = pipe.faces(load_image(data / "photos" / "BBT_Penny" / "penny3.png"))
    seen: list[tuple[int, str | None, bool]] = []

    def progress(p: ReindexProgress) -> None:
        # A reader (another Collection, no lock) searches while the writer runs.
        with Collection.open(home, db_url=db) as reader:
            (r,) = identify_faces(reader, query)
            seen.append((p.done, r.person, reader.vectors_stale))
        if p.done >= 5:
            raise KeyboardInterrupt

    settings = ReindexSettings(batch_size=2, workers=1)
    with Collection.open(home, db_url=db) as col:
        rep = reindex_collection(
            col, pipe.embedder, settings, source=compat["path"], progress=progress
        )
    assert rep.interrupted and rep.reembedded == 4 and rep.active  # 2 batches of 2 committed
    assert rep.remaining == 4
    assert [s[1] for s in seen] == ["BBT_Penny"] * len(seen) and len(seen) == 6
    assert _face_models(home, db) == {"sface": 4, compat["name"]: 4}
    assert_agree(home, db)
    with Collection.open(home, db_url=db) as col:
        rep = reindex_collection(col, pipe.embedder, settings, source=compat["path"])
    assert (rep.todo, rep.reembedded, rep.remaining, rep.interrupted) == (4, 4, 0, False)
    assert _face_models(home, db) == {compat["name"]: 8}
    assert_agree(home, db)


def test_reindex_killed_midway_loses_nothing(
    col_args: dict[str, Any], models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed (os._exit: no cleanup) after its second commit keeps both batches."""
    home, db = col_args["home"], col_args["db"]
    compat = models["compat"]
    script = textwrap.dedent(
        f"""
        import os, sys
        import torch
        torch.set_num_threads(1)
        from facesearch.collection import Collection
        from facesearch.pipeline import load_embedder
        from facesearch.model_upgrade import ReindexSettings, reindex_collection

        emb = load_embedder({compat["path"]!r})
        col = Collection.open({str(home)!r}, db_url={db!r})
        orig = col.update_embeddings
        calls = []
        def update(*a, **k):
            n = orig(*a, **k)
            calls.append(n)
            if len(calls) == 2:
                os._exit(9)  # killed right after the second commit
            return n
        col.update_embeddings = update
        settings = ReindexSettings(batch_size=3, workers=1)
        reindex_collection(col, emb, settings, source={compat["path"]!r})
        sys.exit(0)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    assert _face_models(home, db) == {"sface": 2, compat["name"]: 6}
    with Collection.open(home, db_url=db) as col:  # the index file is behind: rebuilt on open
        assert col.active_model is not None and col.active_model.name == compat["name"]
        _ = col.vectors
    assert_agree(home, db)
    use_pipelines(monkeypatch)
    report = json.loads(
        run_cli(["reindex", "--model", compat["path"], "--json", *col_args["args"]]).stdout
    )
    assert (report["todo"], report["reembedded"], report["remaining"]) == (2, 2, 0)
    assert _face_models(home, db) == {compat["name"]: 8}
    assert_agree(home, db)


def test_reindex_incompatible_needs_the_flag_and_switches_when_all_are_done(
    col_args: dict[str, Any], models: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = use_pipelines(monkeypatch)
    home, db, args = col_args["home"], col_args["db"], col_args["args"]
    other = models["other"]
    # Interrupted half-way: the old model keeps embedding queries, on the faces not done yet.
    from facesearch.model_upgrade import ReindexProgress, ReindexSettings, reindex_collection

    def stop(p: ReindexProgress) -> None:
        if p.done >= 3:
            raise KeyboardInterrupt

    with Collection.open(home, db_url=db) as col:
        rep = reindex_collection(
            col,
            _pipeline(other["path"]).embedder,
            ReindexSettings(batch_size=2, re_embed_all=True),
            source=other["path"],
            progress=stop,
        )
    assert rep.interrupted and not rep.compatible and not rep.active and rep.reembedded == 2
    assert json.loads(run_cli(["model", "--json", *args]).stdout)["active"] == "sface"
    assert _face_models(home, db) == {"sface": 6, other["name"]: 2}
    _assert_index_holds(home, db, 6)  # the sface faces
    assert _query(data, args)["person"] == "BBT_Raj"  # Raj's photos are not re-embedded yet
    res = run_cli(["model", "use", other["name"], *args], ok=False)
    assert res.exit_code == 1 and "is not compatible" in res.stderr

    res = run_cli(["reindex", "--model", other["path"], "--re-embed-all", *args])
    out = res.stdout.splitlines()
    assert (
        out[0]
        == f"faces:   6 re-embedded with {other['name']} (6 photos), 2 already were, 0 skipped"
    )
    assert out[2] == f"model:   {other['name']} is active: queries are embedded with it"
    assert _face_models(home, db) == {other["name"]: 8}
    assert_agree(home, db)
    info = json.loads(run_cli(["info", "--json", *args]).stdout)
    assert info["active_model"] == other["name"] and info["index"]["faces"] == 8
    e = _query(data, args)
    assert asked[-1] == other["path"] and e["person"] == "BBT_Raj"


def test_reindex_skips_photos_gone_or_changed(
    col_args: dict[str, Any], models: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_pipelines(monkeypatch)
    home, db, args, lib = col_args["home"], col_args["db"], col_args["args"], col_args["lib"]
    compat, other = models["compat"], models["other"]
    gone = lib / "BBT_Amy" / "amy1.png"
    changed = lib / "BBT_Raj" / "raj2.png"
    saved = {p: p.read_bytes() for p in (gone, changed)}
    try:
        gone.rename(gone.with_suffix(".bak"))
        changed.write_bytes((lib / "BBT_Raj" / "raj3.png").read_bytes())
        res = run_cli(["reindex", "--model", compat["path"], "--json", *args])
        report = json.loads(res.stdout)
        assert (report["reembedded"], report["skipped"], report["remaining"]) == (6, 2, 2)
        assert report["active"] is True  # compatible: the 2 old vectors stay searchable
        assert sorted(f["path"] for f in report["failures"]) == [str(gone), str(changed)]
        reasons = {f["path"]: f["error"] for f in report["failures"]}
        assert reasons[str(gone)].startswith("cannot read the file")
        assert reasons[str(changed)].startswith("the file changed since it was indexed")
        assert _face_models(home, db) == {"sface": 2, compat["name"]: 6}
        assert_agree(home, db)
        # An incompatible model cannot become active while faces are left behind.
        res = run_cli(["reindex", "--model", other["path"], "--re-embed-all", *args])
        assert res.stdout.splitlines()[2] == (
            f"model:   {other['name']} is not active yet: 2 faces are not re-embedded (queries "
            "keep the old model until all are; fix the photos below, or remove them with "
            "'facesearch index PATH --prune', and run the command again)"
        )
        assert f"  {gone}: cannot read the file" in res.stderr
        assert json.loads(run_cli(["model", "--json", *args]).stdout)["active"] == compat["name"]
        _assert_index_holds(home, db, 2)  # the 6 others moved to the new, inactive, model
    finally:
        if gone.with_suffix(".bak").exists():
            gone.with_suffix(".bak").rename(gone)
        for p, b in saved.items():
            p.write_bytes(b)


def test_query_refuses_a_replaced_model_file(
    col_args: dict[str, Any], models: dict[str, Any], data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_pipelines(monkeypatch)
    args = col_args["args"]
    path = col_args["root"] / f"model-{col_args['home'].parent.name}.pt"
    shutil.copy(models["compat"]["path"], path)
    run_cli(["model", "add", path, *args])
    shutil.copy(models["other"]["path"], path)  # another model under the registered path
    res = run_cli(["query", data / "photos" / "BBT_Raj" / "raj5.png", *args], ok=False)
    assert res.exit_code == 1
    assert f"queries embedded by model '{models['other']['name']}' cannot be compared" in res.stderr
    path.unlink()
    res = run_cli(["query", data / "photos" / "BBT_Raj" / "raj5.png", *args], ok=False)
    assert res.exit_code == 1 and "whose file" in res.stderr and "is not found" in res.stderr
