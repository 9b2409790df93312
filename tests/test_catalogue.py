"""The declarative image catalogue: loading (every error names the file and the YAML path), the
planner (every action kind), and ``sovra image sync`` end to end against a real API that imports
from a local HTTP mirror, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from sovra.cli.catalogue import register
from sovra.cli.output import CommandGroup
from sovra.images.catalogue import (
    ActionKind,
    Catalogue,
    CatalogueError,
    CurrentImage,
    CurrentState,
    CurrentVersion,
    load_catalogue,
    plan,
)
from tests.support.live_server import LiveServer, free_port, live_server

DATA = Path(__file__).parent / "data"
SHA_A = "a" * 64
SHA_B = "b" * 64
METADATA: dict[str, Any] = {
    "architecture": "x86_64",
    "min_disk": 1,
    "min_ram": 128,
    "os_distro": "debian",
    "os_version": "12",
    "replace_frequency": "never",
    "provided_until": "none",
    "uuid_validity": "forever",
    "image_description": "test image",
    "image_build_date": "2026-11-20",
    "image_original_user": "root",
}


def _write(tmp_path: Path, text: str, name: str = "catalogue.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _dump(tmp_path: Path, document: dict[str, Any], name: str = "catalogue.yaml") -> Path:
    return _write(tmp_path, yaml.safe_dump(document, sort_keys=False), name)


def _problems(path: Path) -> dict[str, str]:
    with pytest.raises(CatalogueError) as caught:
        load_catalogue(path)
    error = caught.value
    assert error.file == str(path)
    for line in str(error).splitlines():
        assert line.startswith(f"{path}: "), line  # every line names the file
    return {p.path: p.message for p in error.problems}


def _version(version: str = "1", sha: str = SHA_A, **more: Any) -> dict[str, Any]:
    return {
        "version": version,
        "url": f"https://mirror.example/{version}.raw",
        "checksum": f"sha256:{sha}",
        **more,
    }


def _image(name: str = "Debian 12", *versions: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"name": name, "metadata": dict(METADATA), "versions": list(versions), **more}


# -- load_catalogue ---------------------------------------------------------------------------------------


def test_the_example_catalogue_loads_with_defaults_merged_into_each_version() -> None:
    catalogue = load_catalogue(DATA / "catalogue-example.yaml")
    debian, ubuntu = catalogue.images
    assert (debian.name, debian.project, ubuntu.project) == (
        "Debian 12",
        "images",
        "7d4cbb9e-4a44-4b0c-9b1b-5a3c1e2f9d10",
    )
    assert debian.labels == {"os": "debian", "tier": "base"}
    assert (debian.spec.visibility, debian.spec.retention.keep_last) == ("public", 2)
    first, second = debian.versions
    assert first.version == "20261120" and first.path == "images[0].versions[0]"  # YAML int → text
    assert first.spec.source.declared_format == "qcow2" and second.spec.source.declared_format is None
    assert first.sha256.startswith("9f1c0e5e")
    meta = first.spec.metadata.model_dump()
    assert meta["os_version"] == "12" and meta["image_build_date"] == "2026-11-20"  # int and date → text
    assert meta["image_source"] == first.url  # defaults to the version's URL
    assert meta["hw_rng_model"] == "virtio"  # an extra property is kept
    assert second.spec.metadata.image_build_date == "2026-12-01 20:11"
    assert second.spec.metadata.patchlevel == "12.8"
    assert (first.spec.boot_test.enabled, first.spec.boot_test.timeout_seconds) == (True, 300)
    assert (second.spec.boot_test.enabled, second.spec.boot_test.timeout_seconds) == (False, 300)
    ubuntu_version = ubuntu.versions[0]
    assert ubuntu_version.sha256 == "ffeeddccbbaa99887766554433221100" * 2  # lower-cased
    assert ubuntu_version.spec.metadata.image_source == "https://cloud-images.ubuntu.com/noble/"
    assert ubuntu_version.spec.metadata.provided_until == "2029-05-31"
    assert ubuntu.spec.visibility == "private" and debian.spec.description.startswith("Debian 12")


def test_unknown_keys_are_refused_at_every_level_naming_the_path(tmp_path: Path) -> None:
    image = _image("Debian 12", _version("1", mirror_url="https://x.example/1"), shortname="debian")
    image["retention"] = {"keep_last": 2, "keep": True}
    problems = _problems(_dump(tmp_path, {"project": "p", "imgs": [], "images": [image]}))
    assert set(problems) == {
        "imgs",
        "images[0].shortname",
        "images[0].retention.keep",
        "images[0].versions[0].mirror_url",
    }
    assert problems["images[0].versions[0].mirror_url"].startswith("unknown key; allowed here: version, url")
    assert "keep_last" in problems["images[0].retention.keep"]


def test_a_missing_checksum_is_refused_naming_the_yaml_path(tmp_path: Path) -> None:
    versionless = _version("2")
    del versionless["checksum"]
    images = [_image("A", _version("1")), _image("B"), _image("C", versionless, _version("3"))]
    problems = _problems(_dump(tmp_path, {"project": "p", "images": images}))
    assert problems == {"images[2].versions[0].checksum": "required"}


@pytest.mark.parametrize(
    ("checksum", "message"),
    [
        (f"md5:{'a' * 32}", "'md5' checksums are not supported"),
        (f"sha512:{'a' * 128}", "'sha512' checksums are not supported"),
        ("sha256:abc", "must be sha256: followed by 64 hexadecimal digits"),
        (SHA_A, "must be sha256: followed by 64 hexadecimal digits"),  # the prefix is required
        (f"sha256:{'g' * 64}", "must be sha256: followed by 64 hexadecimal digits"),
    ],
)
def test_a_bad_checksum_format_is_refused(tmp_path: Path, checksum: str, message: str) -> None:
    version = _version("1") | {"checksum": checksum}
    problems = _problems(_dump(tmp_path, {"project": "p", "images": [_image("A", version)]}))
    assert list(problems) == ["images[0].versions[0].checksum"]
    assert problems["images[0].versions[0].checksum"].startswith(message)


def test_bad_metadata_values_are_placed_where_they_were_written(tmp_path: Path) -> None:
    text = f"""
