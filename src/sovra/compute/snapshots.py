"""Snapshots: a server's disk becomes a new image version that goes through the image pipeline.

The host merges the server's overlay and its base image into one standalone qcow2 (libvirt's
volume clone, pausing a running guest for the copy); Sovra streams that volume back through
libvirt into the same ingest as an upload (hashing, format inspection, every safety check), then
queues ``image.prepare``: the snapshot is boot-tested and promoted like any other version.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from sovra.compute import server_ops
from sovra.compute import server_state as state
from sovra.domain.edges import Edge, EdgeType
from sovra.domain.errors import Conflict
from sovra.domain.image import IMAGE_KIND, IMAGE_VERSION_KIND, ImageVersionSpec, VersionState
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource
from sovra.images import versions
from sovra.images.blobstore import LocalBlobStore
from sovra.images.ingest import Ingest
from sovra.images.inspection import ImageRejected, InspectionPolicy
from sovra.images.pipeline import PREPARE_VERB
from sovra.operations.context import StepContext
from sovra.operations.errors import RetryableError, StepError
from sovra.operations.registry import Registry, Step
from sovra.store import graph
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store
from sovra.virt.driver import HostUnreachable

VERB = "server.snapshot"


def new_version(conn: Connection, server: Resource, image_id: str, version: str) -> Resource:
    """The version a snapshot will fill: the server's image metadata, built today, private source."""
    image = resource_store.get(conn, image_id, kind=IMAGE_KIND, project_ids=[server.project_id or ""])
    if image.project_id != server.project_id:
        raise Conflict(
            f"image {image.name} belongs to another project; "
            "snapshots go into an image of the server's project",
            field="image_id",
        )
    source = resource_store.get(conn, state.fact(server, "image")["version_id"], kind=IMAGE_VERSION_KIND)
    metadata = {
        **source.spec["metadata"],
        "image_source": "private",
        "image_build_date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "image_description": f"snapshot of server {server.name} ({server.id})",
    }
    spec = ImageVersionSpec.model_validate(
        {
            "version": version,
            "metadata": metadata,
            "disk_format": "qcow2",
            "boot_test": source.spec.get("boot_test", {}),
        }
    )
    created = versions.create_version(conn, image, spec)
    graph.add(conn, Edge(source_id=created.id, target_id=source.id, type=EdgeType.DERIVED_FROM))
    return created


def _flatten(ctx: StepContext) -> dict[str, Any]:
    server = server_ops.server_of(ctx)
    if _target_version(ctx).status.state != VersionState.IMPORTING:
        return {"skipped": "the snapshot's bytes are already in"}
    driver = server_ops.driver_of(server)
    target = server_ops.snapshot_volume(server.id)
    server_ops.host_call(lambda: driver.delete_volume(target))
    info = server_ops.host_call(lambda: driver.flatten_volume(server_ops.root_volume(server.id), target))
    return {"volume": target, "bytes": info.allocation_bytes}


def _transfer(ctx: StepContext) -> dict[str, Any]:
    """Stream the flattened disk into the blob store through the upload checks; queue the pipeline."""
    server = server_ops.server_of(ctx)
    version = _target_version(ctx)
    if version.status.state != VersionState.IMPORTING:
        return {"skipped": "the snapshot's bytes are already in"}
    driver = server_ops.driver_of(server)
    store = LocalBlobStore(ctx.settings.resolved_blob_dir)
    ingest = Ingest(
        store,
        InspectionPolicy(max_virtual_size=ctx.settings.image_max_virtual_size),
        declared_format="qcow2",
        with_sha512=ctx.settings.image_sha512,
        max_bytes=ctx.settings.image_max_bytes,
    )
    volume = server_ops.snapshot_volume(server.id)
    then = _queue_prepare(ctx.operation, version)
    try:
        for chunk in server_ops.host_call(lambda: driver.download_volume(volume)):
            ctx.check()
            ingest.feed(chunk)
        result = versions.store_ingest(ctx.db, store, ingest, version.id, then)
    except ImageRejected as exc:
        ingest.abort()
        raise StepError(exc.code, f"the snapshot was refused by the image checks: {exc.message}") from exc
    except HostUnreachable as exc:  # the host went away in the middle of the stream
        ingest.abort()
        raise RetryableError("HOST_UNREACHABLE", str(exc)) from exc
    except BaseException:
        ingest.abort()
        raise
    return {"sha256": result.sha256, "size": result.size}


def _queue_prepare(operation: Operation, version: Resource) -> Callable[[Connection], None]:
    """Queue the image pipeline in the transaction that records the snapshot's bytes."""

    def queue(conn: Connection) -> None:
        operation_store.create(
            conn,
            verb=PREPARE_VERB,
            principal=operation.principal,
            project_id=version.project_id,
            target_id=version.id,
            target_kind=IMAGE_VERSION_KIND,
            origin_request_id=operation.origin_request_id,
        )

    return queue


def _clean_up(ctx: StepContext) -> dict[str, Any]:
    server = server_ops.server_of(ctx)
    driver = server_ops.driver_of(server)
    server_ops.host_call(lambda: driver.delete_volume(server_ops.snapshot_volume(server.id)))
    return {}


def _target_version(ctx: StepContext) -> Resource:
    with ctx.db.read() as conn:
        return resource_store.get(conn, ctx.params["version_id"], kind=IMAGE_VERSION_KIND)


def _fail_version(conn: Connection, operation: Operation) -> None:
    """The version a failed snapshot was filling is ``failed``; the server is left as it was."""
    reason = operation.error.message if operation.error else f"snapshot {operation.state}"
    versions.fail_if_unfinished(conn, operation.params.get("version_id", ""), reason)


def register(registry: Registry) -> None:
    registry.register(
        VERB,
        [
            Step("flatten", _flatten, deadline_seconds=1800, max_attempts=3),
            Step("transfer", _transfer, deadline_seconds=3600, max_attempts=3),
            Step("clean-up", _clean_up, deadline_seconds=120, max_attempts=5),
        ],
        on_end=_fail_version,
    )
