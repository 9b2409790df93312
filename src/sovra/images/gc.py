"""Collect image bytes nothing uses any more.

A blob goes when no ``uses`` edge points at it (no version, no server). Under the store's lock for
its digest, the blob's record is deleted in a transaction that checks again that it is unused, and
only then are the bytes removed; a concurrent upload of the same bytes waits for the lock and
records the blob anew after the collector is done.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from sovra.domain.image import IMAGE_BLOB_KIND
from sovra.images.blobstore import BlobStore
from sovra.store import graph
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.schema import edges, resources

log = logging.getLogger(__name__)


def unused_blobs(db: Database) -> list[tuple[str, str]]:
    """(resource id, sha256) of every blob no ``uses`` edge points at."""
    used = sa.select(edges.c.target_id).where(edges.c.type == "uses")
    with db.read() as conn:
        rows = conn.execute(
            sa.select(resources.c.id, resources.c.spec).where(
                resources.c.kind == IMAGE_BLOB_KIND, resources.c.id.not_in(used)
            )
        ).all()
    return [(row[0], str(row[1]["sha256"])) for row in rows]


def collect(db: Database, store: BlobStore) -> list[str]:
    """Delete unused blobs (records, then bytes); returns the digests removed."""
    removed = []
    for blob_id, digest in unused_blobs(db):
        with store.lock(digest):
            with db.write() as conn:
                if graph.blocking_users(conn, [blob_id]):
                    continue  # used again since we looked
                resource_store.delete(conn, [blob_id])
            store.delete(digest)
        log.info("collected unused image blob %s", digest)
        removed.append(digest)
    return removed