project: p
images:
  - name: A
    metadata: {json.dumps(METADATA | {"min_ram": 12})}
    versions:
      - version: "1"
        url: https://mirror.example/1.raw
        checksum: sha256:{SHA_A}
        metadata: {{architecture: sparc, os_version: 22.10, os_versoin: "x", os_hash_value: abc}}
      - version: "2"
        url: https://mirror.example/2.raw
        checksum: sha256:{SHA_A}
        metadata: {{image_build_date: yesterday, provided_until: soon}}
"""
    problems = _problems(_write(tmp_path, text))
    assert problems == {
        "images[0].metadata.min_ram": "Input should be greater than or equal to 64",  # once, not per version
        "images[0].versions[0].metadata.architecture": "Input should be 'x86_64', 'aarch64' or 'risc-v'",
        "images[0].versions[0].metadata.os_version": "write it quoted: YAML read it as the number 22.1, "
        "which may have lost digits",
        "images[0].versions[0].metadata.os_versoin": "unknown property; did you mean 'os_version'?",
        "images[0].versions[0].metadata.os_hash_value": "computed by Sovra from the bytes; it cannot be set",
        "images[0].versions[1].metadata.image_build_date": "must be YYYY-MM-DD, 'YYYY-MM-DD hh:mm[:ss]' "
        "or YYYY-MM-DDThh:mm:ssZ (UTC)",
        "images[0].versions[1].metadata.provided_until": "must be YYYY-MM-DD, 'none' or 'notice'",
    }


def test_missing_metadata_says_where_it_may_be_set(tmp_path: Path) -> None:
    image = _image("A", _version("1"))
    del image["metadata"]["image_original_user"]
    problems = _problems(_dump(tmp_path, {"project": "p", "images": [image]}))
    where = "images[0].versions[0].metadata.image_original_user"
    assert problems == {where: "required (set it here or in images[0].metadata)"}


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"version": 1.10}, "images[0].versions[0].version", "write the version quoted"),
        ({"version": "a b"}, "images[0].versions[0].version", "version 'a b' is invalid"),
        (
            {"url": "ftp://mirror.example/1.raw"},
            "images[0].versions[0].url",
            "must be an http:// or https://",
        ),
        ({"format": "qed"}, "images[0].versions[0].format", "Input should be 'raw', 'qcow2'"),
        ({"boot_test": {"timeout_seconds": 1}}, "images[0].versions[0].boot_test.timeout_seconds", "Input"),
    ],
)
def test_bad_version_fields_name_their_path(
    tmp_path: Path, change: dict[str, Any], path: str, message: str
) -> None:
    problems = _problems(_dump(tmp_path, {"project": "p", "images": [_image("A", _version("1") | change)]}))
    assert list(problems) == [path]
    assert problems[path].startswith(message)


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"description": "bell\a"}, "images[0].description", "must not contain control characters"),
        ({"visibility": "shared"}, "images[0].visibility", "Input should be 'private' or 'public'"),
        ({"disk_format": "vmdk"}, "images[0].disk_format", "Input should be 'qcow2' or 'raw'"),
        ({"labels": {"bad key": "x"}}, "images[0].labels", "label key 'bad key' is invalid"),
        ({"labels": {"tier": 1}}, "images[0].labels.tier", "Input should be a valid string"),
        ({"retention": {"keep_last": 0}}, "images[0].retention.keep_last", "Input should be greater"),
    ],
)
def test_bad_image_fields_name_their_path(
    tmp_path: Path, change: dict[str, Any], path: str, message: str
) -> None:
    problems = _problems(_dump(tmp_path, {"project": "p", "images": [_image("A", _version("1")) | change]}))
    assert list(problems) == [path]
    assert problems[path].startswith(message)


def test_duplicates_a_missing_project_and_a_bad_name_are_refused(tmp_path: Path) -> None:
    images = [
        _image("A", _version("1"), _version("1")),
        _image("A", _version("2")),
        _image("A", _version("2"), project="other"),  # same name, other project: fine
    ]
    problems = _problems(_dump(tmp_path, {"project": "p", "images": images}))
    assert problems == {
        "images[0].versions[1].version": "version '1' is listed twice (first at images[0].versions[0])",
        "images[1].name": "image 'A' is listed twice (first at images[0])",
    }
    no_default = _problems(_dump(tmp_path, {"images": [_image("A", _version("1"))]}))
    assert no_default == {"images[0].project": "required (here, or as the top-level 'project')"}
    bad_name = _problems(_dump(tmp_path, {"project": "p", "images": [_image("-bad-")]}))
    assert list(bad_name) == ["images[0].name"]
    assert bad_name["images[0].name"].startswith("image name '-bad-' is invalid")


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("images: [\n  {name: A\n", "line 3, column 1", "not valid YAML"),
        ("- name: A\n", "(root)", "must be a mapping with an 'images' list, found a list"),
        ("", "(root)", "must be a mapping with an 'images' list, found nothing"),
        ("project: p\n", "images", "required"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, path: str, message: str) -> None:
    problems = _problems(_write(tmp_path, text))
    assert list(problems) == [path]
    assert problems[path].startswith(message)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    problems = _problems(tmp_path / "missing.yaml")
    assert problems == {"(file)": "cannot read it: No such file or directory"}


# -- plan ---------------------------------------------------------------------------------------------------

PROJECT_ID = "0b5c8f57-1f5e-4d4c-9a39-3f4d4b1c0a01"


def _catalogue(tmp_path: Path, *images: dict[str, Any]) -> Catalogue:
    return load_catalogue(_dump(tmp_path, {"project": "images", "images": list(images)}))


def _api_version(catalogue: Catalogue, index: int = 0, **change: Any) -> dict[str, Any]:
    """A ``GET …/versions`` item for the catalogue's version ``index`` of its first image."""
    wanted = catalogue.images[0].versions[index]
    spec = wanted.spec.model_dump(mode="json")
    for key, value in change.pop("source", {}).items():
        spec["source"][key] = value
    spec["metadata"].update(change.pop("metadata", {}))
    record = {
        "id": f"v-{wanted.version}",
        "state": "active",
        "spec": spec,
        "facts": {"sha256": wanted.sha256},
        "operation_id": None,
    }
    return record | change


