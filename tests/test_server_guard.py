"""The server's request guard (facesearch.server.security) on a bare app: host check, token,
CSRF, body size. The API tests check the same guard on the real app."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from facesearch.server.security import COOKIE_NAME, CSRF_HEADER, Guard, cookie_value  # noqa: E402

TOKEN = "a-token-of-some-length"


def _client(token: str | None = None, hosts: frozenset[str] | None = None) -> TestClient:
    app = FastAPI()

    @app.get("/api/v1/thing")
    def thing() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/api/v1/thing")
    async def change(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/page")
    def page() -> dict[str, str]:
        return {"page": "yes"}

    app.add_middleware(Guard, token=token, hosts=hosts, max_body=1000)
    return TestClient(app, base_url="http://127.0.0.1:8765")


def test_loopback_server_refuses_other_host_names() -> None:
    c = _client(hosts=frozenset({"127.0.0.1", "localhost"}))
    assert c.get("/api/v1/thing").status_code == 200
    r = c.get("/api/v1/thing", headers={"Host": "evil.example:8765"})
    assert r.status_code == 421
    assert r.json()["error"]["code"] == "bad_host"


def test_token_is_required_by_header_or_cookie() -> None:
    c = _client(token=TOKEN)
    r = c.get("/api/v1/thing")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert "Bearer" in r.headers["www-authenticate"]
    assert c.get("/api/v1/thing", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = c.get("/api/v1/thing", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    c.cookies.set(COOKIE_NAME, cookie_value(TOKEN))
    assert c.get("/api/v1/thing").status_code == 200


def test_page_without_token_goes_to_the_login_form() -> None:
    c = _client(token=TOKEN)
    r = c.get("/page?x=1", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=%2Fpage%3Fx%3D1"


def test_cross_site_changes_are_refused() -> None:
    c = _client()
    assert c.post("/api/v1/thing", content=b"{}").status_code == 200  # not a browser
    r = c.post("/api/v1/thing", content=b"{}", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "csrf"
    same = c.post("/api/v1/thing", content=b"{}", headers={"Origin": "http://127.0.0.1:8765"})
    assert same.status_code == 200
    r = c.post("/api/v1/thing", content=b"{}", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert c.post("/api/v1/thing", headers={"Origin": "null"}).status_code == 403


def test_cookie_login_needs_the_csrf_header_for_changes() -> None:
    c = _client(token=TOKEN)
    c.cookies.set(COOKIE_NAME, cookie_value(TOKEN))
    r = c.post("/api/v1/thing", content=b"{}")
    assert r.status_code == 403
    assert CSRF_HEADER in r.json()["error"]["message"]
    assert c.post("/api/v1/thing", content=b"{}", headers={CSRF_HEADER: "1"}).status_code == 200
    bearer = c.post("/api/v1/thing", content=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200


def test_body_over_the_limit_is_refused() -> None:
    c = _client()
    r = c.post("/api/v1/thing", content=b"x" * 1001)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b"x" * 400

    r = c.post("/api/v1/thing", content=chunks())
    assert r.status_code == 413
