"""Fault injection: kill -9, a full disk and corrupt vector files, against an oracle.

Campaigns (``--campaigns``, each bounded by its cycle count and by ``--max-minutes`` overall):

``index-kill``
    A fresh collection per cycle; ``facesearch index CORPUS --labels folders`` is killed with
    SIGKILL at a random moment of its run 1-3 times, then run to the end. After every kill and
    at the end the SQL state is compared with a clean run's: a stored photo must hold exactly
    the faces and labels the clean run gave it (fewer: *faces lost*, more: *duplicates*).
    ``--pg URL`` runs the same on PostgreSQL (a fresh schema per cycle) as ``index-kill-pg``.
``cluster-kill``
    ``facesearch cluster --full`` on a copy of an unlabelled collection, killed at a random
    moment: the stored clusters must be those before the run or those of a clean run (all or
    nothing); then the run is finished and must equal the clean run.
``merge-kill``
    ``facesearch people merge A B`` killed at a random moment: either nothing moved or all of
    A's faces are B's and A is gone.
``disk-full``
    The collection on a small tmpfs (needs ``mount``; skipped where it is not allowed): index
    until the disk is full (the command must fail with one ``Error:`` line), query on the full
    disk (must answer, and right), then grow the disk and finish: equal to the clean run.
``corrupt``
    Bytes overwritten inside ``vectors.faiss`` (its trailer intact), vectors of two people
    swapped, or the file truncated; then queries by a reader that may rebuild, by a reader
    while another process holds the writer lock, and through the CLI.

*Wrong answers* are counted against an oracle: brute-force search over the embeddings SQL
holds at that moment (the verdict and the distance of the nearest labelled face). Any
``Traceback`` on a command's stderr is counted too.

Writes ``bench/results/reliability.md`` (and ``.json``) with the command line. Example::

    python bench/faults.py                      # every campaign, the default sizes
    python bench/faults.py --quick              # a smoke run (printed, not recorded)
    python bench/faults.py --pg postgresql+psycopg://postgres@127.0.0.1:54329/facesearch_test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from facesearch import api  # noqa: E402

SCRIPT = (
    "import sys\nfrom facesearch.cli import run\nsys.argv = ['facesearch', *sys.argv[1:]]\nrun()\n"
)
CAMPAIGNS = ("index-kill", "cluster-kill", "merge-kill", "disk-full", "corrupt")


@dataclass
class Tally:
    """What one campaign saw."""

    campaign: str
    cycles: int = 0
    faults: int = 0
    commands: int = 0
    faces_lost: int = 0
    labels_lost: int = 0
    duplicates: int = 0
    partial_states: int = 0
    queries: int = 0
    wrong_answers: int = 0
    tracebacks: int = 0
    unclear_errors: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


# -- running the CLI ------------------------------------------------------------------------------


def cli(args: list[Any], *, env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        capture_output=True, text=True, errors="backslashreplace", timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def killed_run(
    args: list[Any], after: float, *, env: dict[str, str] | None = None
) -> tuple[bool, str]:
    """Start ``facesearch ARGS`` and SIGKILL it ``after`` seconds in; ``(killed, stderr)``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        errors="backslashreplace", env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    return proc.returncode == -signal.SIGKILL, err


def check_stderr(t: Tally, err: str, *, failed: bool) -> None:
    t.commands += 1
    if "Traceback" in err:
        t.tracebacks += 1
        t.notes.append("traceback: " + err.strip().splitlines()[-1][:200])
    elif failed and sum(line.startswith("Error:") for line in err.splitlines()) != 1:
        t.unclear_errors += 1
        t.notes.append("unclear error: " + " | ".join(err.strip().splitlines()[-3:])[:200])


# -- the state SQL holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    faces: dict[str, int]  # photo path -> faces stored
    labels: dict[str, tuple[str, ...]]  # photo path -> the people of its faces, sorted
    status: dict[str, str]


def db_url(home: Path, pg: str | None) -> str:
    return pg if pg is not None else f"sqlite:///{home / 'default' / 'faces.db'}"


def read_state(url: str) -> State:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            if not sa.inspect(c).has_table("photos"):
                return State({}, {}, {})
            faces: dict[str, int] = {}
            status: dict[str, str] = {}
            for path, st, n in c.execute(sa.text(
                "SELECT p.path, p.status, COUNT(f.id) FROM photos p "
                "LEFT JOIN faces f ON f.photo_id = p.id GROUP BY p.id, p.path, p.status"
            )):  # fmt: skip
                faces[path], status[path] = int(n), str(st)
            labels: dict[str, list[str]] = {}
            for path, name in c.execute(sa.text(
                "SELECT p.path, pe.name FROM faces f JOIN photos p ON p.id = f.photo_id "
                "JOIN assignments a ON a.face_id = f.id JOIN people pe ON pe.id = a.person_id"
            )):  # fmt: skip
                labels.setdefault(path, []).append(name)
    finally:
        engine.dispose()
    return State(faces, {k: tuple(sorted(v)) for k, v in labels.items()}, status)