def _state(catalogue: Catalogue, versions: list[dict[str, Any]], **image_change: Any) -> CurrentState:
    wanted = catalogue.images[0]
    record = {
        "id": "image-1",
        "name": wanted.name,
        "project_id": PROJECT_ID,
        "spec": wanted.spec.model_dump(mode="json"),
        "labels": dict(wanted.labels),
        "version": 4,
    } | image_change
    current = CurrentImage.from_api(record, versions)
    return CurrentState(projects={"images": PROJECT_ID}, images={(PROJECT_ID, wanted.name): current})


def _kinds(actions: Any) -> list[tuple[str, str | None]]:
    return [(str(a.kind), a.version.version if a.version else None) for a in actions]


def test_plan_creates_missing_images_and_versions_in_catalogue_order(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path, _image("A", _version("2"), _version("1")), _image("B", _version("9"), project="other")
    )
    result = plan(catalogue, CurrentState(projects={"images": PROJECT_ID, "other": "other-id"}))
    assert _kinds(result.actions) == [
        ("create-image", None),
        ("create-version", "2"),
        ("create-version", "1"),
        ("create-image", None),
        ("create-version", "9"),
    ]
    assert [a.project_id for a in result.actions] == [PROJECT_ID] * 3 + ["other-id"] * 2
    assert len(result.changes) == 5 and not result.problems
    assert "import https://mirror.example/2.raw (sha256 aaaaaaaaaaaa…)" in result.actions[1].detail


