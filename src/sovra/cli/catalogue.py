"""``sovra image sync FILE``: make the cloud match a declarative image catalogue.

The catalogue (see ``sovra.images.catalogue`` for the format) is read and checked first; then the
current state is read through the API, the plan is printed (action, image, version, detail), and,
unless ``--dry-run``, applied in order through the API. Imports run as operations on the server,
which downloads each URL once, verifies its declared SHA-256, inspects the bytes and boot-tests
them; ``--wait`` waits for them.

A second run plans nothing. Exit codes: 0 success or nothing to do; 1 when an action failed, a
version is (or ended) failed, or a conflict was found (every other action is still applied);
2 for usage and catalogue file errors; 3 when ``--wait`` timed out.

Wire it with ``register(images.app)``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.text import Text

from sovra.cli.client import (
    EXIT_API_ERROR,
    EXIT_USAGE,
    ApiError,
    CliError,
    Record,
    SovraClient,
    UrlOption,
    connect,
)
from sovra.cli.operations import (
    DEFAULT_TIMEOUT,
    EXIT_TIMEOUT,
    OperationTimeout,
    TimeoutOption,
    failure_message,
    operation_path,
    poll_until_done,
    progress_display,
)
from sovra.cli.output import OutputFormat, OutputOption, err_console, note, print_json, print_result, table
from sovra.domain.ids import is_id
from sovra.images.catalogue import (
    Action,
    ActionKind,
    Catalogue,
    CatalogueError,
    CurrentImage,
    CurrentState,
    Plan,
    load_catalogue,
    plan,
)

ACTION_STYLES = {
    ActionKind.CREATE_IMAGE: "green",
    ActionKind.UPDATE_IMAGE: "yellow",
    ActionKind.CREATE_VERSION: "green",
    ActionKind.RETRY_VERSION: "yellow",
    ActionKind.NOTHING: "dim",
    ActionKind.IN_PROGRESS: "cyan",
    ActionKind.FAILED: "red",
    ActionKind.CONFLICT: "bold red",
    ActionKind.ERROR: "bold red",
}
RESULT_STYLES = {
    "done": "green",
    "started": "cyan",
    "active": "green",
    "skipped": "magenta",
    "failed": "red",
    "timed-out": "yellow",
}

FORMAT_HINT = (
    "a catalogue is `project: P` and `images:`, a list of {name, project, visibility, description, labels, "
    "retention, disk_format, boot_test, metadata, versions}; each version is {version, url, "
    "checksum: sha256:HEX, format, metadata, boot_test}"
)
FileArgument = Annotated[
    Path,
    typer.Argument(metavar="FILE", help="The catalogue: a YAML file listing images and their versions."),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")]
SyncWaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Wait until every import ends; report each version's final state."),
]
RetryFailedOption = Annotated[
    bool,
    typer.Option("--retry-failed", help="Delete the catalogue's failed versions and import them again."),
]


def register(image_app: typer.Typer) -> None:
    """Add ``sync`` to the ``sovra image`` command group."""
    image_app.command("sync")(sync)


# -- reading the current state -----------------------------------------------------------------------------


def _project_id(client: SovraClient, ref: str) -> str | None:
    """The id of the project ``ref`` names (an id, else a name); None when there is none."""
    if is_id(ref.lower()):
        try:
            project: Record = client.get(f"/v1/projects/{quote(ref.lower(), safe='')}")
            return str(project["id"])
        except ApiError as exc:
            if exc.status != 404:
                raise
    found = client.get("/v1/projects", params={"name": ref})["items"]
    return str(found[0]["id"]) if found else None


def read_current(client: SovraClient, catalogue: Catalogue) -> CurrentState:
    """What the API has for the catalogue's projects and images (two requests per image)."""
    projects: dict[str, str | None] = {}
    for image in catalogue.images:
        if image.project not in projects:
            projects[image.project] = _project_id(client, image.project)
    images: dict[tuple[str, str], CurrentImage] = {}
    for image in catalogue.images:
        project_id = projects[image.project]
        if project_id is None or (project_id, image.name) in images:
            continue
        found = client.list_all("/v1/images", {"name": image.name, "project_id": project_id})
        if found:
            record = found[0]
            versions = client.list_all(f"/v1/images/{quote(record['id'], safe='')}/versions")
            images[(project_id, image.name)] = CurrentImage.from_api(record, versions)
    return CurrentState(projects=projects, images=images)


