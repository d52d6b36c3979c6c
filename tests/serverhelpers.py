"""Helpers for the server tests (API through an in-process client, pages in real Chromium).

- :func:`server_models`: the networks the server runs by default (numpy engine), built once
  per test process.
- :func:`make_server_library`: the labelled test library of :mod:`collhelpers` plus an
  unlabelled folder of other people (what clustering groups).
- :func:`build_collection`: index both and cluster, through the library API.
- :func:`live_server`: a real uvicorn server on a free loopback port, in a thread.
- :func:`chromium`: headless Chromium through Selenium (skips with a reason without it).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from collhelpers import make_library

from facesearch import api
from facesearch.pipeline import PipelineConfig

#: Unlabelled people of the server library (150x150 crops, one face each) and their photos.
UNLABELLED: dict[str, tuple[str, ...]] = {
    "BBT_Leonard": ("leonard1.png", "leonard2.png", "leonard3.png"),
    "BBT_Bernadette": ("bernadette1.png", "bernadette2.png", "bernadette3.png"),
    "BBT_Stuart": ("stuart1.png", "stuart2.png", "stuart3.png"),
    "BBT_Howard": ("howard2.png", "howard3.png", "howard4.png"),
}
CHROMIUM = os.environ.get("FACESEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FACESEARCH_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Flags that let Chromium run headless in a container without network services.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@functools.lru_cache(maxsize=1)
def server_models() -> api.Models:
    """The server's default networks (numpy engine, no torch), loaded once per process."""
    return api.Models(PipelineConfig(engine="numpy"))


def make_server_library(data: Path, root: Path) -> tuple[Path, Path]:
    """``(labelled, unlabelled)`` folders under ``root``: :func:`collhelpers.make_library`
    (people named by their folders, bad files) and :data:`UNLABELLED` (``root/unlabelled``)."""
    labelled = make_library(data, root)
    unlabelled = root / "unlabelled"
    for person, files in UNLABELLED.items():
        (unlabelled / person).mkdir(parents=True)
        for f in files:
            shutil.copy(data / "photos" / person / f, unlabelled / person / f)
            (unlabelled / person / f).chmod(0o644)
    return labelled, unlabelled


def build_collection(home: Path, db_url: str | None, labelled: Path, unlabelled: Path) -> None:
    """Index the labelled library with its folder labels, the other folder without, cluster."""
    with api.open_collection(home, db_url=db_url, create=True) as col:
        api.index_paths(col, [labelled], models=server_models(), labels="folders")
        api.index_paths(col, [unlabelled], models=server_models())
        api.cluster(col)


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def chromium(page_load: str = "normal") -> Iterator[Any]:
    """A headless Chromium driven by Selenium, with a fresh profile. ``page_load``: Selenium's
    page load strategy (``eager``: ``get`` returns at DOMContentLoaded, not after images)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(
                f"{path} not found: install Debian's chromium and chromium-driver "
                "(or set FACESEARCH_CHROMIUM / FACESEARCH_CHROMEDRIVER)"
            )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.page_load_strategy = page_load
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="facesearch-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
