"""``sovra up``, ``sovra server`` and ``sovra worker``.

The server stack is imported inside each command so that client commands start fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from sovra.config import Settings

console = Console(stderr=True)


def up(
    workers: Annotated[int, typer.Option(min=0, max=64, help="Worker threads in this process.")] = 2,
    port: Annotated[int | None, typer.Option(help="API port (default 8790).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
) -> None:
    """Run everything in one process: API, workers, and SQLite in the data directory
    (or the database SOVRA_DATABASE_URL names)."""
    from sovra.compute.hosts import register_local
    from sovra.service import bootstrap_admin_token, configure_logging, open_database, run_server

    configure_logging()
    settings = _settings(port, host)
    db = open_database(settings)
    secret = bootstrap_admin_token(settings, db)
    url = f"http://{settings.api_host}:{settings.api_port}"
    console.print(f"[bold green]Sovra is up[/] at [bold]{url}[/]  (API: {url}/v1, docs: {url}/docs)")
    console.print(f"  database: {db.engine.url.render_as_string(hide_password=True)}")
    if secret is not None:
        console.print(
            "  first start: an admin API token was created. It is shown [bold]only now[/]; "
            "store it with `sovra login`:"
        )
        typer.echo(f"  {secret}")
    if settings.local_host_uri and (local := register_local(db, settings.local_host_uri)) is not None:
        console.print(f"  host {local.name!r} registered: this machine's libvirt ({settings.local_host_uri})")
    run_server(settings, db, workers=workers)


def api(
    port: Annotated[int | None, typer.Option(help="API port (default 8790).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
) -> None:
    """Serve the REST API only; run `sovra worker` processes beside it."""
    from sovra.service import configure_logging, open_database, run_server

    configure_logging()
    settings = _settings(port, host)
    db = open_database(settings)
    console.print(f"Sovra API at http://{settings.api_host}:{settings.api_port}")
    run_server(settings, db)


def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Worker threads.")] = 1,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics on this port.")] = None,
) -> None:
    """Execute operations: claim them from the database with a lease, run their steps."""
    from sovra.service import configure_logging, open_database, run_worker_process

    configure_logging()
    settings = Settings()
    db = open_database(settings)
    run_worker_process(settings, db, concurrency, metrics_port)


def _settings(port: int | None, host: str | None) -> Settings:
    settings = Settings()
    if port is not None:
        settings.api_port = port
    if host is not None:
        settings.api_host = host
    return settings


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(api)
    app.command()(worker)
