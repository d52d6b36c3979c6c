"""The collection's clusters: running the clustering over the stored faces, the report,
naming, splitting and merging clusters. The algorithms (pure functions over arrays) are in
:mod:`facesearch.cluster_algorithms`; every SQL statement is in :mod:`facesearch.store`.

What is clustered
    Every face of the active model's space takes part, labelled or not: the faces of one labelled
    person start as one group (must-link), faces of different people never share a group, nor do two
    faces of one photo (:func:`~facesearch.cluster_algorithms.agglomerate`). Only the *unlabelled*
    faces of a group are stored as a cluster (``faces.cluster_id`` -> ``clusters``); labelled faces
    keep their person and no cluster (unless the user put them in one with
    ``cluster name`` / ``merge``). A cluster stored is therefore "these unlabelled faces are
    one person"; when it is within tau (average linkage,
    :func:`~facesearch.cluster_algorithms.propose_people`) of a labelled person, that person is
    *proposed* (computed each time, never stored), and :func:`apply_proposals` labels its faces
    (``LabelSource.PROPAGATED``).

    A group keeps its unlabelled faces as a cluster when the group has at least ``min_size``
    faces, labelled ones included; so one unlabelled face next to a labelled person is a
    cluster of size 1 with a proposal.

Persistence and re-runs
    Clusters live in SQL. ``meta['cluster.last_face']`` records the largest face id the last run
    saw. A re-run (:func:`cluster_collection`, ``full=False``) only places the faces added since:
    :func:`~facesearch.cluster_algorithms.assign_new` puts them into existing clusters where they
    belong (existing clusters never merge with each other) and clusters the rest among themselves
    and with the faces that were left alone. ``full=True`` drops the automatic clusters and starts
    over. Clusters the user named, merged or split by hand (``clusters.manual``) are kept by both:
    their faces stay together as a group of their own (a cannot-link against every other person or
    manual cluster), and new faces may still join them.

Corrections
    :func:`name_cluster` (cluster -> person, ``LabelSource.MANUAL``), :func:`split_cluster` (back
    to singletons, or re-clustered at a stricter threshold into manual clusters),
    :func:`merge_clusters`. Labels given by ``name`` stay after a split (use ``people``
    commands to change them).

Nothing here prints; the CLI renders :class:`ClusterReport`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from facesearch import store as st
from facesearch.cluster_algorithms import ClusterConfig, agglomerate, assign_new, propose_people
from facesearch.collection import ACTIVE_MODEL_KEY, Collection
from facesearch.distance import DEFAULT_THRESHOLD
from facesearch.errors import CollectionError, NotFoundError

log = logging.getLogger(__name__)

#: ``meta`` key: the largest face id seen by the last clustering run.
LAST_FACE_KEY = "cluster.last_face"
#: Margin around a face box in exported crops, as a fraction of the box's larger side.
CROP_MARGIN = 0.25
#: Kinds of entries in a :class:`ClusterReport`.
KINDS = ("cluster", "person", "single")


@dataclass(frozen=True)
class FaceRef:
    """A face as listed in a report: id, photo path, box ``(x1, y1, x2, y2)`` in pixels."""

    face_id: int
    photo: str
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "face_id": self.face_id,
            "photo": self.photo,
            "box": [round(v, 1) for v in self.box],
        }


@dataclass(frozen=True)
class Entry:
    """One group of faces in a report.

    ``kind``: ``cluster`` (a stored cluster, ``id`` its SQL id), ``person`` (the labelled faces
    of ``person`` that are in no cluster, ``id`` None) or ``single`` (an unlabelled face in no
    cluster, ``id`` None). ``person``: the cluster's person (named) or the person's name.
    ``proposed`` / ``distance``: the person proposed for an unnamed cluster and the average
    linkage distance to that person's labelled faces.
    """

    kind: str
    id: int | None
    faces: tuple[FaceRef, ...]
    person: str | None = None
    name: str | None = None
    manual: bool = False
    proposed: str | None = None
    distance: float | None = None

    @property
    def size(self) -> int:
        return len(self.faces)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "size": self.size,
            "person": self.person,
            "manual": self.manual,
            "proposed": self.proposed,
            "proposed_distance": None if self.distance is None else round(self.distance, 4),
            "faces": [f.to_dict() for f in self.faces],
        }


@dataclass(frozen=True)
class RunStats:
    """What a :func:`cluster_collection` run did."""

    mode: str  # "full" | "incremental" | "none" (nothing new)
    faces: int  # faces of the active space
    new_faces: int  # faces placed by this run
    clusters_created: int
    joined_existing: int  # new faces that joined an existing cluster
    seconds: float


@dataclass(frozen=True)
class ClusterReport:
    """Every face of the collection exactly once, grouped: clusters by size, then people, then
    singles. Built by :func:`report`."""

    entries: tuple[Entry, ...]
    threshold: float = DEFAULT_THRESHOLD
    stats: RunStats | None = None
    assigned: int = 0  # faces labelled by --assign
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def clusters(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "cluster"]

    @property
    def proposals(self) -> list[Entry]:
        return [e for e in self.entries if e.proposed is not None]

    @property
    def faces(self) -> int:
        return sum(e.size for e in self.entries)


# -- loading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Faces:
    """Faces of the active space, aligned, sorted by face id. All ``(N,) int64`` but ``xb``
    ``(N, D) float32``; ``-1`` for none. ``manual``: SQL ids of manual clusters."""

    face_ids: np.ndarray
    photo_ids: np.ndarray
    person_ids: np.ndarray
    cluster_ids: np.ndarray
    xb: np.ndarray
    manual: frozenset[int]


def _load(s: Session) -> _Faces:
    active = st.get_meta(s, ACTIVE_MODEL_KEY)
    arrays = st.face_arrays(s)
    if active is None:
        empty = np.empty(0, dtype=np.int64)
        return _Faces(empty, empty, empty, empty, np.empty((0, 0), np.float32), frozenset())
    space = st.model_space(s, active)[1]
    ids, xb = st.load_all_embeddings(s, models=list(space))
    keep = np.isin(arrays.face_ids, ids)
    manual = st.manual_cluster_ids(s)
    return _Faces(
        arrays.face_ids[keep],
        arrays.photo_ids[keep],
        arrays.person_ids[keep],
        arrays.cluster_ids[keep],
        xb,
        manual,
    )


def _group_labels(f: _Faces) -> np.ndarray:
    """``(N,) int64`` labels for the algorithm: the person, else a label of its own for each
    manual cluster's unlabelled faces (kept together, never merged with another group)."""
    labels = f.person_ids.copy()
    base = int(labels.max(initial=-1)) + 1
    for cid in f.manual:
        sel = (f.cluster_ids == cid) & (labels < 0)
        labels[sel] = base + cid
    # faces of a named manual cluster are labelled: their person keeps them together
    return labels


