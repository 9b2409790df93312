"""Start the roles: ``server`` (API), ``worker`` (operations), ``up`` (both, embedded defaults)."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from datetime import timedelta

import prometheus_client
import uvicorn

from sovra.api.app import create_app
from sovra.auth import secrets as auth_secrets
from sovra.auth.authenticate import TokenVerifier
from sovra.auth.oidc import OidcVerifier
from sovra.config import Settings
from sovra.domain.identity import Role
from sovra.operations.engine import Worker, run_workers
from sovra.operations.registry import default_registry
from sovra.store import tokens as token_store
from sovra.store.database import Database
from sovra.store.migrate import upgrade
from sovra.store.types import utcnow

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


def oidc_verifier(settings: Settings) -> TokenVerifier | None:
    """One verifier per process (it caches the issuers' keys), or None when no issuer is configured."""
    return OidcVerifier(settings.oidc_issuers) if settings.oidc_issuers else None


def bootstrap_admin_token(settings: Settings, db: Database) -> str | None:
    """On first start, make an admin API token and return its secret (shown once, never logged).

    "First start" means: no admin token exists yet and no ``SOVRA_ADMIN_TOKEN`` is configured.
    The database keeps only its hash; `sovra token revoke` retires it once real identities exist.
    """
    if settings.admin_token is not None:
        return None
    with db.write() as conn:
        if token_store.admin_tokens_exist(conn):
            return None
        secret = auth_secrets.new_secret()
        token_store.create(
            conn,
            name="bootstrap-admin",
            project_id=None,
            role=Role.ADMIN,
            secret_hash=auth_secrets.secret_hash(secret),
            hint=auth_secrets.hint(secret),
            created_by="sovra up",
            expires_at=utcnow() + timedelta(days=settings.token_max_days),
        )
    return secret


def freeze_startup_objects() -> None:
    """Move everything allocated so far (modules, the app, the registry) out of the collector's
    reach: full collections then only scan what requests and operations allocate."""
    gc.collect()
    gc.freeze()


def run_server(settings: Settings, db: Database, workers: int = 0) -> None:
    """Serve the API until SIGINT/SIGTERM; with ``workers`` > 0 also run operations in-process."""
    stop = threading.Event()
    if workers:
        run_workers(db, default_registry(settings.plugins), settings, workers, stop)
    app = create_app(settings, db, oidc_verifier(settings))
    config = uvicorn.Config(
        app, host=settings.api_host, port=settings.api_port, log_level="warning", access_log=False
    )
    freeze_startup_objects()
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
    freeze_startup_objects()
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
