"""The resource repository on both backends: names, labels, selectors, pagination, versions."""

from __future__ import annotations

import pytest

from sovra.domain.errors import Conflict, InvalidArgument, NotFound, PreconditionFailed
from sovra.domain.labels import parse_selector
from sovra.domain.resource import Status
from sovra.store import resources
from sovra.store.database import Database


def _project(db: Database, name: str, labels: dict[str, str] | None = None) -> str:
    with db.write() as conn:
        return resources.create(
            conn, kind="Project", name=name, project_id=None, labels=labels or {}, spec={}, state="ACTIVE"
        ).id


def test_create_and_get_round_trip(db: Database) -> None:
    pid = _project(db, "alpha", {"env": "prod"})
    with db.read() as conn:
        got = resources.get(conn, pid)
    assert (got.name, got.kind, got.labels, got.generation, got.version) == (
        "alpha",
        "Project",
        {"env": "prod"},
        1,
        1,
    )
    assert got.status == Status(state="ACTIVE")
    assert got.created_at.tzinfo is not None
    assert got.etag == '"1"'


def test_names_are_unique_per_kind_and_scope(db: Database) -> None:
    pid = _project(db, "alpha")
    with pytest.raises(Conflict, match="already exists"), db.write() as conn:
        resources.create(conn, kind="Project", name="alpha", project_id=None, labels={}, spec={}, state="A")
    with db.write() as conn:  # same name, other kind or other project: fine
        resources.create(conn, kind="KeyPair", name="alpha", project_id=pid, labels={}, spec={}, state="A")
        other = _project_in(conn, "beta")
        resources.create(conn, kind="KeyPair", name="alpha", project_id=other, labels={}, spec={}, state="A")
    with pytest.raises(Conflict), db.write() as conn:
        resources.create(conn, kind="KeyPair", name="alpha", project_id=pid, labels={}, spec={}, state="A")


def _project_in(conn, name: str) -> str:  # type: ignore[no-untyped-def]
    return resources.create(
        conn, kind="Project", name=name, project_id=None, labels={}, spec={}, state="A"
    ).id


def test_failed_create_leaves_nothing_behind(db: Database) -> None:
    _project(db, "alpha")
    with pytest.raises(Conflict), db.write() as conn:
        resources.create(
            conn, kind="Project", name="alpha", project_id=None, labels={"x": "y"}, spec={}, state="A"
        )
    with db.read() as conn:
        page = resources.list_page(
            conn,
            kind="Project",
            project_ids=None,
            selector=parse_selector("x"),
            page_size=10,
            page_token=None,
        )
    assert page.items == []


def test_unknown_or_malformed_ids_are_not_found(db: Database) -> None:
    with db.read() as conn:
        with pytest.raises(NotFound):
            resources.get(conn, "not-a-uuid")
        with pytest.raises(NotFound):
            resources.get(conn, "01a2061c-844d-7e94-a0d3-426b2cf400de")


def test_selectors_filter_in_sql(db: Database) -> None:
    ids = {
        "a": _project(db, "a", {"env": "prod", "tier": "web"}),
        "b": _project(db, "b", {"env": "prod", "tier": "db"}),
        "c": _project(db, "c", {"env": "dev"}),
        "d": _project(db, "d", {}),
    }

    def names(selector: str) -> list[str]:
        with db.read() as conn:
            page = resources.list_page(
                conn,
                kind="Project",
                project_ids=None,
                selector=parse_selector(selector),
                page_size=50,
                page_token=None,
            )
        return sorted(r.name for r in page.items)

    assert names("env=prod") == ["a", "b"]
    assert names("env!=prod") == ["c", "d"]
    assert names("tier in (web, db)") == ["a", "b"]
    assert names("tier notin (web)") == ["b", "c", "d"]
    assert names("env") == ["a", "b", "c"]
    assert names("!env") == ["d"]
    assert names("env=prod,tier=db") == ["b"]
    assert names("") == sorted(ids)


def test_keyset_pagination_visits_each_item_once(db: Database) -> None:
    created = [_project(db, f"p{i:02d}") for i in range(23)]
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        with db.read() as conn:
            page = resources.list_page(
                conn, kind="Project", project_ids=None, selector=[], page_size=5, page_token=token
            )
        seen += [r.id for r in page.items]
        pages += 1
        token = page.next_page_token
        if token is None:
            break
    assert seen == created  # creation order, no gaps, no repeats
    assert pages == 5


def test_page_token_is_bound_to_its_query(db: Database) -> None:
    for i in range(3):
        _project(db, f"p{i}", {"env": "prod"})
    with db.read() as conn:
        page = resources.list_page(
            conn, kind="Project", project_ids=None, selector=[], page_size=1, page_token=None
        )
        assert page.next_page_token
        with pytest.raises(InvalidArgument, match="different query"):
            resources.list_page(
                conn,
                kind="Project",
                project_ids=None,
                selector=parse_selector("env=prod"),
                page_size=1,
                page_token=page.next_page_token,
            )
        with pytest.raises(InvalidArgument) as err:
            resources.list_page(
                conn, kind="Project", project_ids=None, selector=[], page_size=1, page_token="garbage!"
            )
        assert err.value.field == "page_token"


def test_visibility_limits_reads_to_the_callers_projects(db: Database) -> None:
    mine, theirs = _project(db, "mine"), _project(db, "theirs")
    with db.write() as conn:
        key = resources.create(
            conn, kind="KeyPair", name="k", project_id=theirs, labels={}, spec={}, state="A"
        ).id
    with db.read() as conn:
        assert resources.get(conn, mine, project_ids=[mine]).name == "mine"
        for hidden in (theirs, key):
            with pytest.raises(NotFound):
                resources.get(conn, hidden, project_ids=[mine])
        page = resources.list_page(
            conn, kind="Project", project_ids=[mine], selector=[], page_size=10, page_token=None
        )
        assert [r.name for r in page.items] == ["mine"]


def test_update_checks_version_and_bumps_generation_only_for_spec(db: Database) -> None:
    pid = _project(db, "alpha")
    with db.write() as conn:
        renamed = resources.update(conn, pid, expected_version=1, name="alpha2", labels={"a": "b"})
    assert (renamed.name, renamed.labels, renamed.version, renamed.generation) == ("alpha2", {"a": "b"}, 2, 1)
    with db.write() as conn:
        respec = resources.update(conn, pid, expected_version=2, spec={"description": "x"})
    assert (respec.version, respec.generation) == (3, 2)
    with pytest.raises(PreconditionFailed, match="version 3, not 1"), db.write() as conn:
        resources.update(conn, pid, expected_version=1, name="stale")
    with db.write() as conn:
        unchanged = resources.update(conn, pid, expected_version=None, name="alpha2")
    assert unchanged.version == 3  # a no-op write makes no new version
    with db.read() as conn:
        labelled = resources.list_page(
            conn,
            kind="Project",
            project_ids=None,
            selector=parse_selector("a=b"),
            page_size=5,
            page_token=None,
        )
    assert [r.id for r in labelled.items] == [pid]


def test_status_writes_keep_generation(db: Database) -> None:
    pid = _project(db, "alpha")
    with db.write() as conn:
        after = resources.update_status(conn, pid, lambda s: s.model_copy(update={"state": "DELETING"}))
    with db.read() as conn:
        stored = resources.get(conn, pid)
    assert stored.status.state == "DELETING" == after.status.state
    assert (stored.generation, stored.version) == (1, 2)
