"""What a server instance is configured with: one frozen :class:`ServerSettings`, passed to
:func:`facesearch.server.create_app` (no module-level state; every app holds its own)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from facesearch.errors import ArgumentError

#: Default largest request body (all files of one upload together), in bytes.
DEFAULT_MAX_UPLOAD: int = 25 * 1024 * 1024
#: Shortest token accepted for a non-loopback bind.
MIN_TOKEN_LENGTH: int = 16
#: Host names a browser uses for a loopback server (DNS-rebinding guard, see security.py).
LOOPBACK_NAMES: frozenset[str] = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one ``facesearch serve`` instance.

    ``home`` / ``collection`` / ``db_url``: the collection served (as on the CLI).
    ``host`` / ``port``: the bind; any non-loopback ``host`` needs a ``token``, which every
    request must then carry (``Authorization: Bearer TOKEN``, or the cookie the page's login
    sets). ``max_upload_bytes``: largest request body. ``lock_timeout``: seconds a change
    waits for another writer (a job, the CLI) before answering 409; ``job_lock_timeout`` the
    same for a job. ``readers``: collection handles kept open for concurrent requests.
    ``allowed_hosts``: ``Host`` header names accepted (``None``: the loopback names for a
    loopback bind, anything otherwise). ``engine``: network engine of the models
    (``auto``/``numpy``/``torch``).
    """

    home: Path
    collection: str = "default"
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    lock_timeout: float = 2.0
    job_lock_timeout: float = 10.0
    readers: int = 4
    allowed_hosts: frozenset[str] | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ArgumentError(f"port must be in 1..65535, got {self.port}")
        if self.max_upload_bytes < 1024:
            raise ArgumentError(
                f"the upload limit must be at least 1 KB, got {self.max_upload_bytes} bytes"
            )
        if self.readers < 1:
            raise ArgumentError(f"readers must be >= 1, got {self.readers}")
        if self.lock_timeout < 0 or self.job_lock_timeout < 0:
            raise ArgumentError("lock timeouts must be >= 0 seconds")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ArgumentError(
                f"the token must be at least {MIN_TOKEN_LENGTH} characters, got "
                f"{len(self.token)}: make one with `python -c 'import secrets; "
                "print(secrets.token_urlsafe())'`"
            )
        if not is_loopback(self.host) and not self.token:
            raise ArgumentError(
                f"binding to {self.host} (not loopback) needs a token: give --token or set "
                "FACESEARCH_TOKEN; every request must then send 'Authorization: Bearer TOKEN'"
            )

    @property
    def auth_required(self) -> bool:
        return self.token is not None

    @property
    def hosts(self) -> frozenset[str] | None:
        """Accepted ``Host`` names (``None``: any)."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return LOOPBACK_NAMES if is_loopback(self.host) else None

    @property
    def url(self) -> str:
        """The URL a person opens (``localhost`` names a loopback bind)."""
        h = self.host
        shown = "127.0.0.1" if h in ("", "0.0.0.0") else h
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}/"


def token_from_env() -> str | None:
    """``FACESEARCH_TOKEN``, when set and not empty."""
    value = os.environ.get("FACESEARCH_TOKEN", "").strip()
    return value or None
