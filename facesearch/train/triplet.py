"""The FaceNet triplet loss and online triplet mining inside a batch.

Vocabulary (one word for one thing, as in the rest of facesearch):

- ``d(x, y) = |x - y|^2`` between unit embeddings (0 identical, 4 opposite).
- A *pair* is an anchor-positive pair ``(a, p)``: two different photos of one person.
- A *triplet* ``(a, p, n)`` adds a negative ``n`` of another person. Its loss is
  ``max(d(a, p) - d(a, n) + alpha, 0)``; it is *active* when that is > 0.
- A negative is *semi-hard* for ``(a, p)`` when ``d(a, p) < d(a, n) < d(a, p) + alpha``:
  farther than the positive, but still inside the margin (FaceNet, section 3.2).

FaceNet's loss is the **sum** over triplets, ``L = sum max(d(a,p) - d(a,n) + alpha, 0)``.
The training loop **optimises the mean over the mined triplets** (``L / T``), which is the
same objective scaled by a constant per batch, so that the learning rate does not depend
on the batch size; both figures are reported in :class:`TripletStats`.

Mining (``mine``):

- ``"semi-hard"`` (FaceNet): every anchor-positive pair of the batch, with one negative
  drawn uniformly at random among its semi-hard negatives. When a pair has **no**
  semi-hard negative, ``fallback`` decides, and the pair is counted in ``n_fallback``:

  * ``"skip"``: the pair yields no triplet.
  * ``"nearest"`` (default): the pair takes the negative closest to the semi-hard band:
    if some negatives are *hard* (``d(a,n) <= d(a,p)``), the least hard of them (largest
    ``d(a,n)``, loss >= alpha, as TensorFlow's ``triplet_semihard_loss`` does); otherwise
    all negatives are *easy* (``d(a,n) >= d(a,p) + alpha``), the nearest one is taken and
    the triplet is inactive (loss 0). Never the hardest negative, which FaceNet reports
    leads to collapsed models early in training.

- ``"batch-hard"`` (Hermans et al., 2017): one triplet per anchor, with its farthest
  positive and nearest negative in the batch.
- ``"all"``: every valid triplet of the batch (for tests and small batches).

Harmonic embeddings (FaceNet section 5.x, "harmonic triplet loss"): with the frozen old
model's embeddings of the same batch, triplets mix the two spaces. :func:`batch_loss`
mines three blocks of the mixed distance matrix and sums them:
new anchor with new positive/negative, new anchor with **old** positive/negative, and old
anchor with new positive/negative (old-old triplets carry no gradient). In the mixed
blocks the old embedding of the anchor's *own* photo counts as a positive, which pulls
``f_new(x)`` towards ``f_old(x)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

log = logging.getLogger(__name__)

Mining = Literal["semi-hard", "batch-hard", "all"]
Fallback = Literal["skip", "nearest"]
MINING_CHOICES: tuple[str, ...] = ("semi-hard", "batch-hard", "all")
FALLBACK_CHOICES: tuple[str, ...] = ("skip", "nearest")
DEFAULT_MARGIN: float = 0.2


@dataclass(frozen=True)
class Triplets:
    """Triplets mined from one distance matrix ``d (Na, Nb)``.

    ``anchor`` indexes rows of ``d``; ``positive`` and ``negative`` index columns. All three
    are ``(T,) int64`` tensors. ``n_pairs`` is the number of anchor-positive pairs (or of
    anchors, for batch-hard) that were considered, ``n_fallback`` how many of them had no
    semi-hard negative.
    """

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    n_pairs: int
    n_fallback: int = 0

    def __len__(self) -> int:
        return int(self.anchor.numel())


@dataclass(frozen=True)
class TripletStats:
    """What one training step logs.

    ``loss`` is the optimised mean over triplets, ``loss_sum`` FaceNet's L; ``active`` is the
    fraction of considered pairs whose triplet has loss > 0 (a skipped pair counts as
    inactive); ``d_ap`` and ``d_an`` are the mean distances over the triplets.
    """

    loss: float
    loss_sum: float
    n_triplets: int
    n_pairs: int
    n_fallback: int
    active: float
    d_ap: float
    d_an: float

    def as_dict(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "loss_sum": self.loss_sum,
            "triplets": float(self.n_triplets),
            "pairs": float(self.n_pairs),
            "fallback": float(self.n_fallback),
            "active": self.active,
            "d_ap": self.d_ap,
            "d_an": self.d_an,
        }


def pairwise_sq_distance(xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
    """Differentiable ``d = |a - b|^2`` between rows: ``(Na, D), (Nb, D) -> (Na, Nb)``.

    Computed by expansion and clamped at 0 (rounding can make it slightly negative).
    """
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"embedding sizes differ: {xa.shape[1]} vs {xb.shape[1]}")
    sq_a = (xa * xa).sum(1, keepdim=True)  # (Na, 1)
    sq_b = (xb * xb).sum(1, keepdim=True).T  # (1, Nb)
    return (sq_a + sq_b - 2.0 * xa @ xb.T).clamp_min(0.0)


def triplet_loss(
    d: torch.Tensor, triplets: Triplets, margin: float = DEFAULT_MARGIN
) -> torch.Tensor:
    """Per-triplet FaceNet loss ``max(d(a,p) - d(a,n) + margin, 0)``: ``(T,)``, same dtype as d."""
    d_ap = d[triplets.anchor, triplets.positive]
    d_an = d[triplets.anchor, triplets.negative]
    return torch.relu(d_ap - d_an + margin)


def _masks(
    labels_a: torch.Tensor, labels_b: torch.Tensor, exclude_diagonal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` boolean masks ``(Na, Nb)``."""
    same = labels_a[:, None] == labels_b[None, :]
    positive = same.clone()
    if exclude_diagonal:
        if labels_a.shape != labels_b.shape:
            raise ValueError(
                "exclude_diagonal needs a square problem (the same rows on both sides)"
            )
        positive.fill_diagonal_(False)
    return positive, ~same


