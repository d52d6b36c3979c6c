"""The ``facesearch`` click group: the one place library errors become a clean message."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from facesearch.errors import FacesearchError


class _Group(click.Group):
    """Turns library errors into ``click.ClickException`` (``Error: ...``, exit status 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FacesearchError as exc:
            raise click.ClickException(str(exc)) from exc


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
