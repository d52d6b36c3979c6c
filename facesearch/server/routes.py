"""The JSON API under ``/api/v1``: each endpoint parses, makes one library API call, renders.

Every listing takes ``limit`` (1..1000) and ``offset``; every error is
``{"error": {"code", "message"}}`` (:mod:`facesearch.server.errors`). Uploads are multipart
fields, read into memory within the server's body limit and decoded by the library with the
same checks as the CLI (broken, truncated, bomb -> 422 with the reason); nothing uploaded is
written anywhere but the multipart parser's temporary files.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.datastructures import UploadFile as StarletteUpload

from facesearch import api
from facesearch.indexer import Progress
from facesearch.model_upgrade import ReindexProgress
from facesearch.server import schemas as sc
from facesearch.server import views
from facesearch.server.app import Server
from facesearch.server.errors import ApiError
from facesearch.server.jobs import Job
from facesearch.thumbnails import (
    DEFAULT_SIDE,
    DEFAULT_SIZE,
    MAX_SIDE,
    MAX_SIZE,
    MIN_SIDE,
    MIN_SIZE,
    PhotoFile,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": sc.ErrorBody} for s in (400, 401, 403, 404, 409, 413, 415, 422, 500)
}
router = APIRouter(prefix="/api/v1", responses=_ERRORS)

JPEG_CROP: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "a JPEG crop"}
}
#: "Not this person" (``POST /faces/{id}/reject``) and ``GET /suggestions`` need the library's
#: rejections (``api.reject_face``, ``api.suggestions``), which it does not have yet: until
#: then those endpoints are absent and the page hides what uses them (``static/app.js`` has
#: the flows: reject buttons, the suggestions page).
REJECTIONS = False
#: Nearest people shown per identified face.
DEFAULT_K = 5
#: Faces of a cluster shown as samples in a listing.
DEFAULT_SAMPLES = 8


def get_server(request: Request) -> Server:
    server: Server = request.app.state.server
    return server


ServerDep = Annotated[Server, Depends(get_server)]
Limit = Annotated[int, Query(ge=1, le=api.MAX_LIMIT, description="items per page")]
Offset = Annotated[int, Query(ge=0, description="items to skip")]


async def _upload(field: str, upload: StarletteUpload) -> bytes:
    data = await upload.read()
    if not data:
        raise ApiError(422, "bad_image", f"the uploaded {field} is empty")
    return data


# -- collection ---------------------------------------------------------------------------------


@router.get("/collection", response_model=sc.CollectionOut, tags=["collection"])
def get_collection(
    server: ServerDep,
    check: Annotated[bool, Query(description="compare SQL and the vector index id by id")] = True,
) -> dict[str, Any]:
    """Counts, models, index type and the consistency of SQL and the vector index."""
    with server.collection() as col:
        info = api.collection_info(col, check=check)
    running = server.jobs.running()
    return views.collection(info, running.to_dict() if running is not None else None)


# -- identification -----------------------------------------------------------------------------


@router.post("/identify", response_model=sc.IdentifyOut, tags=["faces"])
async def identify(
    server: ServerDep,
    image: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, HEIC, ...)")],
    k: Annotated[int, Form(ge=1, le=100, description="nearest faces searched per face")] = (
        DEFAULT_K
    ),
    threshold: Annotated[float | None, Form(ge=0.0, le=4.0, description="tau on d")] = None,
) -> dict[str, Any]:
    """Who is in the photo: every face, left to right, with its verdict and nearest people."""
    data = await _upload("image", image)

    def run() -> api.IdentifyResult:
        with server.inference, server.collection() as col:
            return api.identify(col, data, models=server.models, k=k, threshold=threshold)

    return views.identified(await anyio.to_thread.run_sync(run))


@router.post("/verify", response_model=sc.VerifyOut, tags=["faces"])
async def verify(
    server: ServerDep,
    image_a: Annotated[UploadFile, File()],
    image_b: Annotated[UploadFile, File()],
    threshold: Annotated[float | None, Form(ge=0.0, le=4.0)] = None,
) -> dict[str, Any]:
    """Are the largest faces of two photos the same person (``d < threshold``)?"""
    a = await _upload("image_a", image_a)
    b = await _upload("image_b", image_b)

    def run() -> api.Verification:
        with server.inference:
            return api.verify(a, b, models=server.models, threshold=threshold)

    return views.verification(await anyio.to_thread.run_sync(run))


@router.post(
    "/faces/search",
    response_model=sc.SearchOut,
    tags=["faces"],
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": sc.SearchBody.model_json_schema()},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        "required": ["image"],
                    }
                },
            },
            "required": True,
        }
    },
)
async def search_faces(request: Request, server: ServerDep) -> dict[str, Any]:
    """The nearest stored faces of a stored face (JSON ``face_id``, ``k``) or of every face of
    an uploaded photo (multipart ``image``, ``k``). Vector search only: no verdict."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            body = sc.SearchBody.model_validate(json.loads(await request.body()))
        except ValueError as exc:
            raise ApiError(422, "invalid_request", _pydantic_reason(exc)) from exc

        def by_id() -> tuple[api.SimilarFaces, ...]:
            with server.collection() as col:
                return api.search_faces(col, face_id=body.face_id, k=body.k)

        return views.similar(await anyio.to_thread.run_sync(by_id))
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("image")
        if not isinstance(upload, StarletteUpload):
            raise ApiError(422, "invalid_request", "image: a file field named 'image' is needed")
        k = _form_int(form.get("k"), "k", default=10, lo=1, hi=api.MAX_LIMIT)
        data = await _upload("image", upload)

        def by_image() -> tuple[api.SimilarFaces, ...]:
            with server.inference, server.collection() as col:
                return api.search_faces(col, image=data, k=k, models=server.models)

        return views.similar(await anyio.to_thread.run_sync(by_image))
    raise ApiError(
        415,
        "unsupported_media_type",
        "send JSON {'face_id': ID, 'k': K} or a multipart form with an 'image' file",
    )


