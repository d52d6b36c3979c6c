"""The app factory: :func:`create_app` builds one FastAPI app over one collection.

Everything an app needs lives in its :class:`Server` (``app.state.server``), built from the
:class:`~facesearch.server.settings.ServerSettings` it is given: the models (loaded once, at
start-up), a few open collection handles for the request threads, the job manager and the
thumbnail cache. Nothing is kept at module level, so two apps in one process (tests) are
independent.

Threads: FastAPI runs each ``def`` endpoint in a worker thread. A :class:`Collection` is not
thread-safe, so each request borrows a handle from a small pool and gives it back. A handle
notices when the vector index file changed on disk (a job, another handle or the CLI wrote it)
and reloads it; while a writer is busy, reads search the index as it was (the library's rule),
so reads never wait for a writer. Changes take the collection's writer lock for the call; one
that cannot get it within ``lock_timeout`` seconds is answered 409. The networks run one
request at a time (``Server.inference``, taken before a collection handle, so requests waiting
for the networks hold no handle that a thumbnail needs): on a few cores that is as fast
overall as running them side by side; an index job has networks of its own.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from facesearch import api
from facesearch.server import errors
from facesearch.server.jobs import JobManager
from facesearch.server.security import Guard
from facesearch.server.settings import ServerSettings
from facesearch.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from facesearch.collection import Collection

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent


class _Handle:
    """A pooled collection and the identity of the index file it last saw."""

    __slots__ = ("collection", "seen")

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        self.seen: tuple[int, int, int] | None = None


def _file_identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def job_threads() -> int:
    """Cores a background job's networks use: all but one (at least one)."""
    return max(1, (os.cpu_count() or 1) - 1)


class Server:
    """What one app holds. Build it with :func:`create_app`."""

    def __init__(self, settings: ServerSettings, models: api.Models | None = None) -> None:
        self.settings = settings
        config = api.PipelineConfig(engine=settings.engine)
        self.models = models if models is not None else api.Models(config)
        #: the networks of background jobs: their own, so a job's workers and the requests
        #: never share one pipeline, on one core fewer than the machine has, so requests
        #: still find a core while a job runs
        self.job_models = api.Models(replace(self.models.config, threads=job_threads()))
        self.jobs = JobManager()
        self.inference = threading.Lock()
        self._free: queue.LifoQueue[_Handle] = queue.LifoQueue()
        self._made = 0
        self._made_lock = threading.Lock()
        self._closed = False
        first = self.open(create=True)
        self.folder = Path(first.folder)
        self.name = first.name
        self.thumbnails = ThumbnailCache(self.folder)
        self._made = 1
        self._free.put(_Handle(first))

    def open(self, *, create: bool = False, lock_timeout: float | None = None) -> Collection:
        """A new handle on the served collection (the caller closes it)."""
        s = self.settings
        return api.open_collection(
            s.home,
            s.collection,
            db_url=s.db_url,
            create=create,
            lock_timeout=s.lock_timeout if lock_timeout is None else lock_timeout,
        )

    @contextmanager
    def collection(self) -> Iterator[Collection]:
        """Borrow a collection handle for one request (at most ``settings.readers`` exist)."""
        handle = self._take()
        try:
            now = _file_identity(handle.collection.index_path)
            if handle.seen is not None and now != handle.seen:
                handle.collection.refresh()  # reloaded, checked against SQL, on next use
            handle.seen = now
            yield handle.collection
        finally:
            self._free.put(handle)

    def _take(self) -> _Handle:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._made_lock:
            make = self._made < self.settings.readers
            if make:
                self._made += 1
        if make:
            try:
                return _Handle(self.open())
            except BaseException:
                with self._made_lock:
                    self._made -= 1
                raise
        return self._free.get()

    def warm_up(self) -> None:
        """Load the networks a one-photo request uses and the vector index, so the first
        request is as fast as the others."""
        self.models.pipeline(photos=1)
        with self.collection() as col:
            if api.collection_info(col, check=False).faces:
                _ = col.vectors

    def close(self) -> None:
        """Stop the running job (at its next commit) and close every handle."""
        if self._closed:
            return
        self._closed = True
        self.jobs.shutdown()
        while True:
            try:
                handle = self._free.get_nowait()
            except queue.Empty:
                break
            handle.collection.close()


def create_app(
    settings: ServerSettings, *, models: api.Models | None = None, warm_up: bool = True
) -> FastAPI:
    """The ASGI app serving ``settings``' collection: the page, the API, the guards.

    ``models``: networks to use (default: built from ``settings.engine``). ``warm_up``: load
    them and the vector index at start-up rather than on the first request.
    """
    from facesearch.server import pages, routes

    server = Server(settings, models)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await anyio.to_thread.run_sync(server.warm_up)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(server.close)

    app = FastAPI(
        title="facesearch",
        version=_version(),
        summary="Face search over a photo collection: identify, verify, people, clusters, jobs.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = server
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(
        Guard,
        token=settings.token,
        hosts=settings.hosts,
        max_body=settings.max_upload_bytes,
    )
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facesearch")
    except PackageNotFoundError:
        return "0"
