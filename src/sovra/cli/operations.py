"""``sovra op``: list, show, wait for and cancel operations.

``wait_and_report`` is also what ``sovra project delete --wait`` uses.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Annotated
from urllib.parse import quote

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from sovra.cli.client import EXIT_API_ERROR, CliError, Record, SovraClient, UrlOption, connect
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    err_console,
    note,
    operation_panel,
    operation_table,
    print_json,
    print_result,
)
from sovra.domain.operation import OperationState

app = typer.Typer(cls=CommandGroup, help="Operations: slow work and its audit trail.", no_args_is_help=True)

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C
DEFAULT_TIMEOUT = 600.0
FIRST_POLL_SECONDS = 0.2
MAX_POLL_SECONDS = 2.0

OperationId = Annotated[str, typer.Argument(metavar="ID", help="The operation's id.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.0, help="Give up (exit 3) after this many seconds.")
]
Updated = Callable[[Record], None]


class OperationTimeout(Exception):
    def __init__(self, operation: Record) -> None:
        super().__init__(operation["id"])
        self.operation = operation


def operation_path(operation_id: str) -> str:
    return f"/v1/operations/{quote(operation_id, safe='')}"


def poll_until_done(client: SovraClient, operation: Record, timeout: float, updated: Updated) -> Record:
    """Re-read ``operation`` with a growing interval until it ends; ``OperationTimeout`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    interval = FIRST_POLL_SECONDS
    while operation["state"] not in TERMINAL_STATES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OperationTimeout(operation)
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, MAX_POLL_SECONDS)
        operation = client.get(operation_path(operation["id"]))
        updated(operation)
    return operation


def _description(operation: Record) -> str:
    return f"{operation['verb']} {operation['state']}"


@contextmanager
def progress_display(operation: Record, display: Console | None) -> Iterator[Updated]:
    """A spinner and progress bar on ``display`` fed by the callback this yields; nothing if None."""
    if display is None:
        yield lambda _: None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=display, transient=True) as progress:
        task = progress.add_task(_description(operation), total=100, message="")

        def updated(op: Record) -> None:
            progress.update(
                task, completed=op["progress"], description=_description(op), message=op["progress_message"]
            )

        updated(operation)
        yield updated


def progress_console(output: OutputFormat) -> Console | None:
    """Show progress only to a person: stderr is a terminal and the output is not for a program."""
    return err_console if output is OutputFormat.TABLE and sys.stderr.isatty() else None


def report_finished(operation: Record, output: OutputFormat) -> None:
    """Print the ended operation; raise the exit-1 error unless it succeeded."""
    emit(output, operation, operation_panel)
    if operation["state"] != "SUCCEEDED":
        raise CliError(failure_message(operation), exit_code=EXIT_API_ERROR)


def failure_message(operation: Record) -> str:
    """``operation X failed: IN_USE: still used by … (step check-unused)``, without repeating the state."""
    error = operation.get("error") or {}
    outcome = "was cancelled" if operation["state"] == "CANCELLED" else "failed"
    detail = error.get("message") or "no error was recorded"
    if error.get("code") and error["code"] != operation["state"]:
        detail = f"{error['code']}: {detail}"
    step = f" (step {error['step']})" if error.get("step") else ""
    return f"operation {operation['id']} {outcome}: {detail}{step}"


def follow(
    client: SovraClient,
    operation: Record,
    timeout: float,
    progress: AbstractContextManager[Updated],
    *,
    interrupted_hint: str = "",
    timeout_detail: Callable[[Record], str] = lambda _operation: "",
) -> Record:
    """Poll ``operation`` until it ends, showing ``progress``; the ended operation.

    Ctrl-C and the timeout become errors that say the operation goes on and how to wait again
    (exit codes 130 and 3); ``interrupted_hint`` and ``timeout_detail`` add what the caller knows.
    """
    op_id = operation["id"]
    try:
        with progress as updated:
            return poll_until_done(client, operation, timeout, updated)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped waiting; operation {op_id} goes on",
            hint=f"`sovra op wait {op_id}` waits again"
            + (f"; {interrupted_hint}" if interrupted_hint else ""),
            exit_code=EXIT_INTERRUPTED,
        ) from None
    except OperationTimeout as exc:
        last = exc.operation
        detail = timeout_detail(last)
        raise CliError(
            f"operation {op_id} is still {last['state']} ({last['progress']}%) after {timeout:g}s"
            + (f"; {detail}" if detail else ""),
            hint=f"keep waiting with `sovra op wait {op_id}`",
            exit_code=EXIT_TIMEOUT,
        ) from None


def wait_and_report(
    client: SovraClient,
    operation: Record,
    timeout: float,
    output: OutputFormat,
    display: Console | None = None,
) -> None:
    """Wait for ``operation`` to end and report it: exit 0 succeeded, 1 failed or cancelled, 3 timed out."""
    progress = progress_display(operation, display if display is not None else progress_console(output))
    final = follow(
        client, operation, timeout, progress, interrupted_hint=f"`sovra op cancel {operation['id']}` stops it"
    )
    report_finished(final, output)


@app.command("list")
def list_operations(
    project: Annotated[
        str | None, typer.Option("--project", help="Only this project's (project id).")
    ] = None,
    target: Annotated[str | None, typer.Option("--target", help="Only those on this resource id.")] = None,
    state: Annotated[OperationState | None, typer.Option("--state", case_sensitive=False)] = None,
    verb: Annotated[str | None, typer.Option("--verb", help="e.g. project.delete")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many.")] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Operations, newest first. Lists leave steps out: `sovra op show ID` has them."""
    params = {"project_id": project, "target_id": target, "state": state and str(state), "verb": verb}
    with connect(url) as client:
        items = client.list_all("/v1/operations", params, limit)
    emit(output, items, operation_table)


@app.command()
def show(operation_id: OperationId, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """One operation with its steps: every attempt, the worker that ran it, and how it ended."""
    with connect(url) as client:
        operation = client.get(operation_path(operation_id))
    emit(output, operation, operation_panel)


@app.command()
def wait(
    operation_id: OperationId,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Wait until the operation ends: exit 0 if it succeeded, 1 if it failed or was cancelled, 3 on timeout.

    A spinner shows its progress while stderr is a terminal.
    """
    with connect(url) as client:
        wait_and_report(client, client.get(operation_path(operation_id)), timeout, output)


@app.command()
def cancel(
    operation_id: OperationId, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None
) -> None:
    """Cancel: at once if no worker has started it, otherwise at the worker's next safe point."""
    with connect(url) as client:
        operation = client.post(f"{operation_path(operation_id)}:cancel")
    if output is OutputFormat.JSON:
        print_json(operation)
        return
    if operation["state"] == "CANCELLED":
        print_result(f"Operation {operation['id']} cancelled.")
    else:
        print_result(f"Cancellation of operation {operation['id']} requested; it is {operation['state']}.")
        note(f"Follow it with `sovra op wait {operation['id']}`.")
