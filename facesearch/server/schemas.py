"""The JSON shapes of the API (pydantic models): request bodies and responses.

They are the contract the OpenAPI document at ``/api/v1/openapi.json`` publishes. Boxes are
``[x1, y1, x2, y2]`` and landmarks 5 ``[x, y]`` points, in pixels of the original photo (EXIF
orientation applied); ``d`` is the distance ``|f(a) - f(b)|^2`` (0 identical, 4 opposite;
smaller is more alike). Ids are integers.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

Box = list[float]
Landmarks = list[list[float]]


class _Body(BaseModel):
    """Request bodies refuse unknown fields (a typo is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid")


# -- common -------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. not_found, writer_busy")
    message: str = Field(description="what was wrong and what to do, for a person")


class ErrorBody(BaseModel):
    error: ErrorDetail


class Page(BaseModel, Generic[T]):
    """One page of a listing: ``items`` from ``offset``; ``next_offset`` is ``null`` at the end."""

    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class PersonRef(BaseModel):
    id: int
    name: str


class PhotoRef(BaseModel):
    id: int
    path: str


# -- collection ---------------------------------------------------------------------------------


class Consistency(BaseModel):
    consistent: bool
    index_status: str
    sql_faces: int
    index_faces: int
    reason: str | None


class CollectionOut(BaseModel):
    name: str
    photos: int
    faces: int
    people: int
    labelled_faces: int
    clusters: int
    failed_photos: int
    active_model: str | None
    models: list[str]
    index_type: str | None = Field(description="flat, pq or ivf (null before any face)")
    index_setting: str
    consistency: Consistency | None
    writer: JobOut | None = Field(description="the job writing to the collection, if any")


# -- faces --------------------------------------------------------------------------------------


class FaceOut(BaseModel):
    id: int
    box: Box
    landmarks: Landmarks
    score: float
    model: str
    photo: PhotoRef
    person: PersonRef | None
    label_source: str | None
    cluster: int | None
    thumbnail: str = Field(description="URL of the face's JPEG crop")


class PersonMatch(BaseModel):
    person: str
    d: float
    face_id: int = Field(description="the person's nearest face")
    faces: int = Field(description="the person's faces among the k nearest")


class IdentifiedFace(BaseModel):
    box: Box
    landmarks: Landmarks
    score: float
    person: str | None = Field(description="the verdict: a name, or null (unknown)")
    d: float | None = Field(description="d to the nearest labelled face found (null: none)")
    matches: list[PersonMatch] = Field(description="nearest people, nearest first")


class IdentifyOut(BaseModel):
    faces: list[IdentifiedFace]
    threshold: float
    model: str


class VerifyOut(BaseModel):
    same: bool
    d: float
    threshold: float
    box_a: Box
    box_b: Box
    model: str


class FaceMatch(BaseModel):
    face_id: int
    d: float
    person: str | None
    photo: str


class SearchResult(BaseModel):
    face_id: int | None = Field(description="the stored query face (null for a photo's face)")
    box: Box | None = Field(description="the query face's box in the uploaded photo")
    matches: list[FaceMatch]


class SearchOut(BaseModel):
    results: list[SearchResult]


class SearchBody(_Body):
    face_id: int
    k: int = Field(10, ge=1, le=1000)


class AssignBody(_Body):
    person: int | str = Field(description="person id, or name (created when new)")


class RejectBody(_Body):
    person: int | str = Field(description="person id or name this face is not")


class PhotoOut(BaseModel):
    id: int
    path: str
    width: int | None
    height: int | None
    bytes: int
    status: str
    error: str | None
    faces: int
    image: str = Field(description="URL of the downscaled JPEG")


# -- people -------------------------------------------------------------------------------------


class PersonOut(BaseModel):
    id: int
    name: str
    faces: int
    photos: int
    thumbnail: str | None = Field(description="URL of a crop of one of their faces")


class PersonDetail(BaseModel):
    person: PersonOut
    faces: Page[FaceOut]


class NewPerson(_Body):
    name: str = Field(min_length=1, max_length=255)
    face_ids: list[int] = Field(default_factory=list, max_length=10000)


class Rename(_Body):
    name: str = Field(min_length=1, max_length=255)


class MergePeople(_Body):
    into: int | str = Field(description="person id or name that receives the faces")


class MergedPeople(BaseModel):
    into: PersonOut
    faces_moved: int


class PersonDeletedOut(BaseModel):
    id: int
    name: str
    faces_unlabelled: int
    faces_deleted: int


# -- clusters -----------------------------------------------------------------------------------


class ClusterOut(BaseModel):
    id: int
    size: int
    person: PersonRef | None
    manual: bool
    sample_face_ids: list[int]


class ClusterDetail(BaseModel):
    cluster: ClusterOut
    faces: Page[FaceOut]


class NameCluster(_Body):
    name: str = Field(min_length=1, max_length=255, description="a new or existing person")


class NamedCluster(BaseModel):
    person: PersonOut
    faces_labelled: int


class MergeClusters(_Body):
    ids: list[int] = Field(min_length=2, max_length=1000, description="merged into the first")


class MergedClusters(BaseModel):
    cluster: ClusterOut


class SplitCluster(_Body):
    face_ids: list[int] = Field(min_length=1, max_length=10000)


class SplitOut(BaseModel):
    cluster: ClusterOut | None = Field(description="what is left of the cluster (null: empty)")
    removed: list[int]


class ClusterRun(_Body):
    full: bool = Field(False, description="start over instead of placing only new faces")


class ClusterRunOut(BaseModel):
    mode: str
    faces: int
    new_faces: int
    clusters_created: int
    joined_existing: int
    seconds: float
    unnamed_clusters: int


class Suggestion(BaseModel):
    kind: Literal["face", "cluster"]
    id: int = Field(description="face id or cluster id")
    face_id: int = Field(description="the face to show")
    person: PersonRef
    d: float
    person_face_ids: list[int] = Field(description="a few of the person's faces to compare")


# -- jobs ---------------------------------------------------------------------------------------


class JobProgress(BaseModel):
    unit: Literal["photos", "faces"] = Field(description="what done and total count")
    done: int
    total: int | None = Field(description="null until the files are counted")
    faces: int = Field(description="faces stored so far")
    failures: int = Field(description="photos that could not be read so far")


class JobOut(BaseModel):
    id: int
    kind: Literal["index", "reindex"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    params: dict[str, object]
    progress: JobProgress
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: dict[str, object] | None
    error: ErrorDetail | None


class IndexJob(_Body):
    paths: list[str] = Field(min_length=1, max_length=1000, description="folders or files")
    labels: str | None = Field(
        None,
        description="'folders' (a photo's folder names its face) or the path of a "
        "'path,person' CSV file on the server",
    )
    prune: bool = False


class ReindexJob(_Body):
    model: str = Field("sface", description="'sface' or a registered model file")
    re_embed_all: bool = False


CollectionOut.model_rebuild()
