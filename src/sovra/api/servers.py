"""/v1/servers: virtual machines. Every change is an operation; reads show the state model."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sovra.api.deps import DB, Config, Context, IfMatch, parse_if_match
from sovra.api.listing import Listing, visible_page
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse
from sovra.auth.context import RequestContext
from sovra.compute import connections, servers
from sovra.compute import server_state as state
from sovra.domain.errors import Conflict
from sovra.domain.image import validate_version
from sovra.domain.labels import validate_labels
from sovra.domain.names import validate_name
from sovra.domain.operation import Operation
from sovra.domain.resource import Condition, Resource
from sovra.domain.server import MAX_USER_DATA_BYTES, SERVER_KIND, ServerSpec, hostname_for
from sovra.store import resources as resource_store
from sovra.virt.driver import HostUnreachable

router = APIRouter(prefix="/v1", tags=["servers"], responses=PROBLEM_RESPONSES)

RequestId = Annotated[
    str | None,
    Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="Idempotency key: repeating a request with it returns the first request's operation.",
    ),
]


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    labels: Labels = Field(default_factory=dict)
    image: str = Field(
        min_length=1,
        max_length=64,
        description="An image version id, or an image id (its newest active version).",
    )
    flavor: str = Field(min_length=1, max_length=63, description="A flavor name (e.g. SCS-1V-2) or id.")
    key_names: list[Annotated[str, Field(min_length=1, max_length=63)]] = Field(
        default_factory=list, max_length=16
    )
    user_data: str | None = Field(
        default=None, max_length=MAX_USER_DATA_BYTES, description="cloud-init user data."
    )
    server_group_id: str | None = Field(default=None, max_length=64)
    power_state: Literal["running", "stopped"] = "running"
    hostname: str | None = Field(
        default=None, min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )
    description: str = Field(default="", max_length=1024)
    request_id: RequestId = None

    @model_validator(mode="after")
    def _user_data_size(self) -> ServerCreate:
        if self.user_data is not None and len(self.user_data.encode()) > MAX_USER_DATA_BYTES:
            raise ValueError(f"user_data is larger than {MAX_USER_DATA_BYTES} bytes")
        return self


class ServerPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = None


class HostRef(BaseModel):
    id: str
    name: str


class Server(BaseModel):
    id: str
    kind: str = SERVER_KIND
    name: str
    project_id: str
    labels: dict[str, str]
    state: str = Field(description="BUILDING, ACTIVE, SHUTOFF, REBOOTING, RESIZING, DELETING or ERROR.")
    power_state: str | None = Field(description="What the hypervisor last said (running, shutoff, ...).")
    power_state_at: str | None
    desired_power_state: str
    hostname: str
    image: dict[str, Any] | None
    flavor: dict[str, Any] | None
    key_count: int
    user_data_bytes: int
    server_group_id: str | None
    description: str
    host: HostRef | None = Field(description="Where it runs; shown to admins only.")
    fault: dict[str, Any] | None
    conditions: list[Condition]
    operation_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource, ctx: RequestContext) -> Server:
        spec = ServerSpec.model_validate(resource.spec)
        host = state.fact(resource, "host")
        image = state.fact(resource, "image")
        return cls(
            id=resource.id,
            name=resource.name,
            project_id=resource.project_id or "",
            labels=resource.labels,
            state=resource.status.state,
            power_state=state.fact(resource, "power_state"),
            power_state_at=state.fact(resource, "power_state_at"),
            desired_power_state=spec.power_state,
            hostname=spec.hostname,
            image={k: image[k] for k in ("version_id", "name", "digest")} if image else None,
            flavor=state.fact(resource, "flavor"),
            key_count=len(spec.ssh_authorized_keys),
            user_data_bytes=len((spec.user_data or "").encode()),
            server_group_id=spec.server_group_id,
            description=spec.description,
            host=HostRef(id=host["id"], name=host["name"]) if host and ctx.is_admin else None,
            fault=state.fact(resource, "fault"),
            conditions=resource.status.conditions,
            operation_id=resource.status.operation_id,
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="How long the guest may take to power off before it is forced.",
    )
    request_id: RequestId = None


class RebootRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hard: bool = Field(default=False, description="Reset the machine instead of asking the guest.")
    request_id: RequestId = None


class ResizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flavor: str = Field(min_length=1, max_length=63)
    request_id: RequestId = None


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(
        default=None, min_length=1, max_length=64, description="Default: the same version."
    )
    request_id: RequestId = None


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(min_length=1, max_length=64, description="An image of the server's project.")
    version: str = Field(min_length=1, max_length=22)
    request_id: RequestId = None


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: RequestId = None


class ConsoleLog(BaseModel):
    output: str
    truncated: bool = Field(description="True when older output was left out (see max_bytes).")


# -- collection ---------------------------------------------------------------------------------------


@router.post("/projects/{project_id}/servers", status_code=status.HTTP_201_CREATED, response_model=Server)
def create_server(project_id: str, body: ServerCreate, ctx: Context, db: DB, response: Response) -> Server:
    """Create a server; ``operation_id`` follows it from BUILDING to ACTIVE (or ERROR, with ``fault``)."""
    validate_name(body.name)
    validate_labels(body.labels)
    request = servers.CreateRequest(
        name=body.name,
        labels=body.labels,
        image_ref=body.image,
        flavor_ref=body.flavor,
        key_names=body.key_names,
        user_data=body.user_data,
        server_group_id=body.server_group_id,
        power_state=body.power_state,
        hostname=body.hostname or hostname_for(body.name),
        description=body.description,
        request_id=body.request_id,
    )
    with db.write() as conn:
        server = servers.create(conn, ctx, project_id, request)
    response.headers["Location"] = f"/v1/servers/{server.id}"
    return Server.of(server, ctx)


@router.get("/servers", response_model=ListResponse[Server])
def list_servers(ctx: Context, db: DB, settings: Config, query: Listing) -> ListResponse[Server]:
    """Servers of the caller's projects."""
    return visible_page(db, ctx, settings, SERVER_KIND, query, lambda _conn, r: Server.of(r, ctx))


