"""The oracles the parity tests trust, and the versions their golden outputs were made with.

The golden files in ``../shared/reference`` (see its README) hold the outputs of OpenCV 5.0.0
(the ``opencv-python-headless`` 5.0.0.93 wheel, its YuNet/SFace pipeline and its image decoder)
and of dlib 20.0.1 (``dlib-bin`` 20.0.1.post1). ``constraints.txt`` pins the same versions
(checked by ``test_oracles.py``), so the suite run as the README says compares like with like.

Two kinds of comparison:

- **bit-exact** against a live oracle (``alignCrop`` pixels, ``NMSBoxes`` indices, decoded
  pixels): meaningful only for the version the test was written for. :func:`exact` skips, naming
  the version installed and the one expected, when another version is installed;
- **within a stated tolerance** (boxes within 1 px, features cosine >= 0.99999, ...): these run
  on any installed version; the tolerance is in the test.
"""

from __future__ import annotations

from importlib import metadata
from types import ModuleType

import pytest

#: distribution -> the version the golden files and the bit-exact tests were made with.
ORACLE_VERSIONS: dict[str, str] = {
    "opencv-python-headless": "5.0.0.93",
    "dlib-bin": "20.0.1.post1",
}
#: distribution -> the module it provides.
MODULES: dict[str, str] = {"opencv-python-headless": "cv2", "dlib-bin": "dlib"}


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def oracle(dist: str, why: str) -> ModuleType:
    """The oracle's module for a comparison within a stated tolerance (any version)."""
    return pytest.importorskip(MODULES[dist], reason=f"{dist} is the oracle: {why}")


def exact(dist: str, why: str) -> ModuleType:
    """The oracle's module for a bit-exact comparison: skips unless the pinned version is
    installed (``pip install -c constraints.txt ...`` installs it)."""
    module = oracle(dist, why)
    expected = ORACLE_VERSIONS[dist]
    seen = installed_version(dist)
    if seen != expected:
        pytest.skip(
            f"bit-exact comparison with {dist} {expected} (the version the test was written "
            f"for); {seen or 'another build'} is installed: install through constraints.txt"
        )
    return module
