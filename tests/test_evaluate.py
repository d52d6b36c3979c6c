"""facesearch.evaluate: the LFW protocol against brute force, facenet's code, and the real lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facesearch.errors import FacesearchError
from facesearch.evaluate import (
    FAR_TARGET,
    Pair,
    PairsFileError,
    best_threshold,
    far_threshold,
    lfw_image_path,
    read_pairs,
    roc_auc,
    verification_report,
)


def _synthetic(
    n: int, seed: int, *, ties: bool = False, gap: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pair distances: same ~ N(1, .3), different ~ N(1 + gap, .3); optionally rounded."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    d = np.where(same, rng.normal(1.0, 0.3, n), rng.normal(1.0 + gap, 0.3, n))
    if ties:
        d = np.round(d, 1)
    return d, same


def _accuracy(d: np.ndarray, same: np.ndarray, tau: float) -> float:
    return float(((d < tau) == same).mean())


def _all_decisions(d: np.ndarray) -> np.ndarray:
    """Thresholds realising every possible decision, and many more for good measure."""
    u = np.unique(d)
    mids = (u[:-1] + u[1:]) / 2
    rng = np.random.default_rng(0)
    extra = rng.uniform(u[0] - 1, u[-1] + 1, 200)
    return np.concatenate([u, mids, [u[0] - 1, u[-1] + 1], extra])


# ------------------------------------------------------------------- best_threshold


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_matches_brute_force(seed: int, ties: bool) -> None:
    n = [1, 2, 3, 7, 20, 61][seed % 6]
    d, same = _synthetic(n, seed, ties=ties, gap=0.5)
    tau, acc = best_threshold(d, same)
    brute = max(_accuracy(d, same, t) for t in _all_decisions(d))
    assert acc == pytest.approx(brute)
    assert _accuracy(d, same, tau) == pytest.approx(acc)  # tau realises it


def test_best_threshold_midpoint_and_tie_rule() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.4])
    assert best_threshold(d, np.array([True, True, False, False])) == (0.25, 1.0)
    assert best_threshold(d, np.array([False, False, False, False])) == (0.1, 1.0)
    tau, acc = best_threshold(d, np.array([True, True, True, True]))
    assert acc == 1.0 and tau > 0.4 and tau == pytest.approx(0.4)
    # Accuracy 3/4 at cuts after 1, after 3 (and 2/4 after 2): ties -> lower median of
    # the best cuts in sorted order, i.e. the first of two.
    same = np.array([True, False, True, False])
    assert best_threshold(d, same) == (pytest.approx(0.15), 0.75)
    # Three equally good cuts: the middle one.
    d5 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    same5 = np.array([True, False, True, False, True, False])
    tau, acc = best_threshold(d5, same5)
    assert acc == pytest.approx(4 / 6) and tau == pytest.approx(3.5)


def test_best_threshold_never_splits_ties() -> None:
    d = np.array([1.0, 1.0, 1.0, 2.0])
    tau, acc = best_threshold(d, np.array([True, False, True, False]))
    assert acc == pytest.approx(0.75) and tau == pytest.approx(1.5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no pairs"):
        best_threshold(np.array([]), np.array([], bool))
    with pytest.raises(ValueError, match="differ in length"):
        best_threshold(np.zeros(3), np.zeros(2, bool))
    with pytest.raises(ValueError, match="NaN"):
        best_threshold(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="both kinds"):
        roc_auc(np.array([0.1, 0.2]), np.array([True, True]))


# ------------------------------------------------------------------------- AUC, FAR


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_equals_pairwise_definition(seed: int, ties: bool) -> None:
    d, same = _synthetic(150 + seed, seed, ties=ties, gap=0.6)
    ds, dd = d[same][:, None], d[~same][None, :]
    brute = float(((ds < dd) + 0.5 * (ds == dd)).mean())  # O(n^2)
    assert roc_auc(d, same) == pytest.approx(brute, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_far_threshold_is_the_largest_with_far_at_most_target(seed: int) -> None:
    n = [10, 999, 1000, 1001, 2700, 3000, 500, 37][seed]
    d, same = _synthetic(2 * n, seed, ties=seed % 2 == 1)
    n_diff = int((~same).sum())
    for target in (FAR_TARGET, 0.01, 0.1, 0.0):
        tau = far_threshold(d, same, target)

        def far(t: float) -> float:
            return float((d[~same] < t).sum() / n_diff)

        assert far(tau) <= target + 1e-12
        assert far(float(np.nextafter(tau, np.inf))) > target


# ------------------------------------------------------------------ the full protocol


def _folds(n_folds: int, per_fold: int) -> np.ndarray:
    return np.repeat(np.arange(n_folds), per_fold)


def test_report_matches_per_fold_brute_force() -> None:
    d, same = _synthetic(10 * 60, 3, gap=0.8)
    folds = _folds(10, 60)
    r = verification_report(d, same, folds, default_threshold=1.5)
    assert r["protocol"] == "10-fold" and r["n_folds"] == 10 and r["n_pairs"] == 600
    accs, vals = [], []
    for k in range(10):
        train, test = folds != k, folds == k
        # Brute force: the best training accuracy over every decision, then held-out.
        cands = _all_decisions(d[train])
        train_acc = np.array([_accuracy(d[train], same[train], t) for t in cands])
        tau = r["thresholds"][k]
        assert _accuracy(d[train], same[train], tau) == pytest.approx(train_acc.max())
        accs.append(_accuracy(d[test], same[test], tau))
        v_tau = r["val_thresholds"][k]
        vals.append(float((d[test & same] < v_tau).mean()))
    assert r["fold_accuracies"] == pytest.approx(accs)
    assert r["accuracy"] == pytest.approx(np.mean(accs))
    assert r["accuracy_std"] == pytest.approx(np.std(accs))
    assert r["threshold"] == pytest.approx(np.mean(r["thresholds"]))
    assert r["val_at_far_1e-3"] == pytest.approx(np.mean(vals))
    assert r["val_std"] == pytest.approx(np.std(vals))
    assert r["auc"] == pytest.approx(roc_auc(d, same))
    assert r["default_threshold_accuracy"] == pytest.approx(_accuracy(d, same, 1.5))
    assert r["fitted_accuracy"] >= r["accuracy"] - 0.05
    json.dumps(r)  # plain Python values only
    for key in ("accuracy", "accuracy_std", "val_at_far_1e-3", "val_std", "far", "auc"):
        assert isinstance(r[key], float)


def test_perfect_separation() -> None:
    rng = np.random.default_rng(5)
    same = np.tile(np.repeat([True, False], 300), 10)
    d = np.where(same, rng.uniform(0.2, 0.9, same.size), rng.uniform(1.1, 3.5, same.size))
    r = verification_report(d, same, _folds(10, 600), default_threshold=1.0)
    assert r["accuracy"] == 1.0 and r["accuracy_std"] == 0.0
    assert r["auc"] == 1.0
    assert r["val_at_far_1e-3"] == 1.0 and r["far"] < 0.01  # a few held-out impostors pass
    assert r["default_threshold_accuracy"] == 1.0
    assert all(0.9 <= t <= 1.1 for t in r["thresholds"])


def test_single_set_is_scored_at_the_default_threshold() -> None:
    d, same = _synthetic(1000, 9, gap=0.7)
    r = verification_report(d, same, np.zeros(1000, int), default_threshold=1.2)
    assert r["protocol"] == "single set" and r["n_folds"] == 1
    assert r["accuracy"] == pytest.approx(_accuracy(d, same, 1.2))
    assert r["accuracy"] == r["default_threshold_accuracy"]
    assert r["accuracy_std"] == 0.0 and r["val_std"] == 0.0
    tau, acc = best_threshold(d, same)
    assert r["fitted_accuracy"] == acc and r["thresholds"] == [tau] and r["threshold"] == tau
    assert r["fitted_accuracy"] >= r["accuracy"]


def test_val_agrees_with_facenet_calculate_val() -> None:
    """facenet's code (0.001 grid + interpolation of FAR), transcribed, as the oracle."""
    interpolate = pytest.importorskip("scipy.interpolate", reason="scipy is facenet's interp")
    rng = np.random.default_rng(11)
    same = np.tile(np.repeat([True, False], 300), 10)
    d = np.where(same, rng.normal(0.9, 0.2, same.size), rng.normal(1.9, 0.2, same.size))
    folds = _folds(10, 600)
    r = verification_report(d, same, folds, default_threshold=1.3)

    grid = np.arange(0, 4, 0.001)
    vals, fars, accs = [], [], []
    for k in range(10):
        train, test = folds != k, folds == k
        far_train = np.array([(d[train & ~same] < t).mean() for t in grid])
        if far_train.max() >= FAR_TARGET:
            # facenet says kind="slinear"; recent scipy refuses its repeated x for that,
            # and "linear" is the same piecewise-linear interpolation.
            tau = float(interpolate.interp1d(far_train, grid, kind="linear")(FAR_TARGET))
        else:
            tau = 0.0
        vals.append((d[test & same] < tau).mean())
        fars.append((d[test & ~same] < tau).mean())
        # facenet calculate_roc: argmax accuracy on a 0.01 grid
        g = np.arange(0, 4, 0.01)
        acc_train = [((d[train] < t) == same[train]).mean() for t in g]
        accs.append(((d[test] < g[int(np.argmax(acc_train))]) == same[test]).mean())
        assert abs(r["val_thresholds"][k] - tau) < 0.002
    assert np.abs(np.array(r["fold_accuracies"]) - accs).max() <= 2 / 600
    assert r["val_at_far_1e-3"] == pytest.approx(np.mean(vals), abs=1 / 300)
    assert r["far"] == pytest.approx(np.mean(fars), abs=1 / 300)