def _store_groups(s: Session, f: _Faces, groups: np.ndarray, positions: np.ndarray) -> int:
    """Store the groups ``groups`` (``(len(positions),)`` ids, ``-1`` alone) of the faces at
    ``positions``: a group holding a manual cluster's faces adds its other unlabelled faces to
    it; else its unlabelled faces become a new cluster. Returns the clusters created."""
    ok = groups >= 0
    pos, g = positions[ok], groups[ok]
    order = np.argsort(g, kind="stable")
    pos, g = pos[order], g[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, np.int64)
    manual = np.array(sorted(f.manual), dtype=np.int64)
    in_manual = np.isin(f.cluster_ids, manual)
    joins: list[tuple[np.ndarray, int]] = []  # (positions, manual cluster id)
    fresh: list[np.ndarray] = []  # positions of each new cluster
    for members in np.split(pos, starts[1:]) if len(g) else []:
        free = members[(f.person_ids[members] < 0) & ~in_manual[members]]
        if not len(free):
            continue
        kept = f.cluster_ids[members][in_manual[members]]
        if len(kept):  # one at most: manual clusters never share a group
            joins.append((free, int(kept.min())))
        else:
            fresh.append(free)
    ids = st.new_clusters(s, len(fresh))
    parts = [(p, c) for p, c in joins] + list(zip(fresh, ids, strict=True))
    if parts:
        where = np.concatenate([p for p, _ in parts])
        cids = np.concatenate([np.full(len(p), c, dtype=np.int64) for p, c in parts])
        st.set_clusters(s, f.face_ids[where], cids)
    return len(fresh)


