"""Who may call what: every route of the API, with every kind of caller, on both backends.

The expectations below are written out by hand: they are the intended access model, stated
independently of ``sovra.auth.policy.RULES`` (which is what is under test):

* reader: read the project's resources, operations, graph and audit trail, and its own tokens;
* member: reader, plus operate (cancel operations);
* manager: member, plus manage the members and see and revoke every token of the project;
* admin: everything, including creating and deleting projects, edges and global tokens.

Images (added after the model was written) are read as the project's resources: readers read and
download them, members create, change, upload and delete them (operating the project), and only
admins publish; a published image is readable by every tenant.

A caller with no role in the project gets 404 (as if it did not exist), a caller that can see it
but whose role is too low gets 403, and a caller without a valid credential gets 401.

Every route of ``/openapi.json`` must have a row: a new route fails the suite until it has one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from sovra.compute import flavors
from sovra.domain.edges import EdgeType
from sovra.domain.identity import Role
from sovra.domain.image import VersionState
from sovra.domain.keypair import generate as generate_keypair
from sovra.images import signing, versions
from sovra.store import bindings
from sovra.store import resources as resource_store
from sovra.store.database import Database
from tests.support.databases import empty_all_tables, migrated
from tests.support.live_server import LiveServer, live_server
from tests.support.principals import (
    PROBLEM,
    Principal,
    bearer,
    create_project,
    http_client,
    store_edge,
    store_pending_operation,
    store_project,
    store_resource,
    store_token,
    token_principal,
    unique,
)

PRINCIPALS = ("anonymous", "wrong", "reader_a", "member_a", "manager_a", "member_b", "admin")
OK = "ok"  # any 2xx

Route = tuple[str, str]

# One row per route; the columns are PRINCIPALS, in that order. "ok" is any 2xx answer.
# Paths name project A's things (member_b belongs to project B, the other tenant).
EXPECTED: dict[Route, str] = {
    # health: no credential needed, and a bad one does not matter
    ("GET", "/healthz"):                                          "ok  ok  ok  ok  ok  ok  ok",
    ("GET", "/readyz"):                                           "ok  ok  ok  ok  ok  ok  ok",
    ("GET", "/metrics"):                                          "ok  ok  ok  ok  ok  ok  ok",
    # the caller itself, and lists filtered to what the caller may see
    ("GET", "/v1/whoami"):                                        "401 401 ok  ok  ok  ok  ok",
    ("GET", "/v1/projects"):                                      "401 401 ok  ok  ok  ok  ok",
    ("GET", "/v1/operations"):                                    "401 401 ok  ok  ok  ok  ok",
    ("GET", "/v1/tokens"):                                        "401 401 ok  ok  ok  ok  ok",
    ("GET", "/v1/audit"):                                         "401 401 ok  ok  ok  ok  ok",
    # hosts: the provider's machines, admins only
    ("GET", "/v1/hosts"):                                         "401 401 403 403 403 403 ok",
    ("POST", "/v1/hosts"):                                        "401 401 403 403 403 403 ok",
    ("GET", "/v1/hosts/{host_id}"):                               "401 401 403 403 403 403 ok",
    ("PATCH", "/v1/hosts/{host_id}"):                             "401 401 403 403 403 403 ok",
    ("DELETE", "/v1/hosts/{host_id}"):                            "401 401 403 403 403 403 ok",
    ("POST", "/v1/hosts/{host_id}:refresh"):                      "401 401 403 403 403 403 ok",
    # flavors: the provider's global, public catalogue; every caller reads it, admins change it
    ("GET", "/v1/flavors"):                                       "401 401 ok  ok  ok  ok  ok",
    ("POST", "/v1/flavors"):                                      "401 401 403 403 403 403 ok",
    ("GET", "/v1/flavors/{flavor_id}"):                           "401 401 ok  ok  ok  ok  ok",
    ("PATCH", "/v1/flavors/{flavor_id}"):                         "401 401 403 403 403 403 ok",
    ("DELETE", "/v1/flavors/{flavor_id}"):                        "401 401 403 403 403 403 ok",
    # projects: admins create and delete them; managers may edit their project
    ("POST", "/v1/projects"):                                     "401 401 403 403 403 403 ok",
    ("GET", "/v1/projects/{project_id}"):                         "401 401 ok  ok  ok  404 ok",
    ("PATCH", "/v1/projects/{project_id}"):                       "401 401 403 403 ok  404 ok",
    ("DELETE", "/v1/projects/{project_id}"):                      "401 401 403 403 403 404 ok",
    ("GET", "/v1/projects/{project_id}/teardown-order"):          "401 401 ok  ok  ok  404 ok",
    # members: managers manage them
    ("GET", "/v1/projects/{project_id}/members"):                 "401 401 403 403 ok  404 ok",
    ("PUT", "/v1/projects/{project_id}/members/{subject}"):       "401 401 403 403 ok  404 ok",
    ("DELETE", "/v1/projects/{project_id}/members/{subject}"):    "401 401 403 403 ok  404 ok",
    # tokens: everyone in the project lists (their own) and creates (at most their role) tokens;
    # revoking another's token takes a manager; global tokens are the admin's
    ("GET", "/v1/projects/{project_id}/tokens"):                  "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/projects/{project_id}/tokens"):                 "401 401 ok  ok  ok  404 ok",
    ("DELETE", "/v1/tokens/{token_id}"):                          "401 401 403 403 ok  404 ok",
    ("POST", "/v1/tokens"):                                       "401 401 403 403 403 403 ok",
    # operations: read by readers, cancelled by members
    ("GET", "/v1/operations/{operation_id}"):                     "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/operations/{operation_id}:cancel"):             "401 401 403 ok  ok  404 ok",
    # the graph: read by readers, written by admins only
    ("GET", "/v1/resources/{resource_id}/edges"):                 "401 401 ok  ok  ok  404 ok",
    ("GET", "/v1/resources/{resource_id}/dependents"):            "401 401 ok  ok  ok  404 ok",
    ("GET", "/v1/resources/{resource_id}/dependencies"):          "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/edges"):                                        "401 401 403 403 403 403 ok",
    ("DELETE", "/v1/edges/{source_id}/{edge_type}/{target_id}"):  "401 401 403 403 403 404 ok",
    # images (private ones of project A): readers read and download, members make and change
    # them (operating the project's resources)
    ("GET", "/v1/images"):                                        "401 401 ok  ok  ok  ok  ok",
    ("POST", "/v1/projects/{project_id}/images"):                 "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/images/{image_id}"):                             "401 401 ok  ok  ok  404 ok",
    ("PATCH", "/v1/images/{image_id}"):                           "401 401 403 ok  ok  404 ok",
    ("DELETE", "/v1/images/{image_id}"):                          "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/images/{image_id}/versions"):                    "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/images/{image_id}/versions"):                   "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/images/{image_id}/versions/{version_id}"):       "401 401 ok  ok  ok  404 ok",
    ("DELETE", "/v1/images/{image_id}/versions/{version_id}"):    "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/images/{image_id}/versions/{version_id}/file"):  "401 401 ok  ok  ok  404 ok",
    ("PUT", "/v1/images/{image_id}/versions/{version_id}/file"):  "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/images/{image_id}/versions/{version_id}/signatures"):   "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/images/{image_id}/versions/{version_id}/signatures"):  "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/images/{image_id}/versions/{version_id}:deprecate"):   "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/images/{image_id}/versions/{version_id}:promote"):     "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/images/{image_id}/lifecycle"):                   "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/images/{image_id}/lifecycle:apply"):            "401 401 403 ok  ok  404 ok",
    # signing keys: everyone in the project sees which keys it trusts; trusting one is a
    # security decision, made by its managers
    ("GET", "/v1/projects/{project_id}/signing-keys"):            "401 401 ok  ok  ok  404 ok",
    ("POST", "/v1/projects/{project_id}/signing-keys"):           "401 401 403 403 ok  404 ok",
    ("DELETE", "/v1/signing-keys/{key_id}"):                      "401 401 403 403 ok  404 ok",
    # SSH key pairs and server groups: the project's resources, like images
    ("GET", "/v1/keypairs"):                                      "401 401 ok  ok  ok  ok  ok",
    ("POST", "/v1/projects/{project_id}/keypairs"):               "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/keypairs/{keypair_id}"):                         "401 401 ok  ok  ok  404 ok",
    ("DELETE", "/v1/keypairs/{keypair_id}"):                      "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/server-groups"):                                 "401 401 ok  ok  ok  ok  ok",
    ("POST", "/v1/projects/{project_id}/server-groups"):          "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/server-groups/{group_id}"):                      "401 401 ok  ok  ok  404 ok",
    ("PATCH", "/v1/server-groups/{group_id}"):                    "401 401 403 ok  ok  404 ok",
    ("DELETE", "/v1/server-groups/{group_id}"):                   "401 401 403 ok  ok  404 ok",
    # servers: the project's resources; readers look, members operate them; the console may show
    # secrets the guest prints, so it takes a member
    ("GET", "/v1/servers"):                                       "401 401 ok  ok  ok  ok  ok",
    ("POST", "/v1/projects/{project_id}/servers"):                "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/servers/{server_id}"):                           "401 401 ok  ok  ok  404 ok",
    ("PATCH", "/v1/servers/{server_id}"):                         "401 401 403 ok  ok  404 ok",
    ("DELETE", "/v1/servers/{server_id}"):                        "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/servers/{server_id}:start"):                    "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/servers/{server_id}:stop"):                     "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/servers/{server_id}:reboot"):                   "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/servers/{server_id}:resize"):                   "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/servers/{server_id}:rebuild"):                  "401 401 403 ok  ok  404 ok",
    ("POST", "/v1/servers/{server_id}:snapshot"):                 "401 401 403 ok  ok  404 ok",
    ("GET", "/v1/servers/{server_id}/console"):                   "401 401 403 ok  ok  404 ok",
}  # fmt: skip

NOT_IN_SCHEMA = {("GET", "/metrics")}  # served, but left out of /openapi.json

# Cells where the implementation is known to differ from the table, with what it answers instead.
# A test with such a cell still checks every other cell, then is reported as xfail; once the bug
# is fixed the cell matches and the test fails until the entry is removed here.
KNOWN_MISMATCHES: dict[tuple[Route, str], int] = {}

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def _expectations(route: Route) -> dict[str, str | int]:
    cells = EXPECTED[route].split()
    assert len(cells) == len(PRINCIPALS), route
    return {who: cell if cell == OK else int(cell) for who, cell in zip(PRINCIPALS, cells, strict=True)}


def _matches(expected: str | int, status: int) -> bool:
    return 200 <= status < 300 if expected == OK else status == expected


@dataclass
class World:
    """Project A with two servers, an edge, a pending operation and an image version with bytes;
    project B with a server that uses one of A's."""

    server: LiveServer
    project_a: str
    project_b: str
    server_a1: str
    server_a2: str
    server_b1: str
    operation_a: str
    operation_b: str
    image_a: str
    version_a: str  # of image_a, with uploaded bytes
    principals: dict[str, Principal]
    home: dict[str, str] = field(default_factory=dict)  # the project each token principal is in
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def db(self) -> Database:
        return self.server.db

    def client(self, who: str) -> httpx.Client:
        """One client per principal for the whole module."""
        if who not in self.clients:
            self.clients[who] = http_client(self.server.url, self.principals[who].secret)
        return self.clients[who]


