"""The LFW verification protocol, as pure functions over pair distances.

Pairs come from the official lists (:func:`read_pairs`); the caller embeds the images and
computes one distance per pair (``d = |f(a) - f(b)|^2``, smaller = more alike, "same
person" when ``d < tau``). :func:`verification_report` then scores them:

- **Accuracy** (View 2, 10 folds): for each fold, the threshold that maximises accuracy on
  the other 9 folds (:func:`best_threshold`) is applied to the held-out fold; the report
  gives the mean and standard deviation over folds (population std, as the FaceNet code).
- **VAL at FAR = 1e-3** (FaceNet paper, Schroff et al. 2015, and ``calculate_val`` of
  davidsandberg/facenet): for each fold, the threshold at which the false-accept rate on
  the training folds reaches 1e-3 (:func:`far_threshold`) is applied to the held-out fold,
  where VAL (the fraction of same-person pairs accepted) and FAR are measured; mean and
  std over folds. facenet finds that threshold on a 0.001 grid and interpolates the
  FAR curve linearly; here it is computed exactly as the largest threshold whose training
  FAR is <= 1e-3, which is where facenet's interpolation converges as its grid step goes
  to 0 (on View 2, with 2,700 different-person training pairs per fold, it is the 3rd
  smallest of their distances).
- **ROC AUC** over all pairs, exact: the probability that a same-person pair is closer
  than a different-person pair (ties count one half), via ranks (:func:`roc_auc`).
- A **single set** (View 1 ``pairsDevTrain.txt`` / ``pairsDevTest.txt``, one fold) has no
  held-out data: its headline ``accuracy`` is measured at ``default_threshold`` (fitted
  elsewhere, never on this set), and the accuracy of the best threshold fitted on the set
  itself (optimistic) is given beside it as ``fitted_accuracy``. Its VAL uses a threshold
  fitted on the set itself too.

No scikit-learn: everything is numpy and checked against brute force in the tests.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesearch.errors import FacesearchError

log = logging.getLogger(__name__)

#: The false-accept rate at which VAL is reported (the FaceNet paper's operating point).
FAR_TARGET: float = 1e-3


class PairsFileError(FacesearchError):
    """A pairs file is missing, unreadable or malformed; the message gives ``file:line``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Pair:
    """One verification pair: two ``(name, image number)`` and whether they show one person.

    ``fold`` is 0..9 in View 2 (``pairs.txt``) and 0 in View 1.
    """

    a: tuple[str, int]
    b: tuple[str, int]
    same: bool
    fold: int


# --------------------------------------------------------------------------- pairs files


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Read an LFW pairs list: View 2 ``pairs.txt`` or View 1 ``pairsDev{Train,Test}.txt``.

    The first line is either ``folds n`` (View 2: ``10 300``; each fold is ``n``
    same-person lines ``Name i j`` then ``n`` different-person lines ``Name1 i Name2 j``)
    or a single count ``n`` (View 1: ``n`` same then ``n`` different, one fold, ``fold=0``).
    Blank lines are ignored. Raises :class:`PairsFileError` naming ``file:line`` on any
    malformed, missing or extra line.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PairsFileError(path, None, f"cannot read the pairs file ({e})") from e
    records = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]
    if not records:
        raise PairsFileError(path, None, "empty pairs file")
    header_line, header = records[0]
    try:
        counts = [int(v) for v in header]
    except ValueError:
        counts = []
    if len(counts) == 2 and counts[0] >= 1 and counts[1] >= 1:
        n_folds, n = counts
    elif len(counts) == 1 and counts[0] >= 1:
        n_folds, n = 1, counts[0]
    else:
        raise PairsFileError(
            path,
            header_line,
            "the first line must be 'folds n' (View 2, e.g. '10 300') or one count "
            f"'n' (View 1), got {' '.join(header)!r}",
        )
    expected = n_folds * 2 * n
    body = records[1:]
    pairs = []
    for k, (line_no, fields) in enumerate(body[:expected]):
        fold, within = divmod(k, 2 * n)
        pairs.append(_parse_pair(path, line_no, fields, same=within < n, fold=fold))
    if len(body) < expected:
        raise PairsFileError(
            path,
            body[-1][0] if body else header_line,
            f"the file ends after {len(body)} pairs; its header "
            f"{' '.join(header)!r} announces {expected}",
        )
    if len(body) > expected:
        raise PairsFileError(
            path,
            body[expected][0],
            f"extra line: the header {' '.join(header)!r} announces {expected} pairs",
        )
    return pairs