def _pydantic_reason(exc: Exception) -> str:
    from pydantic import ValidationError

    from facesearch.server.errors import validation_message

    if isinstance(exc, ValidationError):
        return validation_message(exc.errors())
    return f"body: not valid JSON ({exc})"


def _form_int(value: object, name: str, *, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    try:
        n = int(str(value))
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name}: not an integer: {value!r}") from None
    if not lo <= n <= hi:
        raise ApiError(422, "invalid_request", f"{name}: must be in {lo}..{hi}, got {n}")
    return n


# -- faces and photos ---------------------------------------------------------------------------


@router.get("/faces/{face_id}", response_model=sc.FaceOut, tags=["faces"])
def get_face(face_id: int, server: ServerDep) -> dict[str, Any]:
    """One stored face: box, landmarks, score, model, photo, person, cluster."""
    with server.collection() as col:
        return views.face(api.get_face(col, face_id))


@router.get(
    "/faces/{face_id}/thumbnail",
    response_class=Response,
    tags=["faces"],
    responses=JPEG_CROP,
)
def face_thumbnail(
    face_id: int,
    server: ServerDep,
    size: Annotated[int, Query(ge=MIN_SIZE, le=MAX_SIZE)] = DEFAULT_SIZE,
) -> Response:
    """The face cut from its photo (a square around the box with a margin), ``size`` pixels
    wide; made once and cached in the collection folder until the photo changes."""
    with server.collection() as col:
        f = api.get_face(col, face_id)
    data = server.thumbnails.cached_face(f.id, f.photo_path, size)
    if data is None:
        with server.collection() as col:
            p = api.get_photo(col, f.photo_id)
        data = server.thumbnails.face(f.id, f.box, PhotoFile(p.id, p.path, p.bytes), size)
    return _jpeg(data)


def _jpeg(data: bytes) -> Response:
    # ids are never reused and a face's crop only changes with its photo: cache for a while
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/photos/{photo_id}", response_model=sc.PhotoOut, tags=["faces"])
def get_photo(photo_id: int, server: ServerDep) -> dict[str, Any]:
    """A stored photo: path, pixel size, file size, status."""
    with server.collection() as col:
        p = api.get_photo(col, photo_id)
    return {**p.to_dict(), "image": f"{views.API}/photos/{p.id}/image"}