def mine(
    d: torch.Tensor,
    labels_a: torch.Tensor,
    labels_b: torch.Tensor | None = None,
    *,
    margin: float = DEFAULT_MARGIN,
    mining: Mining = "semi-hard",
    fallback: Fallback = "nearest",
    exclude_diagonal: bool | None = None,
    generator: torch.Generator | None = None,
) -> Triplets:
    """Mine triplets from a distance matrix (no gradient flows through mining).

    ``d``: ``(Na, Nb)`` distances between anchors (rows) and candidates (columns).
    ``labels_a``: ``(Na,) int64`` person of each row; ``labels_b``: ``(Nb,)`` of each column
    (default: ``labels_a``, a square problem). ``exclude_diagonal`` (default: True for a
    square problem with ``labels_b`` omitted) stops a row pairing with its own column.
    ``generator`` seeds the random choice among semi-hard negatives.
    """
    if mining not in MINING_CHOICES:
        raise ValueError(f"mining must be one of {MINING_CHOICES}, got {mining!r}")
    if fallback not in FALLBACK_CHOICES:
        raise ValueError(f"fallback must be one of {FALLBACK_CHOICES}, got {fallback!r}")
    if exclude_diagonal is None:
        exclude_diagonal = labels_b is None
    if labels_b is None:
        labels_b = labels_a
    if d.shape != (labels_a.numel(), labels_b.numel()):
        raise ValueError(
            f"distance matrix is {tuple(d.shape)}, "
            f"labels give ({labels_a.numel()}, {labels_b.numel()})"
        )
    d = d.detach()
    pos, neg = _masks(labels_a.to(d.device), labels_b.to(d.device), exclude_diagonal)
    empty = torch.zeros(0, dtype=torch.int64, device=d.device)

    if mining == "batch-hard":
        has = pos.any(1) & neg.any(1)
        rows = torch.nonzero(has).flatten()
        inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
        p = torch.where(pos[rows], d[rows], -inf).argmax(1)
        n = torch.where(neg[rows], d[rows], inf).argmin(1)
        return Triplets(rows, p, n, n_pairs=int(rows.numel()))

    a_idx, p_idx = torch.nonzero(pos & neg.any(1, keepdim=True), as_tuple=True)  # (Q,), (Q,)
    n_pairs = int(a_idx.numel())
    if n_pairs == 0:
        return Triplets(empty, empty, empty, n_pairs=0)
    d_ap = d[a_idx, p_idx][:, None]  # (Q, 1)
    d_a = d[a_idx]  # (Q, Nb)
    neg_q = neg[a_idx]  # (Q, Nb)

    if mining == "all":
        q, n = torch.nonzero(neg_q, as_tuple=True)
        return Triplets(a_idx[q], p_idx[q], n, n_pairs=n_pairs)

    semi = neg_q & (d_a > d_ap) & (d_a < d_ap + margin)  # (Q, Nb)
    has_semi = semi.any(1)
    # Uniform choice among the candidates: the argmax of i.i.d. uniform scores on the mask.
    scores = torch.rand(semi.shape, generator=generator, dtype=torch.float32).to(d.device)
    choice = torch.where(semi, scores, torch.full_like(scores, -1.0)).argmax(1)  # (Q,)
    n_fallback = int((~has_semi).sum())
    if fallback == "skip":
        keep = has_semi
        return Triplets(a_idx[keep], p_idx[keep], choice[keep], n_pairs, n_fallback)
    # "nearest": least-hard hard negative if one exists, else the nearest (easy) one.
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)
    hard = neg_q & (d_a <= d_ap)
    least_hard = torch.where(hard, d_a, -inf).argmax(1)
    nearest = torch.where(neg_q, d_a, inf).argmin(1)
    fb = torch.where(hard.any(1), least_hard, nearest)
    chosen = torch.where(has_semi, choice, fb)
    return Triplets(a_idx, p_idx, chosen, n_pairs, n_fallback)


