"""``facesearch serve`` under load, and the server's bars, against a real server process.

Parts (``--parts``, default both; ``build`` only builds the cached collection):

``bars``
    On a warm server over a collection of ``--faces`` LFW faces (default 10,000; built once,
    cached under ``bench/results/tmp/``): ``POST /identify`` of a one-face LFW photo (not in the
    collection), one request at a time, median and p95 (bar: p50 < 60 ms); ``GET
    /faces/{id}/thumbnail`` of crops already cached (bar: p50 < 10 ms), and the first request
    of a crop (made from the photo); then, in headless Chromium, the first contentful paint of
    the unnamed-groups page, the people page and a person page with 500 faces (bar: < 1 s),
    each in a fresh browser profile, and how long a click on one of the 500 faces takes to
    select it.

``load``
    On a copy of the same collection: an index job of ``--job-photos`` further LFW photos runs
    while 8 clients (``--clients``) hammer ``/identify`` (one-face photos) and
    ``/faces/{id}/thumbnail`` (random stored faces, cached or not) for ``--seconds`` (30). The
    job is then cancelled (it stops at its next commit). Checked: zero 5xx; zero lost faces
    (every face stored before the run is still there, the face count is the old count plus
    what the job added, SQL and the vector index agree); p50 / p95 / p99 per endpoint.

The server runs as its own process (``facesearch serve`` on a loopback port, numpy engine);
the clients are threads of this process with one keep-alive connection each. The machine is
shared (2 cores): the load average before and after is recorded.

Usage::

    python bench/server.py                       # both parts, recorded
    python bench/server.py --parts load --seconds 30
    python bench/server.py --quick               # 2,000 faces, 10 s of load: printed only

Results: ``bench/results/server.json`` and ``server.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
CACHE = RESULTS / "tmp" / "server"
V1 = "/api/v1"
#: LFW people whose photos are the identify queries (kept out of the collection).
QUERY_PEOPLE = 40


# -- the data -----------------------------------------------------------------------------------


def lfw_people(data: Path) -> list[tuple[str, list[Path]]]:
    root = data / "lfw" / "images"
    return [(d.name, sorted(d.glob("*.jpg"))) for d in sorted(root.iterdir()) if d.is_dir()]


def split_lfw(data: Path, faces: int, job_photos: int) -> dict[str, Any]:
    """Which LFW photos go where: the collection (people in order, the biggest person and
    every other one labelled by folder, the rest unlabelled, until ``faces`` photos), the
    job's photos (the next ones), and one photo each of ``QUERY_PEOPLE`` people in neither."""
    people = lfw_people(data)
    biggest = max(people, key=lambda p: len(p[1]))
    rng = random.Random(0)
    queries = [rng.choice(files) for _, files in rng.sample(people[-400:], QUERY_PEOPLE)]
    qset = {q.parent.name for q in queries}
    labelled: list[Path] = list(biggest[1])
    unlabelled: list[Path] = []
    rest: list[Path] = []
    count = len(labelled)
    for i, (name, files) in enumerate(people):
        if name == biggest[0] or name in qset:
            continue
        if count < faces:
            (labelled if i % 2 == 0 else unlabelled).extend(files)
            count += len(files)
        else:
            rest.extend(files)
    return {
        "labelled_folders": sorted({p.parent for p in labelled}),
        "unlabelled": unlabelled,
        "job": rest[:job_photos],
        "queries": queries,
        "biggest": biggest[0],
    }


def build(home: Path, split: dict[str, Any]) -> dict[str, Any]:
    """Index the collection (labelled folders with their labels, the rest without), cluster."""
    from facesearch import api
    from facesearch.pipeline import PipelineConfig

    models = api.Models(PipelineConfig(engine="numpy"))
    t0 = time.perf_counter()
    with api.open_collection(home, create=True) as col:
        api.index_paths(col, split["labelled_folders"], models=models, labels="folders")
        api.index_paths(col, split["unlabelled"], models=models)
        stats = api.cluster(col).stats
        info = api.collection_info(col, check=False)
    return {
        "faces": info.faces,
        "photos": info.photos,
        "people": info.people,
        "clusters": info.clusters,
        "seconds": round(time.perf_counter() - t0, 1),
        "cluster_seconds": None if stats is None else round(stats.seconds, 1),
    }