# ------------------------------------------------------------------------ pairs files


def test_read_real_view2(data: Path) -> None:
    pairs = read_pairs(data / "lfw" / "pairs.txt")
    assert len(pairs) == 6000
    for k in range(10):
        fold = [p for p in pairs if p.fold == k]
        assert sum(p.same for p in fold) == 300 and sum(not p.same for p in fold) == 300
    assert pairs[0] == Pair(a=("Abel_Pacheco", 1), b=("Abel_Pacheco", 4), same=True, fold=0)
    assert pairs[300].same is False and pairs[600].same is True and pairs[600].fold == 1
    first_diff = pairs[300]
    assert first_diff.a[0] != first_diff.b[0]
    images = data / "lfw" / "images"
    for p in (pairs[0], pairs[300], pairs[-1]):
        for name, idx in (p.a, p.b):
            assert lfw_image_path(images, name, idx).is_file()


def test_read_real_view1(data: Path) -> None:
    test = read_pairs(data / "lfw" / "pairsDevTest.txt")
    assert len(test) == 1000 and {p.fold for p in test} == {0}
    assert sum(p.same for p in test) == 500 and all(p.same for p in test[:500])
    assert test[0] == Pair(("Abdullah_Gul", 13), ("Abdullah_Gul", 14), True, 0)
    train = read_pairs(data / "lfw" / "pairsDevTrain.txt")
    assert len(train) == 2200 and sum(p.same for p in train) == 1100


