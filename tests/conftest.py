"""Fixtures shared by the suite. Store, operation and API tests run on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sovra.store.database import Database
from tests.support.databases import empty_all_tables, migrated, temporary_postgres_database
from tests.support.live_server import LiveServer, live_server

pytest_plugins = ["tests.support.guest_images", "tests.support.libvirt_daemon"]

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A migrated database of our own on the PostgreSQL server, dropped after the run.

    No skip: if PostgreSQL is unreachable the PostgreSQL half of the suite fails loudly.
    """
    with temporary_postgres_database() as url:
        migrated(url).dispose()
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty, migrated database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sovra.db'}"
        migrated(url).dispose()
        yield url
        return
    url = request.getfixturevalue("postgres_url")
    db = Database(url)
    empty_all_tables(db)
    db.dispose()
    yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[LiveServer]:
    """A real API over HTTP on each backend, with one in-process worker."""
    with live_server(database_url, tmp_path / "data") as server:
        yield server
