"""The people page in a real headless Chromium (Selenium): flows 1-5, 7 and 8 of the page,
done with the mouse and keyboard as a person would, each checked afterwards in the store.

One collection (SQLite; the API tests cover PostgreSQL) is built for the module from the shared
data; each test works on a copy of its own behind a real uvicorn server on a loopback port.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
pytest.importorskip("selenium", reason="selenium is not installed")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serverhelpers import (  # noqa: E402
    UNLABELLED,
    build_collection,
    chromium,
    live_server,
    make_server_library,
    server_models,
)

from facesearch import api  # noqa: E402
from facesearch.server import ServerSettings, create_app  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("browser")
    labelled, unlabelled = make_server_library(data, root)
    build_collection(root / "home", None, labelled, unlabelled)
    return {"home": root / "home", "root": root}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


class Site:
    """A live server on a copy of the module's collection, and the browser pointed at it."""

    def __init__(self, url: str, home: Path, driver: Any) -> None:
        self.url = url
        self.home = home
        self.driver = driver

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)
        WebDriverWait(self.driver, 30).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )

    def wait(self, condition: Any, timeout: float = 30) -> Any:
        return WebDriverWait(self.driver, timeout).until(condition)

    def find(self, css: str, root: Any = None) -> Any:
        return (root or self.driver).find_element(By.CSS_SELECTOR, css)

    def all(self, css: str, root: Any = None) -> list[Any]:
        return list((root or self.driver).find_elements(By.CSS_SELECTOR, css))

    def toast(self) -> str:
        return str(self.wait(ec.visibility_of_element_located((By.ID, "toast"))).text)

    def col(self) -> Any:
        return api.open_collection(self.home)


@pytest.fixture()
def site(built: dict[str, Any], browser: Any, tmp_path: Path) -> Iterator[Site]:
    home = tmp_path / "home"
    shutil.copytree(built["home"], home)
    app = create_app(ServerSettings(home=home, port=8765), models=server_models())
    with live_server(app) as url:
        browser.delete_all_cookies()
        yield Site(url, home, browser)


def _cluster_faces(col: Any, cluster_id: int) -> list[int]:
    return sorted(f.id for f in api.iterate(api.cluster_faces, col, cluster_id))


def test_unnamed_groups_largest_first_with_lazy_thumbnails(site: Site) -> None:
    """Flow 1: the unnamed clusters as grids of face thumbnails, largest first, with sizes."""
    site.open("/")
    cards = site.all("section.cluster")
    with site.col() as col:
        stored = api.list_clusters(col, limit=100).items
    assert [int(c.get_attribute("data-cluster-id")) for c in cards] == [c.id for c in stored]
    sizes = [int(site.find(".size", c).text) for c in cards]
    assert sizes == [c.size for c in stored] == sorted(sizes, reverse=True)
    imgs = site.all("button.face img")
    assert len(imgs) == sum(sizes) and all(i.get_attribute("loading") == "lazy" for i in imgs)
    site.wait(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth === 160)"
    ))  # fmt: skip


def test_name_a_group_with_enter_and_move_on(site: Site) -> None:
    """Flow 2: type a name (completed from the people known) and press Enter: the group becomes
    that person and the focus moves to the next group."""
    site.open("/")
    first, second = site.all("section.cluster")[:2]
    cid = int(first.get_attribute("data-cluster-id"))
    site.wait(lambda d: site.find("#people-names").get_attribute("data-loaded") == "1")
    options = [o.get_attribute("value") for o in site.all("#people-names option")]
    assert options == sorted(options) and "BBT_Amy" in options
    with site.col() as col:
        faces = _cluster_faces(col, cid)
    box = site.find("input.name", first)
    box.click()
    box.send_keys("Leonard Hofstadter", Keys.ENTER)
    site.wait(ec.staleness_of(first))
    assert "Leonard Hofstadter" in site.toast()
    active = site.driver.switch_to.active_element
    assert active == site.find("input.name", second)
    with site.col() as col:
        person = api.get_person(col, "Leonard Hofstadter")
        assert person.faces == len(faces)
        assert sorted(f.id for f in api.iterate(api.person_faces, col, person.id)) == faces
        assert cid not in [c.id for c in api.list_clusters(col, limit=100).items]
    # naming a group after an existing person gives them its faces
    site.find("input.name", second).send_keys("BBT_Amy", Keys.ENTER)
    site.wait(ec.staleness_of(second))
    with site.col() as col:
        assert api.get_person(col, "BBT_Amy").faces == 3 + len(UNLABELLED["BBT_Howard"])


