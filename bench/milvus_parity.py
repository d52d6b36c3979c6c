"""Milvus (milvus-lite, FLAT) against FAISS flat on the shared labelled photos.

Indexes ``photos/`` with ``--labels folders`` into a new collection (exact ``flat`` index), copies
its vectors from SQL into a milvus-lite folder (:meth:`MilvusVectors.rebuild`), then for every
stored face compares the two stores: the 10 nearest faces (ids equal, distances within float32
rounding) and the nearest *labelled* face other than itself (``restrict_to``, as identification
widens to), whose person is the leave-one-out verdict. Then deletes a tenth of the faces from
both, reopens the Milvus folder and checks that none of them is found.

    python bench/milvus_parity.py          # records bench/results/milvus_parity.md
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import DEFAULT_SHARED, _atomic_write  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    from facesearch import store as st
    from facesearch.collection import Collection
    from facesearch.indexer import IndexSettings, index_paths
    from facesearch.milvus_vectors import MilvusVectors
    from facesearch.pipeline import FacePipeline, PipelineConfig

    photos = DEFAULT_SHARED / "data" / "photos"
    with tempfile.TemporaryDirectory(prefix="milvus-parity.") as tmp:
        home = Path(tmp)
        with Collection.open(home, "parity", create=True) as col:
            index_paths(
                col,
                FacePipeline(PipelineConfig(engine="numpy")),
                [photos],
                IndexSettings(labels="folders", index_type="flat"),
            )
            with col.session() as s:
                ids, xb = st.load_all_embeddings(s)
                labelled = st.labelled_face_ids(s)
                person = {f: r.person for f, r in st.faces_by_ids(s, ids).items()}
            flat = col.vectors
            assert flat.kind == "flat"
            folder = str(home / "vectors.milvus.db")
            mv = MilvusVectors.open(folder, dim=xb.shape[1], model=flat.model)
            mv.rebuild([(ids, xb)], generation=flat.generation)
            t = time.monotonic()
            Dm, Im = mv.search(xb, 10)
            milvus_s = time.monotonic() - t
            Df, If = flat.search(xb, 10)
            Dm2, Im2 = mv.search(xb, 2, restrict_to=labelled)
            Df2, If2 = flat.search(xb, 2, restrict_to=labelled)

            def verdicts(D: np.ndarray, I: np.ndarray) -> list[str | None]:  # noqa: E741
                out = []
                for q, fid in enumerate(ids):
                    row = [(d, i) for d, i in zip(D[q], I[q], strict=True) if i not in (fid, -1)]
                    out.append(person[int(row[0][1])] if row else None)
                return out

            same_ids = bool((Im == If).all())
            same_restricted = bool((Im2 == If2).all())
            d_max = float(np.abs(Dm - Df).max())
            vm, vf = verdicts(Dm2, Im2), verdicts(Df2, If2)
            truth = [person[int(f)] for f in ids]
            right = sum(1 for v, t_ in zip(vf, truth, strict=True) if t_ and v == t_)
            gone = ids[::10]
            col_removed = flat.remove(gone)
            mv_removed = mv.remove(gone)
            mv.generation = flat.generation + 1
            mv.close()
            with MilvusVectors.open(folder, dim=xb.shape[1]) as again:
                _, Ia = again.search(xb, 10)
                back = int(np.isin(Ia, gone).sum()) + int(np.isin(again.ids(), gone).sum())
                count_after = again.count
    res = {
        "command": "python bench/milvus_parity.py",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "faces": len(ids),
        "labelled": len(labelled),
        "top10_ids_equal": same_ids,
        "restricted_ids_equal": same_restricted,
        "max_distance_difference": d_max,
        "verdicts_equal": vm == vf,
        "leave_one_out_rank1": right / max(1, sum(1 for t_ in truth if t_)),
        "milvus_search_all_s": milvus_s,
        "deleted": {
            "faiss": col_removed,
            "milvus": mv_removed,
            "found_after_restart": back,
            "count_after_restart": count_after,
        },
    }
    print(json.dumps(res, indent=1))
    lines = [
        "# Milvus (milvus-lite, FLAT) against FAISS flat on the shared labelled photos",
        "",
        f"Command: `{res['command']}`  ",
        f"Date: {res['date']}. `photos/` indexed with `--labels folders`: {res['faces']} faces, "
        f"{res['labelled']} labelled; every face searched in both stores.",
        "",
        f"- 10 nearest faces of every face: ids equal: {same_ids}; largest distance difference "
        f"{d_max:.2g}",
        f"- nearest labelled faces (`restrict_to`): ids equal: {same_restricted}",
        f"- leave-one-out identification verdicts equal: {vm == vf} (rank-1 "
        f"{res['leave_one_out_rank1']:.3f} in both)",
        f"- {mv_removed} faces deleted (FAISS removed {col_removed}); after closing and reopening "
        f"the Milvus folder: {back} of them found, {count_after} vectors held",
        f"- Milvus search of all {res['faces']} faces (k = 10): {milvus_s:.2f} s",
    ]
    RESULTS.mkdir(exist_ok=True)
    _atomic_write(RESULTS / "milvus_parity.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
