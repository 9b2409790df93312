"""Start the roles: ``server`` (API), ``worker`` (operations), ``up`` (both, embedded defaults)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from pathlib import Path

import prometheus_client
import uvicorn

from sovra.api.app import create_app
from sovra.config import Settings
from sovra.operations.engine import Worker, run_workers
from sovra.operations.registry import default_registry
from sovra.store.database import Database
from sovra.store.migrate import upgrade

log = logging.getLogger(__name__)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def open_database(settings: Settings) -> Database:
    """Connect and migrate; every role calls this first, so any of them may start first."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    upgrade(db)
    return db


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


def admin_token(settings: Settings, create: bool) -> tuple[str | None, bool]:
    """The admin token and whether it was just created.

    Order: ``SOVRA_ADMIN_TOKEN``; the token file in the data directory; a new one (``up`` only),
    written with mode 0600 and never logged.
    """
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value(), False
    path = settings.admin_token_path
    if path.exists():
        return path.read_text().strip(), False
    if not create:
        return None, False
    token = secrets.token_urlsafe(32)
    _write_secret(path, token)
    return token, True


def run_server(settings: Settings, token: str | None, db: Database, workers: int = 0) -> None:
    """Serve the API until SIGINT/SIGTERM; with ``workers`` > 0 also run operations in-process."""
    stop = threading.Event()
    if workers:
        run_workers(db, default_registry(settings.plugins), settings, workers, stop)
    app = create_app(settings, db, token)
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning", access_log=False
    )
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()


def run_worker_process(
    settings: Settings, db: Database, concurrency: int, metrics_port: int | None = None
) -> None:
    """``sovra worker``: run operation workers until SIGTERM or SIGINT.

    With ``metrics_port`` the worker serves Prometheus ``/metrics`` (its step and operation
    histograms) on that port of the API host address.
    """
    registry = default_registry(settings.plugins)
    if metrics_port is not None:
        prometheus_client.start_http_server(metrics_port, addr=settings.api_host)
        log.info("worker metrics on http://%s:%d/metrics", settings.api_host, metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if concurrency == 1:
        worker = Worker(db, registry, settings)
        worker.stop = stop
        log.info("worker %s ready (verbs: %s)", worker.id, ", ".join(registry.verbs))
        worker.run()
        return
    threads = run_workers(db, registry, settings, concurrency, stop)
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(timeout=settings.lease_seconds)
