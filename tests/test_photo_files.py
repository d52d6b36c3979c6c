"""Files decided by content, not by name; the exit status of a run that indexes nothing.

The suffix-less photos are copies of shared photos named like the Yale faces
(``subject01.happy``: GIF, PGM, JPEG, PNG; :func:`photosets.make_suffixless`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from collhelpers import BAD_FILES, collection_args, run_cli, use_shared_pipeline
from photosets import NOT_IMAGES, SUFFIXLESS, make_suffixless
from PIL import Image

from facesearch.image import format_of, sniff_format
from facesearch.indexer import walk

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 8), 128).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode", "name"),
    [
        ("JPEG", "RGB", "JPEG"),
        ("PNG", "RGB", "PNG"),
        ("GIF", "L", "GIF"),
        ("TIFF", "RGB", "TIFF"),
        ("WEBP", "RGB", "WEBP"),
        ("BMP", "RGB", "BMP"),
        ("PPM", "RGB", "PNM"),
        ("PPM", "L", "PNM"),  # PGM
        ("PPM", "1", "PNM"),  # PBM
    ],
)
def test_format_of_knows_what_pillow_writes(fmt: str, mode: str, name: str) -> None:
    assert format_of(_encoded(fmt, mode)[:32]) == name


def test_format_of_refuses_what_only_looks_like_an_image() -> None:
    heif = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
    assert format_of(heif) == "HEIF"
    assert format_of(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1") == "AVIF"
    for head in (*NOT_IMAGES.values(), b"BM is a band", b"P6 is a paper size", b"GIF8"):
        assert format_of(head) is None, head


def test_sniff_format_never_opens_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.happy"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert sniff_format(fifo) is None  # a blocking open would wait for a writer forever
    assert sniff_format(tmp_path / "missing") is None
    assert time.monotonic() - t0 < 5


def test_walk_takes_photos_by_content(data: Path, tmp_path: Path) -> None:
    photos = make_suffixless(data, tmp_path / "yale")
    found = walk([tmp_path / "yale"])
    assert sorted(found.files) == sorted(str(p) for p in photos)
    assert found.by_content == len(SUFFIXLESS)
    assert found.skipped_other == len(NOT_IMAGES)
    assert found.root_files == (len(SUFFIXLESS) + len(NOT_IMAGES),)
    named = walk([photos[0]])  # a file named explicitly: by content too
    assert named.files == (str(photos[0]),) and named.by_content == 1


def test_index_query_verify_suffixless_photos(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    photos = make_suffixless(data, tmp_path / "yale")
    args = collection_args(tmp_path / "home", None)
    out = run_cli(["index", tmp_path / "yale", *args]).stdout.splitlines()
    assert out[0] == "photos: 6 found: 6 new, 0 updated, 0 unchanged, 0 moved, 0 failed"
    assert out[1].startswith("faces:  6 added")
    assert "skipped: 4 not images (by their content)" in out
    assert "by content: 6 photos without an image suffix" in out
    q = json.loads(run_cli(["query", photos[0], "--json", *args]).stdout)
    assert q[0]["matches"][0]["distance"] < 1e-3  # itself
    v = json.loads(run_cli(["verify", photos[0], photos[1], "--json"]).stdout)
    assert v["same"] is True  # two photos of AT&T's s1


def test_exit_status_when_a_path_gives_nothing(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_shared_pipeline(monkeypatch)
    args = collection_args(tmp_path / "home", None)
    texts = tmp_path / "texts"
    texts.mkdir()
    for name, content in NOT_IMAGES.items():
        (texts / name).write_bytes(content)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in BAD_FILES:
        shutil.copyfile(data / "odd" / f, broken / f)
    good = tmp_path / "good"
    good.mkdir()
    shutil.copyfile(data / "photos" / "BBT_Amy" / "amy1.png", good / "amy1.png")
    shutil.copyfile(data / "negatives" / "white.png", good / "white.png")  # no face: indexed
    (tmp_path / "empty").mkdir()

    res = run_cli(["index", texts, *args], ok=False)
    assert res.exit_code == 1
    assert res.stdout.splitlines()[0].startswith("photos: 0 found")
    assert "skipped: 4 not images (by their content)" in res.stdout
    assert f"error: nothing could be indexed from {texts}: it holds files" in res.stderr

    res = run_cli(["index", good, broken, tmp_path / "empty", "--json", *args], ok=False)
    assert res.exit_code == 1  # broken/: every file failed; the others are fine
    rep = json.loads(res.stdout)
    assert rep["new"] == 2 and rep["failed"] == 3 and rep["nothing_indexed"] == [str(broken)]
    assert f"nothing could be indexed from {broken}" in res.stderr
    # the photos of good/ are stored, and so are they when indexed again (unchanged)
    again = json.loads(run_cli(["index", good, tmp_path / "empty", "--json", *args]).stdout)
    assert again["unchanged"] == 2 and again["nothing_indexed"] == []
