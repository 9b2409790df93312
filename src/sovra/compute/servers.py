"""What users may ask of servers: every request is checked completely before anything is written,
then recorded together with the operation that carries it out, in one transaction.

A request that cannot succeed (a deprecated image, a flavor smaller than the image needs, a server
in the wrong state) is refused here with an error that names the problem; nothing is created.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from sovra.auth.context import RequestContext
from sovra.compute import flavors, keypairs, server_ops, snapshots
from sovra.compute import server_state as state
from sovra.domain.edges import Edge, EdgeType
from sovra.domain.errors import Conflict, InvalidArgument, NotFound
from sovra.domain.ids import is_id
from sovra.domain.image import BOOTABLE_STATES, IMAGE_KIND, IMAGE_VERSION_KIND, VersionState
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource
from sovra.domain.server import SERVER_KIND, ServerSpec, ServerState
from sovra.domain.server_group import SERVER_GROUP_KIND
from sovra.images import trust, versions
from sovra.images.lifecycle import versions_of
from sovra.store import graph
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store

GIB = 1024**3


@dataclass(frozen=True)
class CreateRequest:
    name: str
    labels: dict[str, str]
    image_ref: str  # an image version id, or an image id (its newest active version)
    flavor_ref: str  # a flavor id or name
    key_names: list[str]
    user_data: str | None
    server_group_id: str | None
    power_state: str
    hostname: str
    description: str
    request_id: str | None


# -- resolving references ----------------------------------------------------------------------------


def resolve_version(conn: Connection, ctx: RequestContext, ref: str) -> Resource:
    """An image version the caller may see, given its id or its image's id (newest active one)."""
    if not is_id(ref):
        raise NotFound(f"image {ref!r} not found (give an image or image version id)", field="image")
    found = resource_store.get_many(conn, [ref], project_ids=ctx.project_ids)
    if not found or found[0].kind not in (IMAGE_KIND, IMAGE_VERSION_KIND):
        raise NotFound(f"image {ref!r} not found", field="image")
    if found[0].kind == IMAGE_VERSION_KIND:
        return found[0]
    active = [r for r in versions_of(conn, ref) if VersionState(r.status.state) in BOOTABLE_STATES]
    if not active:
        raise Conflict(
            f"image {found[0].name} has no active version to boot; import one or promote a version",
            field="image",
        )
    return max(active, key=lambda r: r.id)


def image_facts(conn: Connection, version: Resource) -> dict[str, Any]:
    """What a server records about its image version, checked to be bootable and trusted."""
    if VersionState(version.status.state) not in BOOTABLE_STATES:
        raise Conflict(
            f"image version {version.name} is {version.status.state}; new servers boot only from active "
            "versions (`sovra image versions` lists them)",
            field="image",
        )
    if (
        trust.requires_signature(conn, version.project_id or "")
        and not trust.verify_version(conn, version).trusted
    ):
        raise Conflict(
            f"image version {version.name} carries no valid signature by a key project trusts", field="image"
        )
    facts = versions.facts_of(version)
    metadata = version.spec.get("metadata", {})
    if not facts.disk_blob:
        raise Conflict(f"image version {version.name} has no disk yet", field="image")
    return {
        "version_id": version.id,
        "name": version.name,
        "digest": facts.disk_blob,
        "disk_format": facts.disk_format or version.spec.get("disk_format", "qcow2"),
        "virtual_size": facts.virtual_size or 0,
        "min_disk": metadata.get("min_disk", 1),
        "min_ram": metadata.get("min_ram", 0),
        "architecture": metadata.get("architecture", "x86_64"),
    }


