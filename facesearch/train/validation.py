"""Verification accuracy on a pairs protocol, and the person-disjoint split.

The pairs protocol (LFW style): a list of photo pairs, each "same person" or "different
people"; a model says "same" when ``d < tau``. :func:`best_threshold` gives the accuracy at
the best ``tau`` on the pairs themselves (optimistic, used to calibrate ``tau`` on
validation people); :func:`cross_validated_accuracy` picks ``tau`` on the other folds, as
LFW's View 2 prescribes.
"""

from __future__ import annotations

import numpy as np

from facesearch.evaluate import best_threshold


def split_people(
    labels: np.ndarray, val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split photos **by person**: ``labels (N,) int64 -> (train_mask, val_mask)``, ``(N,) bool``.

    ``round(val_fraction * people)`` people (at least 2 when ``val_fraction > 0``) go to
    validation, chosen at random among people with 2 or more photos so that validation has
    same-person pairs. No person is on both sides.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    ids, counts = np.unique(labels, return_counts=True)
    n_val = int(round(val_fraction * ids.size))
    if val_fraction > 0:
        n_val = max(n_val, 2)
    multi = ids[counts >= 2]
    if n_val > multi.size - 2 and n_val > 0:
        raise ValueError(
            f"cannot hold out {n_val} people for validation: only {multi.size} people have "
            "2+ photos"
            " and training needs at least 2 of them"
        )
    rng = np.random.default_rng(seed)
    val_people = rng.choice(multi, size=n_val, replace=False) if n_val else np.zeros(0, ids.dtype)
    val = np.isin(labels, val_people)
    return ~val, val


def verification_pairs(
    labels: np.ndarray, max_pairs: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same and different pairs among photos with ``labels (N,)``.

    Every same-person pair when there are at most ``max_pairs // 2`` of them (else a uniform
    sample of that many), and as many different-person pairs drawn uniformly (without
    repeats). Returns ``(i, j, same)``: ``(M,) int64, (M,) int64, (M,) bool``.
    """
    labels = np.asarray(labels)
    n = labels.size
    rng = np.random.default_rng(seed)
    iu, ju = np.triu_indices(n, k=1)
    same_mask = labels[iu] == labels[ju]
    si, sj = iu[same_mask], ju[same_mask]
    half = max_pairs // 2
    if si.size > half:
        pick = rng.choice(si.size, size=half, replace=False)
        si, sj = si[pick], sj[pick]
    di_all, dj_all = iu[~same_mask], ju[~same_mask]
    n_diff = min(max(si.size, 1), di_all.size)
    pick = rng.choice(di_all.size, size=n_diff, replace=False) if n_diff else np.zeros(0, np.int64)
    di, dj = di_all[pick], dj_all[pick]
    i = np.concatenate([si, di]).astype(np.int64)
    j = np.concatenate([sj, dj]).astype(np.int64)
    same = np.concatenate([np.ones(si.size, bool), np.zeros(di.size, bool)])
    return i, j, same


def accuracy_at(d: np.ndarray, same: np.ndarray, tau: float) -> float:
    """Accuracy of ``same <=> d < tau`` on ``d (M,)``, ``same (M,) bool``."""
    return float(np.mean((np.asarray(d) < tau) == np.asarray(same, dtype=bool)))


def cross_validated_accuracy(
    d: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[float, float, list[float]]:
    """LFW-style accuracy: for each fold, ``tau`` is fitted on the other folds.

    ``folds``: ``(M,) int`` fold id of each pair. Returns ``(mean accuracy, std, per-fold)``.
    """
    folds = np.asarray(folds)
    accs = []
    for f in np.unique(folds):
        test = folds == f
        tau, _ = best_threshold(d[~test], same[~test])
        accs.append(accuracy_at(d[test], same[test], tau))
    return float(np.mean(accs)), float(np.std(accs)), accs
