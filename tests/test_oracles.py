"""The oracle versions of the parity tests are the ones constraints.txt installs."""

from __future__ import annotations

import re
from pathlib import Path

from oracles import ORACLE_VERSIONS

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_constraints_pin_the_oracle_versions() -> None:
    """Moving an oracle in constraints.txt needs new golden files and tests (tests/oracles.py)."""
    pins = _pins()
    for dist, version in ORACLE_VERSIONS.items():
        if dist in pins or dist == "opencv-python-headless":
            assert pins.get(dist) == version, (
                f"constraints.txt pins {dist}=={pins.get(dist)}, the golden files were made with "
                f"{version}"
            )