# -- running ------------------------------------------------------------------------------------


def cluster_collection(
    col: Collection, config: ClusterConfig | None = None, *, full: bool = False
) -> RunStats:
    """Cluster the collection's faces and store the clusters (see the module docstring).

    ``full``: drop the automatic clusters and cluster every face again; otherwise only the
    faces indexed since the last run are placed (a first run is always full). Holds the
    writer lock. Returns what was done.
    """
    import time

    config = config or ClusterConfig()
    t0 = time.perf_counter()
    with col.lock(), col.session() as s:
        f = _load(s)
        n = len(f.face_ids)
        raw = st.get_meta(s, LAST_FACE_KEY)
        last = int(raw) if raw is not None else None
        new_mask = f.face_ids > last if last is not None else np.ones(n, dtype=bool)
        incremental = not full and last is not None
        labels = _group_labels(f)
        created = joined = 0
        if n == 0 or (incremental and not new_mask.any()):
            mode = "none"
        elif incremental:
            mode = "incremental"
            old = np.flatnonzero(~new_mask)
            new = np.flatnonzero(new_mask)
            # existing clusters -> dense ids 0..C-1 for assign_new
            sql_ids = np.unique(f.cluster_ids[old][f.cluster_ids[old] >= 0])
            dense = np.full(len(old), -1, dtype=np.int64)
            has = f.cluster_ids[old] >= 0
            dense[has] = np.searchsorted(sql_ids, f.cluster_ids[old][has])
            pos = np.concatenate([old, new])
            out = assign_new(
                dense, f.xb[old], f.xb[new], config,
                photo_ids=f.photo_ids[pos], labels=labels[pos],
            )  # fmt: skip
            start = len(sql_ids)
            # faces that joined an existing cluster: new ones, or old ones that were alone
            # (unlabelled ones are stored there)
            before = np.concatenate([dense, np.full(len(new), -1, dtype=np.int64)])
            into = np.flatnonzero((out >= 0) & (out < start) & (before < 0))
            into = into[f.person_ids[pos[into]] < 0]
            st.set_clusters(s, f.face_ids[pos[into]], sql_ids[out[into]])
            joined = len(into)
            rest = np.flatnonzero(out >= start)
            groups = np.full(n, -1, dtype=np.int64)
            groups[pos[rest]] = out[rest]
            positions = np.sort(pos[rest])
            created = _store_groups(s, f, groups[positions], positions)
        else:
            mode = "full"
            auto = (f.cluster_ids >= 0) & ~np.isin(f.cluster_ids, list(f.manual))
            st.delete_clusters(s, automatic=True)
            f = _Faces(
                f.face_ids, f.photo_ids, f.person_ids,
                np.where(auto, -1, f.cluster_ids), f.xb, f.manual,
            )  # fmt: skip
            groups = agglomerate(f.xb, config, photo_ids=f.photo_ids, labels=labels)
            created = _store_groups(s, f, groups, np.arange(n, dtype=np.int64))
        st.delete_empty_clusters(s)
        if n:
            st.set_meta(s, LAST_FACE_KEY, str(int(f.face_ids.max())))
        placed = int(new_mask.sum()) if mode == "incremental" else (n if mode == "full" else 0)
    stats = RunStats(mode, n, placed, created, joined, time.perf_counter() - t0)
    log.info("cluster run: %s", stats)
    return stats


def proposal_threshold(col: Collection) -> float:
    """tau for proposals: the active model's calibrated threshold, else the default tau."""
    model = col.active_model
    if model is not None and model.threshold is not None:
        return float(model.threshold)
    return DEFAULT_THRESHOLD


