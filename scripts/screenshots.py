"""Regenerate the screenshots of the server's pages in ``docs/screenshots/`` (for the README).

Indexes the demo photos (``examples/photos``, no labels) into a temporary collection, clusters
them, names three groups as a person would, and photographs each main page in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, as the browser tests use)::

    python scripts/screenshots.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from serverhelpers import chromium, live_server, server_models

    from facesearch import api
    from facesearch.server import ServerSettings, create_app

    tmp = Path(tempfile.mkdtemp(prefix="facesearch-demo-"))
    try:
        photos = tmp / "photos"
        shutil.copytree(REPO / "examples" / "photos", photos)
        home = tmp / "home"
        with api.open_collection(home, create=True) as col:
            api.index_paths(col, [photos], models=server_models())
            api.cluster(col)
            # name a few groups, as a person would; the others stay to be named
            names = {"Barack_Obama": "Barack Obama", "Joe_Biden": "Joe Biden", "BBT_Amy": "Amy"}
            for c in api.list_clusters(col, limit=100).items:
                face = api.get_face(col, c.sample_face_ids[0])
                folder = Path(face.photo_path).parent.name
                if folder in names:
                    api.name_cluster(col, c.id, names[folder])
            shown = api.get_person(col, "Barack Obama").id
        app = create_app(ServerSettings(home=home), models=server_models())
        OUT.mkdir(parents=True, exist_ok=True)
        with live_server(app) as url, chromium() as d:
            d.set_window_size(1280, 860)

            def shot(path: str, name: str) -> None:
                d.get(url + path)
                time.sleep(1.0)  # lazy thumbnails
                d.save_screenshot(str(OUT / f"{name}.png"))

            shot("/", "unnamed")
            shot("/people", "people")
            shot(f"/people/{shown}", "person")
            d.get(url + "/identify")
            d.find_element("id", "photo-input").send_keys(
                str(REPO / "examples" / "query" / "two_people.jpg")
            )
            for _ in range(100):
                state = d.find_element("id", "result").get_attribute("data-state")
                if state in ("done", "error"):
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            d.save_screenshot(str(OUT / "identify.png"))
            d.get(url + "/jobs")
            more = tmp / "Pictures"
            shutil.copytree(REPO / "examples" / "query", more)
            d.find_element("id", "paths").send_keys(str(more))
            d.find_element("id", "start-index").click()
            for _ in range(300):
                if d.find_element("id", "job").get_attribute("data-state") == "done":
                    break
                time.sleep(0.2)
            d.save_screenshot(str(OUT / "indexing.png"))
        print("\n".join(str(p.relative_to(REPO)) for p in sorted(OUT.glob("*.png"))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