RAW_DISK = bytes(range(256)) * 256  # 64 KiB: a small, valid raw disk
SIGNER = signing.generate_key_pair(b"access")
SIGNATURE = signing.signature_b64(
    signing.sign_digest(
        signing.load_private_key(SIGNER.private_pem, b"access"), hashlib.sha256(RAW_DISK).hexdigest()
    )
)
IMAGE_METADATA: dict[str, Any] = {
    "architecture": "x86_64",
    "min_disk": 1,
    "min_ram": 128,
    "os_distro": "debian",
    "os_version": "12",
    "replace_frequency": "never",
    "provided_until": "none",
    "image_source": "private",
    "image_description": "access test image",
    "image_build_date": "2026-11-20",
    "image_original_user": "root",
}


def _version_body() -> dict[str, Any]:
    return {
        "version": unique("v"),
        "metadata": IMAGE_METADATA,
        "boot_test": {"enabled": False},
        "source": {"type": "upload", "declared_format": "raw"},
    }


def _new_image(admin: httpx.Client, project_id: str) -> str:
    response = admin.post(f"/v1/projects/{project_id}/images", json={"name": unique("img")})
    assert response.status_code == 201, response.text
    image_id: str = response.json()["id"]
    return image_id


def _new_version(admin: httpx.Client, image_id: str) -> str:
    response = admin.post(f"/v1/images/{image_id}/versions", json=_version_body())
    assert response.status_code == 201, response.text
    version_id: str = response.json()["id"]
    return version_id


