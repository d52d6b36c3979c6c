"""Where a benchmark script records its figures: ``bench/results/NAME.json`` (the numbers) and
``NAME.md`` (the table a reader sees), each written whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, res: dict[str, Any], text: str, results: Path = RESULTS) -> None:
    """Write ``res`` as ``NAME.json`` and ``text`` as ``NAME.md`` under ``results``, each
    through a temporary file renamed into place (a killed run leaves the old files)."""
    results.mkdir(parents=True, exist_ok=True)
    for path, body in (
        (results / f"{name}.json", json.dumps(res, indent=1) + "\n"),
        (results / f"{name}.md", text + "\n"),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(body)
        os.replace(tmp, path)
