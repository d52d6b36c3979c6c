"""``facesearch serve``: the people page and the JSON API over one collection."""

from __future__ import annotations

import socket
import sys
from typing import Any

import click

from facesearch.cli.group import main
from facesearch.cli.options import collection_options

SERVER_EXTRA = "pip install 'facesearch[server]'"


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is printed (a busy port is a clean error)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: a response written in two parts (head, body) is not
    # held back by Nagle's algorithm waiting for the client's delayed ACK (~40 ms a request)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (give another --port)"
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@main.command()
@collection_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--token",
    envvar="FACESEARCH_TOKEN",
    default=None,
    help="Token every request must send (Authorization: Bearer); required for any host but "
    "loopback (env FACESEARCH_TOKEN).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0.01, 4096),
    default=25.0,
    show_default=True,
    help="Largest request body (all files of one upload together).",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "numpy", "torch"]),
    default="auto",
    show_default=True,
    help="Network engine ('auto': numpy for the shipped model, no torch import).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def serve(
    home: str,
    collection: str,
    db_url: str | None,
    host: str,
    port: int,
    token: str | None,
    max_upload_mb: float,
    engine: str,
    open_browser: bool,
) -> None:
    """Serve the people page and the JSON API (/api/v1) of a collection.

    Name the people of a photo library in a browser (unnamed groups of faces, a name box,
    merge, "not this person"), identify a dropped photo, index a folder; apps call the same
    API (OpenAPI at /api/v1/openapi.json). Binds to 127.0.0.1 unless --host says otherwise,
    which needs --token. Runs beside the CLI on one collection (one writer at a time).
    """
    try:
        import uvicorn

        from facesearch.server import ServerSettings, create_app
    except ModuleNotFoundError as exc:
        raise click.ClickException(f"facesearch serve needs {exc.name}: {SERVER_EXTRA}") from exc
    from pathlib import Path

    settings = ServerSettings(
        home=Path(home),
        collection=collection,
        db_url=db_url,
        host=host,
        port=port or 8765,
        token=token or None,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        engine=engine,
    )
    sock = _bind(host, port)
    actual = sock.getsockname()[1]
    if actual != settings.port:
        from dataclasses import replace

        settings = replace(settings, port=actual)
    app = create_app(settings)
    click.echo(f"facesearch: serving collection {collection!r} at {settings.url}", err=True)
    click.echo(settings.url)
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(settings.url)
    config: Any = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])