def _stats(
    losses: torch.Tensor, d_ap: torch.Tensor, d_an: torch.Tensor, n_pairs: int, n_fallback: int
) -> TripletStats:
    t = int(losses.numel())
    return TripletStats(
        loss=float(losses.mean()) if t else 0.0,
        loss_sum=float(losses.sum()),
        n_triplets=t,
        n_pairs=n_pairs,
        n_fallback=n_fallback,
        active=float((losses > 0).sum()) / n_pairs if n_pairs else 0.0,
        d_ap=float(d_ap.mean()) if t else float("nan"),
        d_an=float(d_an.mean()) if t else float("nan"),
    )


def batch_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = DEFAULT_MARGIN,
    mining: Mining = "semi-hard",
    fallback: Fallback = "nearest",
    old_embeddings: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, TripletStats]:
    """Mine one batch and return ``(mean loss, stats)``; the mean is what gets optimised.

    ``embeddings``: ``(N, D)`` unit rows from the model being trained; ``labels``: ``(N,)``
    int64 person ids. ``old_embeddings``: ``(N, D)`` unit rows of the same photos from the
    frozen old model, for the harmonic loss (see the module docstring), else None.
    A batch without any triplet returns a zero loss that still has a graph.
    """
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} and labels {tuple(labels.shape)} do not match"
        )
    blocks: list[tuple[torch.Tensor, Triplets]] = []
    d_nn = pairwise_sq_distance(embeddings, embeddings)
    kw = {"margin": margin, "mining": mining, "fallback": fallback, "generator": generator}
    blocks.append((d_nn, mine(d_nn, labels, **kw)))  # type: ignore[arg-type]
    if old_embeddings is not None:
        if old_embeddings.shape != embeddings.shape:
            raise ValueError(
                f"old embeddings {tuple(old_embeddings.shape)} != new {tuple(embeddings.shape)}"
            )
        old = old_embeddings.detach()
        d_no = pairwise_sq_distance(embeddings, old)  # new anchors, old candidates
        d_on = pairwise_sq_distance(old, embeddings)  # old anchors, new candidates
        for dm in (d_no, d_on):
            blocks.append(
                (dm, mine(dm, labels, labels, exclude_diagonal=False, **kw))  # type: ignore[arg-type]
            )
    losses, d_aps, d_ans = [], [], []
    n_pairs = n_fallback = 0
    for dm, tr in blocks:
        losses.append(triplet_loss(dm, tr, margin))
        d_aps.append(dm[tr.anchor, tr.positive].detach())
        d_ans.append(dm[tr.anchor, tr.negative].detach())
        n_pairs += tr.n_pairs
        n_fallback += tr.n_fallback
    all_losses = torch.cat(losses)
    stats = _stats(all_losses.detach(), torch.cat(d_aps), torch.cat(d_ans), n_pairs, n_fallback)
    if all_losses.numel() == 0:
        return embeddings.sum() * 0.0, stats
    return all_losses.mean(), stats
