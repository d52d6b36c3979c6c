"""The ``facesearch`` console script (``facesearch.cli:run``): the exit status and output of
each outcome are the same with the quick exit (``os._exit`` after the usual clean-up) as with
Python's full shutdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
    "from facesearch.cli import run\n"
    "sys.argv = ['facesearch', *sys.argv[1:]]\n"
    "run()\n"
)


def _run(args: list[str], fast: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FACESEARCH_FAST_EXIT="1" if fast else "0")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("fast", [True, False])
def test_exit_status_and_output(tmp_path: Path, data: Path, fast: bool) -> None:
    photo = sorted((data / "lfw" / "images").glob("A*/*.jpg"))[0]
    ok = _run(["detect", str(photo), "--json"], fast)  # loads torch: the quick exit applies
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)) == 1  # the whole output arrived
    assert "atexit ran" in ok.stderr

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = _run(["verify", str(photo), str(broken), "--engine", "torch"], fast)
    assert bad.returncode == 1
    assert "broken.jpg" in bad.stderr and "atexit ran" in bad.stderr

    usage = _run(["detect", "--no-such-option"], fast)
    assert usage.returncode == 2 and "No such option" in usage.stderr
