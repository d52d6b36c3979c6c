"""Triplet loss, mining, PK sampling, validation and model files (facesearch.train).

Oracles: plain-Python enumeration of every triplet; the semi-hard definition applied
literally; an exhaustive threshold sweep.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from facesearch.evaluate import best_threshold
from facesearch.train.data import FaceSet
from facesearch.train.sampler import PKSampler
from facesearch.train.triplet import batch_loss, mine, pairwise_sq_distance, triplet_loss
from facesearch.train.validation import (
    cross_validated_accuracy,
    split_people,
    verification_pairs,
)


def _unit(rng: np.random.Generator, n: int, dim: int = 8) -> torch.Tensor:
    x = rng.standard_normal((n, dim))
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))


def _labels(rng: np.random.Generator, people: int, n: int) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, people, size=n)).to(torch.int64)


def _sq(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


# -- loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_loss_over_all_triplets_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, margin = 17, 0.2 + 0.1 * seed
    x = _unit(rng, n)
    y = _labels(rng, 4, n)
    total, stats = batch_loss(x, y, margin=margin, mining="all")
    xs, ys = x.tolist(), y.tolist()
    ref, count, active = 0.0, 0, 0
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and ys[a] == ys[p] and ys[q] != ys[a]:
            term = max(_sq(xs[a], xs[p]) - _sq(xs[a], xs[q]) + margin, 0.0)
            ref += term
            count += 1
            active += term > 0
    assert stats.n_triplets == count
    assert stats.loss_sum == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert float(total.detach()) == pytest.approx(ref / count, rel=1e-9)
    assert stats.loss == pytest.approx(ref / count, rel=1e-9)


def test_loss_on_given_triplets_and_gradient() -> None:
    rng = np.random.default_rng(7)
    x = _unit(rng, 6).requires_grad_(True)
    d = pairwise_sq_distance(x, x)
    xs = x.detach().tolist()
    for i, j in itertools.product(range(6), repeat=2):
        assert float(d[i, j].detach()) == pytest.approx(_sq(xs[i], xs[j]), abs=1e-12)
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    tr = mine(d, y, mining="all")
    losses = triplet_loss(d, tr, 0.5)
    ref = [
        max(_sq(xs[a], xs[p]) - _sq(xs[a], xs[q]) + 0.5, 0.0)
        for a, p, q in zip(
            tr.anchor.tolist(), tr.positive.tolist(), tr.negative.tolist(), strict=True
        )
    ]
    assert losses.tolist() == pytest.approx(ref, abs=1e-12)
    losses.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# -- semi-hard mining -------------------------------------------------------------------


def _semi_hard_sets(
    d: list[list[float]], ya: list[int], yb: list[int], margin: float, diag: bool
) -> dict[tuple[int, int], set[int]]:
    """Brute force: {(a, p): {semi-hard n}} for every anchor-positive pair that has a negative."""
    out = {}
    for a in range(len(ya)):
        negs = [q for q in range(len(yb)) if yb[q] != ya[a]]
        if not negs:
            continue
        for p in range(len(yb)):
            if yb[p] != ya[a] or (diag and a == p):
                continue
            out[(a, p)] = {q for q in negs if d[a][p] < d[a][q] < d[a][p] + margin}
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("square", [True, False])
def test_semi_hard_miner_against_brute_force(seed: int, square: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    n, margin = 24, [0.05, 0.2, 0.5, 1.0][seed % 4]
    x = _unit(rng, n, dim=4)
    y = _labels(rng, 5, n)
    if square:
        d, ya, yb = pairwise_sq_distance(x, x), y, None
    else:
        x2 = _unit(rng, n, dim=4)
        d, ya, yb = pairwise_sq_distance(x, x2), y, y
    ref = _semi_hard_sets(d.tolist(), y.tolist(), y.tolist(), margin, diag=square)
    gen = torch.Generator().manual_seed(seed)
    skip = mine(d, ya, yb, margin=margin, fallback="skip", generator=gen)
    assert skip.n_pairs == len(ref)
    assert skip.n_fallback == sum(1 for s in ref.values() if not s)
    got = list(
        zip(skip.anchor.tolist(), skip.positive.tolist(), skip.negative.tolist(), strict=True)
    )
    # Exactly one triplet per pair that has a semi-hard negative, and it is one of them.
    assert sorted((a, p) for a, p, _ in got) == sorted(k for k, s in ref.items() if s)
    for a, p, q in got:
        assert q in ref[(a, p)]
    if seed < 2:
        # Every candidate is reachable: over many draws each semi-hard negative gets picked
        # (a pair with <= 3 candidates misses one in 60 draws with probability < 1e-10).
        seen: dict[tuple[int, int], set[int]] = {k: set() for k in ref}
        for s in range(60):
            tr = mine(
                d,
                ya,
                yb,
                margin=margin,
                fallback="skip",
                generator=torch.Generator().manual_seed(s),
            )
            for a, p, q in zip(
                tr.anchor.tolist(), tr.positive.tolist(), tr.negative.tolist(), strict=True
            ):
                seen[(a, p)].add(q)
        small = {k: c for k, c in ref.items() if 0 < len(c) <= 3}
        assert small, "test data should have pairs with few candidates"
        for k, c in small.items():
            assert seen[k] == c


def test_semi_hard_none_exists_fallbacks() -> None:
    # 1-D geometry by hand (unit vectors on a circle, d = 2 - 2 cos).
    def at(deg: list[float]) -> torch.Tensor:
        r = np.deg2rad(deg)
        return torch.from_numpy(np.stack([np.cos(r), np.sin(r)], 1))

    # Person 0 at 0 and 10 degrees (d_ap ~ 0.030). Case A: negatives only far away (easy).
    x = at([0.0, 10.0, 120.0, 150.0])
    y = torch.tensor([0, 0, 1, 1])
    d = pairwise_sq_distance(x, x)
    skip = mine(d, y, margin=0.2, fallback="skip")
    # Person 0's two pairs have no semi-hard negative; person 1 (d_ap = 0.27) sees person 0
    # at d >= 1.0 > 0.27 + 0.2: none either. Nothing is mined, 4 pairs fall back.
    assert len(skip) == 0 and skip.n_pairs == 4 and skip.n_fallback == 4
    near = mine(d, y, margin=0.2, fallback="nearest")
    assert len(near) == 4 and near.n_fallback == 4
    for a, q in zip(near.anchor.tolist(), near.negative.tolist(), strict=True):
        negs = [j for j in range(4) if y[j] != y[a]]
        assert q == min(negs, key=lambda j: float(d[a, j]))  # nearest easy one
        assert float(triplet_loss(d, near, 0.2).max()) == 0.0  # all inactive
    _, stats = batch_loss(x, y, margin=0.2, fallback="nearest")
    assert stats.active == 0.0 and stats.n_fallback == 4

    # Case B: the only negatives are hard (closer than the positive): least hard is taken.
    x = at([0.0, 40.0, 5.0, 15.0])  # person 1 at 5 and 15 degrees, between 0's photos
    y = torch.tensor([0, 0, 1, 1])
    d = pairwise_sq_distance(x, x)
    near = mine(d, y, margin=0.2, fallback="nearest")
    trip = dict(
        zip(
            zip(near.anchor.tolist(), near.positive.tolist(), strict=True),
            near.negative.tolist(),
            strict=True,
        )
    )
    assert trip[(0, 1)] == 3  # d(0,3) < d(0,1): hard; least hard of {2, 3} is 3 (15 deg)
    assert trip[(1, 0)] == 2  # from 40 degrees: 5 deg is farther than 15 deg
    assert mine(d, y, margin=0.2, fallback="skip").n_fallback >= 2


def test_batch_hard_picks_hardest() -> None:
    rng = np.random.default_rng(3)
    n = 20
    x = _unit(rng, n, dim=3)
    y = _labels(rng, 4, n)
    d = pairwise_sq_distance(x, x)
    tr = mine(d, y, mining="batch-hard")
    dl, yl = d.tolist(), y.tolist()
    anchors = [a for a in range(n) if any(yl[p] == yl[a] and p != a for p in range(n))]
    assert tr.anchor.tolist() == anchors
    for a, p, q in zip(tr.anchor.tolist(), tr.positive.tolist(), tr.negative.tolist(), strict=True):
        assert dl[a][p] == max(dl[a][j] for j in range(n) if yl[j] == yl[a] and j != a)
        assert dl[a][q] == min(dl[a][j] for j in range(n) if yl[j] != yl[a])


def test_harmonic_loss_mixes_old_and_new() -> None:
    rng = np.random.default_rng(5)
    new = _unit(rng, 12).requires_grad_(True)
    old = _unit(rng, 12)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    _, plain = batch_loss(new, y, mining="all")
    loss, harm = batch_loss(new, y, mining="all", old_embeddings=old)
    # new-new pairs exclude the diagonal; the mixed blocks include the same photo: 2 x 12 more
    # pairs per block beyond the square block.
    assert plain.n_pairs == 12 * 2
    assert harm.n_pairs == 12 * 2 + 2 * (12 * 3)
    # Brute force over the three blocks.
    nl, ol, yl = new.tolist(), old.tolist(), y.tolist()
    ref, count = 0.0, 0
    for sa, sb, diag in ((nl, nl, True), (nl, ol, False), (ol, nl, False)):
        for a, p, q in itertools.product(range(12), repeat=3):
            if yl[a] == yl[p] and (a != p or not diag) and yl[q] != yl[a]:
                ref += max(_sq(sa[a], sb[p]) - _sq(sa[a], sb[q]) + 0.2, 0.0)
                count += 1
    assert harm.loss_sum == pytest.approx(ref, rel=1e-9)
    assert float(loss.detach()) == pytest.approx(ref / count, rel=1e-9)
    loss.backward()
    assert new.grad is not None and float(new.grad.abs().sum()) > 0


def test_empty_batch_has_zero_loss_with_graph() -> None:
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    loss, stats = batch_loss(x, torch.tensor([0, 1, 2, 3]))
    assert float(loss.detach()) == 0.0 and stats.n_triplets == 0
    loss.backward()


# -- PK sampler -------------------------------------------------------------------------


def test_pk_sampler_rules() -> None:
    # people 0..5 with 1, 2, 3, 5, 8, 8 photos
    labels = np.repeat(np.arange(6), [1, 2, 3, 5, 8, 8])
    s = PKSampler(labels, people=2, images=4, seed=1)
    assert s.skipped_people == 1 and len(s) == 2 and s.n_images == 26
    for _ in range(3):
        batches = list(s)
        assert len(batches) == len(s)
        seen = np.concatenate(batches)
        assert len(set(seen.tolist())) == seen.size  # no duplicate photo in an epoch
        people = labels[seen]
        assert 0 not in people  # single-photo person skipped
        counts = {int(p): int((people == p).sum()) for p in np.unique(people)}
        assert counts == {1: 2, 2: 3, 3: 4, 4: 4, 5: 4}  # min(n, K) each, each person once
    with pytest.raises(ValueError, match="at least 2 people"):
        PKSampler(np.array([0, 0, 1]), people=2, images=2)


# -- validation -------------------------------------------------------------------------


def test_best_threshold_is_exhaustive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = int(rng.integers(1, 40))
        d = np.round(rng.random(m) * 4, 1)  # ties on purpose
        same = rng.random(m) < 0.5
        tau, acc = best_threshold(d, same)
        cands = np.concatenate([[d.min() - 1], np.unique(d) + 1e-9])
        ref = max(float(np.mean((d < t) == same)) for t in cands)
        assert acc == pytest.approx(ref)
        assert float(np.mean((d < tau) == same)) == pytest.approx(acc)


def test_split_by_person_and_pairs() -> None:
    labels = np.repeat(np.arange(30), 3)
    tr, va = split_people(labels, 0.2, seed=3)
    assert not set(labels[tr]) & set(labels[va])
    assert len(set(labels[va])) == 6
    i, j, same = verification_pairs(labels[va], max_pairs=1000)
    assert same.sum() == 6 * 3 == (~same).sum()
    lv = labels[va]
    assert np.array_equal(lv[i] == lv[j], same) and np.all(i != j)
    d = np.where(same, 0.5, 1.5)
    assert cross_validated_accuracy(d, same, np.arange(same.size) % 3)[0] == 1.0


# -- training on real faces -------------------------------------------------------------


def _att_faces(data: Path, people: int, photos: int) -> FaceSet:
    """AT&T faces as crops made by the real detector and aligner (photos without a face are
    left out)."""
    from facesearch.align import norm_crop
    from facesearch.image import load_image
    from facesearch.models.yunet import Detector

    root = data / "att_faces"
    if not root.is_dir():
        pytest.skip(f"AT&T faces not found under {data}")
    detector = Detector()
    crops, labels, paths = [], [], []
    for p in range(people):
        for k in range(1, photos + 1):
            rel = f"s{p + 1}/{k}.pgm"
            image = load_image(root / rel)
            dets = detector.detect(image)
            if dets:
                best = max(dets, key=lambda d: d.area)
                crops.append(norm_crop(image, best.landmarks_array()))
                labels.append(p)
                paths.append(rel)
    assert len(crops) >= 0.8 * people * photos
    return FaceSet(
        np.stack(crops),
        np.array(labels, np.int64),
        tuple(f"s{i + 1}" for i in range(people)),
        tuple(paths),
        str(root),
    )


def test_short_run_on_real_faces_lowers_the_loss(data: Path) -> None:
    from facesearch.models.sface import SFace, load_sface
    from facesearch.train.loop import TrainSettings, train
    from facesearch.train.split import stage_index, tail_embed, trunk_features

    torch.set_num_threads(2)
    faces = _att_faces(data, people=6, photos=4)
    base = load_sface()
    settings = TrainSettings(
        epochs=6,
        lr=1e-3,
        people=3,
        images=5,
        flip=False,
        freeze_until="bn1",
        val_fraction=0.0,
        seed=1,
        warmup=0.0,
    )
    res = train(base, faces, None, settings)
    start = stage_index(settings.freeze_until)
    feats = trunk_features(base, faces.crops, start)

    def full_loss(model: SFace) -> float:
        x = torch.from_numpy(tail_embed(model, feats, start))
        return batch_loss(x, torch.from_numpy(faces.labels), margin=1.0, mining="all")[1].loss_sum

    before, after = full_loss(base), full_loss(res.model)
    assert after < 0.8 * before, (before, after)
    assert len(res.history) == 6 and all(h.images_per_s > 0 for h in res.history)
    # The base model is untouched and frozen layers did not move.
    sd0, sd1 = load_sface().state_dict(), res.model.state_dict()
    assert all(torch.equal(sd0[k], base.state_dict()[k]) for k in sd0)
    assert torch.equal(sd0["conv_14.conv2d.weight"], sd1["conv_14.conv2d.weight"])
    assert not torch.equal(sd0["pre_fc1.weight"], sd1["pre_fc1.weight"])


# -- model files and the CLI ------------------------------------------------------------


@pytest.fixture(scope="module")
def att_folder(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """5 people x 3 photos of AT&T faces in a labelled folder."""
    import shutil

    src = data / "att_faces"
    if not src.is_dir():
        pytest.skip(f"AT&T faces not found under {data}")
    root = tmp_path_factory.mktemp("people")
    for p in range(1, 6):
        (root / f"person_{p}").mkdir()
        for k in range(1, 4):
            shutil.copy(src / f"s{p}" / f"{k}.pgm", root / f"person_{p}" / f"{k}.pgm")
    (root / "person_1" / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def trained(att_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two model files trained through the CLI: plain, and harmonic with sface."""
    from click.testing import CliRunner

    from facesearch.cli import main

    out = tmp_path_factory.mktemp("models")
    runner = CliRunner()
    files = {}
    common = [
        "--epochs",
        "1",
        "-P",
        "2",
        "-K",
        "3",
        "--val-fraction",
        "0.4",
        "--crops",
        "centre",
        "--freeze-until",
        "bn1",
        "--no-flip",
        "--threads",
        "2",
    ]
    for kind, extra in (("plain", []), ("harmonic", ["--compatible-with", "sface"])):
        path = out / f"{kind}.pt"
        res = runner.invoke(main, ["train", str(att_folder), "--out", str(path), *common, *extra])
        assert res.exit_code == 0, res.output + repr(res.exception)
        assert "validation" in res.output and "before" in res.output
        files[kind] = path
        files[f"{kind}_output"] = res.output  # type: ignore[assignment]
    return files


