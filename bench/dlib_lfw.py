"""LFW accuracy of dlib's ResNet port and of the fused SFace + dlib distance, alignment study.

Every image named by LFW View 1 (``pairsDevTrain.txt``) and View 2 (``pairs.txt``), and every
image of the people of ``pairsDevTrain.txt`` (View 1's training people), is embedded once, each
of its central face (YuNet through facesearch, the face nearest the image centre,
the low-threshold fallback of :meth:`FacePipeline.face_with_fallback` when none is found):

* ``sface``: facesearch's SFace on the numpy engine (what ``facesearch index`` runs);
* ``dlib_template``: dlib's ResNet (facesearch's port) on the chip that
  :func:`facesearch.align.dlib_chips` makes from YuNet's five landmarks;
* ``dlib_template_flip``: the mean of the raw descriptors of that chip and of its mirror image;
* ``dlib_sp5``: the same network on ``dlib.get_face_chip(rgb, shape, 150, 0.25)``, ``shape``
  from dlib's own 5-point shape predictor (dlib-bin, an oracle here) run on YuNet's box mapped
  onto a dlib-style box (the map printed by ``scripts/fit_dlib_template.py``, fitted on
  ``photos/`` and ``groups/``);
* ``dlib_hog_sp5``: dlib's own pipeline end to end (an oracle: what the published dlib
  figures use): dlib's HOG detector (upsampled once; the box nearest the image centre), its
  5-point predictor and ``get_face_chip``; where HOG finds no face, the ``dlib_sp5`` chip.

Then, on the distances: each model alone, and the fused vector
``[f_sface, sqrt(w) * f_dlib]`` (raw or unit dlib vectors; the concatenation divided by its
norm, so that it is a unit vector like every embedding of facesearch). ``w`` and the variant
are chosen on View 1 only: the cross-validated accuracy on ``pairsDevTrain`` (split at random
into 10 folds with a fixed seed), ties (as many pairs right) broken by the share of
same-person pairs accepted at FAR = 1e-4 over all pairs of the images of View 1's training
people (the operating point of 1:K identification, where a search system needs the model).
View 2 is only measured. The un-normalised sum ``d_sface + w * |f_dlib(a) - f_dlib(b)|^2``
(raw dlib vectors) is reported beside it.

Usage (needs the bench extra)::

    python bench/dlib_lfw.py --cache dlib_lfw_embeddings.npz     # embeds ~11k images, ~15 min

The cache keeps each image's vectors under its name; images it lacks are embedded and added.

Results: ``bench/results/dlib_lfw.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facesearch.evaluate import lfw_image_path, read_pairs, verification_report  # noqa: E402

#: YuNet box -> dlib HOG-style box (centre shift and size ratios; scripts/fit_dlib_template.py)
BOX_MAP = {"dx_over_w": -0.0008, "dy_over_h": 0.0487, "w_ratio": 1.0819, "h_ratio": 0.8235}
WEIGHTS = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0])

_state: dict[str, object] = {}


def _init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import dlib
    import face_recognition_models

    from facesearch.models.dlib_npengine import NumpyDlibEmbedder
    from facesearch.models.npengine import NumpyDetector, NumpyEmbedder

    models = Path(face_recognition_models.__file__).parent / "models"
    _state.update(
        detector=NumpyDetector(),
        sface=NumpyEmbedder(),
        dlib=NumpyDlibEmbedder(),
        sp5=dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
        hog=dlib.get_frontal_face_detector(),
    )


def _central(detector: object, image: np.ndarray) -> object | None:
    from dataclasses import replace

    dets = detector.detect(image)  # type: ignore[attr-defined]
    if not dets:
        low = detector.with_config(replace(detector.config, score_threshold=0.5))  # type: ignore[attr-defined]
        dets = low.detect(image)
    if not dets:
        return None
    h, w = image.shape[:2]
    return min(dets, key=lambda d: (d.center[0] - w / 2) ** 2 + (d.center[1] - h / 2) ** 2)


def _embed(paths: list[str]) -> tuple[np.ndarray, ...]:
    import dlib

    from facesearch.align import align_faces, dlib_chips
    from facesearch.image import load_image

    n = len(paths)
    sf, dt, dflip, dp, dh = (np.zeros((n, 128), np.float32) for _ in range(5))
    found = np.zeros(n, bool)
    crops, chips_t, chips_p, chips_h, rows = [], [], [], [], []
    for i, p in enumerate(paths):
        rgb = load_image(p)
        det = _central(_state["detector"], rgb)
        if det is None:
            continue
        lm = det.landmarks_array()  # type: ignore[attr-defined]
        crops.append(align_faces(rgb, [lm])[0])
        chips_t.append(dlib_chips(rgb, [lm])[0])
        x1, y1, x2, y2 = det.box  # type: ignore[attr-defined]
        w, h = x2 - x1, y2 - y1
        cx = (x1 + x2) / 2 + BOX_MAP["dx_over_w"] * w
        cy = (y1 + y2) / 2 + BOX_MAP["dy_over_h"] * h
        bw, bh = BOX_MAP["w_ratio"] * w, BOX_MAP["h_ratio"] * h
        left, top = round(cx - bw / 2), round(cy - bh / 2)
        rect = dlib.rectangle(left, top, left + round(bw) - 1, top + round(bh) - 1)
        shape = _state["sp5"](rgb, rect)  # type: ignore[operator]
        chips_p.append(np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25)))
        hog = _state["hog"](rgb, 1)  # type: ignore[operator]
        if len(hog):
            ih, iw = rgb.shape[:2]
            r = min(
                hog,
                key=lambda r: (
                    ((r.left() + r.right()) / 2 - iw / 2) ** 2
                    + ((r.top() + r.bottom()) / 2 - ih / 2) ** 2
                ),
            )
            shape = _state["sp5"](rgb, r)  # type: ignore[operator]
            chips_h.append(np.asarray(dlib.get_face_chip(rgb, shape, size=150, padding=0.25)))
        else:
            chips_h.append(chips_p[-1])
        rows.append(i)
        found[i] = True
    if rows:
        sf[rows] = _state["sface"].embed(np.stack(crops))  # type: ignore[attr-defined]
        ct = np.stack(chips_t)
        dt[rows] = _state["dlib"].raw(ct)  # type: ignore[attr-defined]
        mirrored = _state["dlib"].raw(np.ascontiguousarray(ct[:, :, ::-1]))  # type: ignore[attr-defined]
        dflip[rows] = (dt[rows] + mirrored) / 2
        dp[rows] = _state["dlib"].raw(np.stack(chips_p))  # type: ignore[attr-defined]
        dh[rows] = _state["dlib"].raw(np.stack(chips_h))  # type: ignore[attr-defined]
    return sf, dt, dflip, dp, dh, found


def embed_all(paths: list[str], workers: int) -> dict[str, np.ndarray]:
    chunks = [paths[i : i + 32] for i in range(0, len(paths), 32)]
    parts = []
    t0 = time.time()
    with ProcessPoolExecutor(workers, initializer=_init) as pool:
        for k, part in enumerate(pool.map(_embed, chunks)):
            parts.append(part)
            if k % 20 == 0:
                print(
                    f"{(k + 1) * 32}/{len(paths)} images, {time.time() - t0:.0f} s", file=sys.stderr
                )
    return {
        "sface": np.concatenate([p[0] for p in parts]),
        "dlib_template": np.concatenate([p[1] for p in parts]),
        "dlib_template_flip": np.concatenate([p[2] for p in parts]),
        "dlib_sp5": np.concatenate([p[3] for p in parts]),
        "dlib_hog_sp5": np.concatenate([p[4] for p in parts]),
        "found": np.concatenate([p[5] for p in parts]),
    }


VARIANTS = ("sface", "dlib_template", "dlib_template_flip", "dlib_sp5", "dlib_hog_sp5")


def cached_embeddings(
    cache: Path | None, keys: list[tuple[str, int]], images: Path, workers: int
) -> dict[str, np.ndarray]:
    """The vectors of ``keys`` (``(name, number)`` of LFW images): from ``cache`` when it has
    them, the others embedded (and the cache rewritten with all)."""
    names = np.array([f"{n}/{i}" for n, i in keys])
    have: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            have = {k: z[k] for k in z.files}
    known = {str(k): j for j, k in enumerate(have.get("keys", []))}
    missing = [k for k, name in zip(keys, names, strict=True) if name not in known]
    if missing:
        new = embed_all([str(lfw_image_path(images, n, i)) for n, i in missing], workers)
        new_names = np.array([f"{n}/{i}" for n, i in missing])
        if known:
            old_names = np.asarray(have["keys"])
            have = {k: np.concatenate([have[k], new[k]]) for k in (*VARIANTS, "found")}
            have["keys"] = np.concatenate([old_names, new_names])
        else:
            have = {**new, "keys": new_names}
        known = {str(k): j for j, k in enumerate(have["keys"])}
        if cache is not None:
            np.savez(cache, **have)
    rows = np.array([known[name] for name in names])
    return {k: have[k][rows] for k in (*VARIANTS, "found")}


def tar_at_far(vecs: np.ndarray, people: np.ndarray, far: float) -> tuple[float, float]:
    """``(tau, share of same-person pairs with d < tau)`` over all pairs of the rows of ``vecs``
    ``(N, D)`` unit vectors, tau the largest with at most ``far`` of the different-person pairs
    below it (exact: the k + 1 smallest impostor distances are kept)."""
    n = len(vecs)
    _, sizes = np.unique(people, return_counts=True)
    impostors = n * (n - 1) // 2 - int((sizes * (sizes - 1) // 2).sum())
    k = int(far * impostors)
    low: np.ndarray = np.zeros(0, np.float32)
    genuine: list[np.ndarray] = []
    for start in range(0, n, 512):
        a = vecs[start : start + 512]
        d = 2.0 - 2.0 * (a @ vecs.T)  # (b, n)
        idx = np.arange(start, start + len(a))
        upper = np.arange(n)[None, :] > idx[:, None]
        same = people[idx][:, None] == people[None, :]
        imp = d[upper & ~same]
        if len(imp) > k + 1:
            imp = np.partition(imp, k)[: k + 1]
        low = np.concatenate([low, imp])
        if len(low) > k + 1:
            low = np.partition(low, k)[: k + 1]
        genuine.append(d[upper & same])
    tau = float(np.sort(low)[k])
    return tau, float(np.mean(np.concatenate(genuine) < tau))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fused(sface: np.ndarray, dl: np.ndarray, w: float, raw: bool) -> np.ndarray:
    """``[f_sface, sqrt(w) f_dlib] / norm``: ``(N, 256)`` unit vectors."""
    return unit(np.concatenate([sface, np.sqrt(w) * (dl if raw else unit(dl))], axis=1))


def score(
    vecs: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    found: np.ndarray,
) -> dict[str, object]:
    d = np.sum((vecs[ia] - vecs[ib]) ** 2, axis=1)
    d[~(found[ia] & found[ib])] = 4.0  # no face: "different"
    return verification_report(d, same, folds, default_threshold=float(np.median(d)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cache", type=Path, default=None, help="embeddings (.npz) to reuse")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    lfw = args.shared / "data" / "lfw"
    view1 = read_pairs(lfw / "pairsDevTrain.txt")
    view2 = read_pairs(lfw / "pairs.txt")
    dev_people = sorted({x for p in view1 for x in (p.a[0], p.b[0])})
    dev_images = {
        (name, int(f.stem.rsplit("_", 1)[1]))
        for name in dev_people
        for f in (lfw / "images" / name).glob(f"{name}_*.jpg")
    }
    keys = sorted({k for p in view1 + view2 for k in (p.a, p.b)} | dev_images)
    emb = cached_embeddings(args.cache, keys, lfw / "images", args.workers)
    row = {k: i for i, k in enumerate(keys)}
    found = emb["found"]
    dev_rows = np.array([row[k] for k in sorted(dev_images) if found[row[k]]])
    dev_people_of = np.array([keys[r][0] for r in dev_rows])

    def pairs_arrays(pairs: list) -> tuple[np.ndarray, ...]:
        ia = np.array([row[p.a] for p in pairs])
        ib = np.array([row[p.b] for p in pairs])
        return ia, ib, np.array([p.same for p in pairs]), np.array([p.fold for p in pairs])

    v1, v2 = pairs_arrays(view1), pairs_arrays(view2)
    v1 = (*v1[:3], np.random.default_rng(0).permutation(len(view1)) % 10)  # 10 random folds
    keep = (
        "accuracy",
        "accuracy_std",
        "val_at_far_1e-3",
        "val_std",
        "auc",
        "fitted_accuracy",
        "threshold",
    )

    def brief(r: dict[str, object]) -> dict[str, object]:
        return {k: r[k] for k in keep if k in r}

    results: dict[str, object] = {
        "command": "python "
        + " ".join(
            shlex.quote(a)
            for a in [Path(__file__).relative_to(REPO).as_posix(), *(argv or sys.argv[1:])]
        ),
        "images": len(keys),
        "view1_people": len(dev_people),
        "view1_people_images": len(dev_rows),
        "no_face_images": int((~found).sum()),
        "view2_pairs": len(view2),
        "view1_pairs": len(view1),
    }
    alone = {}
    aligns = ("dlib_template", "dlib_template_flip", "dlib_sp5", "dlib_hog_sp5")
    for name in ("sface", *aligns):
        vecs = unit(emb[name])
        alone[name] = {
            "view1": brief(score(vecs, *v1, found)),
            "view1_tar_at_far_1e-4": tar_at_far(vecs[dev_rows], dev_people_of, 1e-4)[1],
            "view2": brief(score(vecs, *v2, found)),
        }
    results["alone"] = alone
    sweep = []
    for align in aligns:
        for raw in (True, False):
            for w in WEIGHTS:
                vecs = fused(emb["sface"], emb[align], float(w), raw)
                r1 = score(vecs, *v1, found)
                sweep.append(
                    {
                        "align": align,
                        "dlib": "raw" if raw else "unit",
                        "w": float(w),
                        "view1_accuracy": r1["accuracy"],
                        "view1_auc": r1["auc"],
                        "view1_val": r1["val_at_far_1e-3"],
                        "view1_tar_at_far_1e-4": tar_at_far(vecs[dev_rows], dev_people_of, 1e-4)[1],
                    }
                )
    results["view1_sweep"] = sweep
    chosen = {}
    for align in aligns:
        rows = [s for s in sweep if s["align"] == align]
        one_pair = 1.0 / len(view1)
        top = max(s["view1_accuracy"] for s in rows)
        tied = [s for s in rows if s["view1_accuracy"] > top - one_pair / 2]
        best = max(tied, key=lambda s: s["view1_tar_at_far_1e-4"])
        vecs = fused(emb["sface"], emb[align], best["w"], best["dlib"] == "raw")
        ia, ib = v2[0], v2[1]
        s_unit = unit(emb["sface"])
        plain = np.sum((s_unit[ia] - s_unit[ib]) ** 2, axis=1)
        plain += best["w"] * np.sum((emb[align][ia] - emb[align][ib]) ** 2, axis=1)
        chosen[align] = {
            "w": best["w"],
            "dlib": best["dlib"],
            "view1": best,
            "view2": brief(score(vecs, *v2, found)),
            "view2_plain_sum_raw": brief(
                verification_report(plain, v2[2], v2[3], default_threshold=float(np.median(plain)))
            ),
        }
        # the View 2 figure of every (variant, w), for the record (not used to choose)
        for s in rows:
            vv = fused(emb["sface"], emb[align], s["w"], s["dlib"] == "raw")
            r2 = score(vv, *v2, found)
            s["view2_accuracy"], s["view2_val"] = r2["accuracy"], r2["val_at_far_1e-3"]
    results["fused"] = chosen

    # paired View 2 errors, each pair scored at the threshold fitted on the other nine folds
    def errors(vecs: np.ndarray) -> np.ndarray:
        d = np.sum((vecs[v2[0]] - vecs[v2[1]]) ** 2, axis=1)
        r = verification_report(d, v2[2], v2[3], default_threshold=float(np.median(d)))
        thr = np.asarray(r["thresholds"])[v2[3]]
        return (d < thr) != v2[2]

    err = {"sface": errors(unit(emb["sface"])), "dlib_template": errors(unit(emb["dlib_template"]))}
    for align, c in chosen.items():
        err[f"fused_{align}"] = errors(fused(emb["sface"], emb[align], c["w"], c["dlib"] == "raw"))
    names = list(err)
    results["view2_errors"] = {n: int(e.sum()) for n, e in err.items()}
    results["view2_errors_only_first_of"] = {
        f"{a} vs {b}": [int((err[a] & ~err[b]).sum()), int((err[b] & ~err[a]).sum())]
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    out = REPO / "bench" / "results" / "dlib_lfw.json"
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(json.dumps({"alone": alone, "fused": chosen}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