# -- one server ---------------------------------------------------------------------------------------


def _get(db: Any, ctx: RequestContext, server_id: str) -> Resource:
    with db.read() as conn:
        return resource_store.get(conn, server_id, kind=SERVER_KIND, project_ids=ctx.project_ids)


@router.get("/servers/{server_id}", response_model=Server)
def get_server(server_id: str, ctx: Context, db: DB, response: Response) -> Server:
    server = _get(db, ctx, server_id)
    response.headers["ETag"] = server.etag
    return Server.of(server, ctx)


@router.patch("/servers/{server_id}", response_model=Server)
def update_server(
    server_id: str, body: ServerPatch, ctx: Context, db: DB, if_match: IfMatch = None
) -> Server:
    """Change labels (everything else changes through the actions)."""
    if body.labels is not None:
        validate_labels(body.labels)
    with db.write() as conn:
        server = resource_store.update(
            conn,
            server_id,
            expected_version=parse_if_match(if_match),
            labels=body.labels,
            kind=SERVER_KIND,
            project_ids=ctx.project_ids,
        )
    return Server.of(server, ctx)


@router.delete("/servers/{server_id}", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def delete_server(server_id: str, ctx: Context, db: DB, response: Response) -> Operation:
    """Power off and remove the domain, its disks and its allocation, then the server."""
    return _act(db, ctx, server_id, "delete", None, response)


def _act(
    db: Any,
    ctx: RequestContext,
    server_id: str,
    action: str,
    request_id: str | None,
    response: Response,
    prepare: Any = None,
) -> Operation:
    with db.write() as conn:
        operation = servers.act(conn, ctx, server_id, action, request_id, prepare)
    response.headers["Location"] = f"/v1/operations/{operation.id}"
    return operation


@router.post("/servers/{server_id}:start", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def start_server(
    server_id: str, ctx: Context, db: DB, response: Response, body: ActionRequest | None = None
) -> Operation:
    return _act(
        db,
        ctx,
        server_id,
        "start",
        body.request_id if body else None,
        response,
        lambda _s: servers.Prepared(spec_change={"power_state": "running"}),
    )


@router.post("/servers/{server_id}:stop", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def stop_server(
    server_id: str, ctx: Context, db: DB, response: Response, body: StopRequest | None = None
) -> Operation:
    """Ask the guest to power off (ACPI); after ``grace_seconds`` the machine is switched off."""
    params = {"grace_seconds": body.grace_seconds} if body and body.grace_seconds is not None else {}
    return _act(
        db,
        ctx,
        server_id,
        "stop",
        body.request_id if body else None,
        response,
        lambda _s: servers.Prepared(params=params, spec_change={"power_state": "stopped"}),
    )


@router.post("/servers/{server_id}:reboot", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def reboot_server(
    server_id: str, ctx: Context, db: DB, response: Response, body: RebootRequest | None = None
) -> Operation:
    hard = bool(body and body.hard)

    def prepare(server: Resource) -> servers.Prepared:
        if server.status.state == "ERROR" and not hard:
            raise Conflict(
                f"server {server.name} is in ERROR; only a hard reboot may recover it", field="hard"
            )
        return servers.Prepared(params={"hard": hard}, spec_change={"power_state": "running"})

    return _act(db, ctx, server_id, "reboot", body.request_id if body else None, response, prepare)


@router.post("/servers/{server_id}:resize", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def resize_server(server_id: str, body: ResizeRequest, ctx: Context, db: DB, response: Response) -> Operation:
    """Give the server another flavor on the same host (it is powered off while its size changes)."""
    with db.write() as conn:
        operation = servers.act(
            conn, ctx, server_id, "resize", body.request_id, lambda s: servers.resize(conn, s, body.flavor)
        )
    response.headers["Location"] = f"/v1/operations/{operation.id}"
    return operation


@router.post("/servers/{server_id}:rebuild", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def rebuild_server(
    server_id: str, ctx: Context, db: DB, response: Response, body: RebuildRequest | None = None
) -> Operation:
    """Start over from an image version (the disk is replaced; id, name, flavor and host stay)."""
    image = body.image if body else None
    with db.write() as conn:
        operation = servers.act(
            conn,
            ctx,
            server_id,
            "rebuild",
            body.request_id if body else None,
            lambda s: servers.rebuild(conn, ctx, s, image),
        )
    response.headers["Location"] = f"/v1/operations/{operation.id}"
    return operation


@router.post("/servers/{server_id}:snapshot", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def snapshot_server(
    server_id: str, body: SnapshotRequest, ctx: Context, db: DB, response: Response
) -> Operation:
    """Save the server's disk as a new version of an image; it is then tested like any upload."""
    validate_version(body.version)
    with db.write() as conn:
        operation = servers.act(
            conn,
            ctx,
            server_id,
            "snapshot",
            body.request_id,
            lambda s: servers.snapshot(conn, s, body.image_id, body.version),
        )
    response.headers["Location"] = f"/v1/operations/{operation.id}"
    return operation


@router.get("/servers/{server_id}/console", response_model=ConsoleLog)
def console_log(
    server_id: str,
    ctx: Context,
    db: DB,
    max_bytes: Annotated[
        int, Query(ge=1, le=1024 * 1024, description="Return at most this much, newest last.")
    ] = 64 * 1024,
) -> ConsoleLog:
    """The newest serial console output of the guest, read from its host."""
    server = _get(db, ctx, server_id)
    host = state.fact(server, "host")
    if not host or not state.fact(server, "volumes"):
        return ConsoleLog(output="", truncated=False)
    try:
        raw = connections.driver_for(host["uri"]).console_log(server.id, max_bytes + 1).encode()
    except HostUnreachable as exc:
        raise Conflict(
            f"the host of server {server.name} does not answer; try again later ({exc.reason})"
        ) from exc
    truncated = len(raw) > max_bytes
    return ConsoleLog(output=raw[-max_bytes:].decode(errors="replace"), truncated=truncated)
