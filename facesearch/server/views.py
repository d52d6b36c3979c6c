"""The JSON of every resource, built from library API results.

The API routes return these dicts (validated against :mod:`facesearch.server.schemas`) and the
HTML pages render the very same dicts, so a page always shows what the API says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from facesearch import api

T = TypeVar("T")

API = "/api/v1"


def rounded(v: float, places: int = 4) -> float:
    return round(float(v), places)


def box(b: Sequence[float]) -> list[float]:
    return [round(float(v), 1) for v in b]


def landmarks(points: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points]


def thumbnail_url(face_id: int) -> str:
    return f"{API}/faces/{int(face_id)}/thumbnail"


def page(p: api.Page[T], render: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    """A library page as the API's ``Page`` (``next_offset`` null at the end)."""
    end = p.offset + len(p.items)
    return {
        "items": [render(i) for i in p.items],
        "total": p.total,
        "limit": p.limit,
        "offset": p.offset,
        "next_offset": end if end < p.total else None,
    }


def face(f: api.FaceInfo) -> dict[str, Any]:
    return {
        "id": f.id,
        "box": box(f.box),
        "landmarks": landmarks(f.landmarks),
        "score": rounded(f.score),
        "model": f.model,
        "photo": {"id": f.photo_id, "path": f.photo_path},
        "person": None if f.person_id is None else {"id": f.person_id, "name": f.person},
        "label_source": f.label_source,
        "cluster": f.cluster_id,
        "thumbnail": thumbnail_url(f.id),
    }


def person(p: api.PersonInfo) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "faces": p.faces,
        "photos": p.photos,
        "thumbnail": f"{API}/people/{p.id}/thumbnail" if p.faces else None,
    }


def cluster(c: api.ClusterInfo) -> dict[str, Any]:
    return {
        "id": c.id,
        "size": c.size,
        "person": None if c.person_id is None else {"id": c.person_id, "name": c.person},
        "manual": c.manual,
        "sample_face_ids": list(c.sample_face_ids),
    }


def identified(result: api.IdentifyResult) -> dict[str, Any]:
    faces = []
    for ident in result.faces:
        det = ident.face.detection if ident.face is not None else None
        faces.append(
            {
                "box": box(det.box) if det is not None else [],
                "landmarks": landmarks(det.landmarks) if det is not None else [],
                "score": rounded(det.score) if det is not None else 0.0,
                "person": ident.person,
                "d": None if ident.distance is None else rounded(ident.distance),
                "matches": [
                    {
                        "person": g.person,
                        "d": rounded(g.distance),
                        "face_id": g.face_id,
                        "faces": g.count,
                    }
                    for g in ident.groups
                    if g.person is not None
                ],
            }
        )
    return {"faces": faces, "threshold": rounded(result.threshold), "model": result.model}


def verification(v: api.Verification) -> dict[str, Any]:
    best = v.best
    return {
        "same": v.same,
        "d": rounded(v.distance),
        "threshold": rounded(v.threshold),
        "box_a": box(best.box_a),
        "box_b": box(best.box_b),
        "model": v.model,
    }


def similar(results: Sequence[api.SimilarFaces]) -> dict[str, Any]:
    return {
        "results": [
            {
                "face_id": r.face_id,
                "box": None if r.face is None else box(r.face.detection.box),
                "matches": [
                    {
                        "face_id": m.face_id,
                        "d": rounded(m.distance),
                        "person": m.person,
                        "photo": m.photo,
                    }
                    for m in r.matches
                ],
            }
            for r in results
        ]
    }


def collection(info: api.CollectionInfo, writer: dict[str, Any] | None) -> dict[str, Any]:
    d = info.to_dict()
    c = d.get("consistency")
    index = d.get("index", {})
    return {
        "name": info.name,
        "photos": info.photos,
        "faces": info.faces,
        "people": info.people,
        "labelled_faces": int(d.get("labelled_faces", 0)),
        "clusters": info.clusters,
        "failed_photos": int(d.get("failed_photos", 0)),
        "active_model": info.active_model,
        "models": [m["name"] for m in d.get("models", [])],
        "index_type": info.index_type,
        "index_setting": str(index.get("setting", "auto")),
        "consistency": None
        if c is None
        else {
            "consistent": bool(c["consistent"]),
            "index_status": str(c["index_status"]),
            "sql_faces": int(c["sql_faces"]),
            "index_faces": int(c["index_faces"]),
            "reason": c.get("reason"),
        },
        "writer": writer,
    }