def flavor_facts(flavor: Resource, image: dict[str, Any]) -> dict[str, Any]:
    """The flavor as the server records it, after checking it fits the image."""
    spec = flavor.spec
    if spec["ram_mib"] < image["min_ram"]:
        raise InvalidArgument(
            f"flavor {flavor.name} has {spec['ram_mib']} MiB of RAM; image {image['name']} needs at least "
            f"{image['min_ram']} MiB: choose a larger flavor",
            field="flavor",
        )
    needed_disk = max(int(image["min_disk"]), math.ceil(int(image["virtual_size"]) / GIB))
    if spec["disk_gib"] and spec["disk_gib"] < needed_disk:
        raise InvalidArgument(
            f"flavor {flavor.name} has a {spec['disk_gib']} GiB disk; image {image['name']} needs at least "
            f"{needed_disk} GiB: choose a flavor with a larger disk (or one without a fixed disk size)",
            field="flavor",
        )
    return {
        "id": flavor.id,
        "name": flavor.name,
        "vcpus": spec["vcpus"],
        "ram_mib": spec["ram_mib"],
        "disk_gib": spec["disk_gib"],
    }


def _server_group(conn: Connection, project_id: str, group_id: str | None) -> None:
    if group_id is None:
        return
    group = resource_store.get(conn, group_id, kind=SERVER_GROUP_KIND, project_ids=[project_id])
    if group.project_id != project_id:
        raise NotFound(f"server group {group_id!r} not found in this project", field="server_group_id")


# -- create ---------------------------------------------------------------------------------------


def create(conn: Connection, ctx: RequestContext, project_id: str, request: CreateRequest) -> Resource:
    """Record a new server (BUILDING) and queue ``server.create``."""
    version = resolve_version(conn, ctx, request.image_ref)
    image = image_facts(conn, version)
    flavor = flavors.find(conn, request.flavor_ref)
    flavor_record = flavor_facts(flavor, image)
    keys = keypairs.public_keys_of(conn, project_id, request.key_names) if request.key_names else []
    _server_group(conn, project_id, request.server_group_id)
    spec = ServerSpec(
        image_version_id=version.id,
        flavor_id=flavor.id,
        hostname=request.hostname,
        ssh_authorized_keys=keys,
        user_data=request.user_data,
        server_group_id=request.server_group_id,
        power_state=request.power_state,
        description=request.description,
    )
    server = resource_store.create(
        conn,
        kind=SERVER_KIND,
        name=request.name,
        project_id=project_id,
        labels=request.labels,
        spec=spec.model_dump(mode="json"),
        state=ServerState.BUILDING,
    )
    state.update(conn, server.id, flavor=flavor_record, image=image, power_state=None)
    for target in (version.id, flavor.id, request.server_group_id):
        if target:
            graph.add(conn, Edge(source_id=server.id, target_id=target, type=EdgeType.USES))
    _queue(conn, ctx, server, server_ops.CREATE, {}, request.request_id)
    return resource_store.get(conn, server.id)


# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    verb: str
    allowed: frozenset[ServerState]
    transitional: ServerState | None = None  # the state shown while the operation runs
    needs_host: bool = True


ACTIONS = {
    "start": Action(server_ops.START, frozenset({ServerState.SHUTOFF, ServerState.ERROR})),
    "stop": Action(server_ops.STOP, frozenset({ServerState.ACTIVE, ServerState.ERROR})),
    "reboot": Action(
        server_ops.REBOOT, frozenset({ServerState.ACTIVE, ServerState.ERROR}), ServerState.REBOOTING
    ),
    "resize": Action(
        server_ops.RESIZE, frozenset({ServerState.ACTIVE, ServerState.SHUTOFF}), ServerState.RESIZING
    ),
    "rebuild": Action(
        server_ops.REBUILD,
        frozenset({ServerState.ACTIVE, ServerState.SHUTOFF, ServerState.ERROR}),
        ServerState.BUILDING,
    ),
    "snapshot": Action(snapshots.VERB, frozenset({ServerState.ACTIVE, ServerState.SHUTOFF})),
    "delete": Action(
        server_ops.DELETE,
        frozenset(ServerState) - {ServerState.DELETING},
        ServerState.DELETING,
        needs_host=False,
    ),
}


