"""Request guards of the server, as one pure ASGI middleware (no per-request thread hop).

In order, for every HTTP request:

1. **Host** (DNS-rebinding guard): a loopback server answers only to the loopback names
   (``ServerSettings.hosts``); a page on another site whose name resolves to 127.0.0.1 gets
   421.
2. **Token** (when the server has one): ``Authorization: Bearer TOKEN``, or the cookie the
   login page sets (an HMAC of the token, never the token itself), compared in constant time.
   Without it an API call gets 401 and a page is sent to the login form. The login form,
   its POST and the static files (no data in them) are open.
3. **CSRF** for every mutating method (POST, PUT, PATCH, DELETE): a browser's ``Origin``
   must be this server's own origin, ``Sec-Fetch-Site`` (when sent) must say same-origin, and
   a request authenticated by the cookie alone must carry the ``X-Facesearch-CSRF`` header
   (which another site cannot set without a CORS preflight, and this server answers none).
   So another web page cannot rename people through the user's browser. Clients that are not
   browsers send neither header and are not affected.
4. **Body size**: a ``Content-Length`` over the limit gets 413 before anything is read; a
   chunked body is counted as it arrives and cut off at the limit (413 too).

Refusals are ``{"error": {"code", "message"}}`` like every other error of the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Cookie that carries the login (HMAC of the token).
COOKIE_NAME = "facesearch_auth"
#: Header the page's JavaScript sends with every change.
CSRF_HEADER = "x-facesearch-csrf"
#: Paths open without a token.
OPEN_PATHS = frozenset({"/login", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def cookie_value(token: str) -> str:
    """What the login cookie holds for ``token``: an HMAC of it, so the cookie is not the token."""
    return hmac.new(token.encode(), b"facesearch login cookie", hashlib.sha256).hexdigest()


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI lets an
    ``HTTPException`` from body parsing through, so the error handler answers 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"request body larger than the limit of {limit / 1048576:.0f} MB (--max-upload-mb)",
        )


class Guard:
    """The middleware; ``token`` ``None`` means no authentication (a loopback bind)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        hosts: frozenset[str] | None,
        max_body: int,
    ) -> None:
        self.app = app
        self.token = token
        self.cookie = cookie_value(token) if token else None
        self.hosts = hosts
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        path: str = scope.get("path", "/")
        method: str = scope.get("method", "GET")
        host = headers.get("host", "")
        if self.hosts is not None and _hostname(host) not in self.hosts:
            await _refuse(send, 421, "bad_host",
                          f"this server does not answer to the host name {host!r}: open it as "
                          "http://127.0.0.1 or http://localhost")  # fmt: skip
            return
        by_cookie = False
        if self.token is not None and not _is_open(path):
            auth = headers.get("authorization", "")
            bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
            if bearer is not None:
                ok = hmac.compare_digest(bearer.encode(), self.token.encode())
            else:
                got = _cookie(headers.get("cookie", ""))
                ok = got is not None and hmac.compare_digest(got, self.cookie or "")
                by_cookie = ok
            if not ok:
                await self._unauthorized(scope, send, path, headers, bearer is not None)
                return
        if method in MUTATING:
            refusal = _csrf(headers, host, by_cookie, scope.get("scheme", "http"))
            if refusal is not None:
                await _refuse(send, 403, "csrf", refusal)
                return
        length = headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                await _refuse(send, 400, "bad_request", "Content-Length is not a number")
                return
            if n > self.max_body:
                await _refuse(send, 413, "too_large", BodyTooLarge(self.max_body).detail)
                return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted

    async def _unauthorized(
        self, scope: Scope, send: Send, path: str, headers: dict[str, str], had_bearer: bool
    ) -> None:
        wants_page = (
            scope.get("method") == "GET"
            and not path.startswith("/api/")
            and "text/html" in headers.get("accept", "")
        )
        if wants_page:
            qs = scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{qs}" if qs else "")
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", f"/login?next={quote(target, safe='')}".encode())],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        message = (
            "wrong token"
            if had_bearer
            else "this server needs a token: send 'Authorization: "
            "Bearer TOKEN' (the token given to `facesearch serve --token` or FACESEARCH_TOKEN)"
        )
        await _refuse(send, 401, "unauthorized", message,
                      extra=[(b"www-authenticate", b'Bearer realm="facesearch"')])  # fmt: skip


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _hostname(host: str) -> str:
    """``Host`` header without the port, brackets dropped from IPv6."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _cookie(header: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # noqa: BLE001 - a malformed cookie header is no login
        return None
    morsel = jar.get(COOKIE_NAME)
    return None if morsel is None else morsel.value


def _foreign_origin(headers: dict[str, str], host: str, scheme: str) -> bool:
    """True when a browser says the request comes from another origin (``null``: a sandboxed
    or local page)."""
    origin = headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    parts = urlsplit(origin)
    return (parts.scheme, parts.netloc.lower()) != (scheme, host.lower())


def _csrf(headers: dict[str, str], host: str, by_cookie: bool, scheme: str) -> str | None:
    """Why a mutating request is refused as a possible cross-site request, or ``None``."""
    if _foreign_origin(headers, host, scheme):
        return f"cross-origin request refused (Origin {headers.get('origin')!r} is not this server)"
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site {site!r})"
    if by_cookie and CSRF_HEADER not in headers:
        return f"a change made with the login cookie needs the {CSRF_HEADER} header"
    return None


async def _refuse(
    send: Send,
    status: int,
    code: str,
    message: str,
    *,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
