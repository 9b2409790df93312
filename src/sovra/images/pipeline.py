"""The operations that take a version from bytes to ``active``.

``image.prepare`` runs after an upload: convert (when the source is not already the disk format),
boot-test on a throw-away overlay, promote. ``image.import`` first downloads the bytes from the
version's URL through the same streaming checks, then does the same. Every step re-reads the
version and skips work already recorded, so a resumed operation never converts twice; if the
operation fails or is cancelled, the version becomes ``failed`` with the reason.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from sovra.config import Settings
from sovra.domain.edges import Edge, EdgeType
from sovra.domain.image import IMAGE_KIND, ImageVersionSpec, VersionState
from sovra.domain.operation import Operation
from sovra.domain.resource import Resource
from sovra.images import boottest, gc, lifecycle, qemu_img, trust, versions
from sovra.images.blobstore import LocalBlobStore
from sovra.images.fetch import FetchFailed, ImportPolicy, UrlRefused, fetch
from sovra.images.ingest import Ingest
from sovra.images.inspection import ImageRejected, InspectionPolicy, inspect_file
from sovra.images.qemu_img import QemuImgError
from sovra.operations.context import StepContext
from sovra.operations.errors import RetryableError, StepError
from sovra.operations.registry import Registry, Step
from sovra.store import graph
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.types import utcnow

PREPARE_VERB = "image.prepare"
IMPORT_VERB = "image.import"


def import_policy(settings: Settings) -> ImportPolicy:
    return ImportPolicy(
        allowed_schemes=frozenset(settings.import_allowed_schemes),
        allowed_ports=frozenset(settings.import_allowed_ports),
        allowed_networks=tuple(settings.import_allowed_networks),
        max_bytes=settings.image_max_bytes,
    )


def _store(ctx: StepContext) -> LocalBlobStore:
    return LocalBlobStore(ctx.settings.resolved_blob_dir)


def _version(ctx: StepContext) -> tuple[Resource, ImageVersionSpec]:
    with ctx.db.read() as conn:
        version = resource_store.get(conn, ctx.operation.target_id or "")
    spec = ImageVersionSpec.model_validate({k: v for k, v in version.spec.items() if k != "image_id"})
    return version, spec


def _refused(exc: ImageRejected | UrlRefused | QemuImgError) -> StepError:
    code = exc.reason.upper() if isinstance(exc, QemuImgError) else exc.code
    details = {k: v for k, v in exc.extensions.items() if k not in ("field", "code")}
    return StepError(code, exc.detail, **details)


def _download(ctx: StepContext) -> dict[str, Any]:
    version, spec = _version(ctx)
    if version.status.state != VersionState.IMPORTING:
        return {"skipped": "already downloaded"}
    source = spec.source
    url = getattr(source, "url", None)
    if url is None:
        raise StepError("NO_URL", "this version is uploaded, not imported")
    store = _store(ctx)
    ingest = Ingest(
        store,
        InspectionPolicy(max_virtual_size=ctx.settings.image_max_virtual_size),
        declared_format=source.declared_format,
        declared_sha256=source.declared_sha256,
        with_sha512=ctx.settings.image_sha512,
        max_bytes=ctx.settings.image_max_bytes,
    )
    try:
        for chunk in fetch(url, import_policy(ctx.settings)):
            ctx.check()
            ingest.feed(chunk)
        result = versions.store_ingest(ctx.db, store, ingest, version.id)
    except (ImageRejected, UrlRefused) as exc:
        ingest.abort()
        raise _refused(exc) from exc
    except FetchFailed as exc:
        ingest.abort()
        raise RetryableError(exc.code, exc.detail) from exc
    except BaseException:
        ingest.abort()
        raise
    return {"sha256": result.sha256, "size": result.size, "format": result.format}


def _convert(ctx: StepContext) -> dict[str, Any]:
    version, spec = _version(ctx)
    facts = versions.facts_of(version)
    if version.status.state != VersionState.VALIDATING:
        return {"skipped": f"version is {version.status.state}"}
    store = _store(ctx)
    assert facts.source_blob is not None and facts.source_format is not None
    if facts.source_format == spec.disk_format:
        digest, size = facts.source_blob, facts.size
    else:
        with ctx.db.write() as conn:
            versions.move(conn, version.id, VersionState.CONVERTING)
        digest, size = _convert_blob(ctx, store, facts.source_blob, facts.source_format, spec.disk_format)
    with ctx.db.write() as conn:
        _record_disk(conn, version.id, facts.source_blob, digest, size or 0, spec.disk_format)
    return {"disk_blob": digest, "disk_format": spec.disk_format}


def _convert_blob(
    ctx: StepContext, store: LocalBlobStore, source: str, source_format: str, target_format: str
) -> tuple[str, int]:
    """qemu-img convert, only ever on a blob that passed inspection, re-inspected on the way out."""
    source_path = store.local_path(source)
    verified = inspect_file(
        source_path, source_format, InspectionPolicy(max_virtual_size=ctx.settings.image_max_virtual_size)
    )
    output = store.temporary_dir / f"convert-{ctx.operation.id}.{target_format}"
    try:
        qemu_img.convert(source_path, verified, output, target_format)
        size = output.stat().st_size
        return store.adopt(output), size
    except (ImageRejected, QemuImgError) as exc:
        raise _refused(exc) from exc
    finally:
        output.unlink(missing_ok=True)


def _record_disk(conn: Connection, version_id: str, source: str, digest: str, size: int, fmt: str) -> None:
    if digest != source:
        blob_id = versions.record_blob(conn, digest, size, fmt)
        graph.add(conn, Edge(source_id=version_id, target_id=blob_id, type=EdgeType.USES))
        graph.add(
            conn,
            Edge(source_id=blob_id, target_id=versions.blob_resource_id(source), type=EdgeType.DERIVED_FROM),
        )
    versions.move(conn, version_id, VersionState.TESTING, disk_format=fmt, disk_blob=digest, disk_size=size)


def _boot_test(ctx: StepContext) -> dict[str, Any]:
    version, spec = _version(ctx)
    facts = versions.facts_of(version)
    if version.status.state != VersionState.TESTING:
        return {"skipped": f"version is {version.status.state}"}
    if not spec.boot_test.enabled:
        return {"skipped": "boot test disabled for this version"}
    assert facts.disk_blob is not None and facts.disk_format is not None
    store = _store(ctx)
    try:
        result = boottest.boot_test(
            store.local_path(facts.disk_blob),
            facts.disk_format,
            marker=spec.boot_test.marker,
            timeout=min(spec.boot_test.timeout_seconds, ctx.remaining_seconds),
            memory_mib=spec.boot_test.memory_mib,
            work_dir=store.temporary_dir,
            check=ctx.check,
        )
    except (boottest.BootTestError, OSError) as exc:  # QEMU missing or unable to start: not the image's fault
        raise RetryableError("BOOT_TEST_UNAVAILABLE", f"the boot test could not run here: {exc}") from exc
    with ctx.db.write() as conn:
        versions.annotate(conn, version.id, boot_log_tail=result.log_tail)
    if not result.passed:
        raise StepError(
            "BOOT_TEST_FAILED",
            f"no {spec.boot_test.marker!r} on the serial console within "
            f"{spec.boot_test.timeout_seconds}s; console tail:\n{result.log_tail}",
        )
    return {"seconds": round(result.seconds, 1)}


def _promote(ctx: StepContext) -> dict[str, Any]:
    """Active, unless the project requires a trusted signature and the version has none."""
    version, _ = _version(ctx)
    if version.status.state != VersionState.TESTING:
        return {"skipped": f"version is {version.status.state}"}
    with ctx.db.write() as conn:
        verdict = trust.verify_version(conn, version)
        if trust.requires_signature(conn, version.project_id or "") and not verdict.trusted:
            raise StepError(
                "SIGNATURE_REQUIRED",
                f"this project requires a signature from one of its signing "
                f"keys before a version becomes active: {verdict.reason}",
            )
        versions.move(conn, version.id, VersionState.ACTIVE)
    return {"state": str(VersionState.ACTIVE), "signed_by": verdict.fingerprint}


def _mark_failed(conn: Connection, operation: Operation) -> None:
    reason = f"{operation.error.code}: {operation.error.message}" if operation.error else str(operation.state)
    versions.fail_if_unfinished(conn, operation.target_id or "", reason)


HOUSEKEEPING_SECONDS = 300
STALE_WRITE_SECONDS = 24 * 3600
"""A temporary blob file nobody wrote to for a day belongs to a write that died."""


def housekeeping(db: Database, settings: Settings) -> None:
    """Apply every image's retention policy, then collect the bytes nothing uses."""
    today = utcnow().date()
    with db.read() as conn:
        images = resource_store.list_page(
            conn, kind=IMAGE_KIND, project_ids=None, selector=[], page_size=100_000, page_token=None
        ).items
    for image in images:
        with db.write() as conn:
            lifecycle.apply(conn, image, today)
    store = LocalBlobStore(settings.resolved_blob_dir)
    gc.collect(db, store)
    store.sweep_temporary(older_than_seconds=STALE_WRITE_SECONDS)


def register(registry: Registry) -> None:
    finishing = [
        Step("convert", _convert, deadline_seconds=3600, max_attempts=2),
        Step("boot-test", _boot_test, deadline_seconds=3600, max_attempts=2),
        Step("promote", _promote),
    ]
    registry.add_periodic("image-housekeeping", HOUSEKEEPING_SECONDS, housekeeping)
    registry.register(PREPARE_VERB, finishing, on_end=_mark_failed)
    registry.register(
        IMPORT_VERB,
        [Step("download", _download, deadline_seconds=6 * 3600, max_attempts=3), *finishing],
        on_end=_mark_failed,
    )