def test_cli_train_writes_a_usable_model_file(trained: dict[str, Path], att_folder: Path) -> None:
    from facesearch.models.modelfile import load_embedder, read_meta

    meta = read_meta(trained["harmonic"])
    assert meta["architecture"] == "sface" and meta["format_version"] == 1
    assert meta["name"].startswith("harmonic-") and meta["dim"] == 128
    assert meta["parent"]["name"] == "sface" and len(meta["parent"]["sha256"]) == 64
    assert meta["compatible_with"]["name"] == "sface" and meta["lineage"] == ["sface"]
    assert meta["data"]["folder"] == att_folder.name and meta["data"]["people"] == 5
    assert meta["data"]["images"] == 15
    assert meta["data"]["validation"]["people"] == 2  # round(0.4 * 5), split by person
    assert meta["data"]["train"]["people"] == 3
    assert meta["settings"]["people"] == 2 and meta["settings"]["margin"] == 0.2
    assert meta["settings"]["freeze_until"] == "bn1"
    assert 0.0 < meta["threshold"] < 4.0 and meta["created"].endswith("+00:00")
    assert 0.5 <= meta["validation"]["accuracy_after"] <= 1.0
    emb = load_embedder(str(trained["harmonic"]))
    assert emb.name == meta["name"] and emb.dim == 128 and emb.meta == meta  # type: ignore[attr-defined]
    x = emb.embed(np.zeros((2, 112, 112, 3), np.uint8))
    assert x.shape == (2, 128) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert "cross-model" in str(trained["harmonic_output"])
    shipped = load_embedder("sface")
    assert shipped.name == "sface" and shipped.meta["threshold"] > 0  # type: ignore[attr-defined]


