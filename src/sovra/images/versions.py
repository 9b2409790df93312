"""Image and version records: creation, state changes, and what an ingest leaves behind.

Everything here is a database write on behalf of the API or a pipeline step; the bytes themselves
live in the blob store, each blob also being an ``ImageBlob`` resource so that the graph knows
which versions use it (``uses``) and which blob a conversion came from (``derived-from``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from sovra.domain.edges import Edge, EdgeType
from sovra.domain.errors import NotFound
from sovra.domain.image import (
    IMAGE_BLOB_KIND,
    IMAGE_VERSION_KIND,
    ImageVersionSpec,
    VersionFacts,
    VersionState,
    check_transition,
    version_resource_name,
)
from sovra.domain.resource import Resource, Status
from sovra.images.blobstore import BlobStore
from sovra.images.ingest import Ingest, IngestResult
from sovra.store import graph
from sovra.store import resources as resource_store
from sovra.store.database import Database

_BLOB_NAMESPACE = uuid.UUID("9b8f3c2e-5c1f-4d7e-9a51-2f0c3a9d7e11")


def blob_resource_id(sha256: str) -> str:
    """Blob resources have an id derived from the digest, so recording one twice is a no-op."""
    return str(uuid.uuid5(_BLOB_NAMESPACE, sha256))


def facts_of(version: Resource) -> VersionFacts:
    return VersionFacts.model_validate(version.status.model_extra or {})


def create_version(conn: Connection, image: Resource, spec: ImageVersionSpec) -> Resource:
    """A new version in ``importing``, owned by its image (and its image's project)."""
    version = resource_store.create(
        conn,
        kind=IMAGE_VERSION_KIND,
        name=version_resource_name(image.name, spec.version),
        project_id=image.project_id,
        labels={},
        spec={**spec.model_dump(mode="json"), "image_id": image.id},
        state=VersionState.IMPORTING,
        public=image.public,
    )
    graph.add(conn, Edge(source_id=image.id, target_id=version.id, type=EdgeType.OWNS))
    return version


def move(conn: Connection, version_id: str, target: VersionState, **facts: Any) -> Resource:
    """Change a version's state along the allowed transitions, recording facts with it."""

    def change(status: Status) -> Status:
        check_transition(VersionState(status.state), target)
        merged = {**(status.model_extra or {}), **{k: v for k, v in facts.items() if v is not None}}
        return Status.model_validate({**status.model_dump(exclude=set(merged)), **merged, "state": target})

    return resource_store.update_status(conn, version_id, change)


def fail(conn: Connection, version_id: str, reason: str) -> Resource:
    return move(conn, version_id, VersionState.FAILED, failure_reason=reason)


def record_blob(conn: Connection, sha256: str, size: int, fmt: str) -> str:
    """The ImageBlob resource for ``sha256`` (created on first sight); returns its id."""
    blob_id = blob_resource_id(sha256)
    try:
        resource_store.get(conn, blob_id)
    except NotFound:
        resource_store.create(
            conn,
            kind=IMAGE_BLOB_KIND,
            name=sha256[:63],
            project_id=None,
            labels={},
            spec={"sha256": sha256, "size": size, "format": fmt},
            state="stored",
            resource_id=blob_id,
        )
    return blob_id


def store_ingest(
    db: Database,
    store: BlobStore,
    ingest: Ingest,
    version_id: str,
    then: Callable[[Connection], None] | None = None,
) -> IngestResult:
    """Finish the ingest, then commit its blob and record it in one critical section, so that the
    blob collector never sees the bytes without their record (or deletes them under it).
    ``then`` runs in the recording transaction (e.g. to queue the operation that comes next)."""
    result = ingest.finish()
    with store.lock(result.sha256):
        ingest.commit()
        with db.write() as conn:
            record_ingest(conn, version_id, result)
            if then is not None:
                then(conn)
    return result


def record_ingest(conn: Connection, version_id: str, result: IngestResult) -> Resource:
    """The bytes arrived and passed the checks: the version uses its source blob, now validating."""
    blob_id = record_blob(conn, result.sha256, result.size, result.format)
    graph.add(conn, Edge(source_id=version_id, target_id=blob_id, type=EdgeType.USES))
    return move(
        conn,
        version_id,
        VersionState.VALIDATING,
        size=result.size,
        virtual_size=result.virtual_size,
        source_format=result.format,
        sha256=result.sha256,
        sha512=result.sha512,
        source_blob=result.sha256,
    )


def annotate(conn: Connection, version_id: str, **facts: Any) -> Resource:
    """Record facts without changing state (e.g. the boot log of a test that is about to fail)."""

    def change(status: Status) -> Status:
        merged = {**(status.model_extra or {}), **facts}
        return Status.model_validate({**status.model_dump(exclude=set(merged)), **merged})

    return resource_store.update_status(conn, version_id, change)


def fail_if_unfinished(conn: Connection, version_id: str, reason: str) -> None:
    """After a failed or cancelled pipeline: a version not yet active is ``failed``, with the reason."""
    try:
        version = resource_store.get(conn, version_id)
    except NotFound:
        return
    if VersionState(version.status.state) in (
        VersionState.IMPORTING,
        VersionState.VALIDATING,
        VersionState.CONVERTING,
        VersionState.TESTING,
    ):
        fail(conn, version_id, reason)


def release_blobs(conn: Connection, version_id: str) -> int:
    """Drop the version's ``uses`` edges to its blobs; returns how many it let go of."""
    released = 0
    for edge in graph.edges_of(conn, version_id):
        if edge.source_id == version_id and edge.type == EdgeType.USES:
            target = resource_store.get(conn, edge.target_id)
            if target.kind == IMAGE_BLOB_KIND:
                graph.remove(conn, edge)
                released += 1
    return released
