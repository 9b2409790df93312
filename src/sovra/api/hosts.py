"""/v1/hosts: hypervisor hosts, registered by libvirt URI (admins only)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from sovra.api.deps import DB, Config, Context, IfMatch, PageSize, PageToken, parse_if_match
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse
from sovra.compute import connections, hosts
from sovra.compute.hosts import apply_spec, update_status
from sovra.config import Settings
from sovra.domain.edges import EdgeType
from sovra.domain.errors import Conflict, InvalidArgument
from sovra.domain.host import HOST_KIND, HostSpec
from sovra.domain.labels import validate_labels
from sovra.domain.names import validate_name
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource
from sovra.store import graph
from sovra.store import placement as placement_store
from sovra.store import resources as resource_store
from sovra.virt.driver import HostUnreachable

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/hosts", tags=["hosts"], responses=PROBLEM_RESPONSES)


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    labels: Labels = Field(default_factory=dict)
    spec: HostSpec


class HostPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = None
    spec: HostSpec | None = None


class Usage(BaseModel):
    """What the scheduler has claimed of a host's capacity for the servers placed there."""

    vcpus: int = 0
    memory_mib: int = 0
    disk_gib: int = 0
    servers: int = 0

    @classmethod
    def of(cls, usage: placement_store.HostUsage | None) -> Usage:
        if usage is None:
            return cls()
        return cls(
            vcpus=usage.used_vcpus,
            memory_mib=usage.used_memory_mib,
            disk_gib=usage.used_disk_gib,
            servers=usage.servers,
        )


class Host(BaseModel):
    id: str
    kind: str = HOST_KIND
    name: str
    labels: dict[str, str]
    spec: HostSpec
    state: str
    inventory: dict[str, Any] | None = Field(description="What libvirt reported at the last check.")
    capacity: dict[str, int] | None = Field(description="Inventory times the allocation ratios.")
    usage: Usage = Field(description="How much of the capacity the servers placed here hold.")
    image_cache: list[dict[str, str]] = Field(
        description="Image versions transferred to the host (digest, volume, verified_at)."
    )
    last_seen: str | None
    reason: str = Field(description="Why the host is down, if it is.")
    operation_id: str | None
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource, usage: placement_store.HostUsage | None) -> Host:
        facts = resource.status.model_extra or {}
        return cls(
            id=resource.id,
            name=resource.name,
            labels=resource.labels,
            spec=HostSpec.model_validate(resource.spec),
            state=resource.status.state,
            inventory=facts.get("inventory"),
            capacity=facts.get("capacity"),
            usage=Usage.of(usage),
            image_cache=[{"digest": d, **entry} for d, entry in (facts.get("image_cache") or {}).items()],
            last_seen=facts.get("last_seen"),
            reason=facts.get("reason", ""),
            operation_id=resource.status.operation_id,
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


def _allowed(spec: HostSpec, settings: Settings) -> HostSpec:
    scheme = spec.uri.split("://", 1)[0]
    if scheme not in settings.host_uri_schemes:
        raise InvalidArgument(
            f"libvirt transport {scheme!r} is not allowed here; allowed: "
            + ", ".join(settings.host_uri_schemes),
            field="spec.uri",
        )
    return spec


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Host)
def register_host(body: HostCreate, ctx: Context, db: DB, settings: Config, response: Response) -> Host:
    """Register a host; an operation then reads its inventory over libvirt (``operation_id``)."""
    _allowed(body.spec, settings)
    validate_name(body.name)
    validate_labels(body.labels)
    with db.write() as conn:
        host, _ = hosts.create(
            conn,
            name=body.name,
            spec=body.spec,
            labels=body.labels,
            principal=ctx.principal,
            origin_request_id=ctx.request_id,
        )
        host = resource_store.get(conn, host.id)
    response.headers["Location"] = f"/v1/hosts/{host.id}"
    return Host.of(host, None)


