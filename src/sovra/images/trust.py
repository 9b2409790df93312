"""Which signatures a project trusts, and whether a version carries one.

A project's trusted keys are ``SigningKey`` resources (cosign-compatible public keys). A signature
is a cosign ``sign-blob --key`` signature over the SHA-256 of the uploaded bytes. The converted disk
that hosts receive is tied to those bytes by the ``derived-from`` edge Sovra itself recorded, and
its own digest is re-checked whenever it is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Connection

from sovra.domain.image import ImageVersionSpec
from sovra.domain.project import PROJECT_KIND, ProjectSpec
from sovra.domain.resource import Resource
from sovra.images import signing
from sovra.images.versions import facts_of
from sovra.store import resources as resource_store

SIGNING_KEY_KIND = "SigningKey"


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    fingerprint: str | None
    reason: str


def trusted_keys(conn: Connection, project_id: str) -> list[str]:
    """The public-key PEMs of the project's signing keys."""
    page = resource_store.list_page(
        conn,
        kind=SIGNING_KEY_KIND,
        project_ids=None,
        selector=[],
        page_size=1000,
        page_token=None,
        scope_project_id=project_id,
    )
    return [str(key.spec["public_key_pem"]) for key in page.items]


def requires_signature(conn: Connection, project_id: str) -> bool:
    project = resource_store.get(conn, project_id, kind=PROJECT_KIND)
    return ProjectSpec.model_validate(project.spec).require_image_signature


def verify_version(conn: Connection, version: Resource) -> Verdict:
    """Is any of the version's signatures valid for its bytes and made by a trusted key?"""
    facts = facts_of(version)
    spec = ImageVersionSpec.model_validate({k: v for k, v in version.spec.items() if k != "image_id"})
    if facts.sha256 is None:
        return Verdict(False, None, "the version has no bytes yet")
    if not spec.signatures:
        return Verdict(False, None, "the version carries no signature")
    keys = trusted_keys(conn, version.project_id or "")
    if not keys:
        return Verdict(False, None, "the project has no signing keys (sovra key trust)")
    reasons = []
    for signature in spec.signatures:
        try:
            return Verdict(True, signing.verify_with_any(keys, facts.sha256, signature), "valid")
        except signing.SigningError as exc:
            reasons.append(exc.message)
    return Verdict(False, None, "; ".join(reasons))