def report(col: Collection, *, threshold: float | None = None) -> ClusterReport:
    """Every face of the collection once: stored clusters (largest first, with their person or
    proposal), then the labelled faces in no cluster by person, then single faces."""
    tau = proposal_threshold(col) if threshold is None else threshold
    with col.session(snapshot=True) as s:
        f = _load(s)
        arrays = st.face_arrays(s)
        records = st.faces_by_ids(s, arrays.face_ids.tolist())
        clusters = st.cluster_records(s)
        names = st.person_names(s)
    # proposals: clusters without a person, over their unlabelled faces
    unnamed = [cid for cid, c in clusters.items() if c.person_id is None]
    cl = np.where(np.isin(f.cluster_ids, unnamed) & (f.person_ids < 0), f.cluster_ids, -1).astype(
        np.int64
    )
    props = {}
    if len(f.face_ids):
        for p in propose_people(cl, f.xb, f.person_ids, tau, photo_ids=f.photo_ids):
            props[p.cluster] = (names.get(p.label), p.distance)

    def ref(fid: int) -> FaceRef:
        r = records[fid]
        return FaceRef(fid, r.photo, r.box)

    by_cluster: dict[int, list[int]] = {}
    by_person: dict[int, list[int]] = {}
    singles: list[int] = []
    for fid, pid, cid in zip(
        arrays.face_ids.tolist(),
        arrays.person_ids.tolist(),
        arrays.cluster_ids.tolist(),
        strict=True,
    ):
        if cid >= 0:
            by_cluster.setdefault(cid, []).append(fid)
        elif pid >= 0:
            by_person.setdefault(pid, []).append(fid)
        else:
            singles.append(fid)
    entries: list[Entry] = []
    for cid, fids in sorted(by_cluster.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        c = clusters[cid]
        prop = props.get(cid)
        entries.append(
            Entry(
                "cluster", cid, tuple(ref(i) for i in fids),
                person=names.get(c.person_id) if c.person_id is not None else None,
                name=c.name, manual=bool(c.manual),
                proposed=prop[0] if prop else None, distance=prop[1] if prop else None,
            )
        )  # fmt: skip
    for pid, fids in sorted(by_person.items(), key=lambda kv: names.get(kv[0], "")):
        entries.append(Entry("person", None, tuple(ref(i) for i in fids), person=names.get(pid)))
    entries += [Entry("single", None, (ref(i),)) for i in singles]
    return ClusterReport(tuple(entries), threshold=tau)


def apply_proposals(col: Collection, rep: ClusterReport) -> int:
    """Label the unlabelled faces of every cluster with a proposal (``PROPAGATED``) or a person
    (named cluster, ``CLUSTER``); a proposed cluster takes the person. Returns faces labelled."""
    n = 0
    with col.lock():
        with col.session() as s:
            labelled = set(st.labelled_face_ids(s).tolist())
        for e in rep.clusters:
            person, source = (
                (e.proposed, st.LabelSource.PROPAGATED) if e.proposed is not None
                else (e.person, st.LabelSource.CLUSTER)
            )  # fmt: skip
            if person is None:
                continue
            fids = [r.face_id for r in e.faces if r.face_id not in labelled]
            if fids:
                n += col.assign(fids, person, source, replace=False)
            with col.session() as s:
                c = st.require_cluster(s, e.id or 0)
                if c.person_id is None:
                    st.update_cluster(s, c.id, person_id=st.ensure_person(s, person).id)
    return n


# -- corrections --------------------------------------------------------------------------------


def name_cluster(col: Collection, cluster_id: int, name: str) -> int:
    """Turn cluster ``cluster_id`` into person ``name`` (created, or an existing person gets its
    faces): its faces are labelled ``MANUAL``, except those labelled by hand as another person
    than the cluster's (naming a named cluster again renames it); the cluster becomes manual
    (kept by re-runs). Returns the number of faces labelled."""
    with col.lock(), col.session() as s:
        c = st.require_cluster(s, cluster_id)
        person = st.ensure_person(s, name)
        rows = st.cluster_labels(s, c.id)
        # faces labelled by hand as someone else than the cluster's person keep their label;
        # unlabelled faces, labels from a cluster or a proposal, and the cluster's own person
        # (a renamed cluster) follow the new name
        derived = {st.LabelSource.CLUSTER.value, st.LabelSource.PROPAGATED.value}
        fids = [
            int(fid)
            for fid, source, pid in rows
            if source is None
            or source in derived
            or (c.person_id is not None and pid == c.person_id)
        ]
        n = st.assign(s, fids, name, st.LabelSource.MANUAL, replace=True)
        st.update_cluster(s, c.id, person_id=person.id, name=name, manual=True)
    return n


def split_cluster(
    col: Collection, cluster_id: int, threshold: float | None = None, linkage: str = "average"
) -> list[int]:
    """Split a cluster. Without ``threshold`` its faces go back to singletons (the cluster is
    deleted). With ``threshold`` (stricter than the run's) its faces are re-clustered at it
    (:func:`agglomerate`, min size 2) into new manual clusters, the rest left alone. Labels
    stay. Returns the ids of the clusters made (empty without ``threshold``)."""
    made: list[int] = []
    with col.lock(), col.session() as s:
        c = st.require_cluster(s, cluster_id)
        f = _load(s)
        pos = np.flatnonzero(f.cluster_ids == c.id)
        person_id = c.person_id
        st.delete_clusters(s, [c.id])
        if threshold is not None and len(pos) > 1:
            config = ClusterConfig(threshold=threshold, linkage=linkage)  # type: ignore[arg-type]
            groups = agglomerate(
                f.xb[pos], config, photo_ids=f.photo_ids[pos],
                labels=np.full(len(pos), -1, dtype=np.int64),
            )  # fmt: skip
            for g in range(int(groups.max(initial=-1)) + 1):
                new = st.create_cluster(s, person_id=person_id, manual=True)
                st.set_cluster(s, f.face_ids[pos[groups == g]].tolist(), new)
                made.append(new)
    return made


def remove_from_cluster(col: Collection, cluster_id: int, face_ids: Sequence[int]) -> list[int]:
    """Take faces out of a cluster (they are alone afterwards; their labels stay). The cluster
    becomes manual (kept by re-runs) or, emptied, is deleted. Returns ``[cluster_id]`` while
    it still has faces, else ``[]``. Faces not in the cluster raise :class:`NotFoundError`."""
    ids = sorted({int(i) for i in face_ids})
    with col.lock(), col.session() as s:
        c = st.require_cluster(s, cluster_id)
        members = set(st.cluster_face_page(s, c.id, limit=None))
        stray = [i for i in ids if i not in members]
        if stray:
            raise NotFoundError(
                "face", stray[0], f"faces {stray[:10]} are not in cluster {cluster_id}"
            )
        st.set_cluster(s, ids, None)
        if len(members) > len(ids):
            st.update_cluster(s, c.id, manual=True)
            return [c.id]
        st.delete_clusters(s, [c.id])
    return []


def merge_clusters(col: Collection, cluster_ids: Sequence[int]) -> int:
    """Merge clusters into the first of ``cluster_ids``, which becomes manual. Refused when two
    of them have faces in one photo or belong to different people. When the result has a
    person, its unlabelled faces are labelled (``MANUAL``). Returns the merged cluster's size."""
    ids = [int(c) for c in cluster_ids]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise CollectionError(f"give two or more different cluster ids to merge, got {ids}")
    with col.lock(), col.session() as s:
        clusters = [st.require_cluster(s, c) for c in ids]
        people = {c.person_id for c in clusters if c.person_id is not None}
        if len(people) > 1:
            raise CollectionError(
                f"clusters {ids} belong to different people; merge the people instead "
                "(`facesearch people merge`)"
            )
        rows = st.cluster_photos(s, ids)
        seen: dict[int, int] = {}
        for _fid, photo, cid in rows:
            if photo in seen and seen[photo] != cid:
                raise CollectionError(
                    f"clusters {seen[photo]} and {cid} both have a face in photo "
                    f"{st.photo_record(s, photo).path}: a photo shows a person once, so they "
                    "are not one person"
                )
            seen[photo] = cid
        target = clusters[0]
        person_id = people.pop() if people else target.person_id
        st.update_cluster(s, target.id, person_id=person_id, manual=True)
        fids = [r[0] for r in rows]
        st.set_cluster(s, fids, target.id)
        st.delete_clusters(s, [c.id for c in clusters[1:]])
        if person_id is not None:
            name = st.find_person(s, person_id).name
            st.assign(s, fids, name, st.LabelSource.MANUAL, replace=False)
    return len(fids)


# -- export -------------------------------------------------------------------------------------


def _folder_name(e: Entry) -> str:
    import re

    if e.kind == "cluster":
        label = e.person or e.proposed
        base = f"cluster_{e.id:05d}"
        return base + (f"_{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}" if label else "")
    if e.kind == "person":
        return "person_" + re.sub(r"[^A-Za-z0-9._-]+", "_", e.person or "unknown")
    return "singletons"


def crop_box(
    box: tuple[float, float, float, float], width: int, height: int, margin: float = CROP_MARGIN
) -> tuple[int, int, int, int]:
    """The box grown by ``margin`` times its larger side on every side, clipped to the image."""
    x1, y1, x2, y2 = box
    m = margin * max(x2 - x1, y2 - y1)
    return (
        max(0, int(np.floor(x1 - m))),
        max(0, int(np.floor(y1 - m))),
        min(width, int(np.ceil(x2 + m))),
        min(height, int(np.ceil(y2 + m))),
    )


def export(rep: ClusterReport, folder: Path, *, quality: int = 90) -> dict[str, int]:
    """Write the face crops of ``rep``: one folder per cluster and per person, one
    ``singletons`` folder; files ``face<ID>.jpg`` (JPEG crops, :func:`crop_box`), written
    atomically. ``folder`` must be missing or empty. A photo that cannot be read is skipped
    (logged). Returns ``{folder name: crops written}``."""
    import os
    import tempfile

    from PIL import Image

    from facesearch.errors import ImageError
    from facesearch.image import load_image

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CollectionError(f"export folder {folder} exists and is not empty: give a new one")
    folder.mkdir(parents=True, exist_ok=True)
    by_photo: dict[str, list[tuple[str, FaceRef]]] = {}
    for e in rep.entries:
        for r in e.faces:
            by_photo.setdefault(r.photo, []).append((_folder_name(e), r))
    written: dict[str, int] = {}
    for photo, items in by_photo.items():
        try:
            img = load_image(photo)
        except (ImageError, OSError) as exc:
            log.warning("export: skipped %d faces of %s: %s", len(items), photo, exc)
            continue
        h, w = img.shape[:2]
        for sub, r in items:
            x1, y1, x2, y2 = crop_box(r.box, w, h)
            out = folder / sub
            out.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".face", suffix=".jpg", dir=out)
            os.close(fd)
            try:
                Image.fromarray(img[y1:y2, x1:x2]).save(tmp, "JPEG", quality=quality)
                os.replace(tmp, out / f"face{r.face_id}.jpg")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written[sub] = written.get(sub, 0) + 1
    return written


