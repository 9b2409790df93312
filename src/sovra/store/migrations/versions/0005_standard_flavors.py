"""standard flavors: the 15 mandatory SCS flavors of scs-0103

Revision ID: 0005
Revises: 0004

Data only, and self-contained: the rows are written out literally (not computed from today's code,
which may change after this migration ran somewhere). tests/test_standard_flavors.py checks them
against what ``sovra.compute.flavor_names`` derives from each name and against the scs-0103 table.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from sovra.domain.ids import new_id
from sovra.store.types import JSONDocument, UTCDateTime, utcnow

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LABEL_KEY = "sovra.io/standard"
LABEL_VALUE = "scs-0103"
DESCRIPTION = "SCS standard flavor (scs-0103)"

# name, vCPUs, RAM MiB, root disk GiB (0: none), extra specs
FLAVORS: list[tuple[str, int, int, int, dict[str, str]]] = [
    (
        "SCS-1V-4",
        1,
        4096,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-1V:4", "scs:name-v2": "SCS-1V-4"},
    ),
    (
        "SCS-2V-8",
        2,
        8192,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-2V:8", "scs:name-v2": "SCS-2V-8"},
    ),
    (
        "SCS-4V-16",
        4,
        16384,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-4V:16", "scs:name-v2": "SCS-4V-16"},
    ),
    (
        "SCS-4V-16-100s",
        4,
        16384,
        100,
        {
            "scs:cpu-type": "shared-core",
            "scs:disk0-type": "ssd",
            "scs:name-v1": "SCS-4V:16:100s",
            "scs:name-v2": "SCS-4V-16-100s",
        },
    ),
    (
        "SCS-8V-32",
        8,
        32768,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-8V:32", "scs:name-v2": "SCS-8V-32"},
    ),
    (
        "SCS-1V-2",
        1,
        2048,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-1V:2", "scs:name-v2": "SCS-1V-2"},
    ),
    (
        "SCS-2V-4",
        2,
        4096,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-2V:4", "scs:name-v2": "SCS-2V-4"},
    ),
    (
        "SCS-2V-4-20s",
        2,
        4096,
        20,
        {
            "scs:cpu-type": "shared-core",
            "scs:disk0-type": "ssd",
            "scs:name-v1": "SCS-2V:4:20s",
            "scs:name-v2": "SCS-2V-4-20s",
        },
    ),
    (
        "SCS-4V-8",
        4,
        8192,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-4V:8", "scs:name-v2": "SCS-4V-8"},
    ),
    (
        "SCS-8V-16",
        8,
        16384,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-8V:16", "scs:name-v2": "SCS-8V-16"},
    ),
    (
        "SCS-16V-32",
        16,
        32768,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-16V:32", "scs:name-v2": "SCS-16V-32"},
    ),
    (
        "SCS-1V-8",
        1,
        8192,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-1V:8", "scs:name-v2": "SCS-1V-8"},
    ),
    (
        "SCS-2V-16",
        2,
        16384,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-2V:16", "scs:name-v2": "SCS-2V-16"},
    ),
    (
        "SCS-4V-32",
        4,
        32768,
        0,
        {"scs:cpu-type": "shared-core", "scs:name-v1": "SCS-4V:32", "scs:name-v2": "SCS-4V-32"},
    ),
    (
        "SCS-1L-1",
        1,
        1024,
        0,
        {"scs:cpu-type": "crowded-core", "scs:name-v1": "SCS-1L:1", "scs:name-v2": "SCS-1L-1"},
    ),
]

_resources = sa.table(
    "resources",
    sa.column("id", sa.String),
    sa.column("kind", sa.String),
    sa.column("name", sa.String),
    sa.column("project_id", sa.String),
    sa.column("public", sa.Boolean),
    sa.column("labels", JSONDocument),
    sa.column("spec", JSONDocument),
    sa.column("status", JSONDocument),
    sa.column("generation", sa.Integer),
    sa.column("version", sa.Integer),
    sa.column("created_at", UTCDateTime),
    sa.column("updated_at", UTCDateTime),
)
_labels = sa.table(
    "resource_labels",
    sa.column("resource_id", sa.String),
    sa.column("key", sa.String),
    sa.column("value", sa.String),
)


def _row(name: str, vcpus: int, ram_mib: int, disk_gib: int, extra_specs: dict[str, str]) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": new_id(),
        "kind": "Flavor",
        "name": name,
        "project_id": None,
        "public": True,
        "labels": {LABEL_KEY: LABEL_VALUE},
        "spec": {
            "vcpus": vcpus,
            "ram_mib": ram_mib,
            "disk_gib": disk_gib,
            "extra_specs": extra_specs,
            "description": DESCRIPTION,
        },
        "status": {"state": "active", "conditions": [], "observed_generation": 0, "operation_id": None},
        "generation": 1,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }


def insert_standard_flavors(conn: Connection) -> int:
    """Add the standard flavors whose names are free; how many were added."""
    taken = set(
        conn.execute(
            sa.select(_resources.c.name).where(
                _resources.c.kind == "Flavor", _resources.c.project_id.is_(None)
            )
        ).scalars()
    )
    rows = [_row(*flavor) for flavor in FLAVORS if flavor[0] not in taken]
    if rows:
        conn.execute(sa.insert(_resources), rows)
        conn.execute(
            sa.insert(_labels),
            [{"resource_id": r["id"], "key": LABEL_KEY, "value": LABEL_VALUE} for r in rows],
        )
    return len(rows)


def delete_standard_flavors(conn: Connection) -> None:
    """Remove the flavors this migration added (by name and label; custom flavors stay)."""
    standard = (
        sa.select(_labels.c.resource_id)
        .join(_resources, _resources.c.id == _labels.c.resource_id)
        .where(
            _labels.c.key == LABEL_KEY,
            _labels.c.value == LABEL_VALUE,
            _resources.c.kind == "Flavor",
            _resources.c.project_id.is_(None),
            _resources.c.name.in_([flavor[0] for flavor in FLAVORS]),
        )
    )
    ids = list(conn.execute(standard).scalars())
    if ids:
        conn.execute(sa.delete(_labels).where(_labels.c.resource_id.in_(ids)))
        conn.execute(sa.delete(_resources).where(_resources.c.id.in_(ids)))


def upgrade() -> None:
    insert_standard_flavors(op.get_bind())


def downgrade() -> None:
    delete_standard_flavors(op.get_bind())