def _key_body() -> dict[str, str]:
    return {"name": unique("key"), "public_key_pem": SIGNER.public_pem.decode()}


def _new_key(admin: httpx.Client, project_id: str) -> str:
    response = admin.post(f"/v1/projects/{project_id}/signing-keys", json=_key_body())
    assert response.status_code == 201, response.text
    key_id: str = response.json()["id"]
    return key_id


def _build_world(server: LiveServer) -> World:
    with http_client(server.url, server.token) as admin:
        project_a = create_project(admin, unique("tenant-a"))
        project_b = create_project(admin, unique("tenant-b"))
        principals = {
            "anonymous": Principal("anonymous", None),
            "wrong": Principal("wrong", "sovra_" + secrets.token_urlsafe(32)),
            "reader_a": token_principal(admin, project_a, "reader", "reader-a"),
            "member_a": token_principal(admin, project_a, "member", "member-a"),
            "manager_a": token_principal(admin, project_a, "manager", "manager-a"),
            "member_b": token_principal(admin, project_b, "member", "member-b"),
            "admin": Principal("admin", server.token, "bootstrap"),
        }
        image_a = _new_image(admin, project_a)
        version_a = _new_version(admin, image_a)
        uploaded = admin.put(
            f"/v1/images/{image_a}/versions/{version_a}/file",
            content=RAW_DISK,
            headers={"content-type": "application/octet-stream"},
        )
        assert uploaded.status_code == 202, uploaded.text
        _new_key(admin, project_a)  # A trusts SIGNER, so SIGNATURE verifies for version_a
    db = server.db
    # stand-ins for the graph routes (not Servers: those have a spec the servers routes read)
    a1, a2, b1 = (store_resource(db, p, kind="Widget") for p in (project_a, project_a, project_b))
    store_edge(db, a1, EdgeType.USES, a2)
    store_edge(db, b1, EdgeType.USES, a2)  # another tenant uses one of A's servers
    return World(
        server=server,
        project_a=project_a,
        project_b=project_b,
        server_a1=a1,
        server_a2=a2,
        server_b1=b1,
        operation_a=store_pending_operation(db, project_a),
        operation_b=store_pending_operation(db, project_b),
        image_a=image_a,
        version_a=version_a,
        principals=principals,
        home={"reader_a": project_a, "member_a": project_a, "manager_a": project_a, "member_b": project_b},
    )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One server per backend for the whole module, without workers: operations stay PENDING, so
    nothing a call starts ever changes the world under the next call."""
    base = tmp_path_factory.mktemp(f"matrix-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{base / 'sovra.db'}"
        migrated(url).dispose()
    else:
        url = request.getfixturevalue("postgres_url")
        db = Database(url)
        empty_all_tables(db)
        db.dispose()
    with live_server(url, base / "data", workers=0, rate_limit_burst=100_000) as server:
        built = _build_world(server)
        yield built
        for client in built.clients.values():
            client.close()


# What each call acts on. Shared targets for reads; a fresh target per call where the call would
# change or use up what it acts on, so that every allowed call can answer 2xx.


def _fresh_binding(w: World) -> str:
    subject = f"group:{unique('g')}"
    with w.db.write() as conn:
        bindings.put(conn, w.project_a, subject, Role.READER, "bootstrap")
    return subject


def _fresh_edge(w: World) -> dict[str, str]:
    source, target = store_resource(w.db, w.project_a), store_resource(w.db, w.project_a)
    store_edge(w.db, source, EdgeType.USES, target)
    return {"source_id": source, "edge_type": "uses", "target_id": target}


def _move(w: World, version_id: str, *states: VersionState) -> None:
    with w.db.write() as conn:
        for state in states:
            versions.move(conn, version_id, state)


def _path_params(w: World, route: Route, who: str) -> dict[str, str]:
    method, path = route
    names = re.findall(r"{(\w+)}", path)
    if not names:
        return {}
    if route == ("DELETE", "/v1/projects/{project_id}"):
        # deleting starts an operation that holds the project: the admin's allowed call gets a
        # throw-away project; everybody else aims at project A (which they are refused)
        return {"project_id": store_project(w.db) if who == "admin" else w.project_a}
    if route == ("DELETE", "/v1/edges/{source_id}/{edge_type}/{target_id}"):
        return _fresh_edge(w)
    if "{version_id}" in path:
        if method == "GET" or path.endswith("/signatures"):  # the version with bytes
            return {"image_id": w.image_a, "version_id": w.version_a}
        # deleting, uploading, deprecating or promoting uses a version up: a fresh one per call,
        # in the state the call starts from
        fresh = _new_version(w.client("admin"), w.image_a)
        if path.endswith((":deprecate", ":promote")):
            _move(w, fresh, VersionState.VALIDATING, VersionState.TESTING, VersionState.ACTIVE)
        if path.endswith(":promote"):
            _move(w, fresh, VersionState.DEPRECATED)
        return {"image_id": w.image_a, "version_id": fresh}
    values: dict[str, Callable[[], str]] = {
        "project_id": lambda: w.project_a,
        "resource_id": lambda: w.server_a1,
        "operation_id": lambda: (
            store_pending_operation(w.db, w.project_a) if method == "POST" else w.operation_a
        ),
        "token_id": lambda: store_token(w.db, w.project_a, Role.READER).token_id or "",
        "subject": lambda: _fresh_binding(w) if method == "DELETE" else f"group:{unique('g')}",
        "image_id": lambda: (
            _new_image(w.client("admin"), w.project_a)  # deleted, or its lifecycle carried out
            if method == "DELETE" or path.endswith(":apply")
            else w.image_a
        ),
        "key_id": lambda: _new_key(w.client("admin"), w.project_a),
        "host_id": lambda: _stored_host(w.db),
        "keypair_id": lambda: _stored(w.db, w.project_a, "KeyPair", KEYPAIR_SPEC),
        "group_id": lambda: _stored(w.db, w.project_a, "ServerGroup", GROUP_SPEC),
        "flavor_id": lambda: _stored_flavor(w.db),
        "server_id": lambda: _stored_server(w, "SHUTOFF" if path.endswith(":start") else "ACTIVE"),
    }
    return {name: values[name]() for name in names}


def _host_body() -> dict[str, Any]:
    name = unique("host")
    return {"name": name, "spec": {"uri": f"fake://{name}?cpus=2&memory_mib=2048"}}


def _stored_host(db: Database) -> str:
    """A registered host with no operation pending (this module's server runs no workers)."""
    body = _host_body()
    with db.write() as conn:
        return resource_store.create(
            conn,
            kind="Host",
            name=body["name"],
            project_id=None,
            labels={},
            spec=body["spec"],
            state="enabled",
        ).id


FLAVOR_SPEC = {"vcpus": 1, "ram_mib": 512, "disk_gib": 0, "extra_specs": {}, "description": ""}


def _stored_flavor(db: Database) -> str:
    """A fresh flavor per call (deleting one uses it up)."""
    with db.write() as conn:
        return resource_store.create(
            conn,
            kind="Flavor",
            name=unique("flavor"),
            project_id=None,
            labels={},
            spec=FLAVOR_SPEC,
            state="active",
            public=True,
        ).id


KEYPAIR_SPEC = generate_keypair("access").spec.model_dump(mode="json")
GROUP_SPEC = {"policy": "anti-affinity"}


def _stored(db: Database, project_id: str, kind: str, spec: dict[str, Any]) -> str:
    """A fresh resource of ``kind`` in ``project_id`` per call (deleting one uses it up)."""
    with db.write() as conn:
        return resource_store.create(
            conn,
            kind=kind,
            name=unique(kind.lower()),
            project_id=project_id,
            labels={},
            spec=spec,
            state="ACTIVE",
        ).id


def _active_version(w: World) -> str:
    """A version of image A that may back servers: active, with a disk (no bytes needed: no worker
    ever runs the operations these calls queue)."""
    version_id = _new_version(w.client("admin"), w.image_a)
    _move(w, version_id, VersionState.VALIDATING, VersionState.TESTING, VersionState.ACTIVE)
    with w.db.write() as conn:
        versions.annotate(conn, version_id, disk_blob="0" * 64, disk_format="qcow2", virtual_size=2**20)
    return version_id


def _stored_server(w: World, state: str) -> str:
    """A server of project A in ``state``, placed on a (never contacted) host, with no operation."""
    version_id = _active_version(w)
    host_id = _stored_host(w.db)
    with w.db.write() as conn:
        flavor = flavors.find(conn, "SCS-1V-2")
        server = resource_store.create(
            conn,
            kind="Server",
            name=unique("server"),
            project_id=w.project_a,
            labels={},
            spec={"image_version_id": version_id, "flavor_id": flavor.id, "hostname": "vm"},
            state=state,
        )
        facts = {
            "host": {"id": host_id, "name": "h", "uri": "fake://matrix", "accelerator": "kvm"},
            "flavor": {"id": flavor.id, "name": flavor.name, **flavor.spec},
            "image": {
                "version_id": version_id,
                "name": "v",
                "digest": "0" * 64,
                "disk_format": "qcow2",
                "virtual_size": 2**20,
                "min_disk": 1,
                "min_ram": 128,
                "architecture": "x86_64",
            },
        }
        resource_store.update_status(conn, server.id, lambda s: s.model_copy(update=facts))
    return server.id


def _new_edge_body(w: World) -> dict[str, str]:
    source, target = store_resource(w.db, w.project_a), store_resource(w.db, w.project_a)
    return {"source_id": source, "target_id": target, "type": "uses"}


BODIES: dict[Route, Callable[[World], dict[str, Any] | bytes]] = {
    ("POST", "/v1/projects"): lambda w: {"name": unique("made")},
    ("PATCH", "/v1/projects/{project_id}"): lambda w: {"labels": {"touched": "yes"}},
    ("PUT", "/v1/projects/{project_id}/members/{subject}"): lambda w: {"role": "reader"},
    ("POST", "/v1/projects/{project_id}/tokens"): lambda w: {"name": unique("tok"), "role": "reader"},
    ("POST", "/v1/tokens"): lambda w: {"name": unique("global"), "role": "admin"},
    ("POST", "/v1/edges"): _new_edge_body,
    ("POST", "/v1/projects/{project_id}/images"): lambda w: {"name": unique("img")},
    ("PATCH", "/v1/images/{image_id}"): lambda w: {"labels": {"touched": "yes"}},
    ("POST", "/v1/images/{image_id}/versions"): lambda w: _version_body(),
    ("PUT", "/v1/images/{image_id}/versions/{version_id}/file"): lambda w: RAW_DISK,
    ("POST", "/v1/images/{image_id}/versions/{version_id}/signatures"): lambda w: {"signature": SIGNATURE},
    ("POST", "/v1/projects/{project_id}/signing-keys"): lambda w: _key_body(),
    ("POST", "/v1/hosts"): lambda w: _host_body(),
    ("POST", "/v1/projects/{project_id}/keypairs"): lambda w: {"name": unique("kp")},  # generated
    ("POST", "/v1/projects/{project_id}/server-groups"): lambda w: {
        "name": unique("group"),
        "spec": {"policy": "affinity"},
    },
    ("PATCH", "/v1/server-groups/{group_id}"): lambda w: {"labels": {"touched": "yes"}},
    ("PATCH", "/v1/hosts/{host_id}"): lambda w: {"labels": {"touched": "yes"}},
    ("POST", "/v1/flavors"): lambda w: {"name": unique("flavor"), "spec": FLAVOR_SPEC},
    ("PATCH", "/v1/flavors/{flavor_id}"): lambda w: {"labels": {"touched": "yes"}},
    ("POST", "/v1/projects/{project_id}/servers"): lambda w: {
        "name": unique("vm"),
        "image": _active_version(w),
        "flavor": "SCS-1V-2",
    },
    ("PATCH", "/v1/servers/{server_id}"): lambda w: {"labels": {"touched": "yes"}},
    ("POST", "/v1/servers/{server_id}:start"): lambda w: {},
    ("POST", "/v1/servers/{server_id}:stop"): lambda w: {"grace_seconds": 0},
    ("POST", "/v1/servers/{server_id}:reboot"): lambda w: {"hard": True},
    ("POST", "/v1/servers/{server_id}:rebuild"): lambda w: {},
    ("POST", "/v1/servers/{server_id}:resize"): lambda w: {"flavor": "SCS-2V-4"},
    ("POST", "/v1/servers/{server_id}:snapshot"): lambda w: {"image_id": w.image_a, "version": unique("s")},
}


def _call(w: World, route: Route, who: str) -> httpx.Response:
    method, template = route
    path = template.format(**_path_params(w, route, who))
    body = BODIES[route](w) if route in BODIES else None
    if isinstance(body, bytes):
        headers = {"content-type": "application/octet-stream"}
        return w.client(who).request(method, path, content=body, headers=headers)
    return w.client(who).request(method, path, json=body)


def test_every_route_in_the_schema_has_a_row(world: World) -> None:
    schema = world.client("anonymous").get("/openapi.json").json()
    in_schema = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }
    assert sorted(in_schema - set(EXPECTED)) == [], "routes without a row in EXPECTED"
    assert sorted(set(EXPECTED) - in_schema - NOT_IN_SCHEMA) == [], "rows for routes that are gone"
    with_body = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method in HTTP_METHODS and "requestBody" in operation
    }
    assert with_body == set(BODIES), "every route with a request body needs a valid body in BODIES"


