"""Entry point of the ``sovra`` command."""

from __future__ import annotations

import typer

from sovra.cli import (
    audit,
    catalogue,
    flavors,
    hosts,
    identity,
    images,
    keypairs,
    keys,
    operations,
    projects,
    server_groups,
    servers,
    services,
)
from sovra.cli.output import CommandGroup

app = typer.Typer(
    cls=CommandGroup,  # top-level commands (login, whoami, audit) report errors like the groups
    name="sovra",
    help="Sovra: compute control plane for sovereign IaaS clouds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
services.register(app)
app.add_typer(projects.app, name="project")
app.add_typer(operations.app, name="op")
catalogue.register(images.app)
app.add_typer(images.app, name="image")
app.add_typer(keys.app, name="key")
app.add_typer(keypairs.app, name="keypair")
app.add_typer(server_groups.app, name="server-group")
app.add_typer(servers.app, name="server")
app.add_typer(hosts.app, name="host")
app.add_typer(flavors.app, name="flavor")
identity.register(app)
projects.app.add_typer(identity.member_app, name="member")
audit.register(app)


def main() -> None:
    app()