def _parse_pair(
    path: str | os.PathLike[str], line_no: int, fields: list[str], *, same: bool, fold: int
) -> Pair:
    kind = "same-person line 'Name i j'" if same else "different-person line 'Name1 i Name2 j'"
    if len(fields) != (3 if same else 4):
        raise PairsFileError(
            path,
            line_no,
            f"expected a {kind} (fold {fold}), got {len(fields)} fields: {' '.join(fields)!r}",
        )
    try:
        if same:
            a = (fields[0], _image_number(fields[1]))
            b = (fields[0], _image_number(fields[2]))
        else:
            a = (fields[0], _image_number(fields[1]))
            b = (fields[2], _image_number(fields[3]))
    except ValueError as e:
        raise PairsFileError(path, line_no, f"in a {kind}: {e}") from e
    return Pair(a=a, b=b, same=same, fold=fold)


def _image_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"image number must be a positive integer, got {text!r}")
    return int(text)


def lfw_image_path(images_dir: str | os.PathLike[str], name: str, index: int) -> Path:
    """``images_dir/Name/Name_0001.jpg``: where LFW keeps image ``index`` of ``name``."""
    return Path(images_dir) / name / f"{name}_{index:04d}.jpg"


# --------------------------------------------------------------------------- thresholds


def _as_inputs(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances, dtype=np.float64).ravel()
    s = np.asarray(same).ravel()
    if s.dtype != np.bool_:
        if not np.isin(s, (0, 1)).all():
            raise ValueError("same must be booleans (or 0/1)")
        s = s.astype(bool)
    if d.shape != s.shape:
        raise ValueError(f"distances and same differ in length: {d.size} vs {s.size}")
    if d.size == 0:
        raise ValueError("no pairs")
    if not np.isfinite(d).all():
        raise ValueError(f"{int((~np.isfinite(d)).sum())} distances are NaN or infinite")
    return d, s


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The threshold tau maximising accuracy of "same person when d < tau", and that accuracy.

    ``distances``: ``(N,)`` float; ``same``: ``(N,)`` bool. Every distinct decision is
    considered: tau runs over the midpoints between consecutive distinct sorted distances,
    plus the smallest distance (everything "different") and the next float above the
    largest (everything "same"). When several give the best accuracy, the lower median
    of them (in sorted order) is taken: deterministic and away from the edges of the
    optimal range. Exact, ``O(N log N)``.
    """
    d, s = _as_inputs(distances, same)
    n = d.size
    order = np.argsort(d, kind="stable")
    ds, ss = d[order], s[order]
    # Threshold between ds[i-1] and ds[i] accepts the first i pairs (i = 0..n).
    same_below = np.concatenate([[0], np.cumsum(ss)])  # same pairs accepted
    diff_below = np.concatenate([[0], np.cumsum(~ss)])  # different pairs accepted
    correct = same_below + (int((~s).sum()) - diff_below)  # (n + 1,) int
    boundary = np.ones(n + 1, bool)
    boundary[1:n] = ds[:-1] < ds[1:]  # a cut inside a run of ties is not a decision
    candidates = np.flatnonzero(boundary & (correct == correct[boundary].max()))
    i = int(candidates[(len(candidates) - 1) // 2])
    return _cut_threshold(ds, i), float(correct[i]) / n


def _cut_threshold(ds: np.ndarray, i: int) -> float:
    """A tau accepting exactly the ``i`` smallest of the sorted distances ``ds``."""
    if i == 0:
        return float(ds[0])
    if i == ds.size:
        return float(np.nextafter(ds[-1], np.inf))
    lo, hi = float(ds[i - 1]), float(ds[i])
    mid = lo + (hi - lo) / 2.0
    return mid if mid > lo else hi  # adjacent floats: hi itself still accepts lo only


def far_threshold(distances: np.ndarray, same: np.ndarray, far_target: float = FAR_TARGET) -> float:
    """The largest tau whose false-accept rate ``#{different, d < tau} / #different`` is
    ``<= far_target``: the ``(floor(far_target * n_diff) + 1)``-th smallest different-pair
    distance (the next float above the largest if that exceeds them all).

    This is the limit of facenet's ``calculate_val`` threshold (a 0.001 grid, linear
    interpolation of FAR) as its grid step goes to 0, when ``far_target * n_diff`` is not an
    integer (2.7 on a View 2 training split).
    """
    d, s = _as_inputs(distances, same)
    diff = np.sort(d[~s])
    if diff.size == 0:
        raise ValueError("no different-person pairs: the FAR is undefined")
    if not 0.0 <= far_target < 1.0:
        raise ValueError(f"far_target must be in [0, 1), got {far_target}")
    k = math.floor(far_target * diff.size + 1e-9)  # accepted impostors allowed
    if k >= diff.size:
        return float(np.nextafter(diff[-1], np.inf))
    return float(diff[k])


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve of "same when d < tau": ``P(d_same < d_diff) + P(tie) / 2``.

    Exact (Mann-Whitney U with average ranks for ties), ``O(N log N)``.
    """
    d, s = _as_inputs(distances, same)
    n_same, n_diff = int(s.sum()), int((~s).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(f"AUC needs both kinds of pairs: {n_same} same, {n_diff} different")
    _, inverse, counts = np.unique(d, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last of each run of ties
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average ranks, ascending distance
    u = ranks[~s].sum() - n_diff * (n_diff + 1) / 2.0  # pairs with d_same < d_diff, ties 1/2
    return float(u / (n_same * n_diff))


def _rates(d: np.ndarray, s: np.ndarray, tau: float) -> tuple[float, float, float]:
    """(accuracy, VAL, FAR) of "same when d < tau"; VAL/FAR are NaN without such pairs."""
    accept = d < tau
    accuracy = float((accept == s).mean())
    n_same, n_diff = int(s.sum()), int((~s).sum())
    val = float((accept & s).sum() / n_same) if n_same else math.nan
    far = float((accept & ~s).sum() / n_diff) if n_diff else math.nan
    return accuracy, val, far


# --------------------------------------------------------------------------- the report


def verification_report(
    distances: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    *,
    default_threshold: float,
) -> dict[str, Any]:
    """Score pair distances with the LFW protocol (see the module docstring).

    ``distances``: ``(N,)`` float, one per pair; ``same``: ``(N,)`` bool; ``folds``:
    ``(N,)`` int fold labels (several folds: cross-validated; one: a single set scored at
    ``default_threshold``). Returns a JSON-ready dict of plain Python values:

    - ``protocol``: ``"10-fold"`` (``"{k}-fold"``) or ``"single set"``;
    - ``n_pairs``, ``n_same``, ``n_different``, ``n_folds``;
    - ``accuracy``, ``accuracy_std``: held-out accuracy over folds (single set: at
      ``default_threshold``, std 0.0); ``fold_accuracies``;
    - ``threshold``: mean of the per-fold fitted thresholds; ``thresholds``: per fold
      (single set: the threshold fitted on the set);
    - ``val_at_far_1e-3``, ``val_std``, ``far`` (mean held-out FAR), ``val_thresholds``;
    - ``auc``: ROC AUC over all pairs;
    - ``default_threshold``, ``default_threshold_accuracy`` (all pairs at that tau);
    - ``fitted_threshold``, ``fitted_accuracy``: the best threshold fitted on all pairs and
      its (optimistic, in-sample) accuracy.
    """
    d, s = _as_inputs(distances, same)
    f = np.asarray(folds).ravel()
    if f.shape != d.shape:
        raise ValueError(f"folds and distances differ in length: {f.size} vs {d.size}")
    n_same, n_diff = int(s.sum()), int((~s).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(f"need both kinds of pairs, got {n_same} same and {n_diff} different")
    fold_ids = np.unique(f)
    fitted_tau, fitted_acc = best_threshold(d, s)
    default_acc = _rates(d, s, default_threshold)[0]

    accuracies: list[float] = []
    thresholds: list[float] = []
    vals: list[float] = []
    fars: list[float] = []
    val_taus: list[float] = []
    if fold_ids.size == 1:  # no held-out data: the default threshold, fitted figures beside
        splits = [(np.ones(d.size, bool), np.ones(d.size, bool))]
        protocol = "single set"
    else:
        splits = [(f != k, f == k) for k in fold_ids]
        protocol = f"{fold_ids.size}-fold"
    for k, (train, test) in zip(fold_ids, splits, strict=True):
        if int(s[test].sum()) == 0 or int((~s[test]).sum()) == 0:
            raise ValueError(f"fold {k} lacks same-person or different-person pairs")
        tau = best_threshold(d[train], s[train])[0]
        v_tau = far_threshold(d[train], s[train])
        _, val, far = _rates(d[test], s[test], v_tau)
        thresholds.append(tau)
        accuracies.append(default_acc if fold_ids.size == 1 else _rates(d[test], s[test], tau)[0])
        val_taus.append(v_tau)
        vals.append(val)
        fars.append(far)

    report: dict[str, Any] = {
        "protocol": protocol,
        "n_pairs": int(d.size),
        "n_same": n_same,
        "n_different": n_diff,
        "n_folds": int(fold_ids.size),
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": [float(a) for a in accuracies],
        "threshold": float(np.mean(thresholds)),
        "thresholds": [float(t) for t in thresholds],
        "val_at_far_1e-3": float(np.mean(vals)),
        "val_std": float(np.std(vals)),
        "far": float(np.mean(fars)),
        "val_thresholds": [float(t) for t in val_taus],
        "auc": roc_auc(d, s),
        "default_threshold": float(default_threshold),
        "default_threshold_accuracy": default_acc,
        "fitted_threshold": fitted_tau,
        "fitted_accuracy": fitted_acc,
    }
    log.debug("verification report: %s", report)
    return report