# -- applying ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one planned action."""

    action: Action
    result: str = ""  # done, started, active, failed, skipped, timed-out; empty: nothing was to do
    detail: str = ""
    image_id: str | None = None
    version_id: str | None = None
    operation_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.result in ("failed", "skipped") or self.action.is_problem

    def to_json(self) -> dict[str, Any]:
        return {
            **self.action.to_json(),
            "result": self.result or None,
            "result_detail": self.detail or None,
            "image_id": self.image_id
            or (self.action.current_image.id if self.action.current_image else None),
            "version_id": self.version_id
            or (self.action.current_version.id if self.action.current_version else None),
            "operation_id": self.operation_id,
            "sha256": self.facts.get("sha256"),
        }


def _image_path(image_id: str) -> str:
    return f"/v1/images/{quote(image_id, safe='')}"


def _version_body(action: Action) -> Record:
    assert action.version is not None
    body: Record = action.version.spec.model_dump(mode="json")
    return body


def _apply_one(
    client: SovraClient, action: Action, image_ids: dict[tuple[str, str], str], outcome: Outcome
) -> None:
    image = action.image
    key = (action.project_id or "", image.name)
    if action.kind is ActionKind.CREATE_IMAGE:
        body = {"name": image.name, "labels": image.labels, "spec": image.spec.model_dump(mode="json")}
        created = client.post(f"/v1/projects/{quote(action.project_id or '', safe='')}/images", body)
        image_ids[key] = outcome.image_id = created["id"]
        outcome.result, outcome.detail = "done", f"created image {created['id']}"
    elif action.kind is ActionKind.UPDATE_IMAGE:
        current = action.current_image
        assert current is not None
        patch: Record = {}
        if any(name != "labels" for name in action.fields):
            patch["spec"] = image.spec.model_dump(mode="json")
        if "labels" in action.fields:
            patch["labels"] = image.labels
        client.patch(_image_path(current.id), patch, headers={"If-Match": f'"{current.version}"'})
        outcome.result, outcome.detail = "done", "updated " + ", ".join(action.fields)
    elif action.kind in (ActionKind.CREATE_VERSION, ActionKind.RETRY_VERSION):
        image_id = image_ids.get(key)
        if image_id is None:
            outcome.result, outcome.detail = "skipped", "its image was not created"
            return
        if action.kind is ActionKind.RETRY_VERSION:
            failed = action.current_version
            assert failed is not None
            client.request("DELETE", f"{_image_path(image_id)}/versions/{quote(failed.id, safe='')}")
        version = client.post(f"{_image_path(image_id)}/versions", _version_body(action))
        outcome.image_id, outcome.version_id = image_id, version["id"]
        outcome.operation_id = version.get("operation_id")
        outcome.result = "started"
        outcome.detail = f"import operation {outcome.operation_id}"


def apply(client: SovraClient, the_plan: Plan) -> list[Outcome]:
    """Apply the plan's changes in order; a failed action is recorded and the rest still run."""
    image_ids: dict[tuple[str, str], str] = {
        (a.project_id or "", a.image.name): a.current_image.id
        for a in the_plan.actions
        if a.current_image is not None
    }
    outcomes: list[Outcome] = []
    for action in the_plan.actions:
        outcome = Outcome(action)
        outcomes.append(outcome)
        if action.kind is ActionKind.IN_PROGRESS and action.current_version is not None:
            outcome.version_id = action.current_version.id
            outcome.operation_id = action.current_version.operation_id
        if not action.is_change:
            continue
        try:
            _apply_one(client, action, image_ids, outcome)
        except ApiError as exc:
            outcome.result, outcome.detail = "failed", exc.message
    return outcomes


def wait_for_imports(
    client: SovraClient, outcomes: list[Outcome], timeout: float, display: Console | None
) -> None:
    """Wait for every import started (or found running), then record each version's final state."""
    deadline = time.monotonic() + timeout
    for outcome in outcomes:
        if outcome.operation_id is None or outcome.result not in ("started", ""):
            continue
        try:
            _wait_for_one(client, outcome, deadline, display)
        except ApiError as exc:
            outcome.result, outcome.detail = "failed", f"cannot follow the import: {exc.message}"


def _wait_for_one(client: SovraClient, outcome: Outcome, deadline: float, display: Console | None) -> None:
    operation = client.get(operation_path(outcome.operation_id or ""))
    try:
        with progress_display(operation, display) as updated:
            operation = poll_until_done(client, operation, max(0.0, deadline - time.monotonic()), updated)
    except OperationTimeout as exc:
        last = exc.operation
        outcome.result = "timed-out"
        outcome.detail = f"operation {last['id']} still {last['state']} ({last['progress']}%)"
        return
    path = f"{_image_path(_image_id_of(outcome))}/versions/{quote(outcome.version_id or '', safe='')}"
    version = client.get(path)
    outcome.facts = version.get("facts") or {}
    if operation["state"] == "SUCCEEDED" and version["state"] == "active":
        outcome.result, outcome.detail = "active", f"sha256 {outcome.facts.get('sha256', '')}"
    else:
        outcome.result = "failed"
        outcome.detail = outcome.facts.get("failure_reason") or failure_message(operation)