def test_lfw_image_path() -> None:
    p = lfw_image_path(Path("imgs"), "George_W_Bush", 7)
    assert p == Path("imgs") / "George_W_Bush" / "George_W_Bush_0007.jpg"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    return path


GOOD = "1\t2\nA\t1\t2\nB\t1\t3\nA\t1\tB\t2\nC\t4\tD\t1\n"


def test_small_view1_file(tmp_path: Path) -> None:
    pairs = read_pairs(_write(tmp_path, GOOD + "\n"))  # trailing blank line is fine
    assert pairs == [
        Pair(("A", 1), ("A", 2), True, 0),
        Pair(("B", 1), ("B", 3), True, 0),
        Pair(("A", 1), ("B", 2), False, 0),
        Pair(("C", 4), ("D", 1), False, 0),
    ]
    two_folds = "2 1\nA 1 2\nA 1 B 2\nC 1 2\nC 1 D 2\n"
    assert [p.fold for p in read_pairs(_write(tmp_path, two_folds))] == [0, 0, 1, 1]
    assert read_pairs(_write(tmp_path, "2\n" + GOOD[4:]))[0].same  # View-1 header form


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("", None, "empty"),
        ("ten 300\n", 1, "first line"),
        ("0\n", 1, "first line"),
        ("1 2\nA 1 2\nA 1 B 2\nC 1 D 2\nE 1 F 2\n", 3, "same-person line"),
        ("1 2\nA 1 2\nB 1 3\nA 1 2\nC 1 D 2\n", 4, "different-person line"),
        ("1 2\nA 1 x\nB 1 3\nA 1 B 2\nC 1 D 2\n", 2, "positive integer"),
        ("1 2\nA 1 2\nB 0 3\nA 1 B 2\nC 1 D 2\n", 3, "positive integer"),
        ("1 2\nA 1 2\nB 1 3\nA 1 B 2\n", 4, "ends after 3 pairs"),
        (GOOD + "E 1 F 1\n", 6, "extra line"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, line: int | None, what: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PairsFileError, match=what) as info:
        read_pairs(path)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}:" if line else f"{path}:")
    assert isinstance(info.value, FacesearchError)


def test_missing_pairs_file(tmp_path: Path) -> None:
    with pytest.raises(PairsFileError, match="cannot read"):
        read_pairs(tmp_path / "nope.txt")