# -- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterEvaluation:
    """Quality of a clustering against true labels (``-1`` counts as a cluster of its own)."""

    faces: int
    people: int
    clusters: int
    singletons: int
    pairwise: tuple[float, float, float]  # precision, recall, F
    bcubed: tuple[float, float, float]
    threshold: float | None
    linkage: str
    seconds: float
    pair_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def prf(t: tuple[float, float, float]) -> dict[str, float]:
            return {"precision": t[0], "recall": t[1], "f": t[2]}

        return {
            "faces": self.faces,
            "people": self.people,
            "clusters": self.clusters,
            "singletons": self.singletons,
            "pairwise": prf(self.pairwise),
            "bcubed": prf(self.bcubed),
            "threshold": self.threshold,
            "pair_threshold": self.pair_threshold,
            "linkage": self.linkage,
            "seconds": self.seconds,
        }


def evaluate_clusters(
    xb: np.ndarray,
    true: np.ndarray,
    config: ClusterConfig | None = None,
    photo_ids: np.ndarray | None = None,
) -> ClusterEvaluation:
    """Cluster ``xb`` ``(N, D) float32`` without labels and score it against ``true`` ``(N,)
    int`` (person per face): pairwise and BCubed P/R/F, clusters vs people."""
    import time

    from facesearch.cluster_algorithms import bcubed_prf, n_clusters, pairwise_prf

    config = config or ClusterConfig()
    t0 = time.perf_counter()
    if config.threshold is None:  # report the thresholds the default rule gives these faces
        t, t_pair = config.thresholds(xb)
        config = dataclasses.replace(config, threshold=t, pair_threshold=t_pair)
    pred = agglomerate(xb, config, photo_ids=photo_ids)
    secs = time.perf_counter() - t0
    pw = pairwise_prf(pred, true)
    bc = bcubed_prf(pred, true)
    return ClusterEvaluation(
        faces=len(xb),
        people=int(len(np.unique(true))),
        clusters=n_clusters(pred),
        singletons=int((pred < 0).sum()),
        pairwise=(pw.precision, pw.recall, pw.f),
        bcubed=(bc.precision, bc.recall, bc.f),
        threshold=config.threshold,
        linkage=config.linkage,
        seconds=secs,
        pair_threshold=config.thresholds(xb)[1],
    )


