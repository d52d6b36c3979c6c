"""One rule for paths: photos are stored by the path they were found by, absolute, not resolved.

The trees are labelled views of a library built with symbolic links
(:func:`photosets.make_linked_views`): a folder per person holding links to the library's
files, and links to folders of people.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from collhelpers import PEOPLE, collection_args, run_cli, shared_pipeline, use_shared_pipeline
from photosets import make_linked_views

from facesearch import api
from facesearch.indexer import walk
from facesearch.pipeline import FacePipeline, PipelineConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def views(data: Path, tmp_path: Path) -> dict[str, Path]:
    return make_linked_views(data, tmp_path / "tree", PEOPLE)


def _photos(home: Path) -> dict[str, str | None]:
    """Stored photo path -> the person of its face."""
    with api.open_collection(home) as col:
        return {f.photo_path: f.person for f in api.iterate(api.list_faces, col)}


def test_walk_follows_links_and_keeps_their_paths(views: dict[str, Path]) -> None:
    by_folder = views["by_folder"]
    os.symlink(by_folder, by_folder / "BBT_Amy" / "loop")  # a cycle through a linked folder
    os.symlink(views["library"] / "nothing.png", views["by_file"] / "BBT_Amy" / "gone.png")
    found = walk([by_folder, views["by_file"]])
    n = sum(map(len, PEOPLE.values()))
    assert len(found.files) == 2 * n
    for path in found.files:
        assert path.startswith((str(by_folder) + os.sep, str(views["by_file"]) + os.sep))
        assert os.path.islink(path) or os.path.islink(os.path.dirname(path))
    assert found.broken_links == 1


def test_index_labels_prune_and_moves_through_links(
    views: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    by_file, by_folder = views["by_file"], views["by_folder"]
    home = tmp_path / "home"
    args = collection_args(home, None)
    rep = json.loads(
        run_cli(["index", by_file, by_folder, "--labels", "folders", "--json", *args]).stdout
    )
    n = sum(map(len, PEOPLE.values()))
    assert rep["new"] == 2 * n and rep["labels_given"] == 2 * n
    stored = _photos(home)
    for person, files in PEOPLE.items():
        for f in files:  # stored by the links' paths, named after the folders the links are in
            assert stored[str(by_file / person / f)] == person
            assert stored[str(by_folder / person / f)] == person
    assert not any(p.startswith(str(views["library"])) for p in stored)

    # a link renamed: moved, the face keeps its person
    amy = by_file / "BBT_Amy"
    os.rename(amy / "amy1.png", amy / "first.png")
    # a link whose target is gone: the photo is gone (not "failed"), and --prune removes it
    os.remove(views["library"] / "BBT_Raj_raj1.png")
    # a linked folder removed: its photos are gone
    os.remove(by_folder / "BBT_Penny")
    rep = json.loads(run_cli(["index", by_file, by_folder, "--json", *args]).stdout)
    assert rep["moved"] == 1 and rep["broken_links"] == 1 and rep["failed"] == 0
    assert rep["missing"] == 1 + len(PEOPLE["BBT_Penny"])
    stored = _photos(home)
    assert stored[str(amy / "first.png")] == "BBT_Amy" and str(amy / "amy1.png") not in stored
    rep = json.loads(run_cli(["index", by_file, by_folder, "--prune", "--json", *args]).stdout)
    assert rep["pruned"] == 1 + len(PEOPLE["BBT_Penny"])
    stored = _photos(home)
    assert str(by_file / "BBT_Raj" / "raj1.png") not in stored
    assert not any(p.startswith(str(by_folder / "BBT_Penny")) for p in stored)
    assert str(by_folder / "BBT_Raj" / "raj1.png") in stored  # another path, another photo


def test_labels_csv_through_a_linked_folder(
    views: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV's relative paths are taken from the folder it was named in, links kept."""
    use_shared_pipeline(monkeypatch)
    by_folder = views["by_folder"]
    (views["library_people"] / "labels.csv").write_text("path,person\nBBT_Amy/amy2.png,Amy\n")
    os.symlink(views["library_people"] / "labels.csv", by_folder / "labels.csv")
    home = tmp_path / "home"
    args = collection_args(home, None)
    rep = json.loads(
        run_cli(["index", by_folder, "--labels", by_folder / "labels.csv", "--json", *args]).stdout
    )
    assert rep["labels_given"] == 1 and rep["labels_not_found"] == 0
    assert _photos(home)[str(by_folder / "BBT_Amy" / "amy2.png")] == "Amy"


@pytest.mark.parametrize("view", ["by_file", "by_folder"])
def test_evaluate_cluster_on_a_tree_of_links(views: dict[str, Path], view: str) -> None:
    shared = shared_pipeline()
    models = api.Models(
        PipelineConfig(engine="torch", threads=1),
        factory=lambda c: FacePipeline(c, detector=shared.detector, embedder=shared.embedder),
    )
    result: Any = api.evaluate_clustering(views[view], models=models)
    assert result.faces == sum(map(len, PEOPLE.values())) and result.people == len(PEOPLE)
