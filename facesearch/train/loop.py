"""The training loop: fine-tune SFace with the triplet loss on P x K batches.

Steps (:func:`train`):

1. The base model (``sface`` or a model file) is copied; layers before ``freeze_until``
   are frozen (:mod:`facesearch.train.split`) and their output on every training and
   validation crop is computed once (and on the mirrored crop, when ``flip`` augmentation is
   on). For the harmonic loss, the old model's embeddings of the same crops are computed
   once too: the old model is frozen, so they never change.
2. Each epoch: every eligible person once, in P x K batches (:class:`PKSampler`); each
   photo is used as is or mirrored at random; the tail runs in train mode (its batch norms
   use batch statistics and update their running averages, dropout is on), the loss of
   :func:`~facesearch.train.triplet.batch_loss` (its mean over mined triplets) is minimised
   with AdamW, the learning rate follows a cosine decay after a short linear warm-up.
3. Validation verification accuracy (pairs among the validation people, accuracy at the
   best threshold) is measured before training, after each epoch and at the end; the
   final threshold is the model's calibrated tau.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from facesearch.models.sface import SFace
from facesearch.train.data import FaceSet
from facesearch.train.sampler import PKSampler
from facesearch.train.split import (
    DEFAULT_FREEZE_UNTIL,
    STAGES,
    Tail,
    freeze,
    set_train_mode,
    stage_index,
    tail_embed,
    trunk_features,
)
from facesearch.train.triplet import DEFAULT_MARGIN, Fallback, Mining, TripletStats, batch_loss
from facesearch.train.validation import best_threshold, verification_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of a training run (recorded in the model file)."""

    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: float = 0.05  # fraction of the steps with a linear warm-up
    freeze_until: str = DEFAULT_FREEZE_UNTIL
    val_fraction: float = 0.1
    people: int = 16  # P
    images: int = 4  # K
    margin: float = DEFAULT_MARGIN
    mining: Mining = "semi-hard"
    fallback: Fallback = "nearest"
    base: str = "sface"
    compatible_with: str | None = None
    flip: bool = True  # random mirror augmentation
    new_head: bool = False  # re-initialise the embedding layer (pre_fc1, fc1): a new space
    val_pairs: int = 3000
    seed: int = 0
    device: str | None = None  # None: cuda when available, else cpu

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.margin <= 0:
            raise ValueError(f"margin must be > 0, got {self.margin}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        first = stage_index(self.freeze_until)  # ValueError for an unknown layer
        if self.new_head and first > STAGES.index("pre_fc1"):
            raise ValueError(
                "new_head needs pre_fc1 to be trained: freeze_until pre_fc1 or earlier"
            )


@dataclass(frozen=True)
class EpochLog:
    """Means over the steps of one epoch, and the validation accuracy after it."""

    epoch: int
    loss: float
    active: float
    d_ap: float
    d_an: float
    fallback: float  # fraction of pairs with no semi-hard negative
    seconds: float
    images_per_s: float
    val_accuracy: float | None = None


@dataclass
class TrainResult:
    """A trained model and what happened while training it."""

    model: SFace
    settings: TrainSettings
    history: list[EpochLog] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    val_before: float | None = None
    val_after: float | None = None
    threshold: float | None = None
    val_cross: float | None = None  # new model on one photo, old model on the other
    train_summary: dict[str, Any] = field(default_factory=dict)
    val_summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def meta(self) -> dict[str, Any]:
        """The meta fields a model file records about this run (see ``modelfile``)."""
        return {
            "settings": asdict(self.settings),
            "data": {"train": self.train_summary, "validation": self.val_summary},
            "validation": {
                "accuracy_before": self.val_before,
                "accuracy_after": self.val_after,
                "accuracy_cross_old": self.val_cross,
                "pairs_protocol": "same/different pairs among validation people, best threshold",
            },
            "threshold": self.threshold,
            "history": [asdict(h) for h in self.history],
            "train_seconds": round(self.seconds, 1),
        }


def reset_head(model: SFace, seed: int) -> None:
    """Re-initialise the embedding layer: ``pre_fc1`` (PyTorch's default Linear init, seeded)
    and ``fc1`` (identity batch norm, fresh running statistics)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.pre_fc1.reset_parameters()
    model.fc1.reset_parameters()
    model.fc1.reset_running_stats()


def pick_device(name: str | None) -> torch.device:
    """``name`` or, by default, ``cuda`` when available, else ``cpu``."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _same_trunk(a: SFace, b: SFace, start: int) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    frozen = set(STAGES[:start])
    keys = [k for k in sa if k.split(".")[0] in frozen]
    return all(k in sb and torch.equal(sa[k], sb[k]) for k in keys)


def _val_accuracy(
    xa: np.ndarray, xb: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[float, float]:
    i, j, same = pairs
    d = np.sum((xa[i] - xb[j]) ** 2, axis=1)
    tau, acc = best_threshold(d, same)
    return acc, tau


def _gather(views: list[torch.Tensor], idx: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """Rows ``idx (B,)`` of ``views[0]``, or of ``views[1]`` where ``mirror (B,) bool``."""
    out = views[0][idx]
    if len(views) > 1 and bool(mirror.any()):
        out[mirror] = views[1][idx[mirror]]
    return out


def _lr_lambda(total: int, warmup: float) -> Any:
    warm = max(1, int(round(total * warmup)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return f


@dataclass(frozen=True)
class Features:
    """Frozen-trunk outputs of a training run, computed once (:func:`prepare_features`).

    ``train``: one tensor ``(N, ...)`` per view (plain, then mirrored when ``flip``) for the
    photos of ``train_used`` (the training people with 2+ photos); ``val``: ``(M, ...)`` for
    the validation photos, or None. Reusable by several runs with the same base trunk,
    ``freeze_until``, ``flip`` and data.
    """

    start: int
    train_used: FaceSet
    train: list[torch.Tensor]
    val: torch.Tensor | None
    trunk_seconds: float = 0.0


def prepare_features(
    base: SFace,
    train_set: FaceSet,
    val_set: FaceSet | None,
    settings: TrainSettings,
    *,
    progress: bool = False,
) -> Features:
    """Run the frozen trunk of ``base`` once over the training and validation crops."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    device = pick_device(settings.device)
    model = copy.deepcopy(base).float().to(device)
    start = freeze(model, settings.freeze_until)
    eligible = PKSampler(train_set.labels, settings.people, settings.images).eligible
    # Only photos of eligible people (2+ photos) are ever drawn: cache only those.
    train_used = train_set.subset(np.flatnonzero(np.isin(train_set.labels, eligible)))
    views = 2 if settings.flip else 1
    n_cache = len(train_used) * views + (len(val_set) if val_set is not None else 0)
    bar = tqdm(
        total=n_cache,
        desc="trunk features",
        unit="img",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    feats = [
        trunk_features(model, train_used.crops, start, flip=bool(v), device=device, progress=bar)
        for v in range(views)
    ]
    val_feats = (
        trunk_features(model, val_set.crops, start, device=device, progress=bar)
        if val_set is not None and len(val_set)
        else None
    )
    bar.close()
    secs = time.perf_counter() - t0
    log.info("trunk features of %d crops in %.1fs", n_cache, secs)
    return Features(start, train_used, feats, val_feats, secs)


def train(
    base: SFace,
    train_set: FaceSet,
    val_set: FaceSet | None,
    settings: TrainSettings,
    *,
    old: SFace | None = None,
    progress: bool = False,
    features: Features | None = None,
) -> TrainResult:
    """Fine-tune a copy of ``base`` on ``train_set``; ``base`` itself is left untouched.

    ``old``: the frozen old model of a harmonic training (``settings.compatible_with``
    names it; the caller loads it), else None. ``val_set``: validation people (disjoint
    from ``train_set``'s) or None. ``progress``: tqdm bars on stderr. ``features``: from
    :func:`prepare_features` with the same arguments (computed here when None).
    """
    from tqdm import tqdm

    t_start = time.perf_counter()
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)

    if features is None:
        features = prepare_features(base, train_set, val_set, settings, progress=progress)
    model = copy.deepcopy(base).float()
    if settings.new_head:
        reset_head(model, settings.seed)
    start = freeze(model, settings.freeze_until)
    if start != features.start:
        raise ValueError(f"features are for stage {features.start}, settings train from {start}")
    model.to(device)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "training %s onwards (%d parameters) on %s; frozen: %s",
        STAGES[start],
        n_trainable,
        device,
        ", ".join(STAGES[:start]) or "nothing",
    )
    train_used = features.train_used
    labels = torch.from_numpy(train_used.labels)
    sampler = PKSampler(train_used.labels, settings.people, settings.images, seed=settings.seed)
    views = len(features.train)
    feats, val_feats = features.train, features.val

    old_emb: list[torch.Tensor] | None = None
    if old is not None:
        old = copy.deepcopy(old).float().to(device).eval()
        for p in old.parameters():
            p.requires_grad_(False)
        if _same_trunk(old, model, start):
            old_emb = [torch.from_numpy(tail_embed(old, f, start, device=device)) for f in feats]
        else:
            log.info("old model has another trunk: embedding the training crops with it")
            old_feats = [
                trunk_features(old, train_used.crops, 0, flip=bool(v)) for v in range(views)
            ]
            old_emb = [torch.from_numpy(tail_embed(old, f, 0, device=device)) for f in old_feats]

    result = TrainResult(
        model=model,
        settings=settings,
        train_summary=train_set.summary(),
        val_summary=val_set.summary() if val_set is not None else {},
    )
    result.train_summary["images_used"] = len(train_used)
    result.train_summary["people_used"] = int(sampler.eligible.size)

    val_pairs = None
    old_val: np.ndarray | None = None
    if val_feats is not None and val_set is not None:
        val_pairs = verification_pairs(val_set.labels, settings.val_pairs, seed=settings.seed)
        if val_pairs[2].sum() == 0:
            log.warning("validation people have no same-person pairs: no validation accuracy")
            val_pairs = None
    if val_pairs is not None and val_feats is not None and val_set is not None:
        # "Before" is the base model as given (before any new head).
        xv = tail_embed(copy.deepcopy(base).float().to(device), val_feats, start, device=device)
        result.val_before, tau0 = _val_accuracy(xv, xv, val_pairs)
        log.info("validation accuracy before: %.4f (tau %.3f)", result.val_before, tau0)
        if old is not None:
            if _same_trunk(old, model, start):
                old_val = tail_embed(old, val_feats, start, device=device)
            else:
                old_val = tail_embed(old, trunk_features(old, val_set.crops, 0), 0, device=device)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    total_steps = settings.epochs * len(sampler)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, settings.warmup))
    tail = Tail(model, start)
    bar = tqdm(
        total=total_steps, desc="training", unit="step", disable=not progress, dynamic_ncols=True
    )
    for epoch in range(1, settings.epochs + 1):
        set_train_mode(model, start, True)
        t0 = time.perf_counter()
        n_img = 0
        ep: list[TripletStats] = []
        for idx in sampler:
            ti = torch.from_numpy(idx)
            mirror = torch.from_numpy(rng.integers(0, views, size=idx.size) == 1)
            h = _gather(feats, ti, mirror)
            emb = tail(h.to(device))  # (B, 128) unit
            old_b = _gather(old_emb, ti, mirror).to(device) if old_emb is not None else None
            loss, stats = batch_loss(
                emb,
                labels[idx].to(device),
                margin=settings.margin,
                mining=settings.mining,
                fallback=settings.fallback,
                old_embeddings=old_b,
                generator=gen,
            )
            opt.zero_grad(set_to_none=True)
            if stats.n_triplets:
                loss.backward()
                opt.step()
            sched.step()
            ep.append(stats)
            n_img += idx.size
            row = stats.as_dict()
            row.update(epoch=float(epoch), lr=float(sched.get_last_lr()[0]))
            result.steps.append(row)
            log.debug(
                "epoch %d step %d: loss %.4f active %.3f d_ap %.3f d_an %.3f fallback %d/%d",
                epoch,
                len(result.steps),
                stats.loss,
                stats.active,
                stats.d_ap,
                stats.d_an,
                stats.n_fallback,
                stats.n_pairs,
            )
            bar.set_postfix(epoch=epoch, loss=f"{stats.loss:.4f}", active=f"{stats.active:.2f}")
            bar.update(1)
        secs = time.perf_counter() - t0
        val_acc = None
        if val_pairs is not None and val_feats is not None:
            xv = tail_embed(model, val_feats, start, device=device)
            val_acc, _ = _val_accuracy(xv, xv, val_pairs)
        n_pairs = max(1, sum(s.n_pairs for s in ep))
        elog = EpochLog(
            epoch=epoch,
            loss=float(np.mean([s.loss for s in ep])),
            active=float(np.mean([s.active for s in ep])),
            d_ap=float(np.nanmean([s.d_ap for s in ep])),
            d_an=float(np.nanmean([s.d_an for s in ep])),
            fallback=sum(s.n_fallback for s in ep) / n_pairs,
            seconds=secs,
            images_per_s=n_img / secs if secs > 0 else float("nan"),
            val_accuracy=val_acc,
        )
        result.history.append(elog)
        log.info(
            "epoch %d: loss %.4f active %.3f d_ap %.3f d_an %.3f no-semi-hard %.3f "
            "%.1fs (%.0f img/s) val %s",
            epoch,
            elog.loss,
            elog.active,
            elog.d_ap,
            elog.d_an,
            elog.fallback,
            secs,
            elog.images_per_s,
            "-" if val_acc is None else f"{val_acc:.4f}",
        )
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    if val_pairs is not None and val_feats is not None:
        xv = tail_embed(model, val_feats, start, device=device)
        result.val_after, result.threshold = _val_accuracy(xv, xv, val_pairs)
        if old_val is not None:
            result.val_cross, _ = _val_accuracy(xv, old_val, val_pairs)
        log.info("validation accuracy after: %.4f (tau %.3f)", result.val_after, result.threshold)
    result.model = model.cpu()
    result.seconds = time.perf_counter() - t_start
    return result
