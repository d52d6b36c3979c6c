"""Background jobs of the server (index, reindex): one writer at a time, progress, cancel.

A job runs in its own thread. The work function is given the :class:`Job`: it reports
progress through :meth:`Job.report` and passes :attr:`Job.stop` (a ``threading.Event``) to the
library call, which checks it at each commit, so a cancelled job stops with every committed
batch kept. Only one job runs at a time: a second is refused (409) with the running job's id,
as the CLI refuses a second writer; the library's writer lock still guards against the CLI and
other processes (the job then fails with that message). Finished jobs are kept in memory (the
last :data:`KEEP` of them) for ``GET /jobs/{id}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from facesearch.errors import FacesearchError, NotFoundError
from facesearch.server.errors import ApiError

logger = logging.getLogger(__name__)

#: Finished jobs remembered.
KEEP = 50
STATES = ("queued", "running", "done", "failed", "cancelled")


@dataclass(slots=True)
class Progress:
    """``done`` of ``total`` (photos for an index job, faces for a reindex job: ``unit``),
    faces stored and photos failed so far."""

    unit: str = "photos"
    done: int = 0
    total: int | None = None
    faces: int = 0
    failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "done": self.done,
            "total": self.total,
            "faces": self.faces,
            "failures": self.failures,
        }


class Job:
    """One background job; read it through :meth:`to_dict` (a consistent snapshot)."""

    def __init__(self, job_id: int, kind: str, params: dict[str, Any], unit: str) -> None:
        self.id = job_id
        self.kind = kind
        self.params = params
        self.state = "queued"
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.progress = Progress(unit=unit)
        self.result: dict[str, Any] | None = None
        self.error: dict[str, str] | None = None
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def report(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        faces: int | None = None,
        failures: int | None = None,
    ) -> None:
        """Update the progress (any subset of the counts)."""
        with self._lock:
            p = self.progress
            if done is not None:
                p.done = done
            if total is not None:
                p.total = total
            if faces is not None:
                p.faces = faces
            if failures is not None:
                p.failures = failures

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.id,
                "kind": self.kind,
                "state": self.state,
                "params": dict(self.params),
                "progress": self.progress.to_dict(),
                "cancel_requested": self.stop.is_set(),
                "created_at": _iso(self.created),
                "started_at": _iso(self.started),
                "finished_at": _iso(self.finished),
                "result": self.result,
                "error": self.error,
            }

    def _set(self, **values: Any) -> None:
        with self._lock:
            for k, v in values.items():
                setattr(self, k, v)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


#: A job's work: runs in the job's thread, returns the result (JSON-ready) and whether it
#: was interrupted by the stop event.
Work = Callable[[Job], tuple[dict[str, Any], bool]]


class JobManager:
    """The jobs of one server; thread-safe."""

    def __init__(self, *, keep: int = KEEP) -> None:
        self._jobs: dict[int, Job] = {}
        self._next = 1
        self._keep = keep
        self._lock = threading.Lock()

    def submit(self, kind: str, params: dict[str, Any], work: Work, *, unit: str = "photos") -> Job:
        """Start ``work`` in a new thread; 409 while another job is queued or running.
        ``unit``: what its progress counts."""
        with self._lock:
            running = next((j for j in self._jobs.values() if j.active), None)
            if running is not None:
                raise ApiError(
                    409,
                    "writer_busy",
                    f"job {running.id} ({running.kind}) is {running.state}: one job writes at a "
                    f"time; wait for it (GET /api/v1/jobs/{running.id}) or cancel it "
                    f"(DELETE /api/v1/jobs/{running.id})",
                )
            job = Job(self._next, kind, params, unit)
            self._next += 1
            self._jobs[job.id] = job
            self._trim()
        thread = threading.Thread(
            target=self._run, args=(job, work), name=f"facesearch-job-{job.id}", daemon=True
        )
        job._thread = thread
        thread.start()
        return job

    def get(self, job_id: int) -> Job:
        with self._lock:
            job = self._jobs.get(int(job_id))
        if job is None:
            raise NotFoundError("job", job_id, f"no job with id {job_id}")
        return job

    def list(self) -> list[Job]:
        """Every job remembered, newest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: -j.id)

    def cancel(self, job_id: int) -> Job:
        """Ask a job to stop at its next commit (a finished job is returned unchanged)."""
        job = self.get(job_id)
        if job.active:
            job.stop.set()
        return job

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.active), None)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel the running job and wait up to ``timeout`` seconds for it to stop."""
        job = self.running()
        if job is None:
            return
        job.stop.set()
        if job._thread is not None:
            job._thread.join(timeout)

    def _trim(self) -> None:
        done = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.id)
        for j in done[: max(0, len(done) - self._keep)]:
            del self._jobs[j.id]

    def _run(self, job: Job, work: Work) -> None:
        job._set(state="running", started=time.time())
        logger.info("job %d (%s) started: %s", job.id, job.kind, job.params)
        try:
            result, interrupted = work(job)
        except FacesearchError as exc:
            from facesearch.server.errors import status_of

            _, code = status_of(exc)
            job._set(state="failed", error={"code": code, "message": str(exc)})
            logger.warning("job %d (%s) failed: %s", job.id, job.kind, exc)
        except Exception as exc:  # noqa: BLE001 - a job's thread must record, not die silently
            logger.error("job %d (%s) failed", job.id, job.kind, exc_info=exc)
            job._set(
                state="failed",
                error={"code": "internal", "message": "internal error (see the server log)"},
            )
        else:
            job._set(state="cancelled" if interrupted else "done", result=result)
            logger.info("job %d (%s) %s", job.id, job.kind, job.state)
        finally:
            job._set(finished=time.time())
