"""``facesearch serve``: the command starts a real server, prints its URL, refuses bad binds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from collhelpers import run_cli

pytest.importorskip("fastapi", reason="the server extra is not installed")


def test_serve_prints_the_url_and_answers(tmp_path: Path) -> None:
    env = {**os.environ, "FACESEARCH_TOKEN": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from facesearch.cli import run; run()", "serve",
         "--home", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/"), url
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "api/v1/collection", timeout=10) as r:
                    info = json.load(r)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        assert info["name"] == "default" and info["faces"] == 0  # a new collection
        assert (tmp_path / "default" / "collection.json").is_file()
    finally:
        proc.terminate()
        proc.wait(30)


def test_non_loopback_bind_without_a_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACESEARCH_TOKEN", raising=False)
    r = run_cli(["serve", "--home", str(tmp_path), "--host", "0.0.0.0"], ok=False)
    assert r.exit_code == 1
    assert "needs a token" in r.stderr and "FACESEARCH_TOKEN" in r.stderr


def test_busy_port_is_a_clean_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run_cli(["serve", "--home", str(tmp_path), "--port", str(port)], ok=False)
    assert r.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