def test_remove_selected_faces_from_a_group(site: Site) -> None:
    """Flow 3: click the faces that do not belong, then Remove: they leave the group."""
    site.open("/")
    card = site.all("section.cluster")[0]
    cid = int(card.get_attribute("data-cluster-id"))
    tiles = site.all("button.face", card)
    actions = site.find(".selection-actions", card)
    assert not actions.is_displayed()
    tiles[0].click()
    tiles[1].send_keys(Keys.SPACE)  # the keyboard selects too
    assert actions.is_displayed()
    picked = sorted(int(t.get_attribute("data-face-id")) for t in tiles[:2])
    assert [t.get_attribute("aria-pressed") for t in tiles] == ["true", "true", "false"]
    split = site.find("button.split", card)
    assert split.text.endswith("(2)")
    split.click()
    site.wait(lambda d: len(site.all("button.face", card)) == 1)
    assert int(site.find(".size", card).text) == 1
    with site.col() as col:
        assert len(_cluster_faces(col, cid)) == 1
        for fid in picked:
            f = api.get_face(col, fid)
            assert f.cluster_id is None and f.person_id is None


def test_merge_two_groups_and_two_people(site: Site) -> None:
    """Flow 4: tick two groups and merge them; on the people page tick two people and merge."""
    site.open("/")
    merge = site.find("#merge-clusters")
    assert not merge.is_enabled()
    cards = site.all("section.cluster")[:2]
    ids = [int(c.get_attribute("data-cluster-id")) for c in cards]
    with site.col() as col:
        union = sorted(_cluster_faces(col, ids[0]) + _cluster_faces(col, ids[1]))
    for c in cards:
        site.find(".merge-pick", c).click()
    assert merge.is_enabled() and merge.text == "Merge 2 groups"
    merge.click()
    site.wait(ec.staleness_of(cards[0]))
    site.wait(lambda d: site.all("section.cluster"))
    with site.col() as col:
        assert _cluster_faces(col, ids[0]) == union
        assert ids[1] not in [c.id for c in api.list_clusters(col, limit=100).items]
    site.open("/people")
    cards = {c.get_attribute("data-name"): c for c in site.all("article.person")}
    site.find(".person-pick", cards["BBT_Penny"]).click()
    site.find(".person-pick", cards["BBT_Raj"]).click()
    button = site.find("#merge-a-into-b")
    assert button.text == "Merge BBT_Penny into BBT_Raj"
    button.click()
    site.wait(ec.staleness_of(cards["BBT_Raj"]))
    with site.col() as col:
        assert api.get_person(col, "BBT_Raj").faces == 5
        assert "BBT_Penny" not in [p.name for p in api.iterate(api.list_people, col)]


def test_person_page_remove_rename_merge(site: Site) -> None:
    """Flow 5: a person's faces, paginated; remove a wrong face; rename; merge into another."""
    with site.col() as col:
        amy = api.get_person(col, "BBT_Amy")
        raj = api.get_person(col, "BBT_Raj")
        amy_faces = sorted(f.id for f in api.iterate(api.person_faces, col, amy.id))
    site.open(f"/people/{amy.id}?limit=2")
    assert len(site.all("button.face")) == 2
    site.find(".pager a[rel=next]").click()
    site.wait(lambda d: "offset=2" in d.current_url)
    assert [int(t.get_attribute("data-face-id")) for t in site.all("button.face")] == amy_faces[2:]
    site.open(f"/people/{amy.id}")
    wrong = site.all("button.face")[0]
    wrong_id = int(wrong.get_attribute("data-face-id"))
    wrong.click()
    site.find("button.unassign").click()
    site.wait(ec.staleness_of(wrong))
    assert site.find("#face-count").text == "2"
    with site.col() as col:
        assert api.get_face(col, wrong_id).person_id is None
    name = site.find("#person-name")
    name.clear()
    name.send_keys("Amy Farrah Fowler", Keys.ENTER)
    site.wait(lambda d: d.title.startswith("Amy Farrah Fowler"))
    with site.col() as col:
        assert api.get_person(col, amy.id).name == "Amy Farrah Fowler"
    site.find("#merge-into").send_keys("BBT_Raj", Keys.ENTER)
    site.wait(lambda d: d.current_url.endswith(f"/people/{raj.id}"))
    with site.col() as col:
        assert api.get_person(col, raj.id).faces == 3 + 2
        with pytest.raises(api.NotFoundError):
            api.get_person(col, amy.id)