def test_compatibility_rules(trained: dict[str, Path]) -> None:
    from facesearch.errors import IncompatibleModelError
    from facesearch.models.modelfile import check_compatible, compatible, read_meta, shipped_meta

    sface, plain, harm = shipped_meta(), read_meta(trained["plain"]), read_meta(trained["harmonic"])
    assert compatible(sface, sface) and compatible(plain, plain)
    assert compatible(harm, sface) and compatible(sface, harm)
    assert not compatible(plain, sface) and not compatible(sface, plain)
    assert not compatible(plain, harm)  # siblings are not declared compatible
    # Transitive along a lineage: a model harmonic with `harm` is comparable with sface too.
    grandchild = {
        "name": "g-1",
        "dim": 128,
        "compatible_with": {"name": harm["name"]},
        "lineage": [harm["name"], "sface"],
    }
    assert compatible(grandchild, sface) and compatible(grandchild, harm)
    assert not compatible({**harm, "dim": 64}, sface)
    with pytest.raises(IncompatibleModelError, match="compatible-with sface"):
        check_compatible(plain, sface)


def test_model_file_refusals(trained: dict[str, Path], tmp_path: Path) -> None:
    from facesearch.errors import ModelError
    from facesearch.models.modelfile import load_embedder, load_model

    payload = torch.load(trained["plain"], weights_only=True)
    for key, value, message in (
        ("architecture", "arcface", "'arcface' model"),
        ("format_version", 99, "format version 99"),
        ("format", "something-else", "not a facesearch model file"),
    ):
        bad = tmp_path / f"bad_{key}.pt"
        torch.save({**payload, key: value}, bad)
        with pytest.raises(ModelError, match=message):
            load_model(str(bad))
    damaged = dict(payload)
    damaged["state_dict"] = {
        **payload["state_dict"],
        "fc1.bias": payload["state_dict"]["fc1.bias"] + 1,
    }
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(ModelError, match="damaged"):
        load_model(str(tmp_path / "damaged.pt"))
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ModelError, match="not a facesearch model file"):
        load_embedder(str(tmp_path / "text.pt"))
    with pytest.raises(ModelError, match="not found"):
        load_embedder(str(tmp_path / "missing.pt"))


