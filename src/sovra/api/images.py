"""/v1/images: image lines, their versions, uploads and downloads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from sovra.api.deps import DB, Config, Context, IfMatch, parse_if_match
from sovra.api.listing import Listing, visible_page
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse
from sovra.auth import policy
from sovra.auth.context import RequestContext
from sovra.domain.edges import RelatedResource
from sovra.domain.errors import Conflict, InvalidArgument, NotFound
from sovra.domain.image import (
    IMAGE_KIND,
    IMAGE_VERSION_KIND,
    ImageSpec,
    ImageVersionSpec,
    UrlSource,
    VersionFacts,
    VersionState,
    Visibility,
    validate_image_name,
    validate_version,
)
from sovra.domain.labels import validate_labels
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource, Status
from sovra.images import gc, lifecycle, trust, versions
from sovra.images.blobstore import BlobNotFound, BlobStore
from sovra.images.ingest import Ingest
from sovra.images.inspection import ImageRejected, InspectionPolicy
from sovra.images.pipeline import IMPORT_VERB, PREPARE_VERB
from sovra.store import graph
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.types import utcnow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["images"], responses=PROBLEM_RESPONSES)
CHUNK = 1024 * 1024


class ImageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40)
    labels: Labels = Field(default_factory=dict)
    spec: ImageSpec = Field(default_factory=ImageSpec)


class ImagePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = None
    spec: ImageSpec | None = None


class Image(BaseModel):
    id: str
    kind: str = IMAGE_KIND
    name: str
    project_id: str | None
    labels: dict[str, str]
    spec: ImageSpec
    status: Status
    generation: int
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource) -> Image:
        return cls(
            **resource.model_dump(exclude={"kind", "spec", "public"}),
            spec=ImageSpec.model_validate(resource.spec),
        )


class ImageVersion(BaseModel):
    id: str
    kind: str = IMAGE_VERSION_KIND
    name: str
    image_id: str
    project_id: str | None
    spec: ImageVersionSpec
    state: VersionState
    facts: VersionFacts
    operation_id: str | None
    hidden: bool = Field(default=False, description="Superseded: left out of default lists.")
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource, hidden: bool = False) -> ImageVersion:
        spec = dict(resource.spec)
        image_id = spec.pop("image_id")
        return cls(
            id=resource.id,
            name=resource.name,
            image_id=image_id,
            project_id=resource.project_id,
            spec=ImageVersionSpec.model_validate(spec),
            state=VersionState(resource.status.state),
            facts=versions.facts_of(resource),
            operation_id=resource.status.operation_id,
            hidden=hidden,
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


def _blobs(request: Request) -> BlobStore:
    store: BlobStore = request.app.state.blobs
    return store


def version_of_image(db: Database, ctx: RequestContext, image_id: str, version_id: str) -> Resource:
    with db.read() as conn:
        version = resource_store.get(conn, version_id, kind=IMAGE_VERSION_KIND, project_ids=ctx.project_ids)
    if version.spec.get("image_id") != image_id:
        raise NotFound(f"image {image_id} has no version {version_id!r}")
    return version


# -- images -----------------------------------------------------------------------------------


@router.post("/projects/{project_id}/images", status_code=status.HTTP_201_CREATED, response_model=Image)
def create_image(project_id: str, body: ImageCreate, ctx: Context, db: DB, response: Response) -> Image:
    validate_image_name(body.name)
    validate_labels(body.labels)
    public = body.spec.visibility == Visibility.PUBLIC
    if public:
        policy.ensure_can_publish(ctx)
    with db.write() as conn:
        image = resource_store.create(
            conn,
            kind=IMAGE_KIND,
            name=body.name,
            project_id=project_id,
            labels=body.labels,
            spec=body.spec.model_dump(mode="json"),
            state="ACTIVE",
            public=public,
        )
    response.headers["Location"] = f"/v1/images/{image.id}"
    response.headers["ETag"] = image.etag
    return Image.of(image)


@router.get("/images", response_model=ListResponse[Image])
def list_images(ctx: Context, db: DB, settings: Config, query: Listing) -> ListResponse[Image]:
    """Images of the caller's projects and every public image."""
    return visible_page(db, ctx, settings, IMAGE_KIND, query, lambda _conn, r: Image.of(r))


