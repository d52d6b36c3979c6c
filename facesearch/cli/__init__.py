"""The ``facesearch`` command line: a thin click layer over the library.

Each command group lives in its own module under ``facesearch/cli/`` and imports heavy
modules (torch, faiss, sqlalchemy) inside the command function, so that ``--help`` and
start-up stay fast. Library errors (:class:`facesearch.errors.FacesearchError`) become a
clean ``Error: ...`` message and exit status 1 here, in one place.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

# OpenMP threads that spin while waiting make torch several times slower whenever the cores
# are shared (measured: 0.8 vs 5.7 faces/s on a busy 2-core machine). Must be set before torch
# is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _tune_malloc() -> None:
    """Keep freed network activations in the heap instead of returning them to the kernel.

    glibc serves the multi-MB activation buffers of every forward pass with mmap/munmap and
    trims the heap after each free, so each pass page-faults its memory in again: measured on
    LFW with 2 workers, 25 % of the CPU time was the kernel's (6.0 s sys per 300 photos; 1.5 s
    with these settings, +10 % photos/s). Peak memory is unchanged (the same buffers are
    reused). ``FACESEARCH_MALLOC=default`` keeps glibc's own settings; other C libraries have
    no ``mallopt`` and are left alone.
    """
    if os.environ.get("FACESEARCH_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # the largest glibc accepts on 64-bit
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_top_pad, 64 << 20)


_tune_malloc()

import click  # noqa: E402 - after the process settings above

from facesearch.errors import FacesearchError  # noqa: E402


class _Group(click.Group):
    """Turns library errors into ``click.ClickException`` in one place."""

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
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Command modules register themselves on ``main``; import order is the help order.
    import importlib

    for name in ("faces", "collection", "model", "cluster", "train"):
        try:
            importlib.import_module(f"facesearch.cli.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"facesearch.cli.{name}":
                raise


_register()
