"""``facesearch serve``: the people page and the JSON API (``/api/v1``) over one collection.

| module | owns |
|---|---|
| ``settings.py`` | :class:`ServerSettings`: bind, token, upload limit, lock timeouts |
| ``app.py`` | :func:`create_app`, :class:`Server` (models, collection handles, jobs, thumbnails) |
| ``security.py`` | the ASGI guard: host check, token, CSRF, body size |
| ``errors.py`` | one error shape, ``{"error": {"code", "message"}}``, never a trace |
| ``routes.py`` | the JSON endpoints: parse, one library API call, render |
| ``views.py`` | the JSON of each resource (shared by the API and the pages) |
| ``schemas.py`` | pydantic request and response models (the OpenAPI document) |
| ``pages.py`` | the HTML pages (Jinja templates in ``templates/``, ``static/app.js``) |
| ``jobs.py`` | background index / reindex jobs: progress, cancel, one at a time |

Needs the ``server`` extra: ``pip install 'facesearch[server]'``.
"""

from __future__ import annotations

from facesearch.server.app import Server, create_app
from facesearch.server.settings import ServerSettings

__all__ = ["Server", "ServerSettings", "create_app"]
