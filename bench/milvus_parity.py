"""A collection on Milvus (milvus-lite, FLAT) against the same collection on FAISS flat, on the
shared labelled photos.

Indexes ``photos/`` with ``--labels folders`` into a collection (exact ``flat`` FAISS index),
copies the collection folder and moves the copy's vectors to milvus-lite
(``facesearch index --vectors milvus-lite``: built from SQL). Then for every stored face, on
both: identification as ``facesearch query`` does it (``identify_vectors``, the face itself
left out: the leave-one-out verdict, its distance and the 5 nearest faces) and the 10 nearest
faces (``Collection.search``). Then a process deletes a tenth of the faces from the Milvus
collection and is killed (SIGKILL, no clean exit); the collection is opened again and searched
for them.

    python bench/milvus_parity.py          # records bench/results/milvus_parity.md
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import DEFAULT_SHARED, _atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from facesearch import api
    from facesearch import store as st
    from facesearch.collection import LITE_NAME, Collection
    from facesearch.distance import shipped_threshold
    from facesearch.identify import identify_vectors
    from facesearch.milvus_vectors import MilvusVectors
    from facesearch.pipeline import Models, PipelineConfig

    logging.basicConfig(level=logging.WARNING)
    photos = DEFAULT_SHARED / "data" / "photos"
    tau = shipped_threshold("identify")
    with tempfile.TemporaryDirectory(prefix="milvus-parity.") as tmp:
        home = Path(tmp)
        with Collection.open(home, "flat", create=True) as col:
            api.index_paths(
                col,
                [photos],
                models=Models(PipelineConfig(engine="numpy")),
                labels="folders",
                index_type="flat",
            )
        shutil.copytree(home / "flat", home / "milvus")
        t = time.monotonic()
        with Collection.open(home, "milvus") as col:
            col.set_vectors("milvus-lite")
        move_s = time.monotonic() - t
        with Collection.open(home, "flat") as flat, Collection.open(home, "milvus") as milvus:
            with flat.session() as s:
                ids, xb = st.load_all_embeddings(s)
                labelled = len(st.labelled_face_ids(s))
                person = {f: r.person for f, r in st.faces_by_ids(s, ids).items()}
            assert flat.vectors.kind == "flat"  # type: ignore[attr-defined]
            own = [{int(i)} for i in ids]
            timing = {}
            results = {}
            for name, col in (("flat", flat), ("milvus", milvus)):
                t = time.monotonic()
                results[name] = (
                    identify_vectors(col, xb, k=5, threshold=tau, exclude=own),
                    col.search(xb, 10),
                )
                timing[name] = time.monotonic() - t
        (idf, top_f), (idm, top_m) = results["flat"], results["milvus"]
        verdicts_equal = [r.person for r in idm] == [r.person for r in idf]
        matches_equal = [[m.face_id for m in r.matches] for r in idm] == [
            [m.face_id for m in r.matches] for r in idf
        ]
        top_equal = [[m.face_id for m in row] for row in top_m] == [
            [m.face_id for m in row] for row in top_f
        ]
        d_max = max(
            abs(a.distance - b.distance)
            for ra, rb in zip(top_m, top_f, strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        truth = [person[int(f)] for f in ids]
        known = [(r.person, t_) for r, t_ in zip(idf, truth, strict=True) if t_]
        rank1 = sum(1 for v, t_ in known if v == t_) / max(1, len(known))
        gone = [int(i) for i in ids[::10]]
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
                    import os, signal
                    from facesearch.collection import Collection
                    col = Collection.open({str(home)!r}, "milvus")
                    col.remove_faces({gone!r})
                    os.kill(os.getpid(), signal.SIGKILL)
                """),
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        with MilvusVectors.open(home / "milvus" / LITE_NAME) as mv:  # Milvus itself, unrepaired
            in_milvus = len(set(mv.ids().tolist()) & set(gone))
        with Collection.open(home, "milvus") as col:
            rows = col.search(xb, 10)
            back = sum(1 for row in rows for m in row if m.face_id in set(gone))
            held = set(col.vectors.ids().tolist())
            consistent = bool(col.check()["consistent"])
    res = {
        "command": "python bench/milvus_parity.py",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "faces": len(ids),
        "labelled": labelled,
        "identify_verdicts_equal": verdicts_equal,
        "identify_matches_equal": matches_equal,
        "top10_ids_equal": top_equal,
        "max_distance_difference": d_max,
        "leave_one_out_rank1": rank1,
        "seconds": {"move_to_milvus": move_s, **timing},
        "deleted": {
            "faces": len(gone),
            "found_after_kill": back,
            "in_milvus_after_kill": in_milvus,
            "held_after_reopen": len(held & set(gone)),
            "consistent": consistent,
        },
    }
    print(json.dumps(res, indent=1))
    lines = [
        "# A collection on Milvus (milvus-lite, FLAT) against FAISS flat, shared labelled photos",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}. `photos/` indexed with `--labels folders`: {res['faces']} faces, "
        f"{labelled} labelled; the collection copied and moved to milvus-lite "
        f"({move_s:.1f} s, built from SQL); every face queried on both.",
        "",
        f"- identification (leave-one-out, k = 5, tau {tau:.3f}): verdicts equal: "
        f"{verdicts_equal}; nearest faces equal: {matches_equal} (rank-1 {rank1:.3f} on both)",
        f"- 10 nearest faces of every face: ids equal: {top_equal}; largest distance difference "
        f"{d_max:.2g}",
        f"- all {res['faces']} faces identified and searched: FAISS {timing['flat']:.2f} s, "
        f"milvus-lite {timing['milvus']:.2f} s",
        f"- {len(gone)} faces deleted by a process then killed (SIGKILL): found after: {back}, "
        f"held by the Milvus folder itself: {in_milvus}; SQL and Milvus consistent: "
        f"{consistent}",
    ]
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(RESULTS / "milvus_parity.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