@pytest.mark.parametrize("route", list(EXPECTED), ids=[f"{m} {p}" for m, p in EXPECTED])
def test_access(world: World, route: Route) -> None:
    expected = _expectations(route)
    answers = {who: _call(world, route, who) for who in PRINCIPALS}
    for who, response in answers.items():
        if response.status_code >= 400:  # refusals are problem documents
            assert response.headers["content-type"].startswith(PROBLEM), (who, response.text)
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer"), who
    wrong = {
        who: (expected[who], response.status_code, response.text[:200])
        for who, response in answers.items()
        if not _matches(expected[who], response.status_code)
    }
    known = {who: KNOWN_MISMATCHES[(route, who)] for who in PRINCIPALS if (route, who) in KNOWN_MISMATCHES}
    unexpected = {who: v for who, v in wrong.items() if known.get(who) != v[1]}
    assert unexpected == {}, f"{route}: (expected, got, body) by principal"
    fixed = sorted(set(known) - set(wrong))
    assert fixed == [], f"{route}: now as intended for {fixed}; remove them from KNOWN_MISMATCHES"
    if known:
        pytest.xfail(f"known mismatch for {sorted(known)}: {[wrong[w][:2] for w in sorted(known)]}")


def test_callers_may_revoke_the_tokens_they_created(world: World) -> None:
    """Even a reader may revoke its own token: the creator may always act on what it made."""
    for who in ("reader_a", "member_a", "manager_a", "member_b"):
        client = world.client(who)
        created = client.post(
            f"/v1/projects/{world.home[who]}/tokens", json={"name": unique("own"), "role": "reader"}
        )
        assert created.status_code == 201, (who, created.text)
        revoked = client.delete(f"/v1/tokens/{created.json()['id']}")
        assert revoked.status_code == 200, (who, revoked.text)
        assert revoked.json()["revoked_at"] is not None
        refused = client.get("/v1/whoami", headers=bearer(created.json()["secret"]))
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def _hidden_and_missing(world: World) -> list[tuple[str, httpx.Response, httpx.Response, str, str]]:
    """B's member asks for project A's things, and for things that do not exist at all."""
    w, missing = world, str(uuid.uuid4())
    token_a = store_token(w.db, w.project_a, Role.READER).token_id or ""
    cases = [
        ("GET", "/v1/projects/{}", w.project_a, None),
        ("PATCH", "/v1/projects/{}", w.project_a, {"labels": {"x": "y"}}),
        ("GET", "/v1/projects/{}/teardown-order", w.project_a, None),
        ("GET", "/v1/projects/{}/members", w.project_a, None),
        ("PUT", "/v1/projects/{}/members/group:x", w.project_a, {"role": "reader"}),
        ("GET", "/v1/projects/{}/tokens", w.project_a, None),
        ("POST", "/v1/projects/{}/tokens", w.project_a, {"name": "t", "role": "reader"}),
        ("GET", "/v1/operations/{}", w.operation_a, None),
        ("POST", "/v1/operations/{}:cancel", w.operation_a, None),
        ("GET", "/v1/resources/{}/edges", w.server_a1, None),
        ("GET", "/v1/resources/{}/dependents", w.server_a1, None),
        ("DELETE", "/v1/tokens/{}", token_a, None),
        ("GET", "/v1/images/{}", w.image_a, None),
        ("PATCH", "/v1/images/{}", w.image_a, {"labels": {"x": "y"}}),
        ("GET", "/v1/images/{}/versions", w.image_a, None),
        ("POST", "/v1/images/{}/versions", w.image_a, _version_body()),
        ("GET", "/v1/projects/{}/signing-keys", w.project_a, None),
        ("DELETE", "/v1/signing-keys/{}", _new_key(w.client("admin"), w.project_a), None),
        ("GET", "/v1/keypairs/{}", _stored(w.db, w.project_a, "KeyPair", KEYPAIR_SPEC), None),
        ("POST", "/v1/projects/{}/keypairs", w.project_a, {"name": "kp"}),
        ("PATCH", "/v1/server-groups/{}", _stored(w.db, w.project_a, "ServerGroup", GROUP_SPEC), {}),
    ]
    answers = []
    client = w.client("member_b")
    for method, template, real, body in cases:
        hidden = client.request(method, template.format(real), json=body)
        absent = client.request(method, template.format(missing), json=body)
        answers.append((f"{method} {template}", hidden, absent, real, missing))
    return answers