def load_labelled_npz(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(xb (N, D) float32, labels (N,) int64, photo ids (N,) int64 or None)`` from an
    ``.npz`` holding ``xb``, ``labels`` and optionally ``photo_ids``."""
    from facesearch.errors import ArgumentError

    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArgumentError(f"cannot read {os.fspath(path)}: {exc}") from exc
    with z:
        if "xb" not in z or "labels" not in z:
            raise ArgumentError(f"{os.fspath(path)} must hold arrays 'xb' (N, D) and 'labels' (N,)")
        xb = np.ascontiguousarray(z["xb"], dtype=np.float32)
        _, true = np.unique(z["labels"], return_inverse=True)
        photos = z["photo_ids"].astype(np.int64) if "photo_ids" in z else None
    return xb, true.astype(np.int64), photos


def labelled_by_folder(col: Collection, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest face of every photo of a collection indexed from ``root`` (labelled by
    subfolder), with its person: ``(xb (N, D) float32, true (N,) int64, photo_ids (N,) int64)``.
    Other faces of a photo (bystanders) are left out of the evaluation."""
    root = Path(root).resolve()
    with col.session(snapshot=True) as s:
        f = _load(s)
        records = st.faces_by_ids(s, f.face_ids.tolist())
    best: dict[int, tuple[float, int]] = {}
    for i, fid in enumerate(f.face_ids.tolist()):
        r = records[fid]
        x1, y1, x2, y2 = r.box
        area = (x2 - x1) * (y2 - y1)
        if r.photo_id not in best or area > best[r.photo_id][0]:
            best[r.photo_id] = (area, i)
    pos = np.array(sorted(i for _a, i in best.values()), dtype=np.int64)
    people: dict[str, int] = {}
    true = np.empty(len(pos), dtype=np.int64)
    for j, i in enumerate(pos.tolist()):
        rel = Path(records[int(f.face_ids[i])].photo).resolve().relative_to(root)
        person = rel.parts[0] if len(rel.parts) > 1 else ""
        true[j] = people.setdefault(person, len(people))
    return f.xb[pos], true, f.photo_ids[pos]


__all__ = [
    "CROP_MARGIN",
    "LAST_FACE_KEY",
    "ClusterEvaluation",
    "ClusterReport",
    "Entry",
    "FaceRef",
    "RunStats",
    "apply_proposals",
    "cluster_collection",
    "crop_box",
    "evaluate_clusters",
    "export",
    "labelled_by_folder",
    "merge_clusters",
    "name_cluster",
    "proposal_threshold",
    "report",
    "split_cluster",
]
