"""Server life-cycle operations: create, start, stop, reboot, resize, rebuild, delete.

Every step is idempotent and keyed by the server id, which is also the libvirt domain's name and
UUID and the prefix of its volumes: a step that runs again after a worker died finds the domain,
the overlay and the allocation it made the first time instead of making second ones.

Whatever happens, an operation's end leaves the server in a state that is not transitional: the
last step of each verb writes the settled state, and the end hook of a failed or cancelled
operation writes ERROR with the fault (``ACTIVE``/``SHUTOFF`` are only ever written after the
hypervisor confirmed the power state).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from sovra.compute import connections, host_images
from sovra.compute import server_state as state
from sovra.compute.scheduler import NoValidHost, PlacementRequest, place
from sovra.domain.edges import Edge, EdgeType
from sovra.domain.errors import NotFound
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource
from sovra.domain.server import SERVER_KIND, ServerSpec, ServerState, settled_state
from sovra.images.blobstore import LocalBlobStore
from sovra.images.nocloud import make_nocloud_seed
from sovra.operations.context import StepContext
from sovra.operations.errors import RetryableError, StepError
from sovra.operations.registry import Registry, Step
from sovra.store import graph
from sovra.store import placement as placement_store
from sovra.store import resources as resource_store
from sovra.virt.driver import DomainSpec, HostUnreachable, PowerState, VirtDriver

CREATE = "server.create"
START = "server.start"
STOP = "server.stop"
REBOOT = "server.reboot"
RESIZE = "server.resize"
REBUILD = "server.rebuild"
DELETE = "server.delete"

POLL_SECONDS = 0.2
GIB = 1024**3


def root_volume(server_id: str) -> str:
    return f"{server_id}-root.qcow2"


def seed_volume(server_id: str) -> str:
    return f"{server_id}-seed.iso"


def snapshot_volume(server_id: str) -> str:
    """Where a snapshot is flattened on the host before it is streamed into the image store."""
    return f"{server_id}-snapshot.qcow2"


def volumes_of(server_id: str) -> tuple[str, ...]:
    """Every volume a server may have on its host."""
    return (root_volume(server_id), seed_volume(server_id), snapshot_volume(server_id))


# -- reading --------------------------------------------------------------------------------------


def server_of(ctx: StepContext) -> Resource:
    """The server the step's operation acts on, read now."""
    with ctx.db.read() as conn:
        return resource_store.get(conn, ctx.operation.target_id or "", kind=SERVER_KIND)


def driver_of(server: Resource) -> VirtDriver:
    """The connection to the server's host; a host that does not answer is retryable."""
    host = state.fact(server, "host")
    if not host:
        raise StepError("NOT_SCHEDULED", f"server {server.name} has no host yet")
    try:
        return connections.driver_for(host["uri"])
    except HostUnreachable as exc:
        raise RetryableError("HOST_UNREACHABLE", str(exc)) from exc


def host_call(call: Callable[[], Any]) -> Any:
    """Run a driver call; a host that stops answering is a retryable failure."""
    try:
        return call()
    except HostUnreachable as exc:
        raise RetryableError("HOST_UNREACHABLE", str(exc)) from exc


def _wait_for(ctx: StepContext, driver: VirtDriver, server_id: str, wanted: set[PowerState]) -> PowerState:
    """Poll the hypervisor until the domain is in one of ``wanted`` (the step's deadline bounds it)."""
    while True:
        power: PowerState = host_call(lambda: driver.power_state(server_id))
        if power in wanted:
            return power
        if power in (PowerState.MISSING, PowerState.CRASHED):
            raise StepError("DOMAIN_LOST", f"the domain of server {server_id} is {power} on its host")
        ctx.sleep(POLL_SECONDS)


def _settle(ctx: StepContext, server_id: str, power: PowerState, **new_facts: Any) -> None:
    running = power == PowerState.RUNNING
    with ctx.db.write() as conn:
        state.update(
            conn,
            server_id,
            state=settled_state(running),
            conditions=(state.condition("Running", running, "PowerOn" if running else "PowerOff"),),
            fault=None,
            **state.power_facts(power),
            **new_facts,
        )


# -- create and rebuild -----------------------------------------------------------------------------