def check_action(server: Resource, action: str) -> Action:
    """Refuse an action the server's state does not allow, saying which states would."""
    rule = ACTIONS[action]
    current = ServerState(server.status.state)
    if current not in rule.allowed:
        allowed = ", ".join(sorted(rule.allowed))
        raise Conflict(
            f"server {server.name} is {current}; {action} needs one of: {allowed}",
            field="state",
        )
    if rule.needs_host and not state.fact(server, "host"):
        raise Conflict(
            f"server {server.name} was never placed on a host; delete it and create it again",
            field="state",
        )
    return rule


@dataclass(frozen=True)
class Prepared:
    """What an action records besides the operation: its parameters, the changed wish (spec), and
    facts the operation will apply (recorded now so the server shows what is being done)."""

    params: dict[str, Any] = field(default_factory=dict)
    spec_change: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def act(
    conn: Connection,
    ctx: RequestContext,
    server_id: str,
    action: str,
    request_id: str | None,
    prepare: Callable[[Resource], Prepared] | None = None,
) -> Operation:
    """Check the state, record the wish and queue the operation; a repeated ``request_id`` returns
    the operation the first request made."""
    server = resource_store.get(
        conn, server_id, kind=SERVER_KIND, project_ids=ctx.project_ids, for_update=True
    )
    if request_id is not None:
        existing = operation_store.find_by_request_id(conn, server.project_id, request_id)
        if existing is not None:
            return existing
    rule = check_action(server, action)
    prepared = prepare(server) if prepare is not None else Prepared()
    if prepared.spec_change:
        resource_store.update(
            conn, server.id, expected_version=None, spec={**server.spec, **prepared.spec_change}
        )
    operation = _queue(conn, ctx, server, rule.verb, prepared.params, request_id)
    if rule.transitional is not None or prepared.facts:
        state.update(conn, server.id, state=rule.transitional, **prepared.facts)
    return operation


def _queue(
    conn: Connection,
    ctx: RequestContext,
    server: Resource,
    verb: str,
    params: dict[str, Any],
    request_id: str | None,
) -> Operation:
    operation, _ = operation_store.create(
        conn,
        verb=verb,
        principal=ctx.principal,
        project_id=server.project_id,
        target_id=server.id,
        target_kind=SERVER_KIND,
        params=params,
        request_id=request_id,
        origin_request_id=ctx.request_id,
    )
    return operation


def resize(conn: Connection, server: Resource, flavor_ref: str) -> Prepared:
    """The new flavor, checked against the image and against shrinking the disk."""
    flavor = flavors.find(conn, flavor_ref)
    current = state.fact(server, "flavor")
    if flavor.id == current["id"]:
        raise InvalidArgument(f"server {server.name} already has flavor {flavor.name}", field="flavor")
    record = flavor_facts(flavor, state.fact(server, "image"))
    image = state.fact(server, "image")
    if server_ops.root_disk_gib(record, image) < server_ops.root_disk_gib(current, image):
        raise InvalidArgument(
            f"flavor {flavor.name} has a smaller disk than {current['name']}; disks never shrink",
            field="flavor",
        )
    return Prepared(params={"flavor": record})


def rebuild(conn: Connection, ctx: RequestContext, server: Resource, image_ref: str | None) -> Prepared:
    """Rebuild from the same or another image version (checked like a create's)."""
    version = resolve_version(conn, ctx, image_ref or ServerSpec.model_validate(server.spec).image_version_id)
    image = image_facts(conn, version)
    flavor_facts(resource_store.get(conn, state.fact(server, "flavor")["id"]), image)
    old = state.fact(server, "image")["version_id"]
    if old != version.id:
        graph.remove(conn, Edge(source_id=server.id, target_id=old, type=EdgeType.USES))
        graph.add(conn, Edge(source_id=server.id, target_id=version.id, type=EdgeType.USES))
    return Prepared(spec_change={"image_version_id": version.id}, facts={"image": image})


def snapshot(conn: Connection, server: Resource, image_id: str, version: str) -> Prepared:
    created = snapshots.new_version(conn, server, image_id, version)
    return Prepared(params={"version_id": created.id, "image_id": image_id})