def compare(t: Tally, got: State, ref: State, *, complete: bool) -> None:
    """Count faces lost and duplicated in ``got`` against the clean run ``ref``."""
    for path, n in got.faces.items():
        want = ref.faces.get(path)
        if want is None:
            t.duplicates += n
            t.notes.append(f"photo not in the clean run: {path}")
            continue
        t.faces_lost += max(0, want - n)
        t.duplicates += max(0, n - want)
        lost = len(ref.labels.get(path, ())) - len(got.labels.get(path, ()))
        t.labels_lost += max(0, lost)
    if complete:
        for path, want in ref.faces.items():
            if path not in got.faces:
                t.faces_lost += want
                t.notes.append(f"photo missing after the final run: {path}")


def oracle(url: str, xq: np.ndarray, tau: float) -> tuple[str | None, float | None]:
    """Brute force over SQL: ``(person or None, d of the nearest labelled face)``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text(
                "SELECT f.embedding, pe.name FROM faces f JOIN assignments a ON a.face_id = f.id "
                "JOIN people pe ON pe.id = a.person_id"
            )).all()  # fmt: skip
    finally:
        engine.dispose()
    if not rows:
        return None, None
    xb = np.stack([np.frombuffer(bytes(r[0]), dtype="<f4") for r in rows])
    d = 2.0 - 2.0 * (xb @ xq.astype(np.float32))
    best = int(np.argmin(d))
    dist = float(max(d[best], 0.0))
    return (rows[best][1] if dist < tau else None), dist


class Queries:
    """Held-out photos, their embeddings (computed once) and the check of an answer."""

    def __init__(self, photos: list[Path], models: Any) -> None:
        self.models = models
        self.items: list[tuple[Path, np.ndarray]] = []
        for p in photos:
            faces = api.photo_faces(p, models=models)
            if len(faces) == 1:
                self.items.append((p, np.asarray(faces[0].embedding, dtype=np.float32)))

    def check_api(self, t: Tally, home: Path, url: str, pg: str | None, n: int) -> None:
        with api.open_collection(home, db_url=pg) as col:
            for path, xq in self.items[:n]:
                res = api.identify(col, path, models=self.models)
                self._judge(t, url, xq, res.threshold, res.faces[0].person, res.faces[0].distance)

    def check_cli(self, t: Tally, home: Path, url: str, pg: str | None, n: int) -> None:
        for path, xq in self.items[:n]:
            args = ["query", path, "--json", "--home", home] + (["--db", pg] if pg else [])
            res = cli(args, env={"FACESEARCH_LOCK_TIMEOUT": "1"})
            check_stderr(t, res.stderr, failed=res.returncode != 0)
            if res.returncode != 0:
                t.queries += 1
                t.wrong_answers += 1
                t.notes.append(f"query failed: {res.stderr.strip()[-200:]}")
                continue
            (face,) = json.loads(res.stdout)
            self._judge(t, url, xq, None, face["person"], face["distance"])

    def _judge(self, t: Tally, url: str, xq: np.ndarray, tau: float | None, person: Any,
               distance: Any) -> None:  # fmt: skip
        tau = tau if tau is not None else self.models.threshold("identify")
        want, dist = oracle(url, xq, tau)
        t.queries += 1
        ok = person == want and (
            dist is None or (distance is not None and abs(distance - dist) < 2e-3)
        )
        if not ok:
            t.wrong_answers += 1
            t.notes.append(f"wrong answer: {person} d {distance} (oracle {want} d {dist})")


# -- campaigns ------------------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    corpus: Path
    ref: State
    ref_home: Path
    index_seconds: float
    queries: Queries
    rng: random.Random
    deadline: float
    pg: str | None


def _index_args(s: Setup, home: Path, pg: str | None) -> list[Any]:
    args = ["index", s.corpus, "--labels", "folders", "--home", home, "--batch-size", "16"]
    return args + (["--db", pg] if pg else [])


@contextlib.contextmanager
def pg_schema(base: str) -> Iterator[str]:
    schema = f"faults_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def index_kill(s: Setup, cycles: int, pg: str | None) -> Tally:
    t = Tally("index-kill" + ("-pg" if pg else ""))
    for cycle in range(cycles):
        if time.monotonic() > s.deadline:
            t.notes.append(f"stopped at the time limit after {cycle} cycles")
            break
        home = s.work / f"ik{cycle}{'pg' if pg else ''}"
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(pg_schema(pg)) if pg else None
            sql = db_url(home, url)
            for _ in range(s.rng.randint(1, 3)):
                after = s.rng.uniform(0.3, s.index_seconds)
                killed, err = killed_run(_index_args(s, home, url), after)
                t.faults += killed
                check_stderr(t, err, failed=False)
                compare(t, read_state(sql), s.ref, complete=False)
            res = cli(_index_args(s, home, url))
            check_stderr(t, res.stderr, failed=res.returncode != 0)
            compare(t, read_state(sql), s.ref, complete=True)
            s.queries.check_api(t, home, sql, url, 3)
            t.cycles += 1
    return t


def _clusters(url: str) -> frozenset[frozenset[int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT id, cluster_id FROM faces")).all()
    finally:
        engine.dispose()
    groups: dict[int, set[int]] = {}
    for fid, cid in rows:
        if cid is not None:
            groups.setdefault(int(cid), set()).add(int(fid))
    return frozenset(frozenset(g) for g in groups.values())


def cluster_kill(s: Setup, cycles: int) -> Tally:
    t = Tally("cluster-kill")
    base = s.work / "cl-base"
    res = cli(["index", s.corpus, "--home", base])  # no labels: every face is clustered
    check_stderr(t, res.stderr, failed=res.returncode != 0)
    before = _clusters(db_url(base, None))
    clean = s.work / "cl-clean"
    shutil.copytree(base, clean)
    started = time.monotonic()
    res = cli(["cluster", "--full", "--home", clean])
    took = time.monotonic() - started
    check_stderr(t, res.stderr, failed=res.returncode != 0)
    after = _clusters(db_url(clean, None))
    if not after:
        t.notes.append("the clean run made no cluster: the campaign tests nothing")
    for cycle in range(cycles):
        if time.monotonic() > s.deadline:
            t.notes.append(f"stopped at the time limit after {cycle} cycles")
            break
        home = s.work / f"cl{cycle}"
        shutil.copytree(base, home)
        killed, err = killed_run(["cluster", "--full", "--home", home], s.rng.uniform(0.2, took))
        t.faults += killed
        check_stderr(t, err, failed=False)
        got = _clusters(db_url(home, None))
        if got not in (before, after):
            t.partial_states += 1
            t.notes.append(f"cluster cycle {cycle}: neither the state before nor after")
        res = cli(["cluster", "--full", "--home", home])
        check_stderr(t, res.stderr, failed=res.returncode != 0)
        if _clusters(db_url(home, None)) != after:
            t.partial_states += 1
            t.notes.append(f"cluster cycle {cycle}: the finished run differs from a clean run")
        shutil.rmtree(home)
        t.cycles += 1
    return t


def merge_kill(s: Setup, cycles: int) -> Tally:
    t = Tally("merge-kill")
    people = sorted({p for labels in s.ref.labels.values() for p in labels})
    counts = {p: sum(labels.count(p) for labels in s.ref.labels.values()) for p in people}
    a, b = sorted(people, key=lambda p: -counts[p])[:2]
    url_of = lambda home: db_url(home, None)  # noqa: E731
    started = time.monotonic()
    probe = s.work / "mg-probe"
    shutil.copytree(s.ref_home, probe)
    cli(["people", "merge", a, b, "--home", probe])
    took = time.monotonic() - started
    for cycle in range(cycles):
        if time.monotonic() > s.deadline:
            t.notes.append(f"stopped at the time limit after {cycle} cycles")
            break
        home = s.work / f"mg{cycle}"
        shutil.copytree(s.ref_home, home)
        killed, err = killed_run(
            ["people", "merge", a, b, "--home", home], s.rng.uniform(0.1, took)
        )
        t.faults += killed
        check_stderr(t, err, failed=False)
        st = read_state(url_of(home))
        have = {p: sum(v.count(p) for v in st.labels.values()) for p in (a, b)}
        untouched = have == {a: counts[a], b: counts[b]}
        done = have == {a: 0, b: counts[a] + counts[b]}
        if not (untouched or done):
            t.partial_states += 1
            t.notes.append(f"merge cycle {cycle}: {have} (before {counts[a]}/{counts[b]})")
        compare(t, st, s.ref, complete=True) if untouched else None
        shutil.rmtree(home)
        t.cycles += 1
    return t


@contextlib.contextmanager
def tmpfs(where: Path, size_kb: int) -> Iterator[Path | None]:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
                    f.flush()
    return filler


def disk_full(s: Setup, cycles: int) -> Tally:
    t = Tally("disk-full")
    ref_bytes = sum(f.stat().st_size for f in (s.ref_home / "default").iterdir())
    for cycle in range(cycles):
        if time.monotonic() > s.deadline:
            t.notes.append(f"stopped at the time limit after {cycle} cycles")
            break
        size_kb = int(ref_bytes * s.rng.uniform(0.2, 0.9) / 1024) + 256
        with tmpfs(s.work / f"disk{cycle}", size_kb) as disk:
            if disk is None:
                t.notes.append("mount is not allowed here: no disk-full campaign")
                break
            home = disk / "home"
            res = cli(_index_args(s, home, None))
            t.faults += res.returncode != 0
            check_stderr(t, res.stderr, failed=res.returncode != 0)
            if res.returncode == 0:
                t.notes.append(f"disk cycle {cycle}: {size_kb} kB was enough")
            compare(t, read_state(db_url(home, None)), s.ref, complete=False)
            index_file = home / "default" / "vectors.faiss"
            if index_file.exists() and s.rng.random() < 0.5:
                index_file.unlink()  # the reader must rebuild it, and cannot save it
            filler = _fill(disk)
            s.queries.check_cli(t, home, db_url(home, None), None, 2)
            filler.unlink(missing_ok=True)
            subprocess.run(["mount", "-o", f"remount,size={4 * ref_bytes // 1024 + 4096}k",
                            str(disk)], check=True)  # fmt: skip
            res = cli(_index_args(s, home, None))
            check_stderr(t, res.stderr, failed=res.returncode != 0)
            compare(t, read_state(db_url(home, None)), s.ref, complete=True)
            t.cycles += 1
    return t


def _corrupt_file(index_file: Path, rng: random.Random) -> str:
    """One corruption of ``index_file`` (its trailer kept, except for truncation)."""
    raw = bytearray(index_file.read_bytes())
    n_json = int.from_bytes(raw[-16:-8], "little")
    faiss_bytes = len(raw) - 16 - n_json
    kind = rng.choice(["bytes", "bytes", "swap", "truncate"])
    if kind == "bytes":
        n = rng.randint(1, min(20_000, faiss_bytes // 2))
        at = rng.randint(faiss_bytes // 4, faiss_bytes - n)
        raw[at : at + n] = bytes(rng.getrandbits(8) for _ in range(n))
    elif kind == "swap":
        import faiss

        index = faiss.read_index(str(index_file))
        d = index.d
        xb = np.array(faiss.rev_swig_ptr(faiss.downcast_index(index.index).get_xb(),
                                         index.ntotal * d)).reshape(-1, d)  # fmt: skip
        order = list(range(len(xb)))
        rng.shuffle(order)
        for i, j in zip(order[: len(order) // 2], order[len(order) // 2 :], strict=False):
            pi, pj = raw.find(xb[i].tobytes()), raw.find(xb[j].tobytes())
            raw[pi : pi + 4 * d], raw[pj : pj + 4 * d] = xb[j].tobytes(), xb[i].tobytes()
    else:
        raw = raw[: rng.randint(0, len(raw) - 1)]
    index_file.write_bytes(bytes(raw))
    return kind


def corrupt(s: Setup, cycles: int) -> Tally:
    t = Tally("corrupt")
    for cycle in range(cycles):
        if time.monotonic() > s.deadline:
            t.notes.append(f"stopped at the time limit after {cycle} cycles")
            break
        home = s.work / f"cr{cycle}"
        shutil.copytree(s.ref_home, home)
        url = db_url(home, None)
        index_file = home / "default" / "vectors.faiss"
        saved = index_file.read_bytes()
        for reader in ("rebuilds", "writer-active", "cli"):
            index_file.write_bytes(saved)
            _corrupt_file(index_file, s.rng)
            t.faults += 1
            if reader == "rebuilds":
                s.queries.check_api(t, home, url, None, 3)
            elif reader == "writer-active":
                with api.open_collection(home) as writer, writer.lock():
                    s.queries.check_api(t, home, url, None, 3)
            else:
                s.queries.check_cli(t, home, url, None, 1)
        shutil.rmtree(home)
        t.cycles += 1
    return t


# -- the report -----------------------------------------------------------------------------------


def render(tallies: list[Tally], meta: dict[str, Any]) -> str:
    lines = [
        "# Reliability: fault-injection campaigns",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Code: commit {meta['commit']}; {meta['machine']}; corpus {meta['photos']} LFW photos "
        f"({meta['faces']} faces, {meta['people']} people), {meta['queries']} held-out query "
        f"photos; took {meta['seconds']:.0f} s.",
        "",
        "| campaign | cycles | faults injected | commands | faces lost | labels lost | "
        "duplicates | partial states | queries | wrong answers | tracebacks | unclear errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tallies:
        lines.append(
            f"| {t.campaign} | {t.cycles} | {t.faults} | {t.commands} | {t.faces_lost} | "
            f"{t.labels_lost} | {t.duplicates} | {t.partial_states} | {t.queries} | "
            f"{t.wrong_answers} | {t.tracebacks} | {t.unclear_errors} |"
        )
    lines += ["", "Faults: SIGKILLs that landed (a run that ended first is not counted), full "
              "disks hit, corruptions written. Wrong answers: a verdict or distance that differs "
              "from brute-force search over what SQL holds at that moment.", ""]  # fmt: skip
    for t in tallies:
        if t.notes:
            lines.append(f"Notes, {t.campaign}:")
            lines += [f"- {n}" for n in t.notes[:20]]
            if len(t.notes) > 20:
                lines.append(f"- ... and {len(t.notes) - 20} more")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--photos", type=int, default=300, help="LFW photos in the corpus")
    ap.add_argument("--campaigns", default=",".join(CAMPAIGNS))
    ap.add_argument("--cycles", type=int, default=10, help="cycles per campaign")
    ap.add_argument("--pg", default=None, help="PostgreSQL URL: also run index-kill on it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=40.0)
    ap.add_argument("--quick", action="store_true", help="40 photos, 2 cycles; not recorded")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    a = ap.parse_args()
    if a.quick:
        a.photos, a.cycles = 40, 2
    started = time.monotonic()
    rng = random.Random(a.seed)
    images = a.shared / "data" / "lfw" / "images"
    people = sorted(p for p in images.iterdir() if len(list(p.glob("*.jpg"))) >= 3)
    work = Path(tempfile.mkdtemp(prefix="facesearch-faults-"))
    try:
        corpus, held_out = work / "corpus", []
        n = 0
        for person in people:
            files = sorted(person.glob("*.jpg"))
            held_out.append(files[0])
            for f in files[1:]:
                (corpus / person.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, corpus / person.name / f.name)
                n += 1
            if n >= a.photos:
                break
        ref_home = work / "ref"
        t0 = time.monotonic()
        res = cli(
            ["index", corpus, "--labels", "folders", "--home", ref_home, "--batch-size", "16"]
        )
        index_seconds = time.monotonic() - t0
        if res.returncode != 0:
            raise SystemExit(f"the clean run failed: {res.stderr}")
        ref = read_state(db_url(ref_home, None))
        models = api.Models()
        queries = Queries(held_out[:12], models)
        s = Setup(work, corpus, ref, ref_home, index_seconds, queries, rng,
                  started + 60 * a.max_minutes, a.pg)  # fmt: skip
        tallies: list[Tally] = []
        for name in a.campaigns.split(","):
            t0 = time.monotonic()
            if name == "index-kill":
                found = [index_kill(s, a.cycles, None)]
                if a.pg:
                    found.append(index_kill(s, a.cycles, a.pg))
            else:
                run = {"cluster-kill": cluster_kill, "merge-kill": merge_kill,
                       "disk-full": disk_full, "corrupt": corrupt}[name]  # fmt: skip
                try:
                    found = [run(s, a.cycles)]
                except Exception as exc:  # noqa: BLE001 - recorded, the other campaigns go on
                    found = [Tally(name, notes=[f"the campaign itself failed: {exc!r}"])]
            for t in found:
                t.seconds = time.monotonic() - t0
                print(json.dumps({k: v for k, v in asdict(t).items() if k != "notes"}), flush=True)
            tallies += found
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()  # fmt: skip
        meta = {
            "command": "python bench/faults.py " + shlex.join(sys.argv[1:]),
            "commit": commit,
            "machine": f"{os.cpu_count()} cores, {platform.python_version()}, load average "
            f"{os.getloadavg()[0]:.1f} at the end",
            "photos": len(ref.faces),
            "faces": sum(ref.faces.values()),
            "people": len({p for v in ref.labels.values() for p in v}),
            "queries": len(queries.items),
            "seconds": time.monotonic() - started,
        }
        text = render(tallies, meta)
        print(text)
        if not a.quick:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "reliability.md").write_text(text + "\n")
            (a.out / "reliability.json").write_text(
                json.dumps({"meta": meta, "campaigns": [asdict(t) for t in tallies]}, indent=1)
                + "\n"
            )
    finally:
        for mnt in work.glob("disk*"):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