@router.get(
    "/photos/{photo_id}/image",
    response_class=Response,
    tags=["faces"],
    responses={200: {"content": {"image/jpeg": {}}, "description": "the downscaled photo"}},
)
def photo_image(
    photo_id: int,
    server: ServerDep,
    max_side: Annotated[int, Query(ge=MIN_SIDE, le=MAX_SIDE)] = DEFAULT_SIDE,
) -> Response:
    """The photo, scaled to a long side of at most ``max_side`` (boxes are drawn by the
    client, in the photo's own pixels: scale them by ``max_side / max(width, height)``)."""
    with server.collection() as col:
        p = api.get_photo(col, photo_id)
    data = server.thumbnails.cached_photo(p.id, p.path, max_side)
    if data is None:
        data = server.thumbnails.photo(PhotoFile(p.id, p.path, p.bytes), max_side)
    return _jpeg(data)


@router.post("/faces/{face_id}/assign", response_model=sc.FaceOut, tags=["faces"])
def assign_face(face_id: int, body: sc.AssignBody, server: ServerDep) -> dict[str, Any]:
    """Give the face to a person (a new name creates the person): a manual label."""
    with server.collection() as col:
        return views.face(api.assign_face(col, face_id, body.person))


@router.post("/faces/{face_id}/unassign", response_model=sc.FaceOut, tags=["faces"])
def unassign_face(face_id: int, server: ServerDep) -> dict[str, Any]:
    """Take the face's person away (it becomes unlabelled)."""
    with server.collection() as col:
        return views.face(api.unassign_face(col, face_id))


@router.delete("/faces/{face_id}", status_code=204, response_class=Response, tags=["faces"])
def delete_face(face_id: int, server: ServerDep) -> Response:
    """Delete the face for good: its row, its vector and its cached crops (the photo stays)."""
    with server.collection() as col:
        api.delete_face(col, face_id)
    server.thumbnails.forget_faces([face_id])
    return Response(status_code=204)


# -- people -------------------------------------------------------------------------------------


@router.get("/people", response_model=sc.Page[sc.PersonOut], tags=["people"])
def list_people(server: ServerDep, limit: Limit = 100, offset: Offset = 0) -> dict[str, Any]:
    """People by name, with their face and photo counts."""
    with server.collection() as col:
        return views.page(api.list_people(col, limit=limit, offset=offset), views.person)


@router.post("/people", response_model=sc.PersonOut, status_code=201, tags=["people"])
def create_person(body: sc.NewPerson, server: ServerDep) -> dict[str, Any]:
    """A new person, optionally given faces (manual labels)."""
    with server.collection() as col:
        return views.person(api.create_person(col, body.name, face_ids=body.face_ids))


