"""/v1/projects: the unit of tenancy."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from sovra.api.deps import DB, Config, Context, IfMatch, PageSize, PageToken, TextFilter, parse_if_match
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse, RelatedList
from sovra.auth.context import RequestContext
from sovra.domain.errors import Conflict
from sovra.domain.labels import parse_selector, validate_labels
from sovra.domain.names import validate_name
from sovra.domain.operation import Operation
from sovra.domain.project import PROJECT_KIND, ProjectSpec, ProjectState, applied
from sovra.domain.resource import Resource, Status
from sovra.operations.builtin import PROJECT_DELETE
from sovra.store import graph
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store
from sovra.store.types import utcnow

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=PROBLEM_RESPONSES)


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    labels: Labels = Field(default_factory=dict)
    spec: ProjectSpec = Field(default_factory=ProjectSpec)


class ProjectPatch(BaseModel):
    """A JSON merge patch: fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=63)
    labels: Labels | None = None
    spec: ProjectSpec | None = None


class Project(BaseModel):
    id: str
    kind: str = PROJECT_KIND
    name: str
    labels: dict[str, str]
    spec: ProjectSpec
    status: Status
    generation: int
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource) -> Project:
        return cls(
            id=resource.id,
            name=resource.name,
            labels=resource.labels,
            spec=ProjectSpec.model_validate(resource.spec),
            status=resource.status,
            generation=resource.generation,
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


def _with_etag(response: Response, resource: Resource) -> Project:
    response.headers["ETag"] = resource.etag
    return Project.of(resource)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Project)
def create_project(body: ProjectCreate, ctx: Context, db: DB, response: Response) -> Project:
    validate_name(body.name)
    validate_labels(body.labels)
    with db.write() as conn:
        resource = resource_store.create(
            conn,
            kind=PROJECT_KIND,
            name=body.name,
            project_id=None,
            labels=body.labels,
            spec=body.spec.model_dump(),
            state=ProjectState.ACTIVE,
            status=applied(Status(state=ProjectState.ACTIVE), 1, utcnow()),
        )
    response.headers["Location"] = f"/v1/projects/{resource.id}"
    return _with_etag(response, resource)


@router.get("", response_model=ListResponse[Project])
def list_projects(
    ctx: Context,
    db: DB,
    settings: Config,
    label_selector: Annotated[
        str | None, Query(max_length=4096, description="e.g. env=prod,tier in (web)")
    ] = None,
    name: TextFilter = None,
    page_size: PageSize = 100,
    page_token: PageToken = None,
) -> ListResponse[Project]:
    selector = parse_selector(label_selector)
    with db.read() as conn:
        page = resource_store.list_page(
            conn,
            kind=PROJECT_KIND,
            project_ids=ctx.project_ids,
            selector=selector,
            page_size=min(page_size, settings.max_page_size),
            page_token=page_token,
            name=name,
        )
    return ListResponse[Project](
        items=[Project.of(r) for r in page.items], next_page_token=page.next_page_token
    )


@router.get("/{project_id}", response_model=Project)
def get_project(project_id: str, ctx: Context, db: DB, response: Response) -> Project:
    with db.read() as conn:
        resource = resource_store.get(conn, project_id, kind=PROJECT_KIND, project_ids=ctx.project_ids)
    return _with_etag(response, resource)


@router.patch("/{project_id}", response_model=Project)
def update_project(
    project_id: str, body: ProjectPatch, ctx: Context, db: DB, response: Response, if_match: IfMatch = None
) -> Project:
    expected = parse_if_match(if_match)
    if body.name is not None:
        validate_name(body.name)
    if body.labels is not None:
        validate_labels(body.labels)
    spec: dict[str, Any] | None = None
    with db.write() as conn:
        if body.spec is not None:
            current = resource_store.get(conn, project_id, kind=PROJECT_KIND, project_ids=ctx.project_ids)
            spec = {**current.spec, **body.spec.model_dump(exclude_unset=True)}
        resource = resource_store.update(
            conn,
            project_id,
            expected_version=expected,
            name=body.name,
            labels=body.labels,
            spec=spec,
            kind=PROJECT_KIND,
            project_ids=ctx.project_ids,
            on_spec_change=lambda status, generation: applied(status, generation, utcnow()),
        )
    return _with_etag(response, resource)


@router.delete("/{project_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def delete_project(
    project_id: str,
    ctx: Context,
    db: DB,
    response: Response,
    if_match: IfMatch = None,
    request_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=128,
            pattern=r"^[\x21-\x7e]+$",
            description="Idempotency key: the same id returns the same operation.",
        ),
    ] = None,
) -> Operation:
    """Start tearing the project down; answers with the operation that does it.

    A repeated request with the same ``request_id`` returns the same operation, even after the
    project is gone.
    """
    expected = parse_if_match(if_match)
    with db.write() as conn:
        earlier = operation_store.find_by_request_id(conn, project_id, request_id) if request_id else None
        visible = ctx.project_ids is None or project_id in ctx.project_ids
        if earlier is not None and earlier.verb == PROJECT_DELETE and visible:
            operation = earlier
        else:
            operation = _start_deletion(conn, ctx, project_id, expected, request_id)
    response.headers["Location"] = f"/v1/operations/{operation.id}"
    return operation


def _start_deletion(
    conn: Connection, ctx: RequestContext, project_id: str, expected: int | None, request_id: str | None
) -> Operation:
    project = resource_store.get(
        conn, project_id, kind=PROJECT_KIND, project_ids=ctx.project_ids, for_update=True
    )
    resource_store.require_version(project, expected)
    blockers = graph.blocking_users(conn, graph.owned_closure(conn, project_id))
    if blockers:
        raise Conflict(
            f"project {project.name} cannot be deleted: still used by "
            + ", ".join(f"{b.kind} {b.name} ({b.id})" for b in blockers),
            dependents=[b.model_dump(mode="json") for b in blockers],
        )
    operation, _ = operation_store.create(
        conn,
        verb=PROJECT_DELETE,
        principal=ctx.principal,
        project_id=project_id,
        target_id=project_id,
        target_kind=PROJECT_KIND,
        request_id=request_id,
        origin_request_id=ctx.request_id,
    )
    return operation


@router.get("/{project_id}/teardown-order", response_model=RelatedList)
def project_teardown_order(project_id: str, ctx: Context, db: DB) -> RelatedList:
    """Everything the project owns, in the order a teardown deletes it (the project last)."""
    with db.read() as conn:
        resource_store.get(conn, project_id, kind=PROJECT_KIND, project_ids=ctx.project_ids)
        return RelatedList(items=graph.teardown_order(conn, project_id))
