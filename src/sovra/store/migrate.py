"""Apply Alembic migrations programmatically; every process runs this before it serves."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sovra.store.database import Database

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = db.engine
    return config


MIGRATION_LOCK_KEY = 0x50F7A  # PostgreSQL advisory lock: one migrating process at a time


@contextmanager
def _migration_lock(db: Database) -> Iterator[None]:
    """Serialise concurrent starts (several replicas booting at once)."""
    if db.is_postgresql:
        with db.engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                conn.commit()
        return
    database = db.engine.url.database
    lock_path = Path(f"{database}.migrate-lock") if database and database != ":memory:" else None
    if lock_path is None:
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(db: Database) -> None:
    """Bring the schema to the newest revision (idempotent, safe on every start)."""
    with _migration_lock(db):
        if not is_current(db):
            command.upgrade(alembic_config(db), "head")


def is_current(db: Database) -> bool:
    """Whether the database is at the newest revision (used by ``/readyz``)."""
    head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head