def test_another_tenants_things_answer_404_like_missing_ones(world: World) -> None:
    for route, hidden, absent, _, _ in _hidden_and_missing(world):
        assert hidden.status_code == absent.status_code == 404, (route, hidden.text, absent.text)
        assert hidden.json()["title"] == absent.json()["title"] == "Not found"


def test_another_tenants_things_are_indistinguishable_from_missing_ones(world: World) -> None:
    differing = []
    for route, hidden, absent, real, missing in _hidden_and_missing(world):
        said = (
            hidden.json()["detail"].replace(real, "<id>"),
            absent.json()["detail"].replace(missing, "<id>"),
        )
        if said[0] != said[1]:
            differing.append((route, *said))
    assert differing == [], "(route, detail for another tenant's id, detail for a missing id)"


def test_lists_show_only_the_callers_tenant(world: World) -> None:
    w = world
    client = w.client("member_b")
    own = client.post(f"/v1/projects/{w.project_b}/tokens", json={"name": unique("b"), "role": "reader"})
    assert own.status_code == 201
    projects = client.get("/v1/projects").json()["items"]
    assert [p["id"] for p in projects] == [w.project_b]
    operations = {o["id"] for o in client.get("/v1/operations").json()["items"]}
    assert w.operation_b in operations and w.operation_a not in operations
    assert client.get("/v1/operations", params={"project_id": w.project_a}).json()["items"] == []
    deadline = time.monotonic() + 10  # the record is written just after the answer goes out
    while True:
        audit = client.get("/v1/audit", params={"page_size": 1000}).json()["items"]
        if own.json()["id"] in {r["resource_id"] for r in audit} or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert own.json()["id"] in {r["resource_id"] for r in audit}  # its own token's creation
    assert {r["project_id"] for r in audit} == {w.project_b}
    assert client.get("/v1/audit", params={"project_id": w.project_a}).json()["items"] == []
    mine = client.get("/v1/tokens").json()["items"]
    assert own.json()["id"] in {t["id"] for t in mine}
    assert {t["created_by"] for t in mine} == {w.principals["member_b"].principal}
    assert {t["project_id"] for t in mine} == {w.project_b}
    reader = w.client("reader_a")
    # b1 (project B) uses a2: A's readers learn that something depends on a2, but not what
    dependents = reader.get(f"/v1/resources/{w.server_a2}/dependents").json()["items"]
    assert w.server_a1 in {d["id"] for d in dependents}
    assert w.server_b1 not in {d["id"] for d in dependents}
    assert reader.get(f"/v1/resources/{w.server_b1}/dependencies").status_code == 404