def _schedule(ctx: StepContext) -> dict[str, Any]:
    server = server_of(ctx)
    with ctx.db.read() as conn:
        request = placement_request(conn, server)
    try:
        placement = place(ctx.db, request, ctx.settings)
    except NoValidHost as exc:
        if any(report.filter == "claim" for report in exc.reports):  # room exists, others were faster
            raise RetryableError("CLAIMS_LOST", str(exc)) from exc
        raise StepError("NO_VALID_HOST", str(exc), reports=exc.reports_json()) from exc
    host = {
        "id": placement.host_id,
        "name": placement.host_name,
        "uri": placement.uri,
        "accelerator": placement.accelerator,
    }
    with ctx.db.write() as conn:
        graph.add(conn, Edge(source_id=server.id, target_id=placement.host_id, type=EdgeType.RUNS_ON))
        state.update(
            conn,
            server.id,
            host=host,
            conditions=(state.condition("Scheduled", True, "HostChosen", placement.host_name),),
        )
    return {"host": placement.host_name}


def placement_request(conn: Connection, server: Resource) -> PlacementRequest:
    """What the scheduler must find room for: the flavor's size, the image's needs, the group."""
    spec = ServerSpec.model_validate(server.spec)
    flavor = state.fact(server, "flavor")
    image = state.fact(server, "image")
    policy = None
    if spec.server_group_id:
        group = resource_store.get(conn, spec.server_group_id)
        policy = group.spec["policy"]
    return PlacementRequest(
        consumer_id=server.id,
        project_id=server.project_id or "",
        vcpus=int(flavor["vcpus"]),
        memory_mib=int(flavor["ram_mib"]),
        disk_gib=root_disk_gib(flavor, image),
        arch=image.get("architecture", "x86_64"),
        server_group_id=spec.server_group_id,
        group_policy=policy,
    )


def _image(ctx: StepContext) -> dict[str, Any]:
    """Put the image version on the host (once per host), verified by digest on arrival."""
    server = server_of(ctx)
    image = state.fact(server, "image")
    driver = driver_of(server)
    store = LocalBlobStore(ctx.settings.resolved_blob_dir)
    base = host_images.BaseImage(digest=image["digest"], disk_format=image["disk_format"])
    volume = host_call(
        lambda: host_images.ensure_base_image(
            ctx.db, store, driver, state.fact(server, "host")["id"], base, ctx.operation.id
        )
    )
    with ctx.db.write() as conn:
        state.update(
            conn,
            server.id,
            base_volume=volume,
            conditions=(state.condition("ImageReady", True, "Verified", f"sha256:{image['digest']}"),),
        )
    return {"base_volume": volume}


