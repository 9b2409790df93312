"""/v1/server-groups: servers placed together (affinity) or apart (anti-affinity).

Servers join a group at creation with a ``uses`` edge to it; those edges are the members, and
they block the group's deletion. The policy never changes; labels may.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from sovra.api.deps import DB, Config, Context, IfMatch, parse_if_match
from sovra.api.listing import Listing, visible_page
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse
from sovra.domain.edges import EdgeType, RelatedResource
from sovra.domain.errors import Conflict
from sovra.domain.labels import validate_labels
from sovra.domain.names import validate_name
from sovra.domain.resource import Resource
from sovra.domain.server_group import SERVER_GROUP_KIND, ServerGroupSpec
from sovra.store import graph
from sovra.store import resources as resource_store

router = APIRouter(prefix="/v1", tags=["server-groups"], responses=PROBLEM_RESPONSES)


class ServerGroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    labels: Labels = Field(default_factory=dict)
    spec: ServerGroupSpec


class ServerGroupPatch(BaseModel):
    """Labels change; a ``spec`` is accepted only when it is the one the group has."""

    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = None
    spec: ServerGroupSpec | None = None


class ServerGroup(BaseModel):
    id: str
    kind: str = SERVER_GROUP_KIND
    name: str
    project_id: str
    labels: dict[str, str]
    spec: ServerGroupSpec
    members: list[RelatedResource] = Field(description="The servers in the group (a uses edge to it).")
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource, members: list[RelatedResource]) -> ServerGroup:
        return cls(
            id=resource.id,
            name=resource.name,
            project_id=resource.project_id or "",
            labels=resource.labels,
            spec=ServerGroupSpec.model_validate(resource.spec),
            members=members,
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


def members(
    conn: Connection, group_id: str, project_ids: Sequence[str] | None = None
) -> list[RelatedResource]:
    """The servers in the group, nearest first; only those in ``project_ids`` when given."""
    found = graph.dependents(conn, group_id, max_depth=1, types=[EdgeType.USES])
    return [m for m in found if project_ids is None or m.project_id in project_ids]


def _view(conn: Connection, group: Resource, project_ids: Sequence[str] | None) -> ServerGroup:
    return ServerGroup.of(group, members(conn, group.id, project_ids))


@router.post(
    "/projects/{project_id}/server-groups", status_code=status.HTTP_201_CREATED, response_model=ServerGroup
)
def create_server_group(
    project_id: str, body: ServerGroupCreate, ctx: Context, db: DB, response: Response
) -> ServerGroup:
    validate_name(body.name)
    validate_labels(body.labels)
    with db.write() as conn:
        group = resource_store.create(
            conn,
            kind=SERVER_GROUP_KIND,
            name=body.name,
            project_id=project_id,
            labels=body.labels,
            spec=body.spec.model_dump(mode="json"),
            state="ACTIVE",
        )
    response.headers["Location"] = f"/v1/server-groups/{group.id}"
    response.headers["ETag"] = group.etag
    return ServerGroup.of(group, [])


@router.get("/server-groups", response_model=ListResponse[ServerGroup])
def list_server_groups(ctx: Context, db: DB, settings: Config, query: Listing) -> ListResponse[ServerGroup]:
    """Server groups of the caller's projects, with their members."""
    return visible_page(
        db, ctx, settings, SERVER_GROUP_KIND, query, lambda conn, g: _view(conn, g, ctx.project_ids)
    )


@router.get("/server-groups/{group_id}", response_model=ServerGroup)
def get_server_group(group_id: str, ctx: Context, db: DB, response: Response) -> ServerGroup:
    with db.read() as conn:
        group = resource_store.get(conn, group_id, kind=SERVER_GROUP_KIND, project_ids=ctx.project_ids)
        view = _view(conn, group, ctx.project_ids)
    response.headers["ETag"] = group.etag
    return view


@router.patch("/server-groups/{group_id}", response_model=ServerGroup)
def update_server_group(
    group_id: str, body: ServerGroupPatch, ctx: Context, db: DB, response: Response, if_match: IfMatch = None
) -> ServerGroup:
    """Change the labels. The policy is fixed: its members were placed by it."""
    expected = parse_if_match(if_match)
    if body.labels is not None:
        validate_labels(body.labels)
    with db.write() as conn:
        current = resource_store.get(
            conn, group_id, kind=SERVER_GROUP_KIND, project_ids=ctx.project_ids, for_update=True
        )
        have = ServerGroupSpec.model_validate(current.spec).policy
        if body.spec is not None and body.spec.policy != have:
            raise Conflict(
                f"server group {current.name} has the policy {have}, which cannot change: its servers "
                f"were placed by it; create another group with the policy {body.spec.policy}",
                field="spec.policy",
            )
        group = resource_store.update(conn, group_id, expected_version=expected, labels=body.labels)
        view = _view(conn, group, ctx.project_ids)
    response.headers["ETag"] = group.etag
    return view


@router.delete("/server-groups/{group_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_server_group(group_id: str, ctx: Context, db: DB, if_match: IfMatch = None) -> Response:
    """Refused while servers are in the group: delete them (or wait for them to go) first."""
    expected = parse_if_match(if_match)
    with db.write() as conn:
        group = resource_store.get(
            conn, group_id, kind=SERVER_GROUP_KIND, project_ids=ctx.project_ids, for_update=True
        )
        resource_store.require_version(group, expected)
        users = graph.blocking_users(conn, [group_id])
        if users:
            raise Conflict(
                f"server group {group.name} still has {len(users)} member(s): "
                + ", ".join(f"{u.kind} {u.name}" for u in users[:10])
                + "; delete those servers first",
                dependents=[u.model_dump(mode="json") for u in users],
            )
        resource_store.delete(conn, [group_id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