def collection(data: Path, faces: int, job_photos: int) -> tuple[Path, dict[str, Any]]:
    """The cached collection for ``faces`` (built when missing) and the data split."""
    split = split_lfw(data, faces, job_photos)
    home = CACHE / f"lfw{faces}"
    stamp = home / "built.json"
    if not stamp.is_file():
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        print(f"building a collection of ~{faces} LFW faces in {home} ...", file=sys.stderr)
        stamp.write_text(json.dumps(build(home, split)))
    return home, split | {"built": json.loads(stamp.read_text())}


# -- a server process ---------------------------------------------------------------------------


@contextmanager
def serve(home: Path, *, env: dict[str, str] | None = None) -> Iterator[tuple[str, int, int]]:
    """``facesearch serve --home HOME --port 0`` in a subprocess; yields (host, port, pid)."""
    cmd = [
        sys.executable, "-c", "from facesearch.cli import run; run()",
        "serve", "--home", str(home), "--port", "0", "--engine", "numpy",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.match(r"http://([\d.]+):(\d+)/", line)
        if not m:
            err = proc.stderr.read() if proc.stderr else ""
            raise SystemExit(f"the server did not start: {line!r} {err}")
        host, port = m.group(1), int(m.group(2))
        deadline = time.monotonic() + 120
        while True:  # warm-up (models, vector index) runs before the server accepts
            try:
                status, _ = Client(host, port).get(f"{V1}/collection?check=false")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not answer")
            time.sleep(0.2)
        yield host, port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


class Client:
    """One keep-alive HTTP connection (``TCP_NODELAY``, as browsers and HTTP libraries set it:
    http.client writes a request's head and body apart)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:  # fmt: skip
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = self._connect()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def json(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self.request(method, path, body, {"Content-Type": "application/json"})
        if status >= 400:
            raise SystemExit(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None


def multipart(field: str, name: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def one_face_queries(c: Client, paths: Sequence[Path]) -> list[tuple[bytes, dict[str, str]]]:
    """The query photos (as multipart bodies) in which the server finds exactly one face;
    asking each once also warms the server."""
    out = []
    for p in paths:
        body, headers = multipart("image", p.name, p.read_bytes())
        status, data = c.request("POST", f"{V1}/identify", body, headers)
        if status == 200 and len(json.loads(data)["faces"]) == 1:
            out.append((body, headers))
    if not out:
        raise SystemExit("no query photo with exactly one face")
    return out


def face_ids(c: Client, limit: int) -> list[int]:
    """Up to ``limit`` stored face ids (people's faces, then unnamed groups' faces)."""
    ids: list[int] = []
    offset: int | None = 0
    while offset is not None and len(ids) < limit:
        page = c.json("GET", f"{V1}/people?limit=1000&offset={offset}")
        for p in page["items"]:
            detail = c.json("GET", f"{V1}/people/{p['id']}?limit=1000")
            ids += [f["id"] for f in detail["faces"]["items"]]
        offset = page["next_offset"]
    return ids[:limit]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (every thread), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(ms: Sequence[float]) -> dict[str, float | int]:
    if not ms:
        return {"n": 0}
    s = sorted(ms)
    q = statistics.quantiles(s, n=100, method="inclusive") if len(s) > 1 else [s[0]] * 99
    return {
        "n": len(s),
        "p50": round(statistics.median(s), 2),
        "p95": round(q[94], 2),
        "p99": round(q[98], 2),
        "max": round(s[-1], 2),
    }


# -- bars ---------------------------------------------------------------------------------------


@contextmanager
def copy_of(home: Path) -> Iterator[Path]:
    """A throwaway copy of the collection (no thumbnails cached, nothing left behind)."""
    work = Path(tempfile.mkdtemp(prefix="facesearch-bench-"))
    try:
        shutil.copytree(home, work / "home", ignore=shutil.ignore_patterns("thumbnails"))
        yield work / "home"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bars(home: Path, split: dict[str, Any], quick: bool) -> dict[str, Any]:
    with copy_of(home) as copy:
        return _bars(copy, split, quick)


def _bars(home: Path, split: dict[str, Any], quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    with serve(home) as (host, port, pid):
        c = Client(host, port)
        queries = one_face_queries(c, split["queries"])
        times = []
        rounds = 2 if quick else 5
        cpu0 = cpu_seconds(pid)
        for _ in range(rounds):
            for body, headers in queries:
                t = time.perf_counter()
                status, data = c.request("POST", f"{V1}/identify", body, headers)
                times.append((time.perf_counter() - t) * 1e3)
                assert status == 200, (status, data[:200])
        out["identify_ms"] = percentiles(times)
        out["identify_server_cpu_ms"] = round((cpu_seconds(pid) - cpu0) * 1e3 / len(times), 2)
        ids = face_ids(c, 300)
        first, cached = [], []
        for fid in ids:
            t = time.perf_counter()
            status, _ = c.get(f"{V1}/faces/{fid}/thumbnail")
            first.append((time.perf_counter() - t) * 1e3)
            assert status == 200
        cpu0 = cpu_seconds(pid)
        for _ in range(3):
            for fid in ids:
                t = time.perf_counter()
                status, _ = c.get(f"{V1}/faces/{fid}/thumbnail")
                cached.append((time.perf_counter() - t) * 1e3)
        out["thumbnail_cached_server_cpu_ms"] = round(
            (cpu_seconds(pid) - cpu0) * 1e3 / len(cached), 2
        )
        out["thumbnail_first_ms"] = percentiles(first)
        out["thumbnail_cached_ms"] = percentiles(cached)
        people = c.json("GET", f"{V1}/people?limit=1000")["items"]
        big = next(p for p in people if p["name"] == split["biggest"])
        out["pages"] = pages(host, port, big, runs=2 if quick else 5)
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def pages(host: str, port: int, big: dict[str, Any], runs: int) -> dict[str, Any]:
    """First contentful paint of the main pages in headless Chromium (fresh profile each)."""
    sys.path.insert(0, str(REPO / "tests"))
    from serverhelpers import chromium  # the browser set-up of the browser tests

    base = f"http://{host}:{port}"
    targets = {
        "unnamed groups (/)": "/",
        "people (/people)": "/people",
        f"person page ({min(500, big['faces'])} faces shown)": f"/people/{big['id']}?limit=500",
    }
    result: dict[str, Any] = {}
    for label, path in targets.items():
        fcp, loaded, clicks = [], [], []
        for _ in range(runs):
            with chromium(page_load="eager") as d:
                d.get(base + path)
                for _ in range(50):  # the paint entry can come after the load event
                    if d.execute_script(
                        "return performance.getEntriesByName('first-contentful-paint').length"
                    ):
                        break
                    time.sleep(0.1)
                m = d.execute_script(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    "return {fcp: p ? p.startTime : null, dcl: n.domContentLoadedEventEnd,"
                    " tiles: document.querySelectorAll('button.face, article.person').length};"
                )
                if m["fcp"] is None:
                    raise SystemExit(f"{path}: Chromium reported no first contentful paint")
                fcp.append(m["fcp"])
                loaded.append(m["dcl"])
                ms = d.execute_script(
                    "const t = document.querySelector('button.face'); if (!t) return null;"
                    "const a = performance.now(); t.click();"
                    "const on = t.getAttribute('aria-pressed') === 'true';"
                    "return on ? performance.now() - a : -1;"
                )
                if ms is not None:
                    clicks.append(ms)
        result[label] = {
            "path": path,
            "tiles": m["tiles"],
            "first_contentful_paint_ms": percentiles(fcp),
            "dom_content_loaded_ms": percentiles(loaded),
            "click_to_select_ms": percentiles(clicks) if clicks else None,
        }
    return result


# -- load ---------------------------------------------------------------------------------------


def load(home: Path, split: dict[str, Any], seconds: float, clients: int) -> dict[str, Any]:
    with copy_of(home) as copy:
        return _load(copy, split, seconds, clients)


def _load(home: Path, split: dict[str, Any], seconds: float, clients: int) -> dict[str, Any]:
    with serve(home) as (host, port, _pid):
        c = Client(host, port)
        before = c.json("GET", f"{V1}/collection")
        stored = face_ids(c, 10**9)
        queries = one_face_queries(c, split["queries"])
        job = c.json("POST", f"{V1}/jobs/index", {"paths": [str(p) for p in split["job"]]})
        while c.json("GET", f"{V1}/jobs/{job['id']}")["state"] == "queued":
            time.sleep(0.05)
        results: list[tuple[str, int, float]] = []
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            me = Client(host, port)
            mine = []
            while time.monotonic() < stop:
                if rng.random() < 0.5:
                    body, headers = rng.choice(queries)
                    t = time.perf_counter()
                    status, _ = me.request("POST", f"{V1}/identify", body, headers)
                    mine.append(("identify", status, (time.perf_counter() - t) * 1e3))
                else:
                    fid = rng.choice(stored)
                    t = time.perf_counter()
                    status, _ = me.get(f"{V1}/faces/{fid}/thumbnail")
                    mine.append(("thumbnail", status, (time.perf_counter() - t) * 1e3))
            with lock:
                results.extend(mine)

        load_before = os.getloadavg()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        during = c.json("GET", f"{V1}/jobs/{job['id']}")
        c.json("DELETE", f"{V1}/jobs/{job['id']}")
        while (final := c.json("GET", f"{V1}/jobs/{job['id']}"))["state"] in ("queued", "running"):
            time.sleep(0.2)
        after = c.json("GET", f"{V1}/collection")
        missing = [fid for fid in stored if c.get(f"{V1}/faces/{fid}")[0] != 200]
        load_after = os.getloadavg()
    by: dict[str, list[float]] = {}
    statuses: dict[str, dict[str, int]] = {}
    for name, status, ms in results:
        by.setdefault(name, []).append(ms)
        statuses.setdefault(name, {})
        statuses[name][str(status)] = statuses[name].get(str(status), 0) + 1
    added = int((final.get("result") or {}).get("faces_added", 0))
    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(results),
        "per_endpoint": {
            k: percentiles(v) | {"per_s": round(len(v) / elapsed, 1), "status": statuses[k]}
            for k, v in sorted(by.items())
        },
        "errors_5xx": sum(1 for _, s, _ in results if s >= 500),
        "job_during_load": during["progress"],
        "job_final": {
            "state": final["state"],
            "progress": final["progress"],
            "faces_added": added,
        },  # fmt: skip
        "faces_before": before["faces"],
        "faces_after": after["faces"],
        "lost_faces": len(missing) + max(0, before["faces"] + added - after["faces"]),
        "consistent_after": after["consistency"]["consistent"],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


# -- report -------------------------------------------------------------------------------------


def _row(label: str, p: dict[str, Any], bar: str = "") -> str:
    if not p or not p.get("n"):
        return f"| {label} | – | – | – | {bar} |"
    return f"| {label} | {p['p50']} | {p['p95']} | {p['n']} | {bar} |"


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# `facesearch serve`: load test and bars",
        "",
        f"Command: `{payload['command']}`  ",
        f"Collection: {payload['collection']['faces']} faces in {payload['collection']['photos']} "
        f"LFW photos, {payload['collection']['people']} people, "
        f"{payload['collection']['clusters']} groups. Server: `facesearch serve` (numpy engine) "
        "in its own process on 127.0.0.1; clients in another process. Machine: 2 cores, shared "
        "with other jobs (load averages below).",
        "",
    ]
    b = payload.get("bars")
    if b:
        lines += [
            "## Bars (one request at a time, warm server)",
            "",
            f"Load average (1/5/15 min) {b['loadavg_before']} before, {b['loadavg_after']} "
            "after. The server's own CPU time per request (every thread of its process) is "
            f"{b['identify_server_cpu_ms']} ms for `/identify` and "
            f"{b['thumbnail_cached_server_cpu_ms']} ms for a cached thumbnail: on a busy "
            "machine the wall times below are mostly waiting for a core.",
            "",
            "| what | p50 ms | p95 ms | requests | bar |",
            "|---|---|---|---|---|",
            _row("`POST /identify`, one-face LFW photo", b["identify_ms"], "p50 < 60 ms"),
            _row("`GET /faces/{id}/thumbnail`, cached", b["thumbnail_cached_ms"], "p50 < 10 ms"),
            _row("`GET /faces/{id}/thumbnail`, first request (crop made)", b["thumbnail_first_ms"]),
            "",
            "| page (headless Chromium, fresh profile) | first contentful paint p50 ms (max) "
            "| DOMContentLoaded p50 ms | tiles | click to select a face, ms | bar |",
            "|---|---|---|---|---|---|",
        ]
        for label, p in b["pages"].items():
            fcp = p["first_contentful_paint_ms"]
            click = p["click_to_select_ms"]
            lines.append(
                f"| {label} | {fcp['p50']} ({fcp['max']}) | {p['dom_content_loaded_ms']['p50']} | "
                f"{p['tiles']} | {click['p50'] if click else '–'} | < 1000 ms |"
            )
        lines += [""]
    ld = payload.get("load")
    if ld:
        lines += [
            f"## Load: {ld['clients']} clients for {ld['seconds']} s while an index job runs",
            "",
            "| endpoint | requests | per s | p50 ms | p95 ms | p99 ms | max ms | statuses |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, p in ld["per_endpoint"].items():
            lines.append(
                f"| `{k}` | {p['n']} | {p['per_s']} | {p['p50']} | {p['p95']} | {p['p99']} | "
                f"{p['max']} | {p['status']} |"
            )
        jd, jf = ld["job_during_load"], ld["job_final"]
        lines += [
            "",
            f"- 5xx answers: **{ld['errors_5xx']}**; lost faces: **{ld['lost_faces']}** "
            f"({ld['faces_before']} before, {jf['faces_added']} added by the job, "
            f"{ld['faces_after']} after; SQL and vector index consistent: "
            f"{ld['consistent_after']}).",
            f"- The index job had done {jd['done']} of {jd['total']} photos when the clients "
            f"stopped; cancelled then, it ended `{jf['state']}` after {jf['progress']['done']}.",
            f"- Load average (1/5/15 min): {ld['loadavg_before']} before, "
            f"{ld['loadavg_after']} after.",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    ap.add_argument("--parts", default="bars,load")
    ap.add_argument("--faces", type=int, default=10_000)
    ap.add_argument("--job-photos", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="2,000 faces, 10 s; not recorded")
    args = ap.parse_args(argv)
    if args.quick:
        args.faces, args.seconds, args.job_photos = 2000, 10.0, 300
    parts = set(args.parts.split(","))
    home, split = collection(args.shared / "data", args.faces, args.job_photos)
    if not parts & {"bars", "load"}:  # --parts build: only make the cached collection
        print(f"{home}: {split['built']}")
        return
    payload: dict[str, Any] = {
        "command": "python bench/server.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "collection": split["built"],
    }
    if "bars" in parts:
        payload["bars"] = bars(home, split, args.quick)
    if "load" in parts:
        payload["load"] = load(home, split, args.seconds, args.clients)
    text = markdown(payload)
    print(text)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        old = RESULTS / "server.json"
        merged = json.loads(old.read_text()) if old.is_file() else {}
        merged.update(payload)
        (RESULTS / "server.json").write_text(json.dumps(merged, indent=2) + "\n")
        (RESULTS / "server.md").write_text(markdown(merged) + "\n")


if __name__ == "__main__":
    main()