def test_plan_does_nothing_when_the_versions_exist_with_the_same_checksum(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path, _image("A", _version("1"), _version("2", SHA_B)))
    current = _state(catalogue, [_api_version(catalogue, 0), _api_version(catalogue, 1, state="deprecated")])
    result = plan(catalogue, current)
    assert _kinds(result.actions) == [("nothing-to-do", None), ("nothing-to-do", "1"), ("nothing-to-do", "2")]
    assert result.changes == [] and result.problems == []
    assert result.actions[2].detail.startswith("deprecated, sha256 bbbbbbbbbbbb")


def test_plan_updates_an_image_whose_fields_differ_and_says_which(tmp_path: Path) -> None:
    catalogue = _catalogue(
        tmp_path,
        _image(
            "A", description="new", labels={"os": "debian"}, retention={"keep_last": 5}, visibility="public"
        ),
    )
    old_spec = {"description": "old", "visibility": "private", "retention": {"keep_last": 5}}
    current = _state(catalogue, [], spec=old_spec, labels={"os": "debian", "old": "x"})
    (action,) = plan(catalogue, current).actions
    assert action.kind is ActionKind.UPDATE_IMAGE
    assert action.fields == ("description", "visibility", "labels")
    assert action.detail == "description 'old' → 'new'; visibility private → public; labels -old"
    assert action.current_image is not None and action.current_image.version == 4


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"source": {"declared_sha256": SHA_B}}, ("checksum",)),
        ({"source": {"url": "https://elsewhere.example/1.raw"}}, ("url",)),
        ({"source": {"type": "upload", "url": None}}, ("url",)),
        ({"metadata": {"os_version": "11"}}, ("metadata",)),
        ({"source": {"declared_sha256": None}, "facts": {"sha256": SHA_B}}, ("checksum",)),
        (
            {"source": {"url": "https://elsewhere.example/1.raw", "declared_sha256": SHA_B}},
            ("url", "checksum"),
        ),
    ],
)
def test_plan_refuses_to_touch_a_version_that_exists_with_other_bytes(
    tmp_path: Path, change: dict[str, Any], fields: tuple[str, ...]
) -> None:
    catalogue = _catalogue(tmp_path, _image("A", _version("1"), _version("2")))
    current = _state(catalogue, [_api_version(catalogue, 0, **change)])
    result = plan(catalogue, current)
    assert _kinds(result.actions) == [("nothing-to-do", None), ("conflict", "1"), ("create-version", "2")]
    conflict = result.actions[1]
    assert conflict.fields == fields and conflict in result.conflicts and conflict in result.problems
    assert "give the new build a new version" in conflict.detail
    assert [a.kind for a in result.changes] == [ActionKind.CREATE_VERSION]  # the rest still goes ahead


def test_plan_retries_a_failed_version_only_when_asked(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path, _image("A", _version("1")))
    failed = _api_version(catalogue, 0, state="failed", facts={"failure_reason": "CHECKSUM_MISMATCH: no"})
    current = _state(catalogue, [failed])
    kept = plan(catalogue, current).actions[1]
    assert kept.kind is ActionKind.FAILED and kept.is_problem and not kept.is_change
    assert kept.detail == "failed (CHECKSUM_MISMATCH: no); --retry-failed deletes it and imports it again"
    retried = plan(catalogue, current, retry_failed=True).actions[1]
    assert retried.kind is ActionKind.RETRY_VERSION and retried.is_change
    assert retried.current_version is not None and retried.current_version.id == "v-1"
    # a failed version may be retried with a corrected checksum: its bytes were never accepted
    other = _api_version(catalogue, 0, state="failed", source={"declared_sha256": SHA_B})
    assert (
        plan(catalogue, _state(catalogue, [other]), retry_failed=True).actions[1].kind
        is ActionKind.RETRY_VERSION
    )


