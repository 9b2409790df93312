"""/v1/.../signing-keys and version signatures: who a project trusts, and what was signed."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from sovra.api.deps import DB, Context
from sovra.api.images import ImageVersion, version_of_image
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.domain.errors import Conflict, InvalidArgument
from sovra.domain.image import ImageVersionSpec
from sovra.domain.names import validate_name
from sovra.images import signing, trust
from sovra.images.versions import facts_of
from sovra.store import resources as resource_store

MAX_SIGNATURES = ImageVersionSpec.model_fields["signatures"].metadata[0].max_length
router = APIRouter(prefix="/v1", tags=["signing"], responses=PROBLEM_RESPONSES)


class SigningKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    public_key_pem: str = Field(min_length=64, max_length=16384, description="cosign.pub (PKIX PEM)")


class SigningKey(BaseModel):
    id: str
    name: str
    project_id: str | None
    fingerprint: str
    public_key_pem: str
    created_at: datetime


class SigningKeyList(BaseModel):
    items: list[SigningKey]


class SignatureAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signature: Annotated[str, Field(min_length=16, max_length=1024, description="base64 DER (.sig file)")]


class SignatureView(BaseModel):
    signature: str
    trusted_key: str | None = Field(description="Fingerprint of the trusted key it verifies with, if any.")
    bundle: dict[str, Any] | None = Field(description="Sigstore bundle v0.3 when it verifies.")


class SignatureList(BaseModel):
    sha256: str | None
    items: list[SignatureView]


def _key(resource: Any) -> SigningKey:
    return SigningKey(
        id=resource.id,
        name=resource.name,
        project_id=resource.project_id,
        fingerprint=resource.spec["fingerprint"],
        public_key_pem=resource.spec["public_key_pem"],
        created_at=resource.created_at,
    )


@router.post(
    "/projects/{project_id}/signing-keys", status_code=status.HTTP_201_CREATED, response_model=SigningKey
)
def trust_key(
    project_id: str, body: SigningKeyCreate, ctx: Context, db: DB, response: Response
) -> SigningKey:
    """Trust a public key for this project's image signatures."""
    validate_name(body.name)
    try:
        public_key = signing.load_public_key(body.public_key_pem)
    except signing.SigningError as exc:
        raise InvalidArgument(exc.message, field="public_key_pem") from exc
    spec = {
        "public_key_pem": body.public_key_pem.strip() + "\n",
        "fingerprint": signing.key_fingerprint(public_key),
    }
    with db.write() as conn:
        key = resource_store.create(
            conn,
            kind=trust.SIGNING_KEY_KIND,
            name=body.name,
            project_id=project_id,
            labels={},
            spec=spec,
            state="trusted",
        )
    response.headers["Location"] = f"/v1/signing-keys/{key.id}"
    return _key(key)


@router.get("/projects/{project_id}/signing-keys", response_model=SigningKeyList)
def list_keys(project_id: str, ctx: Context, db: DB) -> SigningKeyList:
    with db.read() as conn:
        page = resource_store.list_page(
            conn,
            kind=trust.SIGNING_KEY_KIND,
            project_ids=None,
            selector=[],
            page_size=1000,
            page_token=None,
            scope_project_id=project_id,
        )
    return SigningKeyList(items=[_key(k) for k in page.items])


@router.delete("/signing-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def distrust_key(key_id: str, ctx: Context, db: DB) -> Response:
    with db.write() as conn:
        resource_store.get(conn, key_id, kind=trust.SIGNING_KEY_KIND)
        resource_store.delete(conn, [key_id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/images/{image_id}/versions/{version_id}/signatures", response_model=ImageVersion)
def add_signature(image_id: str, version_id: str, body: SignatureAdd, ctx: Context, db: DB) -> ImageVersion:
    """Attach a signature of the version's bytes; it must verify with one of the project's keys."""
    current = version_of_image(db, ctx, image_id, version_id)
    sha256 = facts_of(current).sha256
    if sha256 is None:
        raise Conflict(
            f"version {current.name} has no bytes yet; sign after the upload, or pass the signature "
            "when creating the version"
        )
    with db.write() as conn:
        try:
            signing.verify_with_any(
                trust.trusted_keys(conn, current.project_id or ""), sha256, body.signature
            )
        except signing.SigningError as exc:
            raise InvalidArgument(f"signature refused: {exc.message}", field="signature") from exc
        existing = list(current.spec.get("signatures", []))
        if body.signature in existing:
            return ImageVersion.of(current)  # the same signature twice: nothing to add
        if len(existing) >= MAX_SIGNATURES:
            raise Conflict(
                f"version {current.name} already carries {MAX_SIGNATURES} signatures, the most it can"
            )
        signatures = [*existing, body.signature]
        updated = resource_store.update(
            conn,
            version_id,
            expected_version=current.version,
            spec={**current.spec, "signatures": signatures},
        )
    return ImageVersion.of(updated)


@router.get("/images/{image_id}/versions/{version_id}/signatures", response_model=SignatureList)
def list_signatures(image_id: str, version_id: str, ctx: Context, db: DB) -> SignatureList:
    """Each signature as stored (a detached .sig) and, when a trusted key verifies it, as a bundle."""
    version = version_of_image(db, ctx, image_id, version_id)
    sha256 = facts_of(version).sha256
    with db.read() as conn:
        keys = [signing.load_public_key(pem) for pem in trust.trusted_keys(conn, version.project_id or "")]
    items = []
    for signature in version.spec.get("signatures", []):
        matched = _matching_key(keys, sha256, signature)
        bundle = (
            signing.make_bundle(sha256, signing.signature_from_b64(signature), matched)
            if matched is not None and sha256
            else None
        )
        items.append(
            SignatureView(
                signature=signature,
                bundle=bundle,
                trusted_key=signing.key_fingerprint(matched) if matched is not None else None,
            )
        )
    return SignatureList(sha256=sha256, items=items)


def _matching_key(keys: list[Any], sha256: str | None, signature: str) -> Any:
    if sha256 is None:
        return None
    for key in keys:
        try:
            signing.verify_digest(key, sha256, signature)
            return key
        except signing.SigningError:
            continue
    return None
