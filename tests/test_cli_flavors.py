"""``sovra flavor``: decoding names offline, and the api against a real API over HTTP, on SQLite
and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from sovra.domain.edges import EdgeType
from tests.support.databases import sqlite_database_url
from tests.support.live_server import LiveServer
from tests.support.principals import store_edge, store_project, store_resource
from tests.test_cli import sovra, sovra_json
from tests.test_standard_flavors import SCS_0103_MANDATORY, expected_spec

database_url = sqlite_database_url  # the CLI is the same on both backends; the API tests cover those


def test_parse_explains_a_name_offline() -> None:
    result = sovra(None, "flavor", "parse", "SCS-16T-64-3x10s_bms_hwv_i3h_GNa-64_ib")
    assert result.exit_code == 0, result.output
    for text in (
        "16 dedicated hyperthreads on Intel Ice Lake",
        "SCS-16T-64-3x10s_GNa-64_ib",  # the short name
        "SCS-16T:64:3x10s-bms-hwv-i3h-GNa:64-ib",  # the v1 name
        "scs:disk2-type",
        "dedicated-thread",
    ):
        assert text in result.stdout, text
    assert result.stderr == ""


def test_parse_as_json() -> None:
    result = sovra(None, "flavor", "parse", "SCS-2V:4:20s", "--output", "json")
    assert result.exit_code == 0, result.output
    decoded = json.loads(result.stdout)
    assert decoded["name"] == "SCS-2V:4:20s" and decoded["syntax"] == "v1"
    assert decoded["canonical_name"] == decoded["short_name"] == "SCS-2V-4-20s"
    assert decoded["warnings"] == [
        "v1 syntax (':' and '-' as separators) is deprecated; the v3 name is 'SCS-2V-4-20s'"
    ]
    assert decoded["extra_specs"] == expected_spec("SCS-2V-4-20s")["extra_specs"]
    assert decoded["parts"]["disk"] == {"count": 1, "size_gb": 20, "type": "s"}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("SCS-2iT-4", "SCS-2iT-4: 'i' (insecure) must follow the CPU type letter"),
        ("SCS-2C-4-n_bms_3", "generation without vendor"),
        ("m1.small", "not an SCS flavor name"),
    ],
)
def test_parse_of_an_invalid_name_exits_1_with_the_problem(name: str, problem: str) -> None:
    result = sovra(None, "flavor", "parse", name)
    assert result.exit_code == 1 and result.stdout == ""
    assert problem in result.stderr


def test_list_and_show_the_catalogue(api: LiveServer) -> None:
    listed = sovra_json(api, "flavor", "list")
    assert [f["name"] for f in listed] == [name for name, *_ in SCS_0103_MANDATORY]
    assert [f["name"] for f in sovra_json(api, "flavor", "list", "--vcpus-min", "16")] == ["SCS-16V-32"]
    table = sovra(api, "flavor", "list", "--ram-mib-min", "32768")
    assert table.exit_code == 0, table.output
    assert "SCS-8V-32" in table.stdout and "32 GiB" in table.stdout and "SCS-2V-4" not in table.stdout

    shown = sovra(api, "flavor", "show", "SCS-2V-4-20s")
    assert shown.exit_code == 0, shown.output
    for text in ("20 GiB", "4 GiB", "shared-core", "ssd", "SCS-2V:4:20s", "scs:disk0-type"):
        assert text in shown.stdout, text
    by_id = sovra_json(api, "flavor", "show", listed[0]["id"])
    assert by_id == sovra_json(api, "flavor", "show", "SCS-1V-4") == listed[0]
    missing = sovra(api, "flavor", "show", "SCS-3V-4")
    assert missing.exit_code == 1 and "flavor 'SCS-3V-4' not found" in missing.stderr


def test_create_and_delete(api: LiveServer) -> None:
    created = sovra_json(
        api,
        "flavor",
        "create",
        "SCS-4C-16-50p",
        "--vcpus",
        "4",
        "--ram-mib",
        "16384",
        "--disk-gib",
        "50",
        "--extra-spec",
        "hw:cpu_policy=dedicated",
        "--description",
        "databases",
        "--label",
        "tier=db",
    )
    assert created["labels"] == {"tier": "db"} and created["spec"]["description"] == "databases"
    assert created["spec"]["extra_specs"]["hw:cpu_policy"] == "dedicated"
    assert created["spec"]["extra_specs"]["scs:disk0-type"] == "nvme"

    v1 = sovra(api, "flavor", "create", "SCS-1V:2:5", "--vcpus", "1", "--ram-mib", "2048", "--disk-gib", "5")
    assert v1.exit_code == 0, v1.output
    assert "Warning:" in v1.stderr and "the v3 name is 'SCS-1V-2-5'" in v1.stderr

    deleted = sovra(api, "flavor", "delete", "SCS-4C-16-50p")
    assert deleted.exit_code == 0, deleted.output
    assert f"Deleted flavor SCS-4C-16-50p ({created['id']})" in deleted.stdout
    assert sovra(api, "flavor", "show", created["id"]).exit_code == 1


def test_refusals_say_why(api: LiveServer) -> None:
    over = sovra(api, "flavor", "create", "SCS-8V-32-100s", "--vcpus", "4", "--ram-mib", "32768")
    assert over.exit_code == 1
    assert "states 8 vCPUs but spec.vcpus is 4" in over.stderr and "spec.vcpus" in over.stderr
    usage = sovra(api, "flavor", "create", "m1.x", "--vcpus", "1", "--ram-mib", "512", "-e", "novalue")
    assert usage.exit_code == 2 and "'novalue' is not KEY=VALUE" in usage.stderr
    assert [f["name"] for f in sovra_json(api, "flavor", "list")] == [n for n, *_ in SCS_0103_MANDATORY]

    server = store_resource(api.db, store_project(api.db), kind="Server")
    flavor = sovra_json(api, "flavor", "show", "SCS-1L-1")
    store_edge(api.db, server, EdgeType.USES, flavor["id"])
    used = sovra(api, "flavor", "delete", "SCS-1L-1")
    assert used.exit_code == 1
    assert "Conflict" in used.stderr and "flavor SCS-1L-1 is still used by Server" in used.stderr
    assert sovra_json(api, "flavor", "show", "SCS-1L-1")["id"] == flavor["id"]
