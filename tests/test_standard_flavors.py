"""The scs-0103 standard flavors: the table in code, the rows migration 0005 writes, and what the
database holds after it, on SQLite and PostgreSQL. The literal rows are checked against what
``sovra.compute.flavor_names`` derives from each name, so that neither can drift."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from alembic import command

from sovra.compute.flavor_names import parse
from sovra.compute.flavors import MANDATORY
from sovra.domain.flavor import FLAVOR_KIND, STANDARD_LABEL, FlavorSpec, validate_flavor
from sovra.domain.labels import parse_selector
from sovra.domain.resource import Status
from sovra.store import resources as resource_store
from sovra.store.database import Database
from sovra.store.migrate import alembic_config

MIGRATION: ModuleType = importlib.import_module("sovra.store.migrations.versions.0005_standard_flavors")

# Standards/scs-0103-v1-standard-flavors.md, mandatory flavors: name, vCPUs, CPU type, RAM GiB, disk GB
# (None: no disk) and disk type
SCS_0103_MANDATORY: list[tuple[str, int, str, int, int | None, str | None]] = [
    ("SCS-1V-4", 1, "shared-core", 4, None, None),
    ("SCS-2V-8", 2, "shared-core", 8, None, None),
    ("SCS-4V-16", 4, "shared-core", 16, None, None),
    ("SCS-4V-16-100s", 4, "shared-core", 16, 100, "ssd"),
    ("SCS-8V-32", 8, "shared-core", 32, None, None),
    ("SCS-1V-2", 1, "shared-core", 2, None, None),
    ("SCS-2V-4", 2, "shared-core", 4, None, None),
    ("SCS-2V-4-20s", 2, "shared-core", 4, 20, "ssd"),
    ("SCS-4V-8", 4, "shared-core", 8, None, None),
    ("SCS-8V-16", 8, "shared-core", 16, None, None),
    ("SCS-16V-32", 16, "shared-core", 32, None, None),
    ("SCS-1V-8", 1, "shared-core", 8, None, None),
    ("SCS-2V-16", 2, "shared-core", 16, None, None),
    ("SCS-4V-32", 4, "shared-core", 32, None, None),
    ("SCS-1L-1", 1, "crowded-core", 1, None, None),
]


def expected_spec(name: str) -> dict[str, Any]:
    """A standard flavor's spec as scs-0103 states it: exact vCPUs, RAM = GiB * 1024, disk (0 when
    none), scs:cpu-type, scs:disk0-type when there is a disk, scs:name-v1 and scs:name-v2."""
    _, vcpus, cpu_type, ram_gib, disk_gb, disk_type = next(
        row for row in SCS_0103_MANDATORY if row[0] == name
    )
    extra = {
        "scs:cpu-type": cpu_type,
        "scs:name-v1": "SCS-" + name[4:].replace("-", ":"),
        "scs:name-v2": name,
    }
    if disk_type:
        extra["scs:disk0-type"] = disk_type
    return {
        "vcpus": vcpus,
        "ram_mib": ram_gib * 1024,
        "disk_gib": disk_gb or 0,
        "extra_specs": extra,
        "description": "SCS standard flavor (scs-0103)",
    }


def _stored(db: Database) -> dict[str, Any]:
    with db.read() as conn:
        page = resource_store.list_page(
            conn, kind=FLAVOR_KIND, project_ids=None, selector=[], page_size=1000, page_token=None
        )
    return {flavor.name: flavor for flavor in page.items}


def test_the_table_in_code_is_the_table_of_scs_0103() -> None:
    assert [(f.name, f.vcpus, f.ram_gib, f.disk_gb) for f in MANDATORY] == [
        (name, vcpus, ram, disk or 0) for name, vcpus, _, ram, disk, _ in SCS_0103_MANDATORY
    ]
    for flavor in MANDATORY:
        assert flavor.spec().model_dump() == expected_spec(flavor.name)


def test_the_migrations_literal_rows_are_what_the_names_derive() -> None:
    assert [row[0] for row in MIGRATION.FLAVORS] == [f.name for f in MANDATORY]
    for name, vcpus, ram_mib, disk_gib, extra_specs in MIGRATION.FLAVORS:
        derived = validate_flavor(name, FlavorSpec(vcpus=vcpus, ram_mib=ram_mib, disk_gib=disk_gib))
        assert extra_specs == derived.extra_specs == parse(name).name.extra_specs()
        assert {"vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": disk_gib, "extra_specs": extra_specs} == {
            k: v for k, v in expected_spec(name).items() if k != "description"
        }


def test_the_database_holds_the_standard_flavors_after_migrating(db: Database) -> None:
    stored = _stored(db)
    assert sorted(stored) == sorted(name for name, *_ in SCS_0103_MANDATORY)
    for name, flavor in stored.items():
        assert flavor.spec == expected_spec(name)
        assert flavor.project_id is None and flavor.public
        assert flavor.labels == {STANDARD_LABEL: "scs-0103"}
        assert flavor.status == Status(state="active")
        assert (flavor.generation, flavor.version) == (1, 1)
    with db.read() as conn:  # the label index rows are written too: selectors find them
        labelled = resource_store.list_page(
            conn,
            kind=FLAVOR_KIND,
            project_ids=None,
            selector=parse_selector(f"{STANDARD_LABEL}=scs-0103"),
            page_size=1000,
            page_token=None,
        )
    assert len(labelled.items) == len(SCS_0103_MANDATORY)


def test_downgrade_removes_only_the_standard_flavors_and_upgrade_skips_taken_names(db: Database) -> None:
    config = alembic_config(db)
    with db.write() as conn:
        custom = resource_store.create(
            conn,
            kind=FLAVOR_KIND,
            name="m1.small",
            project_id=None,
            labels={},
            spec={"vcpus": 1, "ram_mib": 2048, "disk_gib": 20, "extra_specs": {}, "description": ""},
            state="active",
            public=True,
        )
    try:
        command.downgrade(config, "0004")
        assert list(_stored(db)) == ["m1.small"]
        with db.write() as conn:  # an operator's own flavor takes a standard name meanwhile
            resource_store.update(conn, custom.id, expected_version=None, name="SCS-2V-4")
        command.upgrade(config, "head")
    finally:
        command.upgrade(config, "head")
    stored = _stored(db)
    assert len(stored) == len(SCS_0103_MANDATORY)
    assert stored["SCS-2V-4"].id == custom.id and stored["SCS-2V-4"].spec["ram_mib"] == 2048