def _disks(ctx: StepContext) -> dict[str, Any]:
    """The copy-on-write root disk over the base image, and a fresh NoCloud seed."""
    server = server_of(ctx)
    spec = ServerSpec.model_validate(server.spec)
    image = state.fact(server, "image")
    driver = driver_of(server)
    root = root_volume(server.id)
    capacity = root_disk_gib(state.fact(server, "flavor"), image) * GIB
    base = state.fact(server, "base_volume")
    host_call(lambda: driver.create_overlay(root, base, image["disk_format"], capacity))
    seed = seed_volume(server.id)
    with tempfile.TemporaryDirectory(prefix="sovra-seed-") as work:
        iso = make_nocloud_seed(
            Path(work) / "seed.iso",
            instance_id=server.id,
            hostname=spec.hostname,
            user_data=spec.user_data or "",
            public_keys=spec.ssh_authorized_keys,
        )
        host_call(lambda: driver.delete_volume(seed))
        with iso.open("rb") as source:
            host_call(lambda: driver.upload_volume(seed, source, iso.stat().st_size))
    with ctx.db.write() as conn:
        state.update(conn, server.id, volumes={"root": root, "seed": seed})
    return {"root": root, "capacity_gib": capacity // GIB}


def root_disk_gib(flavor: dict[str, Any], image: dict[str, Any]) -> int:
    """The flavor's disk, or (for flavors without one) what the image needs."""
    needed = max(int(image.get("min_disk") or 1), math.ceil(int(image.get("virtual_size") or 0) / GIB))
    return max(int(flavor["disk_gib"]), needed)


def domain_spec(server: Resource) -> DomainSpec:
    flavor = state.fact(server, "flavor")
    host = state.fact(server, "host")
    return DomainSpec(
        id=server.id,
        vcpus=int(flavor["vcpus"]),
        memory_mib=int(flavor["ram_mib"]),
        accelerator=host["accelerator"],
        root_volume=root_volume(server.id),
        seed_volume=seed_volume(server.id),
        arch=state.fact(server, "image").get("architecture", "x86_64"),
    )


def _boot(ctx: StepContext) -> dict[str, Any]:
    """Define the domain (same name and UUID as the server: a retry redefines, never duplicates)
    and power it on unless the user wants it stopped."""
    server = server_of(ctx)
    spec = ServerSpec.model_validate(server.spec)
    driver = driver_of(server)
    host_call(lambda: driver.define_domain(domain_spec(server)))
    if spec.power_state == "stopped":
        power = host_call(lambda: driver.power_state(server.id))
    else:
        host_call(lambda: driver.start_domain(server.id))
        power = _wait_for(ctx, driver, server.id, {PowerState.RUNNING})
    _settle(ctx, server.id, power)
    return {"power_state": str(power)}


def _tear_down_disks(ctx: StepContext) -> dict[str, Any]:
    """Rebuild: the old domain and disks go; the server keeps its id, host and allocation."""
    server = server_of(ctx)
    driver = driver_of(server)
    host_call(lambda: driver.destroy_domain(server.id))
    for volume in (root_volume(server.id), seed_volume(server.id)):
        host_call(lambda v=volume: driver.delete_volume(v))  # type: ignore[misc]
    return {}


# -- power ----------------------------------------------------------------------------------------


def _power_on(ctx: StepContext) -> dict[str, Any]:
    server = server_of(ctx)
    driver = driver_of(server)
    host_call(lambda: driver.start_domain(server.id))
    power = _wait_for(ctx, driver, server.id, {PowerState.RUNNING})
    _settle(ctx, server.id, power)
    return {"power_state": str(power)}


def power_off(ctx: StepContext, driver: VirtDriver, server_id: str) -> bool:
    """Ask the guest to power off; pull the plug after the grace period. True if it was forced."""
    if host_call(lambda: driver.power_state(server_id)) in (PowerState.SHUTOFF, PowerState.MISSING):
        return False
    grace = float(ctx.params.get("grace_seconds", ctx.settings.server_stop_grace_seconds))
    host_call(lambda: driver.shutdown_domain(server_id))
    waited = 0.0
    while waited < grace:
        if host_call(lambda: driver.power_state(server_id)) in (PowerState.SHUTOFF, PowerState.MISSING):
            return False
        ctx.sleep(POLL_SECONDS)
        waited += POLL_SECONDS
    host_call(lambda: driver.destroy_domain(server_id))
    return True


def _power_off(ctx: StepContext) -> dict[str, Any]:
    server = server_of(ctx)
    driver = driver_of(server)
    forced = power_off(ctx, driver, server.id)
    _settle(ctx, server.id, host_call(lambda: driver.power_state(server.id)))
    return {"forced": forced}


def _reboot(ctx: StepContext) -> dict[str, Any]:
    server = server_of(ctx)
    driver = driver_of(server)
    hard = bool(ctx.params.get("hard", False))
    if host_call(lambda: driver.power_state(server.id)) == PowerState.RUNNING:
        host_call(lambda: driver.reboot_domain(server.id, hard=hard))
    else:  # a guest that crashed or powered off: a (hard) reboot starts it, as in Nova
        host_call(lambda: driver.start_domain(server.id))
    power = _wait_for(ctx, driver, server.id, {PowerState.RUNNING})
    _settle(ctx, server.id, power)
    return {"hard": hard}


# -- resize ---------------------------------------------------------------------------------------


def _claim_new_size(ctx: StepContext) -> dict[str, Any]:
    server = server_of(ctx)
    flavor = ctx.params["flavor"]
    disk = root_disk_gib(flavor, state.fact(server, "image"))
    with ctx.db.write() as conn:
        fits = placement_store.resize_claim(
            conn, server.id, vcpus=flavor["vcpus"], memory_mib=flavor["ram_mib"], disk_gib=disk
        )
    if not fits:
        host = state.fact(server, "host")["name"]
        raise StepError(
            "RESIZE_DOES_NOT_FIT",
            f"host {host} has no room for {flavor['name']} ({flavor['vcpus']} vCPUs, "
            f"{flavor['ram_mib']} MiB, {disk} GiB); moving servers between hosts is not supported yet: "
            f"free capacity on {host}",
        )
    return {"claimed": flavor["name"]}


def _apply_new_size(ctx: StepContext) -> dict[str, Any]:
    """Power off, grow the root disk, redefine with the new vCPUs and RAM, power on if wanted."""
    server = server_of(ctx)
    spec = ServerSpec.model_validate(server.spec)
    flavor = ctx.params["flavor"]
    driver = driver_of(server)
    power_off(ctx, driver, server.id)
    disk = root_disk_gib(flavor, state.fact(server, "image"))
    host_call(lambda: driver.resize_volume(root_volume(server.id), disk * GIB))
    resized = server.model_copy(update={"status": state.with_facts(server.status, flavor=flavor)})
    host_call(lambda: driver.define_domain(domain_spec(resized)))
    if spec.power_state == "running":
        host_call(lambda: driver.start_domain(server.id))
        power = _wait_for(ctx, driver, server.id, {PowerState.RUNNING})
    else:
        power = host_call(lambda: driver.power_state(server.id))
    old_flavor = state.fact(server, "flavor")
    with ctx.db.write() as conn:
        graph.remove(conn, Edge(source_id=server.id, target_id=old_flavor["id"], type=EdgeType.USES))
        graph.add(conn, Edge(source_id=server.id, target_id=flavor["id"], type=EdgeType.USES))
        resource_store.update(
            conn, server.id, expected_version=None, spec={**server.spec, "flavor_id": flavor["id"]}
        )
    _settle(ctx, server.id, power, flavor=flavor)
    return {"flavor": flavor["name"]}


# -- delete ---------------------------------------------------------------------------------------


def _remove_domain(ctx: StepContext) -> dict[str, Any]:
    server = server_of(ctx)
    if not state.fact(server, "host"):
        return {"skipped": "never placed on a host"}
    driver = driver_of(server)
    host_call(lambda: driver.undefine_domain(server.id))
    for volume in volumes_of(server.id):
        host_call(lambda v=volume: driver.delete_volume(v))  # type: ignore[misc]
    return {}


def _forget(ctx: StepContext) -> dict[str, Any]:
    server_id = ctx.operation.target_id or ""
    with ctx.db.write() as conn:
        placement_store.release(conn, server_id)
        resource_store.delete(conn, [server_id])
    return {"deleted": server_id}


# -- end hooks ------------------------------------------------------------------------------------


def mark_error(conn: Connection, operation: Operation) -> None:
    """A failed or cancelled operation leaves the server in ERROR with the reason (never halfway)."""
    error = operation.error
    code = error.code if error else str(operation.state)
    message = error.message if error else f"operation {operation.verb} ended {operation.state}"
    try:
        state.update(
            conn, operation.target_id or "", state=ServerState.ERROR, fault=state.fault(code, message)
        )
    except NotFound:
        return


def _undo_resize_claim(conn: Connection, operation: Operation) -> None:
    """Give back what a failed resize claimed: the allocation returns to the applied flavor."""
    try:
        server = resource_store.get(conn, operation.target_id or "", kind=SERVER_KIND)
    except NotFound:
        return
    flavor = state.fact(server, "flavor")
    disk = root_disk_gib(flavor, state.fact(server, "image"))
    placement_store.resize_claim(
        conn, server.id, vcpus=flavor["vcpus"], memory_mib=flavor["ram_mib"], disk_gib=disk
    )
    if operation.error is not None and operation.error.code == "RESIZE_DOES_NOT_FIT":
        # nothing was touched: the server is as it was, the refusal is on the operation
        power = state.fact(server, "power_state")
        state.update(conn, server.id, state=settled_state(power == str(PowerState.RUNNING)))
        return
    mark_error(conn, operation)


def register(registry: Registry) -> None:
    # steps on a host keep Step's default retry budget (5 attempts, back-off from 1 s): a host that
    # stops answering for a moment is retried, one that stays away fails the operation
    boot = Step("boot", _boot, deadline_seconds=300)
    image = Step("image", _image, deadline_seconds=1800)
    disks = Step("disks", _disks, deadline_seconds=120)
    registry.register(
        CREATE,
        [Step("schedule", _schedule, deadline_seconds=60, max_attempts=3), image, disks, boot],
        on_end=mark_error,
    )
    registry.register(
        REBUILD,
        [Step("tear-down", _tear_down_disks, deadline_seconds=120), image, disks, boot],
        on_end=mark_error,
    )
    registry.register(START, [Step("power-on", _power_on, deadline_seconds=300)], on_end=mark_error)
    registry.register(STOP, [Step("power-off", _power_off, deadline_seconds=600)], on_end=mark_error)
    registry.register(REBOOT, [Step("reboot", _reboot, deadline_seconds=300)], on_end=mark_error)
    registry.register(
        RESIZE,
        [
            Step("claim", _claim_new_size, deadline_seconds=60, max_attempts=3),
            Step("apply", _apply_new_size, deadline_seconds=900),
        ],
        on_end=_undo_resize_claim,
    )
    registry.register(
        DELETE,
        [
            Step("remove-domain", _remove_domain, deadline_seconds=300),
            Step("forget", _forget, deadline_seconds=60),
        ],
        on_end=mark_error,
    )
