"""P people x K photos batches (FaceNet / Hermans et al. "PK" sampling).

Rule for small identities: a person with **fewer than 2** photos cannot give an
anchor-positive pair and is left out of the sampler (counted in ``skipped_people``; such
photos still count in validation as negatives). A person with ``2 <= n < K`` photos gives
all ``n`` of them (no duplicates: a duplicate photo would be a positive at distance 0 and
teach nothing), so a batch can hold fewer than ``P * K`` photos.

One epoch = every eligible person appears in exactly one batch: the people are shuffled and
cut into groups of P; the remainder (fewer than P people) joins the last group, so an epoch
has ``max(people // P, 1)`` batches.
The K photos of a person are drawn without replacement, afresh each epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PKSampler:
    """Yields batches of photo indices ``(<= P*K,) int64`` over ``labels (N,) int64``."""

    def __init__(self, labels: np.ndarray, people: int, images: int, seed: int = 0) -> None:
        if people < 2:
            raise ValueError(f"a batch needs at least 2 people (negatives), got P={people}")
        if images < 2:
            raise ValueError(
                f"a batch needs at least 2 photos per person (positives), got K={images}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be (N,), got shape {labels.shape}")
        self.people = people
        self.images = images
        self._rng = np.random.default_rng(seed)
        ids, counts = np.unique(labels, return_counts=True)
        self.eligible = ids[counts >= 2]
        self.skipped_people = int((counts < 2).sum())
        if self.eligible.size < 2:
            raise ValueError(
                f"need at least 2 people with 2 or more photos, found {self.eligible.size}"
            )
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], ids)
        self._members = {
            int(i): order[s : s + c] for i, s, c in zip(ids, starts, counts, strict=True)
        }

    def __len__(self) -> int:
        n = self.eligible.size // self.people
        return max(n, 1)

    @property
    def n_images(self) -> int:
        """Photos of eligible people: ``int``."""
        return int(sum(self._members[int(i)].size for i in self.eligible))

    def _groups(self) -> list[np.ndarray]:
        people = self._rng.permutation(self.eligible)
        groups = [people[i : i + self.people] for i in range(0, people.size, self.people)]
        if len(groups) > 1 and groups[-1].size < self.people:
            # The remainder joins the last full group: len(self) batches per epoch.
            tail = groups.pop()
            groups[-1] = np.concatenate([groups[-1], tail])
        return groups

    def __iter__(self) -> Iterator[np.ndarray]:
        for group in self._groups():
            batch = []
            for person in group:
                members = self._members[int(person)]
                k = min(self.images, members.size)
                batch.append(self._rng.choice(members, size=k, replace=False))
            yield np.concatenate(batch).astype(np.int64)
