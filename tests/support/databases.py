"""Test databases: a throw-away SQLite file, or a throw-away database on the PostgreSQL server."""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from sovra.store.database import Database, normalise_url
from sovra.store.migrate import upgrade
from sovra.store.schema import metadata

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_server_url() -> str:
    return os.environ.get("SOVRA_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """Create ``sovra_test_<random>`` on the server, yield its URL, drop it (even if in use)."""
    server = sa.engine.make_url(normalise_url(postgres_server_url()))
    name = f"sovra_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def migrated(url: str) -> Database:
    db = Database(url)
    upgrade(db)
    return db


STANDARD_FLAVORS_MIGRATION = importlib.import_module("sovra.store.migrations.versions.0005_standard_flavors")


def empty_all_tables(db: Database) -> None:
    """Back to what a fresh migration leaves: no rows but the data migrations' (standard flavors)."""
    tables = ", ".join(t.name for t in metadata.sorted_tables)
    with db.write() as conn:
        if db.is_postgresql:
            conn.exec_driver_sql(f"TRUNCATE {tables} CASCADE")
        else:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
        STANDARD_FLAVORS_MIGRATION.insert_standard_flavors(conn)


@pytest.fixture
def sqlite_database_url(tmp_path: Path) -> Iterator[str]:
    """For modules whose subject is the same on both backends (the CLI: the API tests cover the
    backends): ``database_url = sqlite_database_url`` runs them on SQLite only."""
    url = f"sqlite:///{tmp_path / 'sovra.db'}"
    migrated(url).dispose()
    yield url