def test_plan_leaves_a_running_import_alone(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path, _image("A", _version("1")))
    running = _api_version(catalogue, 0, state="validating", operation_id="op-1", facts={})
    action = plan(catalogue, _state(catalogue, [running])).actions[1]
    assert (action.kind, action.detail) == (ActionKind.IN_PROGRESS, "validating (operation op-1)")
    assert not action.is_change and not action.is_problem


def test_plan_reports_an_image_whose_project_does_not_exist(tmp_path: Path) -> None:
    catalogue = _catalogue(tmp_path, _image("A", _version("1"), project="ghost"), _image("B", _version("1")))
    result = plan(catalogue, CurrentState(projects={"ghost": None, "images": PROJECT_ID}))
    assert _kinds(result.actions) == [
        ("error", None),
        ("create-image", None),
        ("create-version", "1"),
    ]
    assert result.actions[0].detail == "no project 'ghost'; its 1 version(s) are not synced"


def test_current_version_from_api_reads_source_facts_and_failure() -> None:
    version = CurrentVersion.from_api(
        {
            "id": "v",
            "state": "failed",
            "operation_id": None,
            "spec": {
                "version": "7",
                "source": {"type": "url", "url": "https://x/7", "declared_sha256": SHA_A},
            },
            "facts": {"failure_reason": "CHECKSUM_MISMATCH: x"},
        }
    )
    assert (version.version, version.url, version.declared_sha256, version.sha256) == (
        "7",
        "https://x/7",
        SHA_A,
        None,
    )
    assert (version.failure_reason, version.disk_format) == ("CHECKSUM_MISMATCH: x", "qcow2")


# -- sovra image sync, end to end -------------------------------------------------------------------------


@dataclass
class Mirror:
    """A local HTTP server with image files; it counts every request per path."""

    port: int
    files: dict[str, bytes] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def add(self, name: str, seed: int, size: int = 256 * 1024) -> str:
        """Random (unbootable) raw bytes; returns their sha256."""
        data = random.Random(seed).randbytes(size)
        self.files[f"/{name}"] = data
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    served = Mirror(free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.hits[self.path] += 1
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            served.hits[f"HEAD {self.path}"] += 1
            self.send_error(405)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", served.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sync_api(database_url: str, tmp_path: Path, mirror: Mirror) -> Iterator[LiveServer]:
    """A real API whose URL imports may reach the local mirror (loopback is refused by default)."""
    with live_server(
        database_url,
        tmp_path / "data",
        import_allowed_networks=["127.0.0.1/32"],
        import_allowed_ports=[mirror.port],
    ) as server:
        yield server


def _cli() -> typer.Typer:
    app = typer.Typer(cls=CommandGroup)

    @app.callback()
    def image() -> None:
        """Stands in for `sovra image`."""

    register(app)
    return app


runner = CliRunner()


def sync(server: LiveServer | None, path: Path, *options: str) -> Result:
    env: dict[str, str | None] = {
        "COLUMNS": None,
        "SOVRA_CONFIG": "/nonexistent/sovra-test/config.json",
        "SOVRA_URL": server.url if server else "http://127.0.0.1:9",
        "SOVRA_TOKEN": server.token if server else "unused",
    }
    return runner.invoke(_cli(), ["sync", str(path), *options], env=env)


def sync_json(server: LiveServer, path: Path, *options: str, code: int = 0) -> list[dict[str, Any]]:
    result = sync(server, path, *options, "--output", "json")
    assert result.exit_code == code, result.output
    document = json.loads(result.stdout)
    assert document["exit_code"] == code
    actions: list[dict[str, Any]] = document["actions"]
    return actions


def _rows(actions: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str | None]]:
    return [(a["action"], a["image"], a["version"], a["result"]) for a in actions]


def _project(server: LiveServer, name: str = "images") -> str:
    with server.client() as client:
        response = client.post("/v1/projects", json={"name": name})
        assert response.status_code == 201, response.text
        project_id: str = response.json()["id"]
    return project_id


def _operations(server: LiveServer) -> list[dict[str, Any]]:
    with server.client() as client:
        items: list[dict[str, Any]] = client.get("/v1/operations", params={"page_size": 500}).json()["items"]
    return items


def _images(server: LiveServer, project_id: str) -> dict[str, dict[str, Any]]:
    """Image name → the image, with its versions by version string under ``versions``."""
    found: dict[str, dict[str, Any]] = {}
    with server.client() as client:
        for image in client.get("/v1/images", params={"project_id": project_id}).json()["items"]:
            versions = client.get(f"/v1/images/{image['id']}/versions").json()["items"]
            found[image["name"]] = image | {"versions": {v["spec"]["version"]: v for v in versions}}
    return found


