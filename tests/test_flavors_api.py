"""/v1/flavors over real HTTP, on SQLite and PostgreSQL: the standard flavors out of the box, custom
flavors, the rules for SCS names, lookups by name, filters, and deletion guarded by the graph."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sovra.domain.edges import EdgeType
from sovra.domain.identity import Role
from sovra.store import resources as resource_store
from tests.support.live_server import LiveServer
from tests.support.principals import (
    PROBLEM,
    http_client,
    store_edge,
    store_project,
    store_resource,
    store_token,
)
from tests.test_standard_flavors import SCS_0103_MANDATORY, expected_spec


@pytest.fixture
def admin(api: LiveServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def _spec(vcpus: int, ram_mib: int, disk_gib: int = 0, **more: Any) -> dict[str, Any]:
    return {"vcpus": vcpus, "ram_mib": ram_mib, "disk_gib": disk_gib, **more}


def _create(client: httpx.Client, name: str, spec: dict[str, Any], **more: Any) -> httpx.Response:
    return client.post("/v1/flavors", json={"name": name, "spec": spec, **more})


def _names(client: httpx.Client, **params: Any) -> list[str]:
    response = client.get("/v1/flavors", params={"page_size": 1000, **params})
    assert response.status_code == 200, response.text
    return [f["name"] for f in response.json()["items"]]


def _refused(response: httpx.Response, status: int, field: str | None, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    problem: dict[str, Any] = response.json()
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]
    if field is not None:
        assert [e["field"] for e in problem["errors"]] == [field]
    return problem


def test_the_standard_flavors_are_there_with_their_exact_values(api: LiveServer, admin: httpx.Client) -> None:
    reader = store_token(api.db, store_project(api.db), Role.READER)
    with http_client(api.url, reader.secret) as client:  # any caller reads the catalogue
        response = client.get("/v1/flavors", params={"label_selector": "sovra.io/standard=scs-0103"})
    assert response.status_code == 200, response.text
    flavors = response.json()["items"]
    assert [f["name"] for f in flavors] == [name for name, *_ in SCS_0103_MANDATORY]  # creation order
    for flavor in flavors:
        assert flavor["spec"] == expected_spec(flavor["name"])
        assert flavor["state"] == "active" and flavor["labels"] == {"sovra.io/standard": "scs-0103"}
        scs = flavor["scs"]
        assert scs["canonical_name"] == scs["short_name"] == flavor["name"] and scs["warnings"] == []
        assert scs["cpu_type"] == flavor["spec"]["extra_specs"]["scs:cpu-type"]
        assert scs["disk_type"] == flavor["spec"]["extra_specs"].get("scs:disk0-type")


def test_a_flavor_is_found_by_id_and_by_name(admin: httpx.Client) -> None:
    by_name = admin.get("/v1/flavors/SCS-2V-4-20s")
    assert by_name.status_code == 200, by_name.text
    flavor = by_name.json()
    by_id = admin.get(f"/v1/flavors/{flavor['id']}")
    assert by_id.json() == flavor and by_id.headers["etag"] == by_name.headers["etag"] == '"1"'
    assert flavor["scs"]["disk_type"] == "ssd" and flavor["spec"]["disk_gib"] == 20
    _refused(admin.get("/v1/flavors/SCS-3V-4"), 404, None, "flavor 'SCS-3V-4' not found")
    _refused(admin.get("/v1/flavors/0190a7a0-0000-7000-8000-000000000000"), 404, None, "not found")


def test_an_admin_creates_flavors_and_scs_specs_come_from_the_name(admin: httpx.Client) -> None:
    plain = _create(
        admin,
        "m1.small",
        _spec(1, 2048, 20, extra_specs={"hw:cpu_policy": "shared"}, description="general purpose"),
        labels={"tier": "small"},
    )
    assert plain.status_code == 201, plain.text
    assert plain.headers["location"] == f"/v1/flavors/{plain.json()['id']}" and plain.headers["etag"] == '"1"'
    assert plain.json()["scs"] is None and plain.json()["spec"]["extra_specs"] == {"hw:cpu_policy": "shared"}

    scs = _create(admin, "SCS-4C-16-50p_z3", _spec(4, 16384, 50, extra_specs={"hw:cpu_policy": "dedicated"}))
    assert scs.status_code == 201, scs.text
    flavor = scs.json()
    assert flavor["spec"]["extra_specs"] == {
        "hw:cpu_policy": "dedicated",
        "scs:cpu-type": "dedicated-core",
        "scs:disk0-type": "nvme",
        "scs:name-v1": "SCS-4C:16:50p-z3",
        "scs:name-v2": "SCS-4C-16-50p_z3",
        "scs:name-v3": "SCS-4C:16:50p",
        "scs:name-v4": "SCS-4C-16-50p",
    }
    assert flavor["scs"]["short_name"] == "SCS-4C-16-50p" and flavor["scs"]["cpu_type"] == "dedicated-core"
    assert "AMD Zen 3" in flavor["scs"]["meaning"]
    assert admin.get("/v1/flavors/SCS-4C-16-50p_z3").json() == flavor

    # giving more than the name states is allowed (scs-0100 lets providers understate)
    more = _create(admin, "SCS-1V-2-5", _spec(2, 4096, 128))
    assert more.status_code == 201, more.text
    _refused(
        _create(admin, "m1.small", _spec(1, 1024)), 409, "name", "a Flavor named 'm1.small' already exists"
    )


@pytest.mark.parametrize(
    ("name", "spec", "field", "fragments"),
    [
        # the errors of scs-0103-v1-flavors-wrong.yaml that concern what a flavor states
        (
            "SCS-4V-16-50",
            _spec(4, 12288, 50),
            "spec.ram_mib",
            ("states 16 GiB of RAM but spec.ram_mib is 12288",),
        ),
        (
            "SCS-4V-16-100n",
            _spec(4, 16384, 10),
            "spec.disk_gib",
            ("states a 100 GB root disk but spec.disk_gib is 10",),
        ),
        (
            "SCS-1V-8-20",
            _spec(1, 8192, 20, extra_specs={"scs:cpu-type": "dedicated-core"}),
            "spec.extra_specs.scs:cpu-type",
            ("scs:cpu-type is 'dedicated-core' but SCS-1V-8-20 states 'shared-core'",),
        ),
        (
            "SCS-2V-8-20",
            _spec(2, 8192, 20, extra_specs={"scs:name-v1": "SCS-2V-8-20"}),
            "spec.extra_specs.scs:name-v1",
            ("scs:name-v1 is 'SCS-2V-8-20' but SCS-2V-8-20 states 'SCS-2V:8:20'",),
        ),
        (
            "SCS-2V-4-50s",
            _spec(2, 4096, 50, extra_specs={"scs:disk0-type": "network"}),
            "spec.extra_specs.scs:disk0-type",
            ("scs:disk0-type is 'network' but SCS-2V-4-50s states 'ssd'",),
        ),
        # and the others
        ("SCS-8V-32-100s", _spec(4, 32768, 100), "spec.vcpus", ("states 8 vCPUs but spec.vcpus is 4",)),
        (
            "SCS-2V-8",
            _spec(2, 8192, extra_specs={"scs:disk0-type": "ssd"}),
            "spec.extra_specs.scs:disk0-type",
            ("scs:disk0-type does not follow from SCS-2V-8",),
        ),
        ("SCS-2iT-4", _spec(2, 4096), "name", ("'i' (insecure) must follow the CPU type letter", "scs-0100")),
        ("SCS-2C-4-10_hwv_xen", _spec(2, 4096, 10), "name", ("'_xen' must come before '_hwv'",)),
        (
            "m1.tiny",
            _spec(1, 512, extra_specs={"scs:name-v1": "SCS-2V-4"}),
            "spec.vcpus",
            ("SCS-2V-4 states 2 vCPUs but spec.vcpus is 1",),
        ),
        (
            "m1.tiny",
            _spec(1, 512, extra_specs={"scs:cpu-type": "turbo"}),
            "spec.extra_specs.scs:cpu-type",
            ("must be one of crowded-core",),
        ),
        (
            "m1.tiny",
            _spec(1, 512, extra_specs={"scs:speed": "fast"}),
            "spec.extra_specs.scs:speed",
            ("scs:speed is not an SCS extra spec",),
        ),
        (
            "SCS-2V-4-32x10",
            _spec(2, 4096, 10, extra_specs={f"hw:k{i}": "v" for i in range(30)}),
            "spec.extra_specs",
            ("with the 35 scs: extra specs SCS-2V-4-32x10 derives, the flavor would have 65 extra specs",),
        ),
        ("bad name!", _spec(1, 512), "name", ("flavor name 'bad name!' is invalid",)),
        ("0190a7a0-0000-7000-8000-000000000000", _spec(1, 512), "name", ("not shaped like an id",)),
    ],
)
def test_a_flavor_that_breaks_the_rules_is_refused_and_nothing_is_written(
    admin: httpx.Client, name: str, spec: dict[str, Any], field: str, fragments: tuple[str, ...]
) -> None:
    before = _names(admin)
    _refused(_create(admin, name, spec), 400, field, *fragments)
    assert _names(admin) == before


def test_schema_violations_are_422_naming_the_field(admin: httpx.Client) -> None:
    before = _names(admin)
    for spec, field in [
        (_spec(0, 512), "spec.vcpus"),
        (_spec(1, 64), "spec.ram_mib"),
        (_spec(1, 512, -1), "spec.disk_gib"),
        (_spec(1, 512, extra_specs={"nonamespace": "x"}), "spec.extra_specs.nonamespace.[key]"),
        (_spec(1, 512, gpus=1), "spec.gpus"),
    ]:
        problem = _refused(_create(admin, "m1.bad", spec), 422, None)
        assert field in [e["field"] for e in problem["errors"]], problem
    assert _names(admin) == before


def test_a_v1_name_is_accepted_with_a_warning(admin: httpx.Client) -> None:
    response = _create(admin, "SCS-2V:4:10n", _spec(2, 4096, 10))
    assert response.status_code == 201, response.text
    scs = response.json()["scs"]
    assert scs["syntax"] == "v1" and scs["canonical_name"] == "SCS-2V-4-10n"
    assert scs["warnings"] == [
        "v1 syntax (':' and '-' as separators) is deprecated; the v3 name is 'SCS-2V-4-10n'"
    ]
    extra = response.json()["spec"]["extra_specs"]
    assert (extra["scs:name-v1"], extra["scs:name-v2"]) == ("SCS-2V:4:10n", "SCS-2V-4-10n")
    assert admin.get("/v1/flavors/SCS-2V:4:10n").json()["id"] == response.json()["id"]


def test_only_admins_create_change_and_delete_flavors(api: LiveServer, admin: httpx.Client) -> None:
    member = store_token(api.db, store_project(api.db), Role.MANAGER)
    before = _names(admin)
    with http_client(api.url, member.secret) as client:
        _refused(_create(client, "m1.mine", _spec(1, 512)), 403, None, "admin")
        _refused(client.patch("/v1/flavors/SCS-2V-4", json={"description": "mine"}), 403, None, "admin")
        _refused(client.delete("/v1/flavors/SCS-2V-4"), 403, None, "admin")
        assert client.get("/v1/flavors/SCS-2V-4").status_code == 200
    assert _names(admin) == before
    assert admin.get("/v1/flavors/SCS-2V-4").json()["spec"]["description"] == "SCS standard flavor (scs-0103)"


def test_labels_and_description_change_the_size_does_not(admin: httpx.Client) -> None:
    url = "/v1/flavors/SCS-2V-4"
    patched = admin.patch(
        url, json={"labels": {"tier": "web"}, "description": "web"}, headers={"If-Match": '"1"'}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["labels"] == {"tier": "web"} and patched.json()["spec"]["description"] == "web"
    assert patched.json()["version"] == 2 and patched.json()["spec"]["vcpus"] == 2
    _refused(
        admin.patch(url, json={"description": "late"}, headers={"If-Match": '"1"'}), 412, None, "version 2"
    )
    _refused(admin.patch(url, json={"spec": {"vcpus": 64}}), 422, None, "spec")
    _refused(admin.patch(url, json={"labels": {"bad key!": "x"}}), 400, "labels.bad key!", "label key")
    assert admin.get(url).json() == patched.json()


def test_filters_and_pages(admin: httpx.Client) -> None:
    assert _names(admin, vcpus_min=8, ram_mib_min=32768) == ["SCS-8V-32", "SCS-16V-32"]
    assert _names(admin, vcpus_min=16) == ["SCS-16V-32"]
    assert _names(admin, name="SCS-1L-1") == ["SCS-1L-1"]
    params = {"ram_mib_min": 16384, "page_size": 4}
    first = admin.get("/v1/flavors", params=params).json()
    assert [f["name"] for f in first["items"]] == ["SCS-4V-16", "SCS-4V-16-100s", "SCS-8V-32", "SCS-8V-16"]
    token = first["next_page_token"]
    second = admin.get("/v1/flavors", params={**params, "page_token": token}).json()
    assert [f["name"] for f in second["items"]] == ["SCS-16V-32", "SCS-2V-16", "SCS-4V-32"]
    assert second["next_page_token"] is None
    other_filter = admin.get("/v1/flavors", params={"ram_mib_min": 1024, "page_token": token})
    _refused(other_filter, 400, "page_token", "issued for a different query")
    _refused(admin.get("/v1/flavors", params={"vcpus_min": 0}), 422, None, "vcpus_min")


def test_a_flavor_in_use_is_not_deleted(api: LiveServer, admin: httpx.Client) -> None:
    created = _create(admin, "m1.used", _spec(1, 1024)).json()
    server = store_resource(api.db, store_project(api.db), kind="Server")
    store_edge(api.db, server, EdgeType.USES, created["id"])
    problem = _refused(
        admin.delete("/v1/flavors/m1.used"), 409, None, "flavor m1.used is still used by Server"
    )
    assert [d["id"] for d in problem["dependents"]] == [server]
    assert admin.get(f"/v1/flavors/{created['id']}").status_code == 200

    with api.db.write() as conn:  # the server goes; its edge goes with it
        resource_store.delete(conn, [server])
    _refused(admin.delete("/v1/flavors/m1.used", headers={"If-Match": '"7"'}), 412, None, "not 7")
    assert admin.delete("/v1/flavors/m1.used").status_code == 204
    _refused(admin.get(f"/v1/flavors/{created['id']}"), 404, None, "not found")
    _refused(admin.delete("/v1/flavors/m1.used"), 404, None, "not found")