@router.get("", response_model=ListResponse[Host])
def list_hosts(
    ctx: Context, db: DB, settings: Config, page_size: PageSize = 100, page_token: PageToken = None
) -> ListResponse[Host]:
    with db.read() as conn:
        page = resource_store.list_page(
            conn,
            kind=HOST_KIND,
            project_ids=None,
            selector=[],
            page_size=min(page_size, settings.max_page_size),
            page_token=page_token,
        )
        used = placement_store.usages(conn, [h.id for h in page.items])
    return ListResponse[Host](
        items=[Host.of(h, used.get(h.id)) for h in page.items], next_page_token=page.next_page_token
    )


@router.get("/{host_id}", response_model=Host)
def get_host(host_id: str, ctx: Context, db: DB, response: Response) -> Host:
    with db.read() as conn:
        host = resource_store.get(conn, host_id, kind=HOST_KIND)
        used = placement_store.usage(conn, host_id)
    response.headers["ETag"] = host.etag
    return Host.of(host, used)


@router.patch("/{host_id}", response_model=Host)
def update_host(
    host_id: str, body: HostPatch, ctx: Context, db: DB, settings: Config, if_match: IfMatch = None
) -> Host:
    """Enable, disable or put in maintenance; change allocation ratios or labels."""
    if body.spec is not None:
        _allowed(body.spec, settings)
    if body.labels is not None:
        validate_labels(body.labels)
    with db.write() as conn:
        spec = body.spec.model_dump(mode="json") if body.spec is not None else None
        resource_store.update(
            conn,
            host_id,
            expected_version=parse_if_match(if_match),
            labels=body.labels,
            spec=spec,
            kind=HOST_KIND,
        )
        current = resource_store.get(conn, host_id)
        host = update_status(conn, host_id, lambda s: apply_spec(s, HostSpec.model_validate(current.spec)))
        used = placement_store.usage(conn, host_id)
    return Host.of(host, used)


@router.post("/{host_id}:refresh", status_code=status.HTTP_202_ACCEPTED, response_model=Operation)
def refresh_host(host_id: str, ctx: Context, db: DB) -> Operation:
    """Read the host's inventory again now (the health check does it every 30 s)."""
    with db.write() as conn:
        resource_store.get(conn, host_id, kind=HOST_KIND)
        return hosts.refresh(conn, host_id, ctx.principal, ctx.request_id)


@router.delete("/{host_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_host(host_id: str, ctx: Context, db: DB) -> Response:
    """Forget a host; refused while servers run on it or hold resources there (move them first)."""
    with db.write() as conn:
        host = resource_store.get(conn, host_id, kind=HOST_KIND, for_update=True)
        running = graph.dependents(conn, host_id, max_depth=1, types=[EdgeType.RUNS_ON])
        if running:
            raise Conflict(
                f"host {host.name} still runs {len(running)} server(s): "
                + ", ".join(r.name for r in running[:10]),
                dependents=[r.model_dump(mode="json") for r in running],
            )
        if host.status.operation_id:
            raise Conflict(
                f"operation {host.status.operation_id} is running on host {host.name}",
                blocking_operation=host.status.operation_id,
            )
        placement_store.remove_host(conn, host_id)
        resource_store.delete(conn, [host_id])
    _remove_cached_images(host)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _remove_cached_images(host: Resource) -> None:
    """A forgotten host keeps no copies of our images; one that does not answer keeps them (they
    are plain volumes named ``sovra-image-*`` in its ``default`` pool, safe to delete by hand)."""
    uri = HostSpec.model_validate(host.spec).uri
    try:
        driver = connections.driver_for(uri)
        for entry in (host.status.model_extra or {}).get("image_cache", {}).values():
            driver.delete_volume(entry["volume"])
    except HostUnreachable as exc:
        log.warning("host %s deleted, but its cached images stay: %s", host.name, exc)
    finally:
        connections.forget(uri)
