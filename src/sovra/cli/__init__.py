"""The ``sovra`` command (Typer + Rich)."""