@router.get("/images/{image_id}", response_model=Image)
def get_image(image_id: str, ctx: Context, db: DB, response: Response) -> Image:
    with db.read() as conn:
        image = resource_store.get(conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids)
    response.headers["ETag"] = image.etag
    return Image.of(image)


@router.patch("/images/{image_id}", response_model=Image)
def update_image(
    image_id: str, body: ImagePatch, ctx: Context, db: DB, response: Response, if_match: IfMatch = None
) -> Image:
    if body.labels is not None:
        validate_labels(body.labels)
    with db.write() as conn:
        current = resource_store.get(
            conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids, for_update=True
        )
        expected = parse_if_match(if_match)
        spec = None
        if body.spec is not None:
            spec = body.spec.model_dump(mode="json")
            public = body.spec.visibility == Visibility.PUBLIC
            if public != current.public:
                policy.ensure_can_publish(ctx)
                owned = [
                    r.id
                    for r in graph.dependents(conn, image_id, max_depth=1)
                    if r.kind == IMAGE_VERSION_KIND
                ]
                resource_store.set_public(conn, [image_id, *owned], public)
        image = resource_store.update(
            conn, image_id, expected_version=expected, labels=body.labels, spec=spec
        )
    response.headers["ETag"] = image.etag
    return Image.of(image)