def test_drop_a_photo_to_see_every_face_named(site: Site, data: Path) -> None:
    """Flow 7: upload a photo; every face is boxed and named (or unknown) with its d."""
    site.open("/identify")
    upload = site.find("#photo-input")
    upload.send_keys(str(data / "photos" / "BBT_Amy" / "amy4.png"))
    site.wait(lambda d: site.find("#result").get_attribute("data-state") == "done")
    (box,) = site.all("#stage .box")
    assert "known" in box.get_attribute("class").split()
    assert box.text.startswith("1. BBT_Amy · d 0.")
    assert box.size["width"] > 50  # drawn over the face, scaled to the shown photo
    upload.send_keys(str(data / "photos" / "BBT_Sheldon" / "sheldon1.png"))
    site.wait(lambda d: "unknown" in site.find("#stage .box").get_attribute("class"))
    assert site.find("#faces-found li").text.startswith("unknown")
    upload.send_keys(str(data / "odd" / "truncated.jpg"))
    site.wait(lambda d: site.find("#result").get_attribute("data-state") == "error")
    assert "truncated" in site.toast()
    # dropped rather than chosen: a drop event carrying the file
    b64 = base64.b64encode((data / "photos" / "BBT_Raj" / "raj4.png").read_bytes()).decode()
    site.driver.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], 'raj4.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent("
        "  new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
        b64,
    )
    site.wait(lambda d: "BBT_Raj" in site.find("#stage .box").text)


def test_index_a_folder_and_watch_the_progress(site: Site, data: Path, tmp_path: Path) -> None:
    """Flow 8: start indexing a folder and watch the progress bar until it is done."""
    folder = tmp_path / "more"
    folder.mkdir()
    for f in ("sheldon2.png", "sheldon3.png", "sheldon4.png"):
        shutil.copy(data / "photos" / "BBT_Sheldon" / f, folder / f)
    with site.col() as col:
        before = api.collection_info(col, check=False).faces
    site.open("/jobs")
    site.find("#paths").send_keys(str(folder))
    site.find("#start-index").click()
    site.wait(lambda d: site.find("#job").get_attribute("data-state") == "done", timeout=120)
    bar = site.find("#job-progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == "3"
    assert "3 new photos" in site.find("#job-status").text
    with site.col() as col:
        info = api.collection_info(col)
        assert info.faces == before + 3 and info.consistent
    site.find("#run-clustering").click()
    site.wait(lambda d: "new groups" in site.find("#toast").text)
    with site.col() as col:
        sizes = [c.size for c in api.list_clusters(col, limit=100).items]
        assert len(sizes) == len(UNLABELLED) + 1


def test_token_is_asked_once_and_changes_carry_it(
    built: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    """A server with a token: the page asks for it once (login form), then every page and
    change works through the cookie (with the page's CSRF header)."""
    home = tmp_path / "home"
    shutil.copytree(built["home"], home)
    token = "browser-test-token-0123456789"
    app = create_app(ServerSettings(home=home, token=token), models=server_models())
    with live_server(app) as url:
        browser.delete_all_cookies()
        site = Site(url, home, browser)
        site.open("/people")
        assert "/login" in browser.current_url
        site.find("input[name=token]").send_keys("not the token", Keys.ENTER)
        site.wait(lambda d: site.all("p.error"))
        site.find("input[name=token]").send_keys(token, Keys.ENTER)
        site.wait(lambda d: d.current_url == url + "/people")
        card = site.all("article.person")[0]
        site.wait(lambda d: d.execute_script(
            "return document.querySelector('article.person img').naturalWidth"
        ))  # fmt: skip
        pid = int(card.get_attribute("data-person-id"))
        site.open(f"/people/{pid}")
        name = site.find("#person-name")
        name.clear()
        name.send_keys("Renamed With A Token", Keys.ENTER)
        site.wait(lambda d: d.title.startswith("Renamed With A Token"))
        with site.col() as col:
            assert api.get_person(col, pid).name == "Renamed With A Token"