def test_cli_train_refuses_unknown_layer(att_folder: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from facesearch.cli import main

    res = CliRunner().invoke(
        main,
        ["train", str(att_folder), "--out", str(tmp_path / "m.pt"), "--freeze-until", "conv_99"],
    )
    assert res.exit_code == 2 and "conv_14_dw" in res.output
    res = CliRunner().invoke(
        main, ["train", str(att_folder), "--out", "x", "--freeze-until", "list"]
    )
    assert res.exit_code == 0 and res.output.split()[0] == "conv_1"
    assert res.output.split()[-3:] == ["bn1", "pre_fc1", "fc1"]


def test_split_matches_the_full_network() -> None:
    from facesearch.cli.train import DEFAULT_FREEZE_UNTIL
    from facesearch.models.sface import load_sface
    from facesearch.train.split import DEFAULT_FREEZE_UNTIL as LIB_DEFAULT
    from facesearch.train.split import STAGES, tail_embed, trunk_features

    assert DEFAULT_FREEZE_UNTIL == LIB_DEFAULT
    model = load_sface()
    crops = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            model(torch.from_numpy(crops).permute(0, 3, 1, 2).float()), dim=1
        ).numpy()
    for layer in ("none", "conv_14", "fc1"):
        start = STAGES.index(layer) if layer != "none" else 0
        h = trunk_features(model, crops, start, dtype=torch.float32)
        x = tail_embed(model, h, start)
        assert np.abs(x - ref).max() < 1e-4, layer  # fused trunk: float rounding only
        if start:  # the float16 cache rounds the features, not the embeddings
            x16 = tail_embed(model, h.half(), start)
            assert np.abs(x16 - ref).max() < 5e-3, layer


