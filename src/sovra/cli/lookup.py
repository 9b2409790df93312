"""Finding one resource of a collection by id or by name, as commands let people address them."""

from __future__ import annotations

from urllib.parse import quote

from sovra.cli.client import EXIT_API_ERROR, ApiError, CliError, Record, SovraClient
from sovra.domain.ids import is_id


def item_path(collection: str, resource_id: str) -> str:
    return f"{collection}/{quote(resource_id, safe='')}"


def resolve(
    client: SovraClient, collection: str, ref: str, *, what: str, command: str, project_id: str | None = None
) -> Record:
    """The resource of ``collection`` (e.g. ``/v1/keypairs``) that ``ref`` names: by id when it is a
    UUID, else (or when no such id exists) by name, in ``project_id`` when given.

    A name found in several projects is refused as ambiguous; ``what`` ("key pair") and ``command``
    ("keypair") word the errors and their hints.
    """
    not_found: ApiError | None = None
    if is_id(ref.lower()):
        try:
            found: Record = client.get(item_path(collection, ref.lower()))
            return found
        except ApiError as exc:
            if exc.status != 404:
                raise
            not_found = exc
    named = [
        item
        for item in client.iter_items(collection, {"name": ref, "project_id": project_id})
        if item["name"] == ref and project_id in (None, item.get("project_id"))
    ]
    if len(named) == 1:
        return named[0]
    if named:
        where = ", ".join(f"{item.get('project_id')} ({what} {item['id']})" for item in named)
        raise CliError(
            f"{len(named)} {what}s are named {ref!r}, in projects {where}",
            hint="pass --project NAME_OR_ID, or the id",
        )
    if not_found is not None:
        raise not_found
    raise CliError(
        f"Not found: no {what} is named {ref!r}" + (f" in project {project_id}" if project_id else ""),
        hint=f"`sovra {command} list` shows them",
        exit_code=EXIT_API_ERROR,
    )
