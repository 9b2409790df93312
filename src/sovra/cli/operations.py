"""``sovra op``."""

import typer

app = typer.Typer(help="Operations: slow work and its audit trail.", no_args_is_help=True)
