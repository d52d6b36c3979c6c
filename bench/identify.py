"""1:K identification accuracy and indexing throughput of a facesearch collection.

Parts (``--parts``, default all):

``photos``
    ``facesearch index ../shared/data/photos --labels folders`` into a fresh collection, then
    leave-one-out: each labelled face is queried against the rest of the collection, with the
    faces of its own photo removed from the candidates (``identify_vectors(..., exclude=)``).

    * *rank-1*: the nearest labelled face is of the right person (people with 2+ photos);
    * *identified at tau*: the verdict (nearest labelled face within tau, else unknown) is the
      right person;
    * *unknown*: people who are not enrolled must come back "unknown". Measured two ways:
      the people with a single photo (after leaving it out, they are not in the collection),
      and every photo with *all* of its person's faces removed from the candidates (each
      person held out in turn).

``lfw``
    LFW 1:K. Gallery: the first image of every person with 2 or more images (the first one
    with a face, if the first has none); probes: all their other images. A collection is made
    of the gallery faces and the probes are identified against it: rank-1, rank-5 (the gallery
    holds one face per person, so the 5 nearest faces are the 5 nearest people) and the
    verdict at tau. Open set: images of people with a single LFW image (not in the gallery;
    ``--unknown-sample`` of them) must come back unknown.

    Embeddings (the face nearest the image centre, the documented low-threshold fallback when
    none is found: :func:`facesearch.lfw.embed_images`) are read from ``--lfw-embeddings``
    (``.npz`` with ``paths`` (N,) relative to ``lfw/images``, ``embeddings`` (N, 128),
    ``status`` (N,) 0 ok / 1 fallback / 2 no face) when it exists, otherwise computed for
    the images needed and saved there.

``throughput``
    ``facesearch index`` on the first ``--throughput-images`` LFW images (byte-wise sorted,
    copied into a temporary folder) into a fresh collection: photos/s and faces/s over the
    run itself (the command's own timer: walking, decoding, detecting, embedding, storing) and
    over the whole process (start-up and model loading included).

Usage::

    python bench/identify.py                      # everything, results recorded
    python bench/identify.py --parts photos       # one part (the others' results are kept)
    python bench/identify.py --quick              # small smoke run, printed, not recorded

Results: ``bench/results/identify.md`` and ``identify.json``, with the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared"
RESULTS = REPO / "bench" / "results"
PARTS = ("photos", "lfw", "throughput")

log = logging.getLogger("bench.identify")


def _facesearch() -> list[str]:
    script = Path(sys.executable).with_name("facesearch")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from facesearch.cli import main; main()"]


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _index(paths: list[Path], home: Path, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """Run ``facesearch index`` as a user would; returns its JSON report plus wall time."""
    cmd = [*_facesearch(), "index", *map(str, paths), "--home", str(home), "--json", *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(args.threads), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    report = json.loads(proc.stdout)
    report.pop("failures", None)  # absolute paths of this machine; the count is kept
    report["wall_seconds"] = wall
    report["load_average"] = load
    return report


def _tau() -> float:
    from facesearch.distance import DEFAULT_IDENTIFY_THRESHOLD

    return DEFAULT_IDENTIFY_THRESHOLD


def _sweep_taus() -> list[float]:
    from facesearch.distance import DEFAULT_IDENTIFY_THRESHOLD, DEFAULT_THRESHOLD

    return sorted({DEFAULT_THRESHOLD, 1.2, DEFAULT_IDENTIFY_THRESHOLD, 1.1, 1.0, 0.9}, reverse=True)


# ------------------------------------------------------------------------------ part: photos
def bench_photos(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from facesearch import store as st
    from facesearch.collection import Collection
    from facesearch.identify import identify_vectors

    photos = args.shared / "data" / "photos"
    home = work / "photos-home"
    report = _index([photos], home, args, "--labels", "folders")
    log.info("indexed %s: %s", photos, {k: report[k] for k in ("new", "failed", "faces_added")})
    tau = _tau()
    with Collection.open(home) as col:
        with col.session() as s:
            ids, xb = st.load_all_embeddings(s)
            recs = st.faces_by_ids(s, ids)
        face_photo = {f: recs[int(f)].photo_id for f in ids}
        person_of = {int(f): recs[int(f)].person for f in ids}
        faces_of_photo: dict[int, set[int]] = defaultdict(set)
        faces_of_person: dict[str, set[int]] = defaultdict(set)
        for f in ids:
            faces_of_photo[face_photo[f]].add(int(f))
            if person_of[int(f)] is not None:
                faces_of_person[str(person_of[int(f)])].add(int(f))
        q = [i for i, f in enumerate(ids) if person_of[int(f)] is not None]
        xq = xb[q]
        truth = [str(person_of[int(ids[i])]) for i in q]
        own = [faces_of_photo[face_photo[ids[i]]] for i in q]
        loo = identify_vectors(col, xq, k=5, threshold=tau, exclude=own)
        held = [faces_of_person[p] | o for p, o in zip(truth, own, strict=True)]
        open_set = identify_vectors(col, xq, k=5, threshold=tau, exclude=held)
    n_photos_of = Counter(truth)
    closed = [i for i, p in enumerate(truth) if n_photos_of[p] >= 2]
    single = [i for i, p in enumerate(truth) if n_photos_of[p] == 1]
    rank1 = [i for i in closed if loo[i].matches and _nearest_labelled(loo[i]) == truth[i]]
    ident = [i for i in closed if loo[i].person == truth[i]]
    errors = [
        {
            "photo": _rel(_photo(loo[i], recs, ids[q[i]]), args.shared),
            "person": truth[i],
            "verdict": loo[i].person,
            "distance": None if loo[i].distance is None else round(loo[i].distance, 3),
        }
        for i in closed
        if loo[i].person != truth[i]
    ]
    single_unknown = [i for i in single if loo[i].person is None]
    held_unknown = [i for i in range(len(q)) if open_set[i].person is None]
    false_accepts = [
        {
            "photo": _rel(_photo(open_set[i], recs, ids[q[i]]), args.shared),
            "person": truth[i],
            "taken_for": open_set[i].person,
            "distance": round(float(open_set[i].distance or 0.0), 3),
        }
        for i in range(len(q))
        if open_set[i].person is not None
    ]
    d_loo = np.array([4.0 if r.distance is None else r.distance for r in loo])
    ok = np.array([_nearest_labelled(r) == t for r, t in zip(loo, truth, strict=True)])
    d_held = np.array([4.0 if r.distance is None else r.distance for r in open_set])
    closed_mask = np.zeros(len(q), bool)
    closed_mask[closed] = True
    sweep = [
        {
            "tau": t,
            "identified": float(np.sum(ok & closed_mask & (d_loo < t)) / max(len(closed), 1)),
            "held_out_unknown": float(np.mean(d_held >= t)) if len(q) else None,
        }
        for t in _sweep_taus()
    ]
    return {
        "index": report,
        "sweep": sweep,
        "tau": tau,
        "people": len(n_photos_of),
        "labelled_faces": len(q),
        "closed_set_queries": len(closed),
        "rank1": len(rank1) / max(len(closed), 1),
        "identified_at_tau": len(ident) / max(len(closed), 1),
        "errors": errors,
        "single_photo_people": len(single),
        "single_photo_unknown": len(single_unknown) / max(len(single), 1),
        "held_out_queries": len(q),
        "held_out_unknown": len(held_unknown) / max(len(q), 1),
        "false_accepts": false_accepts,
    }


def _nearest_labelled(r: Any) -> str | None:
    return next((m.person for m in r.matches if m.person is not None), r.person)


def _photo(r: Any, recs: dict[int, Any], face_id: Any) -> str:
    return str(recs[int(face_id)].photo)


def _rel(path: str, shared: Path) -> str:
    try:
        return Path(path).resolve().relative_to(shared.resolve()).as_posix()
    except ValueError:
        return path


# ------------------------------------------------------------------------------ part: lfw
def lfw_people(images: Path) -> dict[str, list[str]]:
    """``person -> [relative paths]`` (sorted: Name_0001 first)."""
    people: dict[str, list[str]] = defaultdict(list)
    for p in sorted(images.glob("*/*.jpg")):
        people[p.parent.name].append(p.relative_to(images).as_posix())
    return dict(people)


def lfw_embeddings(
    args: argparse.Namespace, images: Path, wanted: list[str]
) -> dict[str, tuple[np.ndarray | None, int]]:
    """``relative path -> (embedding (128,) or None, status)`` for ``wanted`` images."""
    cache: Path = args.lfw_embeddings
    table: dict[str, tuple[np.ndarray | None, int]] = {}
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        for p, x, s in zip(z["paths"], z["embeddings"], z["status"], strict=True):
            table[str(p)] = (None if int(s) == 2 else np.asarray(x, np.float32), int(s))
        log.info("read %d LFW embeddings from %s", len(table), cache)
    missing = [p for p in wanted if p not in table]
    if not missing:
        return table
    import torch

    from facesearch.lfw import embed_images
    from facesearch.pipeline import FacePipeline

    torch.set_num_threads(args.threads)
    log.info("embedding %d LFW images (%d threads)...", len(missing), args.threads)
    t0 = time.perf_counter()
    pipe = FacePipeline()
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if done % 640 < n:
            log.info(
                "  %d / %d images, %.1f img/s",
                done,
                len(missing),
                done / (time.perf_counter() - t0),
            )

    emb = embed_images(pipe, [images / p for p in missing], progress=progress)
    fallback = {str(p) for p in emb.fallback}
    none = {str(p) for p in emb.missing}
    for p, x in zip(missing, emb.xb, strict=True):
        full = str(images / p)
        status = 2 if full in none else 1 if full in fallback else 0
        table[p] = (None if status == 2 else x, status)
    keys = sorted(table)
    dim = next(x for x, _ in table.values() if x is not None).shape[0]
    np.savez(
        cache,
        paths=np.array(keys),
        embeddings=np.stack(
            [table[k][0] if table[k][0] is not None else np.zeros(dim, np.float32) for k in keys]
        ),
        status=np.array([table[k][1] for k in keys], dtype=np.int8),
    )
    log.info("saved %d LFW embeddings to %s (%.0f s)", len(keys), cache, time.perf_counter() - t0)
    return table


def bench_lfw(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from facesearch import store as st
    from facesearch.collection import Collection
    from facesearch.identify import identify_vectors
    from facesearch.types import Detection, Face

    images = args.shared / "data" / "lfw" / "images"
    people = lfw_people(images)
    multi = {p: v for p, v in people.items() if len(v) >= 2}
    singles = sorted(v[0] for v in people.values() if len(v) == 1)
    rng = np.random.default_rng(0)
    n_unknown = min(args.unknown_sample, len(singles))
    unknown = sorted(rng.choice(singles, n_unknown, replace=False).tolist()) if n_unknown else []
    if args.quick:
        names = sorted(multi)[:: max(1, len(multi) // 60)]
        multi = {p: multi[p] for p in names}
        unknown = unknown[:40]
    wanted = sorted({p for v in multi.values() for p in v} | set(unknown))
    table = lfw_embeddings(args, images, wanted)
    gallery: dict[str, tuple[str, np.ndarray]] = {}
    probes: list[tuple[str, str]] = []  # (path, person)
    no_gallery = 0
    for person, paths in sorted(multi.items()):
        first = next((p for p in paths if table[p][0] is not None), None)
        if first is None:
            no_gallery += 1
            continue
        gallery[person] = (first, table[first][0])  # type: ignore[assignment]
        probes += [(p, person) for p in paths if p != first]
    probe_ok = [(p, who) for p, who in probes if table[p][0] is not None]
    probe_none = len(probes) - len(probe_ok)
    tau = _tau()
    det = Detection((0.0, 0.0, 1.0, 1.0), ((0.0, 0.0),) * 5, 1.0)  # type: ignore[arg-type]
    with Collection.open(work / "lfw-home", "gallery", create=True) as col:
        col.add_photos(
            [
                st.NewPhoto(
                    path=path,
                    content_hash=f"{i:064x}",
                    size=0,
                    mtime=0.0,
                    faces=(Face(det, x, "sface"),),
                    labels=(person,),
                    label_source=st.LabelSource.MANUAL,
                )
                for i, (person, (path, x)) in enumerate(sorted(gallery.items()))
            ]
        )
        xq = np.stack([table[p][0] for p, _ in probe_ok]).astype(np.float32)
        t0 = time.perf_counter()
        res = identify_vectors(col, xq, k=5, threshold=tau)
        search_s = time.perf_counter() - t0
        xu = np.stack([table[p][0] for p in unknown if table[p][0] is not None]).astype(np.float32)
        res_u = identify_vectors(col, xu, k=1, threshold=tau) if len(xu) else []
    truth = [who for _, who in probe_ok]
    top1 = sum(1 for r, t in zip(res, truth, strict=True) if r.matches and r.matches[0].person == t)
    top5 = sum(1 for r, t in zip(res, truth, strict=True) if t in {m.person for m in r.matches})
    ident = sum(1 for r, t in zip(res, truth, strict=True) if r.person == t)
    wrong = sum(1 for r, t in zip(res, truth, strict=True) if r.person not in (None, t))
    n_all = len(probes)  # probes without a face count as misses
    status = Counter(table[p][1] for p in wanted)
    # every gallery face is labelled: r.distance is the distance to the nearest gallery face
    d_known = np.array([r.distance if r.distance is not None else 4.0 for r in res])
    right = np.array(
        [bool(r.matches) and r.matches[0].person == t for r, t in zip(res, truth, strict=True)]
    )
    d_unknown = np.array([r.distance if r.distance is not None else 4.0 for r in res_u])
    sweep = [
        {
            "tau": t,
            "identified": float(np.sum(right & (d_known < t)) / n_all),
            "wrong_person": float(np.sum(~right & (d_known < t)) / n_all),
            "open_set_unknown": float(np.mean(d_unknown >= t)) if len(d_unknown) else None,
        }
        for t in _sweep_taus()
    ]
    return {
        "gallery": len(gallery),
        "people_without_gallery_face": no_gallery,
        "probes": n_all,
        "probes_without_face": probe_none,
        "fallback_detections": int(status.get(1, 0)),
        "tau": tau,
        "rank1": top1 / n_all,
        "rank5": top5 / n_all,
        "identified_at_tau": ident / n_all,
        "wrong_person_at_tau": wrong / n_all,
        "unknown_at_tau": 1 - (ident + wrong) / n_all,
        "search_ms_per_probe": 1e3 * search_s / max(len(probe_ok), 1),
        "open_set_probes": len(xu),
        "open_set_unknown": (sum(1 for r in res_u if r.person is None) / len(xu))
        if len(xu)
        else None,
        "embeddings": str(args.lfw_embeddings.name),
        "sweep": sweep,
    }


# ------------------------------------------------------------------------------ part: throughput
def bench_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    images = args.shared / "data" / "lfw" / "images"
    n = 100 if args.quick else args.throughput_images
    rel = sorted(p.relative_to(images).as_posix() for p in images.glob("*/*.jpg"))[:n]
    src = work / "lfw-copy"
    for r in rel:
        (src / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / r, src / r)
    report = _index([src], work / "throughput-home", args)
    secs, wall = report["seconds"], report["wall_seconds"]
    return {
        "images": n,
        "photos": report["files"],
        "faces": report["faces_added"],
        "no_face": report["no_face"],
        "failed": report["failed"],
        "run_seconds": secs,
        "wall_seconds": wall,
        "photos_per_s": report["files"] / secs,
        "faces_per_s": report["faces_added"] / secs,
        "photos_per_s_wall": report["files"] / wall,
        "load_average": report["load_average"],
        "threads": args.threads,
    }


# ------------------------------------------------------------------------------ output
def render(res: dict[str, Any]) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    lines = ["# 1:K identification and indexing throughput", ""]
    meta = res.get("meta", {})
    lines += [f"Machine: {meta.get('cpu', '?')}, {meta.get('cores', '?')} cores (shared).", ""]
    if "photos" in res:
        p = res["photos"]
        ix = p["index"]
        lines += [
            "## `photos/`: leave-one-out",
            "",
            f"Command: `{p['command']}`",
            "",
            f"`facesearch index photos --labels folders`: {ix['files']} files, {ix['new']} new, "
            f"{ix['failed']} failed, {ix['no_face']} without a face, {ix['faces_added']} faces, "
            f"{ix['labels_given']} labels given, {ix['labels_skipped']} skipped (no clearly "
            f"dominant face); {ix['seconds']:.1f} s in the run, {ix['wall_seconds']:.1f} s wall "
            f"(load average {ix['load_average']:.1f}).",
            "",
            f"tau = {p['tau']}, the 1:K default of `facesearch query` "
            "(`DEFAULT_IDENTIFY_THRESHOLD`; the verdict is the nearest labelled face's person "
            f"when d < tau). {p['people']} people, {p['labelled_faces']} labelled faces.",
            "",
            "| measure | queries | result |",
            "|---|---|---|",
            f"| rank-1 (nearest labelled face is the right person; people with 2+ photos) | "
            f"{p['closed_set_queries']} | **{pct(p['rank1'])}** |",
            f"| identified at tau (verdict = right person) | {p['closed_set_queries']} | "
            f"{pct(p['identified_at_tau'])} |",
            f"| not enrolled -> unknown: people with a single photo, left out | "
            f"{p['single_photo_people']} | {pct(p['single_photo_unknown'])} |",
            f"| not enrolled -> unknown: every photo with all of its person's faces held out | "
            f"{p['held_out_queries']} | **{pct(p['held_out_unknown'])}** |",
            "",
            "Threshold sweep (1.274: the 1:1 verification tau; 1.147: the 1:K default):",
            "",
            "| tau | identified (leave-one-out) | held-out people -> unknown |",
            "|---|---|---|",
            *[
                f"| {s['tau']} | {pct(s['identified'])} | {pct(s['held_out_unknown'])} |"
                for s in p.get("sweep", [])
            ],
            "",
        ]
        if p["errors"]:
            lines += [
                "Leave-one-out errors (photo, person, verdict, d to nearest labelled face):",
                "",
            ]
            lines += [
                f"- `{e['photo']}`: {e['person']} -> {e['verdict'] or 'unknown'} "
                f"(d {e['distance']})"
                for e in p["errors"]
            ]
            lines.append("")
        if p["false_accepts"]:
            lines += ["Held-out people taken for someone else:", ""]
            lines += [
                f"- `{e['photo']}` ({e['person']}) -> {e['taken_for']} (d {e['distance']})"
                for e in p["false_accepts"]
            ]
            lines.append("")
    if "lfw" in res:
        r = res["lfw"]
        lines += [
            "## LFW 1:K",
            "",
            f"Command: `{r['command']}`",
            "",
            f"Gallery: the first image of each of the {r['gallery']} people with 2+ images "
            f"({r['people_without_gallery_face']} people had no image with a face); probes: "
            f"their other {r['probes']} images ({r['probes_without_face']} without a face, "
            f"counted as misses; {r['fallback_detections']} images needed the low-threshold "
            f"fallback). tau = {r['tau']} (the 1:K default). Embeddings: `{r['embeddings']}`.",
            "",
            "| measure | result |",
            "|---|---|",
            f"| rank-1 | **{pct(r['rank1'])}** |",
            f"| rank-5 | **{pct(r['rank5'])}** |",
            f"| identified at tau | {pct(r['identified_at_tau'])} |",
            f"| wrong person at tau | {pct(r['wrong_person_at_tau'])} |",
            f"| unknown at tau (a gallery person not recognised) | {pct(r['unknown_at_tau'])} |",
            f"| open set: {r['open_set_probes']} images of people with one LFW image -> unknown "
            f"| {pct(r['open_set_unknown'])} |",
            f"| search time per probe (exact, {r['gallery']} faces) | "
            f"{r['search_ms_per_probe']:.2f} ms |",
            "",
            "The verdict's threshold trades recognising gallery people against rejecting "
            "strangers (with K gallery people a stranger has K chances to fall within tau; "
            "1.274 is the 1:1 verification tau, 1.147 the 1:K default):",
            "",
            "| tau | identified | wrong person | strangers -> unknown |",
            "|---|---|---|---|",
            *[
                f"| {s['tau']} | {pct(s['identified'])} | {pct(s['wrong_person'])} | "
                f"{pct(s['open_set_unknown'])} |"
                for s in r.get("sweep", [])
            ],
            "",
        ]
    if "throughput" in res:
        t = res["throughput"]
        lines += [
            "## `facesearch index` throughput (LFW)",
            "",
            f"Command: `{t['command']}`",
            "",
            f"The first {t['images']} LFW images (250x250 JPEG, sorted), copied to a temporary "
            f"folder, into a fresh collection; torch on {t['threads']} thread(s) "
            f"(`OMP_NUM_THREADS`), load average at start {t['load_average']:.1f} on a shared "
            "machine.",
            "",
            "| photos | faces | no face | run s | photos/s | faces/s | wall s | wall photos/s |",
            "|---|---|---|---|---|---|---|---|",
            f"| {t['photos']} | {t['faces']} | {t['no_face']} | {t['run_seconds']:.1f} | "
            f"**{t['photos_per_s']:.1f}** | **{t['faces_per_s']:.1f}** | {t['wall_seconds']:.1f} "
            f"| {t['photos_per_s_wall']:.1f} |",
            "",
            "*run s*: the command's own timer (walk, read, hash, decode, detect, embed, store); "
            "*wall*: the whole process (interpreter start-up and model loading included).",
            "",
        ]
    return "\n".join(lines)


def _public(arg: str) -> str:
    """A command-line argument as recorded: absolute paths reduced to their file name."""
    return f"DIR/{Path(arg).name}" if os.path.isabs(arg) else arg


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared folder")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads")
    ap.add_argument(
        "--lfw-embeddings",
        type=Path,
        default=Path(tempfile.gettempdir()) / "lfw_embeddings.npz",
        help="LFW embeddings cache (.npz: paths, embeddings, status)",
    )
    ap.add_argument("--unknown-sample", type=int, default=1000, help="LFW open-set probes")
    ap.add_argument("--throughput-images", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="small smoke run, not recorded")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for p in parts:
        if p not in PARTS:
            raise SystemExit(f"unknown part {p!r}: use {', '.join(PARTS)}")
    command = "python bench/identify.py " + shlex.join(
        _public(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    out_json = RESULTS / "identify.json"
    results: dict[str, Any] = {}
    if not args.quick and out_json.exists():
        results = json.loads(out_json.read_text())
    results["meta"] = _machine()
    funcs = {"photos": bench_photos, "lfw": bench_lfw, "throughput": bench_throughput}
    with tempfile.TemporaryDirectory(prefix="facesearch-identify-") as tmp:
        for part in parts:
            log.info("part %s", part)
            t0 = time.perf_counter()
            res = funcs[part](args, Path(tmp))
            res["command"] = command.strip()
            res["bench_seconds"] = round(time.perf_counter() - t0, 1)
            results[part] = res
            print(json.dumps({part: res}, indent=1, default=str))
    if args.quick:
        print(render(results))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    for path, text in (
        (out_json, json.dumps(results, indent=1, default=str) + "\n"),
        (RESULTS / "identify.md", render(results) + "\n"),
    ):
        tmp_path = path.with_name(path.name + ".tmp")
        tmp_path.write_text(text)
        os.replace(tmp_path, path)
    print(render(results))


if __name__ == "__main__":
    main()
