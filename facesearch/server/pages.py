"""The HTML pages: server-rendered Jinja templates over the same JSON the API returns.

Each page calls the API endpoint function it shows (so a page and ``/api/v1/...`` never
disagree) and renders it; ``static/app.js`` makes the changes through the JSON API. Pages are
paginated like the API (``?offset=``), thumbnails load lazily (``loading=lazy``), and the
scripts listen once per page (event delegation), so a grid of 500 faces stays responsive.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from facesearch.server import routes
from facesearch.server.routes import ServerDep
from facesearch.server.security import COOKIE_NAME, CSRF_HEADER, cookie_value

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).resolve().parent
#: Clusters per page of the front page, and faces shown of each.
CLUSTERS_PER_PAGE = 20
CLUSTER_SAMPLES = 24
#: Faces per page of a person or cluster page (``?limit=`` up to the most), people per page.
FACES_PER_PAGE, MAX_FACES_PER_PAGE = 200, 500
PEOPLE_PER_PAGE = 100

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def _render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    server = request.app.state.server
    context.setdefault("title", "facesearch")
    html = _env.get_template(name).render(
        request_path=request.url.path,
        collection=server.name,
        csrf_header=CSRF_HEADER,
        auth=server.settings.auth_required,
        rejections=routes.REJECTIONS,
        **context,
    )
    return HTMLResponse(html, status_code=status)


def _pages(total: int, limit: int, offset: int) -> dict[str, int | None]:
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "prev": max(0, offset - limit) if offset > 0 else None,
        "next": offset + limit if offset + limit < total else None,
    }


@router.get("/", response_class=HTMLResponse)
def clusters_page(
    request: Request, server: ServerDep, offset: Annotated[int, Query(ge=0)] = 0
) -> HTMLResponse:
    """Flows 1-4: the unnamed clusters, largest first, as grids of faces."""
    data = routes.list_clusters(
        server, limit=CLUSTERS_PER_PAGE, offset=offset, samples=CLUSTER_SAMPLES
    )
    summary = routes.get_collection(server, check=False)
    return _render(
        request,
        "clusters.html",
        title="Unnamed faces",
        clusters=data["items"],
        pages=_pages(data["total"], CLUSTERS_PER_PAGE, offset),
        summary=summary,
    )


@router.get("/clusters/{cluster_id}", response_class=HTMLResponse)
def cluster_page(
    request: Request,
    cluster_id: int,
    server: ServerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_FACES_PER_PAGE)] = FACES_PER_PAGE,
) -> HTMLResponse:
    """One cluster with all its faces (paginated)."""
    data = routes.get_cluster(cluster_id, server, limit=limit, offset=offset)
    return _render(
        request,
        "cluster.html",
        title=f"Cluster {cluster_id}",
        cluster=data["cluster"],
        faces=data["faces"]["items"],
        pages=_pages(data["faces"]["total"], limit, offset),
    )


@router.get("/people", response_class=HTMLResponse)
def people_page(
    request: Request, server: ServerDep, offset: Annotated[int, Query(ge=0)] = 0
) -> HTMLResponse:
    """Everyone named, by name: select two to merge them."""
    data = routes.list_people(server, limit=PEOPLE_PER_PAGE, offset=offset)
    return _render(
        request,
        "people.html",
        title="People",
        people=data["items"],
        pages=_pages(data["total"], PEOPLE_PER_PAGE, offset),
    )


@router.get("/people/{person_id}", response_class=HTMLResponse)
def person_page(
    request: Request,
    person_id: int,
    server: ServerDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_FACES_PER_PAGE)] = FACES_PER_PAGE,
) -> HTMLResponse:
    """Flow 5: one person's faces (paginated): remove wrong faces, rename, merge."""
    data = routes.get_person(person_id, server, limit=limit, offset=offset)
    person = data["person"]
    return _render(
        request,
        "person.html",
        title=person["name"],
        person=person,
        faces=data["faces"]["items"],
        pages=_pages(data["faces"]["total"], limit, offset),
    )


@router.get("/suggestions", response_class=HTMLResponse)
def suggestions_page(request: Request) -> HTMLResponse:
    """Flow 6: "Is this Ada?", one question at a time (loaded by the script)."""
    if not routes.REJECTIONS:
        raise HTTPException(404, "suggestions need the library's rejections (not in this version)")
    return _render(request, "suggestions.html", title="Suggestions")


@router.get("/identify", response_class=HTMLResponse)
def identify_page(request: Request, server: ServerDep) -> HTMLResponse:
    """Flow 7: drop a photo, see every face boxed and named."""
    return _render(
        request,
        "identify.html",
        title="Who is this?",
        max_upload_mb=round(server.settings.max_upload_bytes / 1048576),
    )


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, server: ServerDep) -> HTMLResponse:
    """Flow 8: index a folder and watch the progress bar."""
    return _render(
        request,
        "jobs.html",
        title="Indexing",
        jobs=routes.list_jobs(server),
        summary=routes.get_collection(server, check=False),
    )


# -- login (only when the server has a token) ---------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a local path: never redirect to another site."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    if not request.app.state.server.settings.auth_required:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", title="Log in", next=_safe_next(next), failed=False)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    token: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form(max_length=2048)] = "/",
) -> Response:
    """Check the token once; the browser then keeps an HMAC of it in a cookie."""
    settings = request.app.state.server.settings
    if settings.token is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    if not hmac.compare_digest(token.strip().encode(), settings.token.encode()):
        return _render(
            request, "login.html", status=401, title="Log in", next=_safe_next(next), failed=True
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        cookie_value(settings.token),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
    )
    return response
