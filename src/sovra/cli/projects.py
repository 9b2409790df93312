"""``sovra project``."""

import typer

app = typer.Typer(help="Projects: the unit of tenancy.", no_args_is_help=True)
