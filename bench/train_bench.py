"""Training bench: fine-tuning and harmonic upgrades on LFW, person-disjoint.

Protocol
--------
- **Train** on the people of LFW View-2 folds 1-5 (``people.txt``) who have 2 or more
  photos (at most ``--max-per-person`` photos each, default 20, drawn at random); 10% of
  those people are held out as validation (threshold calibration, per-epoch accuracy).
- **Test** on the 3,000 pairs of View-2 folds 6-10 (``pairs.txt``); the View-2 folds are
  person-disjoint, so no test person is seen in training (checked below). Accuracy is
  LFW's: the threshold is fitted on 4 of the 5 test folds and applied to the fifth.
- **Domain shift** (``--shift``, default ``lowres16``): every aligned 112x112 crop, train
  and test alike, is reduced to 16x16 pixels (Pillow BOX filter, i.e. pixel averaging)
  and enlarged back to 112x112 (bilinear): a face about 16 px across, as in surveillance
  footage or a crowd photo. ``jpegQ`` (e.g. ``jpeg8``) re-encodes the crop as a JPEG of
  quality Q instead; ``none`` keeps the crops.
- Models: the shipped ``sface``; ``fine-tuned`` (triplet loss, no harmonic term);
  ``harmonic`` (same settings, harmonic triplet loss with ``sface`` as the old model).
  Same seed, data and settings for both trained models.
- **Cross-model** test: the new model embeds the first image of each pair and ``sface`` the
  second (and the mean with the two roles swapped); compared with ``sface``'s own accuracy.

Input: the aligned LFW crops as an ``.npz`` (``paths (N,)`` relative to ``lfw/images``,
``crops (N, 112, 112, 3) uint8``, from the pipeline's detector and aligner). Output: a
Markdown report (``--out``), and JSON on stdout.

- ``--new-head`` adds the pair ``new-head`` / ``new-head harmonic``: the embedding layer
  (``pre_fc1``, ``fc1``) re-initialised, i.e. a genuinely new embedding space, as in an
  upgrade to a new architecture. ``--variants`` picks the runs (each pair shares data, seed
  and settings; only the harmonic term differs).

Example (2 cores)::

    python bench/train_bench.py --crops lfw_crops.npz --threads 2 --out bench/results/train.md
    python bench/train_bench.py --crops lfw_crops.npz --threads 2 --epochs 30 \
        --variants new-head,new-head-harmonic --out bench/results/train_e30_new-head.md
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: idle threads do not spin

log = logging.getLogger("train_bench")


# ----------------------------------------------------------------------------- data


def read_people_folds(path: Path) -> list[list[tuple[str, int]]]:
    """``people.txt``: ``[[(name, n_images), ...] per fold]``."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    n_folds, i, folds = int(lines[0][0]), 1, []
    for _ in range(n_folds):
        n = int(lines[i][0])
        folds.append([(a, int(b)) for a, b in lines[i + 1 : i + 1 + n]])
        i += 1 + n
    return folds


def shift_crops(crops: np.ndarray, shift: str) -> np.ndarray:
    """Apply the documented domain shift to ``(N, 112, 112, 3) uint8`` crops."""
    from PIL import Image

    if shift == "none":
        return crops
    out = np.empty_like(crops)
    for i, c in enumerate(crops):
        im = Image.fromarray(c)
        if shift.startswith("lowres"):
            s = int(shift[len("lowres") :])
            im = im.resize((s, s), Image.Resampling.BOX).resize(
                (112, 112), Image.Resampling.BILINEAR
            )
        elif shift.startswith("jpeg"):
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=int(shift[len("jpeg") :]))
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        else:
            raise ValueError(f"unknown shift {shift!r}: none, lowresS or jpegQ")
        out[i] = np.asarray(im)
    return out


# ----------------------------------------------------------------------------- scoring


