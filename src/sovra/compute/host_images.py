"""Image versions on hosts: transferred through libvirt once, verified on arrival, then shared.

A host keeps one base volume per image digest in its storage pool; servers boot from
copy-on-write overlays on top of it. Which base volumes a host holds, and that each was verified,
is recorded in the host's status (``image_cache``), written under the host row's lock.

Transfers never overwrite each other: each attempt uploads to a volume name of its own, reads the
bytes back through libvirt and compares their SHA-256 with the digest the image pipeline
recorded. Only then is the volume entered in the cache; if another transfer got there first, the
loser deletes its copy and uses the winner's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sovra.domain.resource import Status
from sovra.images.blobstore import BlobStore
from sovra.operations.errors import RetryableError
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.types import utcnow
from sovra.virt.driver import VirtDriver

VOLUME_PREFIX = "sovra-image-"


@dataclass(frozen=True)
class BaseImage:
    digest: str  # SHA-256 of the bytes hosts receive
    disk_format: str  # qcow2 or raw


def _cached_volume(db: Database, host_id: str, digest: str) -> str | None:
    with db.read() as conn:
        host = resource_store.get(conn, host_id)
    entry = _cache(host.status).get(digest)
    return entry["volume"] if entry else None


def ensure_base_image(
    db: Database, store: BlobStore, driver: VirtDriver, host_id: str, image: BaseImage, attempt_key: str
) -> str:
    """The name of a verified base volume of ``image`` on the host, transferring it if needed.

    ``attempt_key`` makes the upload's volume name unique to this attempt (an operation id).
    """
    name = _cached_volume(db, host_id, image.digest)
    if name is not None:
        if driver.volume(name) is not None:
            return name
        _forget(db, host_id, image.digest)  # deleted behind our back: transfer it again
    mine = f"{VOLUME_PREFIX}{image.digest[:24]}-{attempt_key[-12:]}.{image.disk_format}"
    driver.delete_volume(mine)  # a partial copy from an attempt that died midway
    with store.open(image.digest) as source:
        driver.upload_volume(mine, source, store.size(image.digest))
    arrived = driver.volume_sha256(mine)
    if arrived != image.digest:
        driver.delete_volume(mine)
        raise RetryableError(
            "IMAGE_DIGEST_MISMATCH",
            f"the image arrived on the host with SHA-256 {arrived}, expected {image.digest}; "
            "the copy was deleted and the transfer will be retried",
        )
    winner = _record(db, host_id, image.digest, mine)
    if winner != mine:
        driver.delete_volume(mine)
    return winner


def _cache(status: Status) -> dict[str, Any]:
    return dict((status.model_extra or {}).get("image_cache") or {})


def _record(db: Database, host_id: str, digest: str, volume: str) -> str:
    """Enter ``volume`` in the host's cache unless a verified one is there; return the one to use."""
    chosen: list[str] = []

    def change(status: Status) -> Status:
        cache = _cache(status)
        existing = cache.get(digest)
        if existing is not None:
            chosen.append(existing["volume"])
            return status
        cache[digest] = {"volume": volume, "verified_at": utcnow().isoformat()}
        chosen.append(volume)
        return Status.model_validate({**status.model_dump(), "image_cache": cache})

    with db.write() as conn:
        resource_store.update_status(conn, host_id, change)
    return chosen[0]


def _forget(db: Database, host_id: str, digest: str) -> None:

    def change(status: Status) -> Status:
        cache = _cache(status)
        cache.pop(digest, None)
        return Status.model_validate({**status.model_dump(), "image_cache": cache})

    with db.write() as conn:
        resource_store.update_status(conn, host_id, change)
