"""/v1/flavors: the provider's catalogue of server sizes, read by everyone, changed by admins.

A flavor is addressed by id or, as in OpenStack, by name (``/v1/flavors/SCS-2V-4``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sovra.api.deps import (
    DB,
    NO_CONTROL_CHARACTERS,
    Config,
    Context,
    IfMatch,
    PageSize,
    PageToken,
    TextFilter,
    parse_if_match,
)
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import Labels, ListResponse
from sovra.compute import flavors as catalogue
from sovra.domain.errors import Conflict
from sovra.domain.flavor import (
    FLAVOR_ACTIVE,
    FLAVOR_KIND,
    MAX_RAM_MIB,
    FlavorSpec,
    ScsFacts,
    scs_facts,
    validate_flavor,
    validate_flavor_name,
)
from sovra.domain.labels import parse_selector, validate_labels
from sovra.domain.names import plain_text
from sovra.domain.resource import Resource
from sovra.store import graph
from sovra.store import resources as resource_store

router = APIRouter(prefix="/v1/flavors", tags=["flavors"], responses=PROBLEM_RESPONSES)

FlavorRef = Annotated[
    str,
    Path(
        max_length=128,
        pattern=NO_CONTROL_CHARACTERS,
        description="The flavor's id, or its name (e.g. SCS-2V-4).",
    ),
]


class FlavorCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=63, description="SCS- names must follow scs-0100.")
    labels: Labels = Field(default_factory=dict)
    spec: FlavorSpec


class FlavorPatch(BaseModel):
    """Only labels and the description change; a flavor's size is fixed (make a new flavor)."""

    model_config = ConfigDict(extra="forbid")

    labels: Labels | None = None
    description: Annotated[str, AfterValidator(plain_text)] | None = Field(default=None, max_length=1024)


class Flavor(BaseModel):
    id: str
    kind: str = FLAVOR_KIND
    name: str
    labels: dict[str, str]
    spec: FlavorSpec
    scs: ScsFacts | None = Field(description="What an SCS name states (scs-0100); null for other names.")
    state: str
    version: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, resource: Resource) -> Flavor:
        return cls(
            id=resource.id,
            name=resource.name,
            labels=resource.labels,
            spec=FlavorSpec.model_validate(resource.spec),
            scs=scs_facts(resource.name),
            state=resource.status.state,
            version=resource.version,
            created_at=resource.created_at,
            updated_at=resource.updated_at,
        )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Flavor)
def create_flavor(body: FlavorCreate, ctx: Context, db: DB, response: Response) -> Flavor:
    """Add a flavor. An ``SCS-`` name must parse and the spec must give at least what it states;
    its ``scs:`` extra specs are filled in from the name."""
    validate_flavor_name(body.name)
    validate_labels(body.labels)
    spec = validate_flavor(body.name, body.spec)
    with db.write() as conn:
        flavor = resource_store.create(
            conn,
            kind=FLAVOR_KIND,
            name=body.name,
            project_id=None,
            labels=body.labels,
            spec=spec.model_dump(mode="json"),
            state=FLAVOR_ACTIVE,
            public=True,
        )
    response.headers["Location"] = f"/v1/flavors/{flavor.id}"
    response.headers["ETag"] = flavor.etag
    return Flavor.of(flavor)


@router.get("", response_model=ListResponse[Flavor])
def list_flavors(
    ctx: Context,
    db: DB,
    settings: Config,
    name: TextFilter = None,
    label_selector: Annotated[str | None, Query(max_length=4096)] = None,
    vcpus_min: Annotated[int | None, Query(ge=1, le=1024, description="At least this many vCPUs.")] = None,
    ram_mib_min: Annotated[
        int | None, Query(ge=1, le=MAX_RAM_MIB, description="At least this much RAM.")
    ] = None,
    page_size: PageSize = 100,
    page_token: PageToken = None,
) -> ListResponse[Flavor]:
    """Every flavor (they are global and public), in creation order."""
    with db.read() as conn:
        page = catalogue.list_page(
            conn,
            selector=parse_selector(label_selector),
            name=name,
            vcpus_min=vcpus_min,
            ram_mib_min=ram_mib_min,
            page_size=min(page_size, settings.max_page_size),
            page_token=page_token,
        )
    return ListResponse[Flavor](
        items=[Flavor.of(f) for f in page.items], next_page_token=page.next_page_token
    )


@router.get("/{flavor_id}", response_model=Flavor)
def get_flavor(flavor_id: FlavorRef, ctx: Context, db: DB, response: Response) -> Flavor:
    with db.read() as conn:
        flavor = catalogue.find(conn, flavor_id)
    response.headers["ETag"] = flavor.etag
    return Flavor.of(flavor)


@router.patch("/{flavor_id}", response_model=Flavor)
def update_flavor(
    flavor_id: FlavorRef,
    body: FlavorPatch,
    ctx: Context,
    db: DB,
    response: Response,
    if_match: IfMatch = None,
) -> Flavor:
    if body.labels is not None:
        validate_labels(body.labels)
    with db.write() as conn:
        current = catalogue.find(conn, flavor_id, for_update=True)
        spec = None
        if body.description is not None:
            spec = {**current.spec, "description": body.description}
        flavor = resource_store.update(
            conn, current.id, expected_version=parse_if_match(if_match), labels=body.labels, spec=spec
        )
    response.headers["ETag"] = flavor.etag
    return Flavor.of(flavor)


@router.delete("/{flavor_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_flavor(flavor_id: FlavorRef, ctx: Context, db: DB, if_match: IfMatch = None) -> Response:
    """Refused while a server uses the flavor (resize or delete those servers first)."""
    with db.write() as conn:
        flavor = catalogue.find(conn, flavor_id, for_update=True)
        resource_store.require_version(flavor, parse_if_match(if_match))
        users = graph.blocking_users(conn, [flavor.id])
        if users:
            raise Conflict(
                f"flavor {flavor.name} is still used by "
                + ", ".join(f"{u.kind} {u.name}" for u in users[:10])
                + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                + "; resize or delete them first",
                dependents=[u.model_dump(mode="json") for u in users],
            )
        resource_store.delete(conn, [flavor.id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
