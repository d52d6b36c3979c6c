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


from facesearch.process import tune_malloc  # noqa: E402

tune_malloc()

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
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )


def _register() -> None:
    # Command modules register themselves on ``main``; import order is the help order.
    import importlib

    for name in ("faces", "collection", "model", "cluster", "train", "serve"):
        try:
            importlib.import_module(f"facesearch.cli.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name != f"facesearch.cli.{name}":
                raise


_register()


# -------------------------------------------------------------------------- the console script

_GC_THRESHOLDS: tuple[int, int, int] | None = None  # the thresholds run() put aside


def run() -> None:
    """The ``facesearch`` console script: :func:`main` with a quicker start and end.

    - **Start:** importing torch and SQLAlchemy makes a few hundred thousand long-lived objects,
      and each full garbage collection meanwhile walks all of them (measured: 4 collections,
      0.45 s, before the first photo of ``facesearch index``). Full collections are put off
      until :func:`startup_done` (called once the models are loaded), which freezes what was
      imported out of the collector's way and restores the usual thresholds.
    - **End:** Python's own shutdown tears down every module one by one, which with torch loaded
      takes 0.6-1.2 s after the command's work is done (measured: 0.65 s after a bare ``import
      torch``). The commands have closed their collections and files by then, so once the
      regular exit work is done (atexit handlers, which flush the logs; waiting for non-daemon
      threads; flushing stdout and stderr) the process ends with ``os._exit`` and the status
      the command set. ``FACESEARCH_FAST_EXIT=0`` keeps the full shutdown.
    """
    global _GC_THRESHOLDS
    import gc

    _GC_THRESHOLDS = gc.get_threshold()
    g0, g1, g2 = _GC_THRESHOLDS
    gc.set_threshold(g0, g1, max(g2, 1000))
    try:
        main()  # click's standalone mode: always ends with SystemExit
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


def startup_done() -> None:
    """Heavy imports and models are loaded: freeze them, restore the collector's thresholds."""
    global _GC_THRESHOLDS
    if _GC_THRESHOLDS is None:
        return
    import gc

    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)
    _GC_THRESHOLDS = None


def _exit(code: object) -> None:
    """Exit with ``code`` (``SystemExit`` semantics), skipping module teardown when torch is
    loaded (see :func:`run`)."""
    if os.environ.get("FACESEARCH_FAST_EXIT") == "0" or "torch" not in sys.modules:
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what Python's exit does first
    if shutdown is not None:
        shutdown()  # joins non-daemon threads, shuts executors down
    atexit._run_exitfuncs()  # logging.shutdown() among them
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken pipe: what Python's exit reports
            if stream is sys.stdout:
                status = 120
    os._exit(status)
