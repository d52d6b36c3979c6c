"""The ``facesearch`` click group: the one place library errors become a clean message."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from facesearch.errors import FacesearchError, describe_os_error


class _Group(click.Group):
    """Turns library errors into ``click.ClickException`` (``Error: ...``, exit status 1).

    So do the operational failures that reach it from below the library (a file system
    error, a database error, running out of memory): one line saying what and where, never
    a traceback. Ctrl-C ends the command with ``interrupted`` and status 130.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FacesearchError as exc:
            raise click.ClickException(str(exc)) from exc
        except OSError as exc:
            raise click.ClickException(describe_os_error(exc)) from exc
        except MemoryError as exc:
            raise click.ClickException(
                "out of memory: use fewer --workers, or free memory and run the command again"
            ) from exc
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as exc:
            database = _database_error(exc)
            if database is None:
                raise
            raise click.ClickException(database) from exc


def _database_error(exc: Exception) -> str | None:
    """The one-line message of a database error that escaped the store, else ``None``."""
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is None or not isinstance(exc, sa_exc.DBAPIError):
        return None
    from facesearch.store import storage_error

    url = getattr(getattr(exc, "connection", None), "engine", None)
    return str(storage_error(exc, url.url)) if url is not None else f"database error: {exc.orig}"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="facesearch")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """Face search: index photos, identify (1:K), verify (1:1), cluster, train."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


__all__ = ["main"]
