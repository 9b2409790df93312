"""/v1/keypairs: SSH public keys a project keeps by name, to put into its servers.

A key pair is copied into a server when the server is created (``compute.keypairs``): deleting
a key pair later never touches a running server. A key pair Sovra generates answers its private
key once, in the 201 of its creation; it is neither stored nor logged.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from sovra.api.deps import DB, Config, Context
from sovra.api.listing import Listing, visible_page
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse
from sovra.domain.keypair import KEYPAIR_KIND, MAX_PUBLIC_KEY_BYTES, KeyPairSpec, generate, parse_public_key
from sovra.domain.labels import validate_labels
from sovra.domain.names import validate_name
from sovra.domain.resource import Resource
from sovra.store import resources as resource_store

router = APIRouter(prefix="/v1", tags=["keypairs"], responses=PROBLEM_RESPONSES)


class KeyPairCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    public_key: str | None = Field(
        default=None,
        max_length=MAX_PUBLIC_KEY_BYTES,
        description="One OpenSSH line (the content of id_ed25519.pub). Leave it out and Sovra generates "
        "an Ed25519 pair and answers the private key once.",
    )
    labels: Labels = Field(default_factory=dict)


class KeyPair(BaseModel):
    id: str
    kind: str = KEYPAIR_KIND
    name: str
    project_id: str
    labels: dict[str, str]
    spec: KeyPairSpec
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource) -> KeyPair:
        return cls(
            id=resource.id,
            name=resource.name,
            project_id=resource.project_id or "",
            labels=resource.labels,
            spec=KeyPairSpec.model_validate(resource.spec),
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


class CreatedKeyPair(KeyPair):
    private_key: str | None = Field(
        default=None,
        description="Only when Sovra generated the pair: the OpenSSH private key, shown in this answer "
        "only and never stored. Save it now (mode 0600).",
    )


@router.post(
    "/projects/{project_id}/keypairs", status_code=status.HTTP_201_CREATED, response_model=CreatedKeyPair
)
def create_keypair(
    project_id: str, body: KeyPairCreate, ctx: Context, db: DB, response: Response
) -> CreatedKeyPair:
    """Import a public key, or generate a pair (without ``public_key``)."""
    validate_name(body.name)
    validate_labels(body.labels)
    private_key: str | None = None
    if body.public_key is None:
        generated = generate(comment=body.name)
        spec, private_key = generated.spec, generated.private_key
    else:
        spec = parse_public_key(body.public_key)
    with db.write() as conn:
        keypair = resource_store.create(
            conn,
            kind=KEYPAIR_KIND,
            name=body.name,
            project_id=project_id,
            labels=body.labels,
            spec=spec.model_dump(mode="json"),
            state="ACTIVE",
        )
    response.headers["Location"] = f"/v1/keypairs/{keypair.id}"
    if private_key is not None:
        response.headers["Cache-Control"] = "no-store"  # a private key must not linger in any cache
    return CreatedKeyPair(**KeyPair.of(keypair).model_dump(), private_key=private_key)


@router.get("/keypairs", response_model=ListResponse[KeyPair])
def list_keypairs(ctx: Context, db: DB, settings: Config, query: Listing) -> ListResponse[KeyPair]:
    """Key pairs of the caller's projects."""
    return visible_page(db, ctx, settings, KEYPAIR_KIND, query, lambda _conn, r: KeyPair.of(r))


@router.get("/keypairs/{keypair_id}", response_model=KeyPair)
def get_keypair(keypair_id: str, ctx: Context, db: DB, response: Response) -> KeyPair:
    with db.read() as conn:
        keypair = resource_store.get(conn, keypair_id, kind=KEYPAIR_KIND, project_ids=ctx.project_ids)
    response.headers["ETag"] = keypair.etag
    return KeyPair.of(keypair)


@router.delete("/keypairs/{keypair_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_keypair(keypair_id: str, ctx: Context, db: DB) -> Response:
    """Servers keep the copy they were created with: they are not affected."""
    with db.write() as conn:
        resource_store.get(conn, keypair_id, kind=KEYPAIR_KIND, project_ids=ctx.project_ids, for_update=True)
        resource_store.delete(conn, [keypair_id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
