"""A real Sovra API on a free loopback port, served by uvicorn in a thread, with in-process workers."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from sovra.api.app import create_app
from sovra.auth.authenticate import TokenVerifier
from sovra.config import Settings
from sovra.operations.engine import run_workers
from sovra.operations.registry import default_registry
from sovra.store.database import Database


@dataclass(frozen=True)
class LiveServer:
    url: str
    token: str
    db: Database
    settings: Settings

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token or self.token}"}, timeout=30
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server(
    database_url: str,
    data_dir: Path,
    workers: int = 1,
    plugins: list[str] | None = None,
    oidc: TokenVerifier | None = None,
    **overrides: Any,
) -> Iterator[LiveServer]:
    """``token`` of the yielded server is the bootstrap admin token; ``overrides`` go to Settings."""
    token = secrets.token_urlsafe(16)
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        api_port=free_port(),
        lease_seconds=3,
        poll_seconds=0.05,
        plugins=plugins or [],
        admin_token=token,
        **{"host_uri_schemes": ["qemu", "test", "fake"], **overrides},  # tests never reach other machines
    )
    db = Database(database_url)
    stop = threading.Event()
    threads = run_workers(db, default_registry(settings.plugins), settings, workers, stop) if workers else []
    config = uvicorn.Config(
        create_app(settings, db, oidc),
        host="127.0.0.1",
        port=settings.api_port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not serving.is_alive():
            raise RuntimeError("test API server did not start")
        time.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{settings.api_port}", token, db, settings)
    finally:
        server.should_exit = True
        stop.set()
        serving.join(10)
        for thread in threads:
            thread.join(10)
        db.dispose()