@router.get("/people/{person_id}", response_model=sc.PersonDetail, tags=["people"])
def get_person(
    person_id: int, server: ServerDep, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    """A person and one page of their faces."""
    with server.collection() as col:
        p = api.get_person(col, person_id)
        faces = api.person_faces(col, person_id, limit=limit, offset=offset)
        return {"person": views.person(p), "faces": views.page(faces, views.face)}


@router.get(
    "/people/{person_id}/thumbnail",
    response_class=Response,
    tags=["people"],
    responses=JPEG_CROP,
)
def person_thumbnail(
    person_id: int,
    server: ServerDep,
    size: Annotated[int, Query(ge=MIN_SIZE, le=MAX_SIZE)] = DEFAULT_SIZE,
) -> Response:
    """A crop of the person's first face (404 when they have none)."""
    with server.collection() as col:
        faces = api.person_faces(col, person_id, limit=1).items
    if not faces:
        raise ApiError(404, "not_found", f"person {person_id} has no faces")
    return face_thumbnail(faces[0].id, server, size)


@router.patch("/people/{person_id}", response_model=sc.PersonOut, tags=["people"])
def rename_person(person_id: int, body: sc.Rename, server: ServerDep) -> dict[str, Any]:
    """Rename a person (to merge two people use ``/people/{id}/merge``)."""
    with server.collection() as col:
        return views.person(api.rename_person(col, person_id, body.name))


@router.post("/people/{person_id}/merge", response_model=sc.MergedPeople, tags=["people"])
def merge_people(person_id: int, body: sc.MergePeople, server: ServerDep) -> dict[str, Any]:
    """Move every face of this person to ``into`` and delete this person."""
    with server.collection() as col:
        moved = api.merge_people(col, person_id, body.into)
        return {"into": views.person(api.get_person(col, body.into)), "faces_moved": moved}


@router.delete("/people/{person_id}", response_model=sc.PersonDeletedOut, tags=["people"])
def delete_person(
    person_id: int,
    server: ServerDep,
    faces: Annotated[
        Literal["keep", "delete"],
        Query(description="keep: the faces stay, unlabelled; delete: they are deleted too"),
    ] = "keep",
) -> dict[str, Any]:
    """Delete a person; their faces stay unlabelled, or are deleted with them."""
    with server.collection() as col:
        doomed = (
            [f.id for f in api.iterate(api.person_faces, col, person_id)]
            if faces == "delete"
            else []
        )
        gone = api.delete_person(col, person_id, delete_faces=faces == "delete")
    server.thumbnails.forget_faces(doomed)
    return {
        "id": gone.id,
        "name": gone.name,
        "faces_unlabelled": gone.faces_unlabelled,
        "faces_deleted": gone.faces_deleted,
    }


# -- clusters -----------------------------------------------------------------------------------


@router.get("/clusters", response_model=sc.Page[sc.ClusterOut], tags=["clusters"])
def list_clusters(
    server: ServerDep,
    limit: Limit = 50,
    offset: Offset = 0,
    samples: Annotated[int, Query(ge=0, le=100, description="sample face ids per cluster")] = (
        DEFAULT_SAMPLES
    ),
) -> dict[str, Any]:
    """Clusters without a person, largest first, each with a few sample face ids."""
    with server.collection() as col:
        clusters = api.list_clusters(col, unnamed=True, limit=limit, offset=offset, samples=samples)
    return views.page(clusters, views.cluster)


@router.get("/clusters/{cluster_id}", response_model=sc.ClusterDetail, tags=["clusters"])
def get_cluster(
    cluster_id: int, server: ServerDep, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    """A cluster and one page of its faces."""
    with server.collection() as col:
        c = api.get_cluster(col, cluster_id, samples=DEFAULT_SAMPLES)
        faces = api.cluster_faces(col, cluster_id, limit=limit, offset=offset)
    return {"cluster": views.cluster(c), "faces": views.page(faces, views.face)}


@router.post("/clusters/{cluster_id}/name", response_model=sc.NamedCluster, tags=["clusters"])
def name_cluster(cluster_id: int, body: sc.NameCluster, server: ServerDep) -> dict[str, Any]:
    """The cluster becomes that person (new, or an existing person gets its faces)."""
    with server.collection() as col:
        n = api.name_cluster(col, cluster_id, body.name)
        return {"person": views.person(api.get_person(col, body.name)), "faces_labelled": n}


@router.post("/clusters/merge", response_model=sc.MergedClusters, tags=["clusters"])
def merge_clusters(body: sc.MergeClusters, server: ServerDep) -> dict[str, Any]:
    """Merge clusters into the first id given."""
    with server.collection() as col:
        api.merge_clusters(col, body.ids)
        return {
            "cluster": views.cluster(api.get_cluster(col, body.ids[0], samples=DEFAULT_SAMPLES))
        }


@router.post("/clusters/{cluster_id}/split", response_model=sc.SplitOut, tags=["clusters"])
def split_cluster(cluster_id: int, body: sc.SplitCluster, server: ServerDep) -> dict[str, Any]:
    """Take these faces out of the cluster (each is alone afterwards)."""
    with server.collection() as col:
        left = api.split_cluster(col, cluster_id, face_ids=body.face_ids)
        rest = api.get_cluster(col, cluster_id, samples=DEFAULT_SAMPLES) if left else None
    return {
        "cluster": None if rest is None else views.cluster(rest),
        "removed": sorted(set(body.face_ids)),
    }


@router.post("/cluster", response_model=sc.ClusterRunOut, tags=["clusters"])
def run_clustering(server: ServerDep, body: sc.ClusterRun | None = None) -> dict[str, Any]:
    """Cluster the faces (only those new since the last run, unless ``full``)."""
    full = body.full if body is not None else False
    with server.collection() as col:
        report = api.cluster(col, full=full)
        unnamed = api.list_clusters(col, unnamed=True, limit=1, samples=0).total
    stats = report.stats
    assert stats is not None
    return {
        "mode": stats.mode,
        "faces": stats.faces,
        "new_faces": stats.new_faces,
        "clusters_created": stats.clusters_created,
        "joined_existing": stats.joined_existing,
        "seconds": round(stats.seconds, 3),
        "unnamed_clusters": unnamed,
    }


# -- jobs ---------------------------------------------------------------------------------------


def _index_work(server: Server, paths: list[str], labels: str | None, prune: bool) -> Any:
    def work(job: Job) -> tuple[dict[str, Any], bool]:
        def progress(p: Progress) -> None:
            job.report(done=p.done, total=p.total, faces=p.faces, failures=p.failed)

        with server.open(lock_timeout=server.settings.job_lock_timeout) as col:
            report = api.index_paths(
                col,
                paths,
                models=server.job_models,
                labels=labels,
                prune=prune,
                progress=progress,
                should_stop=job.stop,
            )
        job.report(faces=report.faces_added, failures=report.failed)
        return report.to_dict(), report.interrupted

    return work


@router.post("/jobs/index", response_model=sc.JobOut, status_code=202, tags=["jobs"])
def start_index(body: sc.IndexJob, server: ServerDep) -> dict[str, Any]:
    """Index folders or files on the server's disk in the background (one job at a time)."""
    params = {"paths": body.paths, "labels": body.labels, "prune": body.prune}
    job = server.jobs.submit(
        "index", params, _index_work(server, body.paths, body.labels, body.prune)
    )
    return job.to_dict()


@router.post("/jobs/reindex", response_model=sc.JobOut, status_code=202, tags=["jobs"])
def start_reindex(server: ServerDep, body: sc.ReindexJob | None = None) -> dict[str, Any]:
    """Re-embed the stored faces with a model in the background (resumable; one job at a time)."""
    body = body or sc.ReindexJob(model="sface", re_embed_all=False)

    def work(job: Job) -> tuple[dict[str, Any], bool]:
        def progress(p: ReindexProgress) -> None:  # counts faces, not photos
            job.report(done=p.done, total=p.total)

        with server.open(lock_timeout=server.settings.job_lock_timeout) as col:
            report = api.reindex(
                col,
                body.model,
                models=server.job_models,
                re_embed_all=body.re_embed_all,
                progress=progress,
                should_stop=job.stop,
            )
        return report.to_dict(), report.interrupted

    params = {"model": body.model, "re_embed_all": body.re_embed_all}
    return server.jobs.submit("reindex", params, work, unit="faces").to_dict()


@router.get("/jobs", response_model=list[sc.JobOut], tags=["jobs"])
def list_jobs(server: ServerDep) -> list[dict[str, Any]]:
    """The jobs this server ran or runs, newest first."""
    return [j.to_dict() for j in server.jobs.list()]


@router.get("/jobs/{job_id}", response_model=sc.JobOut, tags=["jobs"])
def get_job(job_id: int, server: ServerDep) -> dict[str, Any]:
    """A job's state and progress (photos done of total, faces, failures)."""
    return server.jobs.get(job_id).to_dict()


@router.delete("/jobs/{job_id}", response_model=sc.JobOut, tags=["jobs"])
def cancel_job(job_id: int, server: ServerDep) -> dict[str, Any]:
    """Cancel a job: it stops at its next commit, keeping what was committed."""
    return server.jobs.cancel(job_id).to_dict()


__all__ = ["router"]