def _entry(mirror: Mirror, version: str, file: str, sha: str) -> dict[str, Any]:
    return {"version": version, "url": mirror.url(file), "checksum": f"sha256:{sha}"}


def _sync_image(name: str, *versions: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "boot_test": {"enabled": False},  # random bytes do not boot
        "metadata": dict(METADATA),
        "versions": list(versions),
        **more,
    }


def test_sync_imports_each_file_once_and_a_second_run_plans_nothing(
    sync_api: LiveServer, mirror: Mirror, tmp_path: Path
) -> None:
    project_id = _project(sync_api)
    sha = {name: mirror.add(f"{name}.raw", seed) for seed, name in enumerate(["d1", "d2", "a1"])}
    path = _dump(
        tmp_path,
        {
            "project": "images",
            "images": [
                _sync_image(
                    "Debian 12",
                    _entry(mirror, "1", "d1.raw", sha["d1"]),
                    _entry(mirror, "2", "d2.raw", sha["d2"]),
                    disk_format="raw",
                    labels={"os": "debian"},
                    description="Debian",
                ),
                _sync_image("Alpine 3", _entry(mirror, "1", "a1.raw", sha["a1"])),  # raw → qcow2
            ],
        },
    )
    # a dry run prints the plan and changes nothing
    dry = sync(sync_api, path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.count("create-version") == 3 and dry.stdout.count("create-image") == 2
    assert "Dry run: nothing was changed." in dry.output
    assert _images(sync_api, project_id) == {} and _operations(sync_api) == [] and mirror.hits == Counter()

    first = sync_json(sync_api, path, "--wait")
    assert _rows(first) == [
        ("create-image", "Debian 12", None, "done"),
        ("create-version", "Debian 12", "1", "active"),
        ("create-version", "Debian 12", "2", "active"),
        ("create-image", "Alpine 3", None, "done"),
        ("create-version", "Alpine 3", "1", "active"),
    ]
    images = _images(sync_api, project_id)
    assert images["Debian 12"]["labels"] == {"os": "debian"}
    assert images["Debian 12"]["spec"]["description"] == "Debian"
    for image, version, file, disk_format in [
        ("Debian 12", "1", "d1", "raw"),
        ("Debian 12", "2", "d2", "raw"),
        ("Alpine 3", "1", "a1", "qcow2"),
    ]:
        got = images[image]["versions"][version]
        assert got["state"] == "active", got["facts"]
        assert got["facts"]["sha256"] == sha[file] and got["facts"]["disk_format"] == disk_format
        assert got["spec"]["source"] == {
            "type": "url",
            "url": mirror.url(f"{file}.raw"),
            "declared_sha256": sha[file],
            "declared_format": None,
        }
    assert {a["sha256"] for a in first if a["version"]} == set(sha.values())

    operations = _operations(sync_api)
    assert len(operations) == 3 and {o["verb"] for o in operations} == {"image.import"}
    second = sync_json(sync_api, path, "--wait")
    assert {a["action"] for a in second} == {"nothing-to-do"} and len(second) == 5
    assert all(a["result"] is None for a in second)
    assert _operations(sync_api) == operations  # no new operation, none changed
    again = sync(sync_api, path)
    assert again.exit_code == 0 and "Nothing to do: the cloud matches the catalogue." in again.output
    assert _operations(sync_api) == operations
    assert mirror.hits == Counter({"/d1.raw": 1, "/d2.raw": 1, "/a1.raw": 1})  # never twice, never a HEAD


def test_a_wrong_checksum_fails_that_version_only_and_stays_failed_until_retried(
    sync_api: LiveServer, mirror: Mirror, tmp_path: Path
) -> None:
    project_id = _project(sync_api)
    good, other = mirror.add("good.raw", 1), mirror.add("other.raw", 2)
    document: dict[str, Any] = {
        "project": project_id,  # by id this time
        "images": [
            _sync_image(
                "Debian 12",
                _entry(mirror, "1", "other.raw", good),  # the bytes hash to `other`
                _entry(mirror, "2", "good.raw", good),
                disk_format="raw",
            )
        ],
    }
    path = _dump(tmp_path, document)
    first = sync_json(sync_api, path, "--wait", code=1)
    assert _rows(first) == [
        ("create-image", "Debian 12", None, "done"),
        ("create-version", "Debian 12", "1", "failed"),
        ("create-version", "Debian 12", "2", "active"),  # the rest is still applied
    ]
    versions = _images(sync_api, project_id)["Debian 12"]["versions"]
    assert versions["1"]["state"] == "failed" and versions["2"]["state"] == "active"
    assert first[1]["result_detail"] == versions["1"]["facts"]["failure_reason"]  # the server's reason
    assert first[1]["result_detail"].startswith(f"CHECKSUM_MISMATCH: the bytes hash to sha256 {other}")
    assert versions["1"]["facts"].get("source_blob") is None  # the refused bytes were not kept

    operations = _operations(sync_api)
    kept = sync_json(sync_api, path, code=1)
    assert [a["action"] for a in kept] == ["nothing-to-do", "failed", "nothing-to-do"]
    assert "--retry-failed" in kept[1]["detail"]
    table = sync(sync_api, path)
    assert table.exit_code == 1 and "failed" in table.stdout
    assert _operations(sync_api) == operations
    assert mirror.hits == Counter({"/other.raw": 1, "/good.raw": 1})

    # corrected in the catalogue and retried on purpose: only the failed version is fetched again
    document["images"][0]["versions"][0]["checksum"] = f"sha256:{other}"
    path = _dump(tmp_path, document)
    assert [a["action"] for a in sync_json(sync_api, path, "--dry-run", code=1)][1] == "failed"
    retried = sync_json(sync_api, path, "--retry-failed", "--wait")
    assert _rows(retried)[1] == ("retry-version", "Debian 12", "1", "active")
    versions = _images(sync_api, project_id)["Debian 12"]["versions"]
    assert versions["1"]["state"] == "active" and versions["1"]["facts"]["sha256"] == other
    assert versions["1"]["id"] != kept[1]["version_id"]
    assert mirror.hits == Counter({"/other.raw": 2, "/good.raw": 1})


def test_a_changed_url_or_checksum_is_a_conflict_that_changes_nothing(
    sync_api: LiveServer, mirror: Mirror, tmp_path: Path
) -> None:
    project_id = _project(sync_api)
    sha = {name: mirror.add(f"{name}.raw", seed) for seed, name in enumerate(["v1", "v2", "v3"])}
    mirror.files["/moved/v2.raw"] = mirror.files["/v2.raw"]
    versions = [_entry(mirror, "1", "v1.raw", sha["v1"]), _entry(mirror, "2", "v2.raw", sha["v2"])]
    document: dict[str, Any] = {
        "project": "images",
        "images": [_sync_image("Debian 12", *versions, disk_format="raw")],
    }
    sync_json(sync_api, _dump(tmp_path, document), "--wait")
    before = _images(sync_api, project_id)["Debian 12"]
    operations = _operations(sync_api)

    changed = [
        _entry(mirror, "1", "v1.raw", sha["v3"]),  # other bytes claimed for version 1
        _entry(mirror, "2", "moved/v2.raw", sha["v2"]),  # same bytes, another URL: still refused
        _entry(mirror, "3", "v3.raw", sha["v3"]),
    ]
    document["images"][0]["versions"] = changed
    path = _dump(tmp_path, document)
    dry = sync_json(sync_api, path, "--dry-run", code=1)  # a conflict fails even a dry run
    assert [a["action"] for a in dry] == ["nothing-to-do", "conflict", "conflict", "create-version"]
    assert _operations(sync_api) == operations

    result = sync(sync_api, path, "--wait")
    assert result.exit_code == 1, result.output
    assert "Conflict at images[0].versions[0]" in result.output
    actions = sync_json(sync_api, path, code=1)
    assert [(a["action"], a["fields"]) for a in actions] == [
        ("nothing-to-do", []),
        ("conflict", ["checksum"]),
        ("conflict", ["url"]),
        ("nothing-to-do", []),  # version 3 was imported by the run before
    ]
    after = _images(sync_api, project_id)["Debian 12"]
    for number in ("1", "2"):  # untouched, not even re-versioned ("hidden" follows newer versions)
        assert {**after["versions"][number], "hidden": None} == {**before["versions"][number], "hidden": None}
    assert after["versions"]["3"]["state"] == "active"
    assert len(_operations(sync_api)) == len(operations) + 1
    assert mirror.hits == Counter({"/v1.raw": 1, "/v2.raw": 1, "/v3.raw": 1})  # /moved/v2.raw never fetched


def test_dry_run_of_an_image_update_changes_nothing_then_the_sync_applies_it(
    sync_api: LiveServer, mirror: Mirror, tmp_path: Path
) -> None:
    project_id = _project(sync_api)
    sha = mirror.add("v1.raw", 7)
    image = _sync_image("Debian 12", _entry(mirror, "1", "v1.raw", sha), disk_format="raw", labels={"a": "1"})
    document = {"project": "images", "images": [image]}
    sync_json(sync_api, _dump(tmp_path, document), "--wait")
    before = _images(sync_api, project_id)["Debian 12"]

    image |= {"description": "now described", "labels": {"b": "2"}, "retention": {"keep_last": 7}}
    path = _dump(tmp_path, document)
    dry = sync_json(sync_api, path, "--dry-run")
    assert [(a["action"], a["fields"]) for a in dry] == [
        ("update-image", ["description", "retention.keep_last", "labels"]),
        ("nothing-to-do", []),
    ]
    assert "labels +b=2 -a" in dry[0]["detail"]
    assert _images(sync_api, project_id)["Debian 12"] == before

    applied = sync_json(sync_api, path)
    assert _rows(applied) == [
        ("update-image", "Debian 12", None, "done"),
        ("nothing-to-do", "Debian 12", "1", None),
    ]
    after = _images(sync_api, project_id)["Debian 12"]
    assert after["labels"] == {"b": "2"} and after["spec"]["description"] == "now described"
    assert after["spec"]["retention"]["keep_last"] == 7 and after["version"] == before["version"] + 1
    assert after["versions"] == before["versions"]
    assert [a["action"] for a in sync_json(sync_api, path)] == ["nothing-to-do", "nothing-to-do"]
    assert mirror.hits == Counter({"/v1.raw": 1})


def test_a_bad_catalogue_exits_2_before_talking_to_the_api(tmp_path: Path) -> None:
    path = _dump(tmp_path, {"project": "p", "images": [_image("A", _version("1") | {"checksum": "md5:x"})]})
    result = sync(None, path)  # the API URL points nowhere: it is never reached
    assert result.exit_code == 2
    assert f"{path}: images[0].versions[0].checksum: 'md5' checksums are not supported" in result.output
    missing = sync(None, tmp_path / "absent.yaml")
    assert missing.exit_code == 2 and "absent.yaml: (file): cannot read it" in missing.output


def test_a_missing_project_is_reported_and_the_other_images_still_sync(
    sync_api: LiveServer, mirror: Mirror, tmp_path: Path
) -> None:
    project_id = _project(sync_api)
    sha = mirror.add("v1.raw", 3)
    images = [
        _sync_image("Ghost", _entry(mirror, "1", "v1.raw", sha), project="no-such-project"),
        _sync_image("Debian 12", _entry(mirror, "1", "v1.raw", sha), disk_format="raw"),
    ]
    actions = sync_json(sync_api, _dump(tmp_path, {"project": "images", "images": images}), "--wait", code=1)
    assert _rows(actions) == [
        ("error", "Ghost", None, None),
        ("create-image", "Debian 12", None, "done"),
        ("create-version", "Debian 12", "1", "active"),
    ]
    assert set(_images(sync_api, project_id)) == {"Debian 12"}


def test_a_running_import_is_left_alone_and_waited_for(
    database_url: str, tmp_path: Path, mirror: Mirror
) -> None:
    """Without a worker the import stays PENDING: the next sync starts nothing, --wait times out (3)."""
    with live_server(
        database_url,
        tmp_path / "data",
        workers=0,
        import_allowed_networks=["127.0.0.1/32"],
        import_allowed_ports=[mirror.port],
    ) as server:
        _project(server)
        sha = mirror.add("v1.raw", 5)
        image = _sync_image("Debian 12", _entry(mirror, "1", "v1.raw", sha), disk_format="raw")
        path = _dump(tmp_path, {"project": "images", "images": [image]})
        started = sync(server, path)
        assert started.exit_code == 0, started.output
        assert "1 import(s) started" in started.output
        (operation,) = _operations(server)
        assert operation["state"] == "PENDING"
        running = sync_json(server, path)
        assert running[1]["action"] == "in-progress"
        assert running[1]["detail"] == f"importing (operation {operation['id']})"
        waited = sync_json(server, path, "--wait", "--timeout", "0.3", code=3)
        assert (waited[1]["result"], waited[1]["operation_id"]) == ("timed-out", operation["id"])
        assert _operations(server) == [operation]
    assert mirror.hits == Counter()