@router.delete("/images/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(image_id: str, ctx: Context, db: DB) -> Response:
    """Only an image without versions goes at once; delete its versions first."""
    with db.write() as conn:
        resource_store.get(conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids, for_update=True)
        remaining = [r for r in graph.dependents(conn, image_id, max_depth=1) if r.kind == IMAGE_VERSION_KIND]
        if remaining:
            raise Conflict(
                f"image {image_id} still has {len(remaining)} version(s): "
                + ", ".join(r.name for r in remaining[:10])
                + "; delete them first",
                dependents=[r.model_dump(mode="json") for r in remaining],
            )
        resource_store.delete(conn, [image_id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- versions ---------------------------------------------------------------------------------


class VersionCreate(ImageVersionSpec):
    request_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")


@router.post("/images/{image_id}/versions", status_code=status.HTTP_201_CREATED, response_model=ImageVersion)
def create_version(
    image_id: str, body: VersionCreate, ctx: Context, db: DB, response: Response
) -> ImageVersion:
    """Register a version. Upload its bytes to ``…/file``; a ``url`` source is imported by an
    operation at once (its id is in ``operation_id``)."""
    validate_version(body.version)
    spec = ImageVersionSpec.model_validate(body.model_dump(exclude={"request_id"}))
    with db.write() as conn:
        image = resource_store.get(
            conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids, for_update=True
        )
        version = versions.create_version(conn, image, spec)
        if isinstance(spec.source, UrlSource):
            operation_store.create(
                conn,
                verb=IMPORT_VERB,
                principal=ctx.principal,
                project_id=version.project_id,
                target_id=version.id,
                target_kind=IMAGE_VERSION_KIND,
                request_id=body.request_id,
                origin_request_id=ctx.request_id,
            )
            version = resource_store.get(conn, version.id)
    response.headers["Location"] = f"/v1/images/{image_id}/versions/{version.id}"
    return ImageVersion.of(version)


@router.get("/images/{image_id}/versions", response_model=ListResponse[ImageVersion])
def list_versions(
    image_id: str,
    ctx: Context,
    db: DB,
    show_hidden: Annotated[bool, Query(description="Include superseded versions.")] = True,
) -> ListResponse[ImageVersion]:
    with db.read() as conn:
        image = resource_store.get(conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids)
        all_versions = lifecycle.versions_of(conn, image_id)
    hidden = set(lifecycle.plan_for(image, all_versions, utcnow().date()).hidden)
    items = [ImageVersion.of(v, v.id in hidden) for v in sorted(all_versions, key=lambda v: v.id)]
    return ListResponse[ImageVersion](items=[i for i in items if show_hidden or not i.hidden])


class LifecycleAction(BaseModel):
    version_id: str
    version: str
    current: VersionState
    target: VersionState
    reason: str
    affected_servers: list[RelatedResource]


class LifecyclePlan(BaseModel):
    image_id: str
    actions: list[LifecycleAction]
    hidden: list[str]

    @classmethod
    def of(cls, plan: lifecycle.Plan) -> LifecyclePlan:
        return cls(
            image_id=plan.image_id,
            hidden=plan.hidden,
            actions=[LifecycleAction(**vars(a)) for a in plan.actions],
        )


@router.get("/images/{image_id}/lifecycle", response_model=LifecyclePlan)
def image_lifecycle(image_id: str, ctx: Context, db: DB) -> LifecyclePlan:
    """What retention and deprecation will do next, and which servers each step affects."""
    with db.read() as conn:
        image = resource_store.get(conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids)
        return LifecyclePlan.of(lifecycle.plan(conn, image, utcnow().date()))


@router.post("/images/{image_id}/lifecycle:apply", response_model=LifecyclePlan)
def apply_image_lifecycle(image_id: str, request: Request, ctx: Context, db: DB) -> LifecyclePlan:
    """Carry out the plan now instead of at the next housekeeping round."""
    with db.write() as conn:
        image = resource_store.get(
            conn, image_id, kind=IMAGE_KIND, project_ids=ctx.project_ids, for_update=True
        )
        plan = lifecycle.apply(conn, image, utcnow().date())
    gc.collect(db, _blobs(request))
    return LifecyclePlan.of(plan)


def _move_version(
    db: Database, ctx: RequestContext, image_id: str, version_id: str, target: VersionState, reason: str
) -> ImageVersion:
    version = version_of_image(db, ctx, image_id, version_id)
    with db.write() as conn:
        if target == VersionState.ACTIVE and trust.requires_signature(conn, version.project_id or ""):
            verdict = trust.verify_version(conn, version)
            if not verdict.trusted:
                raise Conflict(
                    f"version {version.name} cannot become active: its project requires a trusted "
                    f"signature ({verdict.reason})"
                )
        moved = versions.move(conn, version_id, target, lifecycle_reason=reason)
    return ImageVersion.of(moved)


@router.post("/images/{image_id}/versions/{version_id}:deprecate", response_model=ImageVersion)
def deprecate_version(image_id: str, version_id: str, ctx: Context, db: DB) -> ImageVersion:
    """Running servers keep it; new servers cannot use it."""
    return _move_version(
        db, ctx, image_id, version_id, VersionState.DEPRECATED, f"deprecated by {ctx.principal}"
    )


@router.post("/images/{image_id}/versions/{version_id}:promote", response_model=ImageVersion)
def promote_version(image_id: str, version_id: str, ctx: Context, db: DB) -> ImageVersion:
    """Make a deprecated version active again."""
    return _move_version(db, ctx, image_id, version_id, VersionState.ACTIVE, f"promoted by {ctx.principal}")


@router.get("/images/{image_id}/versions/{version_id}", response_model=ImageVersion)
def get_version(image_id: str, version_id: str, ctx: Context, db: DB) -> ImageVersion:
    return ImageVersion.of(version_of_image(db, ctx, image_id, version_id))


class _Pump:
    """Hand request chunks to a thread that hashes, inspects and writes them, so the event loop
    keeps receiving while the CPU work runs (hashlib releases the GIL on large buffers)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=64)  # ~64 server reads
        self.error: BaseException | None = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (chunk := self.chunks.get()) is not None:
            if self.error is None and not self.cancelled:
                try:
                    self.ingest.feed(chunk)
                except BaseException as exc:
                    self.error = exc

    async def _offload(self, chunk: bytes | None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.chunks.put, chunk)

    async def put(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        try:
            self.chunks.put_nowait(chunk)  # the usual case: no thread hop
        except queue.Full:
            await self._offload(chunk)  # back-pressure: wait off the event loop

    async def close(self, cancel: bool = False) -> None:
        """Wait for the thread to finish what it was given; raise what it raised."""
        self.cancelled = self.cancelled or cancel
        await self._offload(None)
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join)
        if self.error is not None and not cancel:
            raise self.error


async def _receive(request: Request, ingest: Ingest) -> None:
    """Feed the request body to ``ingest`` as it arrives; abort it on any failure.

    Pieces go as the server read them (about 200 KiB): the inspector re-buffers what it needs, so
    copying them into bigger chunks here would only cost a pass over every byte."""
    pump = _Pump(ingest)
    try:
        async for piece in request.stream():
            if piece:
                await pump.put(piece)
        await pump.close()
    except BaseException:
        if pump.thread.is_alive():
            await pump.close(cancel=True)
        ingest.abort()
        raise


def _start_upload(db: Database, ctx: RequestContext, image_id: str, version_id: str) -> Resource:
    version = version_of_image(db, ctx, image_id, version_id)
    if version.spec["source"]["type"] != "upload":
        raise Conflict(f"version {version.name} is imported from a URL; it takes no upload")
    if version.status.state != VersionState.IMPORTING:
        raise Conflict(
            f"version {version.name} is {version.status.state}; bytes are accepted only while importing"
        )
    return version


def _queue_prepare(
    ctx: RequestContext, version: Resource, created: list[Operation]
) -> Callable[[Connection], None]:
    def queue(conn: Connection) -> None:
        operation, _ = operation_store.create(
            conn,
            verb=PREPARE_VERB,
            principal=ctx.principal,
            project_id=version.project_id,
            target_id=version.id,
            target_kind=IMAGE_VERSION_KIND,
            origin_request_id=ctx.request_id,
        )
        created.append(operation)

    return queue


def _record_failure(db: Database, version_id: str, reason: str) -> None:
    with db.write() as conn:
        versions.fail(conn, version_id, reason)


@router.put(
    "/images/{image_id}/versions/{version_id}/file",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Operation,
    openapi_extra={
        "requestBody": {
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "required": True,
        }
    },
)
async def upload_version_file(
    image_id: str,
    version_id: str,
    request: Request,
    ctx: Context,
    db: DB,
    settings: Config,
    response: Response,
) -> Operation:
    """Stream the image bytes. They are hashed and inspected as they arrive and stored only when
    every check passes; then an operation converts, boot-tests and promotes the version."""
    version = await run_in_threadpool(_start_upload, db, ctx, image_id, version_id)
    source = version.spec["source"]
    ingest = Ingest(
        _blobs(request),
        InspectionPolicy(max_virtual_size=settings.image_max_virtual_size),
        declared_format=source.get("declared_format"),
        declared_sha256=source.get("declared_sha256"),
        with_sha512=settings.image_sha512,
        max_bytes=settings.image_max_bytes,
    )
    store = _blobs(request)
    created: list[Operation] = []
    try:
        await _receive(request, ingest)
        await run_in_threadpool(
            versions.store_ingest, db, store, ingest, version.id, _queue_prepare(ctx, version, created)
        )
    except ImageRejected as exc:
        await run_in_threadpool(_record_failure, db, version.id, f"{exc.code}: {exc.message}")
        raise
    except ClientDisconnect:
        await run_in_threadpool(_record_failure, db, version.id, "UPLOAD_INTERRUPTED: the client went away")
        raise
    [operation] = created
    response.headers["Location"] = f"/v1/operations/{operation.id}"
    return operation


@router.get(
    "/images/{image_id}/versions/{version_id}/file",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "A range"}},
)
def download_version_file(image_id: str, version_id: str, request: Request, ctx: Context, db: DB) -> Response:
    """The bytes hosts receive (the converted disk once there is one), with HTTP ranges."""
    version = version_of_image(db, ctx, image_id, version_id)
    facts = versions.facts_of(version)
    digest = facts.disk_blob or facts.source_blob
    if digest is None:
        raise Conflict(f"version {version.name} has no bytes yet ({version.status.state})")
    with db.read() as conn:
        if trust.requires_signature(conn, version.project_id or ""):
            verdict = trust.verify_version(conn, version)
            if not verdict.trusted:
                raise Conflict(
                    f"version {version.name} is not served: its project requires a trusted "
                    f"signature ({verdict.reason})"
                )
    store = _blobs(request)
    try:
        size = store.size(digest)
    except BlobNotFound:
        raise Conflict(
            f"version {version.name} is {version.status.state} and its bytes were collected"
        ) from None
    start, end = _range(request.headers.get("range"), size)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start + 1),
        "ETag": f'"{digest}"',
        "Digest": "sha-256=" + base64.b64encode(bytes.fromhex(digest)).decode(),
    }
    code = status.HTTP_200_OK
    if (start, end) != (0, size - 1):
        code = status.HTTP_206_PARTIAL_CONTENT
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        _read(store, digest, start, end, verify=(start, end) == (0, size - 1)),
        status_code=code,
        headers=headers,
        media_type="application/octet-stream",
    )


def _range(header: str | None, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` / ``a-`` / ``-n`` range; anything else serves the whole blob."""
    if not header or size == 0:
        return 0, max(0, size - 1)
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return 0, size - 1
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(size - 1, int(last)) if last else size - 1
    except ValueError:
        raise InvalidArgument(f"malformed Range header {header!r}", field="header:Range") from None
    if start > end or start >= size:
        raise InvalidArgument(f"range {header!r} is outside the {size} bytes", field="header:Range")
    return start, end


def _read(store: BlobStore, digest: str, start: int, end: int, verify: bool) -> Any:
    """Stream a blob; a whole-blob read is hashed on the way out and, should the stored bytes no
    longer match their name, the transfer is cut before its last chunk so the client sees it fail."""
    hasher = hashlib.sha256() if verify else None
    with store.open(digest) as handle:
        handle.seek(start)
        left = end - start + 1
        pending: bytes | None = None
        while left > 0:
            chunk = handle.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            if hasher is not None:
                hasher.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
        if hasher is not None and hasher.hexdigest() != digest:
            log.error(
                "blob %s is corrupt on disk (hashes to %s); download aborted", digest, hasher.hexdigest()
            )
            raise RuntimeError(f"blob {digest} failed its integrity check")
        if pending is not None:
            yield pending


@router.delete("/images/{image_id}/versions/{version_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_version(image_id: str, version_id: str, request: Request, ctx: Context, db: DB) -> Response:
    """Refused while a server still uses the version; its bytes go when nothing else uses them."""
    version_of_image(db, ctx, image_id, version_id)
    with db.write() as conn:
        version = resource_store.get(conn, version_id, for_update=True)
        if version.status.operation_id:
            raise Conflict(
                f"operation {version.status.operation_id} is running on {version.name}; wait or cancel it",
                blocking_operation=version.status.operation_id,
            )
        users = graph.blocking_users(conn, [version_id])
        if users:
            raise Conflict(
                f"version {version.name} is still used by "
                + ", ".join(f"{u.kind} {u.name}" for u in users[:10]),
                dependents=[u.model_dump(mode="json") for u in users],
            )
        resource_store.delete(conn, [version_id])
    gc.collect(db, _blobs(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