def test_face_folder_crops_are_cached(att_folder: Path, tmp_path: Path) -> None:
    from facesearch.train.data import load_face_folder, resize_crop

    calls: list[int] = []

    def cropper(image: np.ndarray) -> tuple[np.ndarray | None, int]:
        calls.append(1)
        if len(calls) == 2:  # pretend the 2nd photo has no face
            return None, 0
        return resize_crop(image, centre=True), 2 if len(calls) == 3 else 1

    cache = tmp_path / "crops.npz"
    fs = load_face_folder(att_folder, cropper, mode="centre", cache=cache)
    assert len(calls) == 15 and len(fs) == 14 and fs.people[0] == "person_1"
    assert fs.skipped == (("person_1/2.pgm", "no face found"),)
    assert fs.multi_face == ("person_1/3.pgm",)
    assert fs.summary()["people"] == 5 and "notes.txt" not in " ".join(fs.paths)
    again = load_face_folder(att_folder, cropper, mode="centre", cache=cache)
    assert len(calls) == 16  # only the photo without a face is tried again
    assert len(again) == 15 and again.paths[1] == "person_1/2.pgm"
    keep = [i for i in range(15) if i != 1]
    assert np.array_equal(again.crops[keep], fs.crops) and again.paths[2:] == fs.paths[1:]
    load_face_folder(att_folder, cropper, mode="aligned", cache=cache)
    assert len(calls) == 31  # another crop mode: everything recomputed


def test_new_head_settings() -> None:
    from facesearch.models.sface import load_sface
    from facesearch.train.loop import TrainSettings, reset_head

    with pytest.raises(ValueError, match="pre_fc1"):
        TrainSettings(new_head=True, freeze_until="fc1")
    with pytest.raises(ValueError, match="unknown layer"):
        TrainSettings(freeze_until="conv_99")
    m = load_sface()
    w = m.pre_fc1.weight.clone()
    reset_head(m, seed=0)
    assert not torch.equal(w, m.pre_fc1.weight) and float(m.fc1.running_var.mean()) == 1.0
