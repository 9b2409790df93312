"""The flavor catalogue: the SCS standard flavors every Sovra cloud has, and finding flavors.

The 15 mandatory flavors of scs-0103 (v1.2) are written literally into the database by migration
``0005_standard_flavors``; :data:`MANDATORY` is the same table in code. The tests check both, and the
seeded rows, against the standard and against what each name derives, so that they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from sovra.domain.errors import NotFound
from sovra.domain.flavor import FLAVOR_KIND, FlavorSpec, validate_flavor
from sovra.domain.ids import is_id
from sovra.domain.labels import Requirement
from sovra.domain.resource import Resource
from sovra.store import resources as resource_store
from sovra.store.pagination import Page, decode_token, paginate, query_fingerprint

STANDARD = "scs-0103"
"""Value of the ``sovra.io/standard`` label on the flavors Sovra ships."""
CATALOGUE_LIMIT = 100_000
"""Filtered lists read the whole catalogue (flavors are a provider's short list, not tenant data)."""


@dataclass(frozen=True)
class StandardFlavor:
    """One row of the scs-0103 table: vCPUs, RAM in GiB and root disk in GB (0: none)."""

    name: str
    vcpus: int
    ram_gib: int
    disk_gb: int = 0

    def spec(self) -> FlavorSpec:
        """Exactly the table's values, with the ``scs:`` extra specs the name derives."""
        spec = FlavorSpec(
            vcpus=self.vcpus,
            ram_mib=self.ram_gib * 1024,
            disk_gib=self.disk_gb,
            description=f"SCS standard flavor ({STANDARD})",
        )
        return validate_flavor(self.name, spec)


MANDATORY: tuple[StandardFlavor, ...] = (
    StandardFlavor("SCS-1V-4", 1, 4),
    StandardFlavor("SCS-2V-8", 2, 8),
    StandardFlavor("SCS-4V-16", 4, 16),
    StandardFlavor("SCS-4V-16-100s", 4, 16, 100),
    StandardFlavor("SCS-8V-32", 8, 32),
    StandardFlavor("SCS-1V-2", 1, 2),
    StandardFlavor("SCS-2V-4", 2, 4),
    StandardFlavor("SCS-2V-4-20s", 2, 4, 20),
    StandardFlavor("SCS-4V-8", 4, 8),
    StandardFlavor("SCS-8V-16", 8, 16),
    StandardFlavor("SCS-16V-32", 16, 32),
    StandardFlavor("SCS-1V-8", 1, 8),
    StandardFlavor("SCS-2V-16", 2, 16),
    StandardFlavor("SCS-4V-32", 4, 32),
    StandardFlavor("SCS-1L-1", 1, 1),
)
"""The mandatory x86-64 flavors of scs-0103 v1.2; vCPUs, RAM and disk must match exactly."""


def find(conn: Connection, ref: str, *, for_update: bool = False) -> Resource:
    """The flavor ``ref`` names: its id, or its name (as in ``openstack server create --flavor``).

    Ids are UUIDs and flavor names may not look like one, so a reference is never ambiguous.
    """
    if is_id(ref.lower()):
        return resource_store.get(conn, ref.lower(), kind=FLAVOR_KIND, for_update=for_update)
    named = resource_store.list_page(
        conn, kind=FLAVOR_KIND, project_ids=None, selector=[], page_size=1, page_token=None, name=ref
    ).items
    if not named:
        raise NotFound(f"flavor {ref!r} not found; `GET /v1/flavors` lists them")
    return resource_store.get(conn, named[0].id, for_update=True) if for_update else named[0]


def list_page(
    conn: Connection,
    *,
    selector: Sequence[Requirement],
    name: str | None,
    vcpus_min: int | None,
    ram_mib_min: int | None,
    page_size: int,
    page_token: str | None,
) -> Page[Resource]:
    """One page of flavors in creation order, those with at least ``vcpus_min`` and ``ram_mib_min``.

    The size filters look into the spec, so the catalogue is read whole and cut into keyset pages
    here, with tokens bound to all the filters.
    """
    fingerprint = query_fingerprint(
        FLAVOR_KIND, name, [(r.key, r.operator, r.values) for r in selector], vcpus_min, ram_mib_min
    )
    after = decode_token(page_token, fingerprint)
    catalogue = resource_store.list_page(
        conn,
        kind=FLAVOR_KIND,
        project_ids=None,
        selector=list(selector),
        page_size=CATALOGUE_LIMIT,
        page_token=None,
        name=name,
    ).items
    matching = [
        flavor
        for flavor in catalogue
        if (after is None or flavor.id > after)
        and flavor.spec["vcpus"] >= (vcpus_min or 0)
        and flavor.spec["ram_mib"] >= (ram_mib_min or 0)
    ]
    return paginate(matching[: page_size + 1], page_size, "id", fingerprint)