def _image_id_of(outcome: Outcome) -> str:
    if outcome.action.current_image is not None:
        return outcome.action.current_image.id
    assert outcome.image_id is not None
    return outcome.image_id


# -- rendering ---------------------------------------------------------------------------------------------


def _action_text(kind: ActionKind) -> Text:
    return Text(str(kind), style=ACTION_STYLES.get(kind, ""))


def plan_table(the_plan: Plan) -> RenderableType:
    if not the_plan.actions:
        return Text("The catalogue lists no images.", style="dim")
    result = table("ACTION", "IMAGE", "VERSION", "DETAIL", title="Plan")
    for action in the_plan.actions:
        result.add_row(
            _action_text(action.kind),
            escape(action.image.name),
            escape(action.version.version if action.version else ""),
            escape(action.detail),
        )
    return result


def results_table(outcomes: list[Outcome]) -> RenderableType:
    result = table("ACTION", "IMAGE", "VERSION", "RESULT", "DETAIL", title="Result")
    for outcome in outcomes:
        action = outcome.action
        if not outcome.result:
            continue
        result.add_row(
            _action_text(action.kind),
            escape(action.image.name),
            escape(action.version.version if action.version else ""),
            Text(outcome.result, style=RESULT_STYLES.get(outcome.result, "")),
            escape(outcome.detail),
        )
    return result


def _summary(the_plan: Plan) -> str:
    counts: dict[str, int] = {}
    for action in the_plan.actions:
        counts[str(action.kind)] = counts.get(str(action.kind), 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing"


def exit_code_of(outcomes: list[Outcome]) -> int:
    if any(o.failed for o in outcomes):
        return EXIT_API_ERROR
    if any(o.result == "timed-out" for o in outcomes):
        return EXIT_TIMEOUT
    return 0


# -- the command -------------------------------------------------------------------------------------------


def sync(
    file: FileArgument,
    dry_run: DryRunOption = False,
    wait: SyncWaitOption = False,
    retry_failed: RetryFailedOption = False,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Make the images and versions of a catalogue file exist, as the file says.

    Missing images are created and changed ones updated; missing versions are imported from their
    URL, the server verifying the declared sha256. Versions that exist are never downloaded again;
    one whose URL, checksum or metadata changed is a conflict (exit 1) and stays as it is; a failed
    one is re-imported only with --retry-failed. Exit 0 when all is in place or nothing was to do,
    1 on any failure or conflict (the rest is still applied), 2 for a bad file, 3 when --wait times out.
    """
    try:
        catalogue = load_catalogue(file)
    except CatalogueError as exc:
        raise CliError(
            str(exc),
            hint=FORMAT_HINT,
            exit_code=EXIT_USAGE,
        ) from None
    as_table = output is OutputFormat.TABLE
    with connect(url) as client:
        the_plan = plan(catalogue, read_current(client, catalogue), retry_failed=retry_failed)
        if as_table:
            print_result(plan_table(the_plan))
            note(f"Plan: {_summary(the_plan)}.")
        if dry_run:
            outcomes = [Outcome(a) for a in the_plan.actions]
        else:
            outcomes = apply(client, the_plan)
            if wait:  # for the imports started now and those found running
                display = err_console if as_table and sys.stderr.isatty() else None
                wait_for_imports(client, outcomes, timeout, display)
    code = exit_code_of(outcomes)
    if not as_table:
        print_json(
            {
                "file": catalogue.file,
                "dry_run": dry_run,
                "actions": [o.to_json() for o in outcomes],
                "exit_code": code,
            }
        )
    else:
        _report(the_plan, outcomes, dry_run=dry_run, wait=wait)
    if code:
        raise typer.Exit(code)


def _report(the_plan: Plan, outcomes: list[Outcome], *, dry_run: bool, wait: bool) -> None:
    if any(o.result for o in outcomes):
        print_result(results_table(outcomes))
    if dry_run:
        note("Dry run: nothing was changed." if the_plan.changes else "Dry run: nothing to change.")
    elif not the_plan.changes and not the_plan.problems:
        note("Nothing to do: the cloud matches the catalogue.")
    started = [o for o in outcomes if o.result == "started"]
    if started and not wait:
        note(
            f"{len(started)} import(s) started; `sovra op wait ID` follows one, "
            "or run the sync again with --wait."
        )
    for action in the_plan.conflicts:
        where = action.version.path if action.version else action.image.path
        note(f"[red]Conflict[/] at {escape(where)}: {escape(action.detail)}")
