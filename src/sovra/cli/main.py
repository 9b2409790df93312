"""Entry point of the ``sovra`` command."""

from __future__ import annotations

import typer

from sovra.cli import operations, projects, services

app = typer.Typer(
    name="sovra",
    help="Sovra: compute control plane for sovereign IaaS clouds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
services.register(app)
app.add_typer(projects.app, name="project")
app.add_typer(operations.app, name="op")


def main() -> None:
    app()