def test_edges_of_a_resource_do_not_name_another_tenants_resources(world: World) -> None:
    response = world.client("reader_a").get(f"/v1/resources/{world.server_a2}/edges")
    assert response.status_code == 200
    named = {e["source_id"] for e in response.json()["items"]} | {
        e["target_id"] for e in response.json()["items"]
    }
    assert world.server_a1 in named  # A's own edge is there
    assert world.server_b1 not in named, "project B's server id leaks to project A's reader"


def test_public_images_are_read_by_every_tenant_and_changed_by_none_but_their_own(world: World) -> None:
    """Published (admin-only) images are the one exception to "another tenant's things are 404":
    every tenant reads them; only their own project changes them."""
    w, admin = world, world.client("admin")
    created = admin.post(
        f"/v1/projects/{w.project_a}/images", json={"name": unique("pub"), "spec": {"visibility": "public"}}
    )
    assert created.status_code == 201, created.text
    image = created.json()["id"]
    version = _new_version(admin, image)
    file = f"/v1/images/{image}/versions/{version}/file"
    headers = {"content-type": "application/octet-stream"}
    assert admin.put(file, content=RAW_DISK, headers=headers).status_code == 202

    outsider = w.client("member_b")
    listed = {i["id"] for i in outsider.get("/v1/images").json()["items"]}
    assert image in listed and w.image_a not in listed  # public yes, private no
    for path in (
        f"/v1/images/{image}",
        f"/v1/images/{image}/versions",
        f"/v1/images/{image}/versions/{version}",
    ):
        assert outsider.get(path).status_code == 200, path
    download = outsider.get(file)
    assert download.status_code == 200 and download.content == RAW_DISK

    spare = _new_version(admin, image)
    changes = [
        ("PATCH", f"/v1/images/{image}", {"labels": {"x": "y"}}),
        ("DELETE", f"/v1/images/{image}", None),
        ("POST", f"/v1/images/{image}/versions", _version_body()),
        ("DELETE", f"/v1/images/{image}/versions/{spare}", None),
    ]
    for method, path, body in changes:
        refused = outsider.request(method, path, json=body)
        assert refused.status_code in (403, 404), (method, path, refused.text)
    refused = outsider.put(f"/v1/images/{image}/versions/{spare}/file", content=RAW_DISK, headers=headers)
    assert refused.status_code in (403, 404), refused.text
    after = admin.get(f"/v1/images/{image}").json()
    assert after["labels"] == {}
    assert {v["id"] for v in admin.get(f"/v1/images/{image}/versions").json()["items"]} == {version, spare}
    assert admin.get(f"/v1/images/{image}/versions/{spare}").json()["state"] == "importing"

    # and only admins publish: a member of the owning project may neither publish nor unpublish
    member = w.client("member_a")
    publish = {"spec": {"visibility": "public"}}
    assert member.patch(f"/v1/images/{w.image_a}", json=publish).status_code == 403
    assert member.patch(f"/v1/images/{image}", json={"spec": {"visibility": "private"}}).status_code == 403
    made = member.post(f"/v1/projects/{w.project_a}/images", json={"name": unique("pub"), **publish})
    assert made.status_code == 403
    assert outsider.get(f"/v1/images/{w.image_a}").status_code == 404


def test_a_queued_server_action_shows_its_transitional_state(world: World) -> None:
    """No worker runs here, so what the API wrote stays visible: the state the action shows while
    its operation runs, and the operation that holds the server."""
    client = world.client("member_a")
    for action, body, shown in (
        (":reboot", {"hard": True}, "REBOOTING"),
        (":resize", {"flavor": "SCS-2V-4"}, "RESIZING"),
        (":rebuild", {}, "BUILDING"),
        ("", None, "DELETING"),
    ):
        server_id = _stored_server(world, "ACTIVE")
        url = f"/v1/servers/{server_id}{action}"
        answer = client.delete(url) if not action else client.post(url, json=body)
        assert answer.status_code == 202, answer.text
        server = client.get(f"/v1/servers/{server_id}").json()
        assert (server["state"], server["operation_id"]) == (shown, answer.json()["id"])