def pair_report(
    xa: np.ndarray,
    xb: np.ndarray,
    ia: np.ndarray,
    ib: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
) -> dict[str, Any]:
    from facesearch.evaluate import verification_report

    d = np.sum((xa[ia] - xb[ib]) ** 2, axis=1)
    r = verification_report(d, same, folds, default_threshold=1.0)
    return {k: r[k] for k in ("accuracy", "accuracy_std", "auc", "threshold", "val_at_far_1e-3")}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--crops", type=Path, required=True, help="aligned LFW crops (.npz)")
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    ap.add_argument("--shift", default="lowres16", help="none | lowresS | jpegQ (default lowres16)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--freeze-until", default="conv_14")
    ap.add_argument("--people", "-P", type=int, default=16)
    ap.add_argument("--images", "-K", type=int, default=4)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--mining", default="semi-hard")
    ap.add_argument("--max-per-person", type=int, default=20)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--new-head",
        action="store_true",
        help="also train both models with a re-initialised embedding layer",
    )
    ap.add_argument("--new-head-lr", type=float, default=1e-3)
    ap.add_argument(
        "--variants",
        default=None,
        help="comma-separated runs to train, among: fine-tuned, harmonic, new-head, "
        "new-head-harmonic (default: fine-tuned,harmonic, plus the new-head pair with --new-head)",
    )
    ap.add_argument("--clean", action="store_true", help="also score the unshifted test pairs")
    ap.add_argument("--models", type=Path, default=None, help="folder to save the two model files")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep the frozen-trunk features here between runs (about 1 GB)",
    )
    ap.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s: %(message)s",
    )
    log.setLevel(logging.INFO)

    import torch

    torch.set_num_threads(args.threads)
    from facesearch.evaluate import read_pairs
    from facesearch.models.modelfile import save_model
    from facesearch.models.sface import load_sface
    from facesearch.train.data import FaceSet
    from facesearch.train.loop import TrainSettings, prepare_features, train
    from facesearch.train.split import stage_index, tail_embed, trunk_features
    from facesearch.train.validation import split_people

    t_all = time.perf_counter()
    with np.load(args.crops, allow_pickle=False) as z:
        paths = [str(p) for p in z["paths"]]
        crops = z["crops"]
    row = {p: i for i, p in enumerate(paths)}
    log.info("%d crops", len(paths))

    # --- training people: View-2 folds 1-5 ------------------------------------------------
    folds = read_people_folds(args.lfw / "people.txt")
    train_people = sorted({n for f in folds[:5] for n, _ in f})
    test_people = {n for f in folds[5:] for n, _ in f}
    assert not set(train_people) & test_people, "View-2 folds must be person-disjoint"
    rng = np.random.default_rng(args.seed)
    by_person: dict[str, list[int]] = {}
    for p, i in row.items():
        by_person.setdefault(p.split("/")[0], []).append(i)
    idx, labels = [], []
    for li, name in enumerate(train_people):
        have = sorted(by_person.get(name, []))
        if len(have) < 2:
            continue
        if len(have) > args.max_per_person:
            have = sorted(rng.choice(have, size=args.max_per_person, replace=False).tolist())
        idx += have
        labels += [li] * len(have)
    idx_a = np.asarray(idx)
    train_all = FaceSet(
        shift_crops(crops[idx_a], args.shift),
        np.asarray(labels, np.int64),
        tuple(train_people),
        tuple(paths[i] for i in idx_a),
        str(args.lfw),
    )
    tr, va = split_people(train_all.labels, args.val_fraction, seed=args.seed)
    train_set, val_set = train_all.subset(tr), train_all.subset(va)
    log.info("train %s, validation %s", train_set.summary(), val_set.summary())

    # --- test pairs: View-2 folds 6-10 ----------------------------------------------------
    pairs = [p for p in read_pairs(args.lfw / "pairs.txt") if p.fold >= 5]
    names = sorted({f"{n}/{n}_{i:04d}.jpg" for p in pairs for n, i in (p.a, p.b)})
    have = [n for n in names if n in row]
    pairs = [p for p in pairs if all(f"{n}/{n}_{i:04d}.jpg" in row for n, i in (p.a, p.b))]
    trow = {n: k for k, n in enumerate(have)}
    ia = np.array([trow[f"{p.a[0]}/{p.a[0]}_{p.a[1]:04d}.jpg"] for p in pairs])
    ib = np.array([trow[f"{p.b[0]}/{p.b[0]}_{p.b[1]:04d}.jpg"] for p in pairs])
    same = np.array([p.same for p in pairs])
    pfold = np.array([p.fold for p in pairs])
    assert not {p.a[0] for p in pairs} & set(train_people)
    test_clean = crops[np.array([row[n] for n in have])]
    test_shift = shift_crops(test_clean, args.shift)
    log.info(
        "test: %d pairs (%d without a crop dropped), %d images",
        len(pairs),
        3000 - len(pairs),
        len(have),
    )

    settings = TrainSettings(
        epochs=args.epochs,
        lr=args.lr,
        freeze_until=args.freeze_until,
        val_fraction=args.val_fraction,
        people=args.people,
        images=args.images,
        margin=args.margin,
        mining=args.mining,
        seed=args.seed,  # type: ignore[arg-type]
    )
    base = load_sface()
    start = stage_index(settings.freeze_until)
    cache = None
    if args.cache_dir:
        key = [args.shift, args.freeze_until, args.max_per_person, args.val_fraction, args.seed]
        cache = args.cache_dir / f"train_bench_{'_'.join(map(str, key))}.pt"
    if cache is not None and cache.is_file():
        log.info("trunk features from %s", cache)
        saved = torch.load(cache, weights_only=False)
        feats = saved["feats"]  # a local cache this script wrote: trusted
        test_feats, t_test_trunk = saved["test"], saved["t_test"]
    else:
        feats = prepare_features(base, train_set, val_set, settings, progress=sys.stderr.isatty())
        t0 = time.perf_counter()
        test_feats = trunk_features(base, test_shift, start)
        t_test_trunk = time.perf_counter() - t0
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"feats": feats, "test": test_feats, "t_test": t_test_trunk}, cache)
    n_trunk = len(feats.train_used) * len(feats.train) + len(val_set)
    clean_feats = trunk_features(base, test_clean, start) if args.clean else None

    results: dict[str, Any] = {}
    embs: dict[str, np.ndarray] = {"sface": tail_embed(base, test_feats, start)}
    clean_embs: dict[str, np.ndarray] = {}
    if clean_feats is not None:
        clean_embs["sface"] = tail_embed(base, clean_feats, start)
    runs = {}
    known = {
        "fine-tuned": ("fine-tuned", False, False),
        "harmonic": ("harmonic", True, False),
        "new-head": ("new-head", False, True),
        "new-head-harmonic": ("new-head harmonic", True, True),
    }
    chosen = ["fine-tuned", "harmonic"] + (
        ["new-head", "new-head-harmonic"] if args.new_head else []
    )
    if args.variants:
        chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in known]
        if unknown:
            ap.error(f"unknown --variants {unknown}; choose among {', '.join(known)}")
    variants = [known[v] for v in chosen]
    for kind, harmonic, new_head in variants:
        s = dataclasses.replace(
            settings,
            compatible_with="sface" if harmonic else None,
            new_head=new_head,
            lr=args.new_head_lr if new_head else settings.lr,
        )
        log.info("training %s", kind)
        res = train(
            base,
            train_set,
            val_set,
            s,
            old=base if harmonic else None,
            progress=sys.stderr.isatty(),
            features=feats,
        )
        runs[kind] = res
        embs[kind] = tail_embed(res.model, test_feats, start)
        if clean_feats is not None:
            clean_embs[kind] = tail_embed(res.model, clean_feats, start)
        if args.models:
            meta = res.meta()
            meta.update(
                parent={"name": "sface"},
                lineage=["sface"] if harmonic else [],
                compatible_with={"name": "sface"} if harmonic else None,
            )
            fname = f"lfw_{args.shift}_{kind.replace(' ', '_')}.pt"
            save_model(args.models / fname, res.model, meta)

    for name, x in embs.items():
        results[f"{name} / {name}"] = pair_report(x, x, ia, ib, same, pfold)
    for name in runs:
        fwd = pair_report(embs[name], embs["sface"], ia, ib, same, pfold)
        rev = pair_report(embs["sface"], embs[name], ia, ib, same, pfold)
        fwd["accuracy_swapped"] = rev["accuracy"]
        results[f"{name} / sface"] = fwd
    clean: dict[str, Any] = {}
    for name, x in clean_embs.items():
        clean[f"{name} / {name}"] = pair_report(x, x, ia, ib, same, pfold)

    timing = {
        name: {
            "epoch_seconds": float(np.mean([h.seconds for h in r.history])),
            "images_per_s": float(np.mean([h.images_per_s for h in r.history])),
            "train_seconds": r.seconds,
            "val_before": r.val_before,
            "val_after": r.val_after,
            "val_cross": r.val_cross,
            "history": [h.__dict__ for h in r.history],
        }
        for name, r in runs.items()
    }
    report = {
        "shift": args.shift,
        "settings": settings.__dict__,
        "train": {
            **train_set.summary(),
            "images_used": len(feats.train_used),
            "people_used": int(np.unique(feats.train_used.labels).size),
        },
        "validation": val_set.summary(),
        "test_pairs": len(pairs),
        "test_images": len(have),
        "shifted": results,
        "clean": clean,
        "timing": timing,
        "trunk_images_per_s": n_trunk / feats.trunk_seconds,
        "test_trunk_images_per_s": len(have) / t_test_trunk,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "total_seconds": time.perf_counter() - t_all,
    }
    print(json.dumps(report, indent=1, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Paths are shown by their file names: the report must not carry machine paths.
        argv = [Path(a).name if os.path.isabs(a) else a for a in sys.argv[1:]]
        args.out.write_text(render(report, " ".join(argv)))


def render(r: dict[str, Any], argv: str) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    s = r["shifted"]
    t = r["timing"]
    ref = s["sface / sface"]
    shown = ("epochs", "lr", "freeze_until", "people", "images", "margin", "mining", "fallback")
    shown += ("flip", "seed")
    lines = [
        "# Training bench: fine-tuning and harmonic upgrade (LFW, person-disjoint)",
        "",
        f"Command: `python bench/train_bench.py {argv}`",
        "",
        f"- Domain shift `{r['shift']}` on every train and test crop (see the bench docstring).",
        f"- Train: LFW View-2 folds 1-5, {r['train']['people_used']} people with 2+ photos, "
        f"{r['train']['images_used']} photos; validation: {r['validation']['people']} other people "
        f"({r['validation']['images']} photos).",
        f"- Test: {r['test_pairs']} pairs of View-2 folds 6-10 ({r['test_images']} images), "
        "threshold fitted on 4 folds and applied to the 5th (mean ± std over the 5 folds).",
        f"- Settings: {json.dumps({k: r['settings'][k] for k in shown})}",
        f"- {r['threads']} threads, torch {r['torch']}, {r['cpu']}; "
        f"total {r['total_seconds'] / 60:.1f} min.",
        "",
        "## 1. Shipped vs fine-tuned on the shifted test pairs",
        "",
        "| model | accuracy | AUC | VAL@FAR=1e-3 |",
        "|---|---|---|---|",
    ]
    for k in [k for k in s if k.split(" / ")[0] == k.split(" / ")[1]]:
        v = s[k]
        lines.append(
            f"| {k.split(' / ')[0]} | {pct(v['accuracy'])} ± {100 * v['accuracy_std']:.2f} "
            f"| {v['auc']:.4f} | {pct(v['val_at_far_1e-3'])} |"
        )
    if r["clean"]:
        lines += [
            "",
            "Unshifted test pairs (for reference):",
            "",
            "| model | accuracy |",
            "|---|---|",
        ]
        for k, v in r["clean"].items():
            lines.append(
                f"| {k.split(' / ')[0]} | {pct(v['accuracy'])} ± {100 * v['accuracy_std']:.2f} |"
            )
    lines += [
        "",
        "## 2. Cross-model: new model on one image of each pair, sface on the other",
        "",
        "| pair embedded by | accuracy (new on 1st image) | accuracy (new on 2nd image) | AUC |",
        "|---|---|---|---|",
        f"| sface / sface (reference) | {pct(ref['accuracy'])} | - | {ref['auc']:.4f} |",
    ]
    for k in [k for k in s if k.endswith(" / sface") and not k.startswith("sface")]:
        v = s[k]
        lines.append(
            f"| {k} | {pct(v['accuracy'])} ± {100 * v['accuracy_std']:.2f} "
            f"| {pct(v['accuracy_swapped'])} | {v['auc']:.4f} |"
        )
    lines += [
        "",
        "## 3. Training time (CPU)",
        "",
        "| run | s / epoch | images / s (train steps) | total s | val before | val after |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in t.items():
        lines.append(
            f"| {k} | {v['epoch_seconds']:.1f} | {v['images_per_s']:.0f} "
            f"| {v['train_seconds']:.0f} | {pct(v['val_before'])} | {pct(v['val_after'])} |"
        )
    lines += [
        "",
        f"Frozen-trunk features (computed once per photo and view, shared by both runs): "
        f"{r['trunk_images_per_s']:.1f} images/s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
