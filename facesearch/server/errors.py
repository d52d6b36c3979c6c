"""One error shape for the whole server: ``{"error": {"code", "message"}}``, never a trace.

:func:`install` registers the handlers on an app: library errors map to a status by type
(:data:`STATUS`), request validation to 422 with every reason, HTTP errors keep their status,
and anything unexpected is logged with its traceback on the server and answered 500 with a
fixed message. Pages (paths outside ``/api/``) get the same message as a small HTML page.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from facesearch.errors import (
    ArgumentError,
    CollectionError,
    FacesearchError,
    ImageError,
    IncompatibleModelError,
    LockedError,
    NoFaceError,
    NotFoundError,
)
from facesearch.thumbnails import PhotoChangedError

logger = logging.getLogger(__name__)

#: Library error -> (HTTP status, code); the first matching class wins (subclasses first).
STATUS: tuple[tuple[type[FacesearchError], int, str], ...] = (
    (NotFoundError, 404, "not_found"),
    (LockedError, 409, "writer_busy"),
    (PhotoChangedError, 409, "photo_changed"),
    (IncompatibleModelError, 409, "incompatible_model"),
    (ImageError, 422, "bad_image"),
    (NoFaceError, 422, "no_face"),
    (ArgumentError, 422, "invalid_argument"),
    (CollectionError, 409, "collection_state"),
    (FacesearchError, 400, "bad_request"),
)
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class ApiError(Exception):
    """An error the server itself raises (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def status_of(exc: FacesearchError) -> tuple[int, str]:
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            return status, code
    return 400, "bad_request"


def error_response(request: Request, status: int, code: str, message: str) -> Response:
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
    body = (
        "<!doctype html><meta charset=utf-8><title>facesearch: error</title>"
        "<link rel=stylesheet href=/static/style.css><main class=error-page>"
        f"<h1>{status}</h1><p>{html.escape(message)}</p><p><a href=/>Back to the faces</a></p>"
        "</main>"
    )
    return HTMLResponse(body, status_code=status)


def validation_message(errors: Sequence[Any]) -> str:
    """``field.path: reason; ...`` from pydantic's error list (input values left out)."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",)) or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def on_library(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FacesearchError)
        status, code = status_of(exc)
        return error_response(request, status, code, str(exc))

    async def on_api(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(request, exc.status, exc.code, exc.message)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(request, 422, "invalid_request", validation_message(exc.errors()))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such resource: {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        response = error_response(request, exc.status_code, code, message)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(
            request, 500, "internal", "internal server error (the details are in the server log)"
        )

    app.add_exception_handler(FacesearchError, on_library)
    app.add_exception_handler(ApiError, on_api)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
