"""The ``facesearch`` command line: a thin click layer over :mod:`facesearch.api`.

Each command parses its options, makes one API call and renders the result (a table, or JSON
with ``--json``, on stdout; progress and logs on stderr). Command groups live in their own
modules under ``facesearch/cli/`` and register on the group of :mod:`facesearch.cli.group`
(where library errors become a clean ``Error: ...`` and exit status 1). Nothing heavy is
imported before a command runs, so ``--help`` and start-up stay fast. :func:`run` is the
console script: it alone tunes the process.
"""

from __future__ import annotations

import os
import sys

# The command modules register their commands on ``main``; import order is the help order.
from facesearch.cli import cluster, collection, faces, model, serve, train  # noqa: E402, F401, I001
from facesearch.cli.group import main

# -------------------------------------------------------------------------- the console script


def run() -> None:
    """The ``facesearch`` console script: :func:`main` with the process tuned first
    (:func:`facesearch.process.tune`) and a quicker start and end.

    - **Start:** full garbage collections are put off until the models are loaded
      (:func:`facesearch.process.pause_full_gc`; the commands' pipeline factory resumes them).
    - **End:** Python's own shutdown tears down every module one by one, which with torch loaded
      takes most of a second after the command's work is done. The commands have closed their
      collections and files by then, so once the regular exit work is done (atexit handlers,
      which flush the logs; waiting for non-daemon threads; flushing stdout and stderr) the
      process ends with ``os._exit`` and the status the command set.
      ``FACESEARCH_FAST_EXIT=0`` keeps the full shutdown.
    """
    from facesearch import process

    process.tune()
    process.pause_full_gc()
    try:
        main()  # click's standalone mode: always ends with SystemExit
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


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
