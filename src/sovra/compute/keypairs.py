"""Key pairs as servers use them: a server gets copies of its key pairs' public keys at create time."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from sovra.domain.errors import InvalidArgument, NotFound
from sovra.domain.keypair import KEYPAIR_KIND
from sovra.domain.names import validate_name
from sovra.domain.resource import Resource
from sovra.store import resources as resource_store


def _keypair_in(conn: Connection, project_id: str, ref: str) -> Resource | None:
    """The key pair of ``project_id`` that ``ref`` names, by id or by name."""
    try:
        return resource_store.get(conn, ref, kind=KEYPAIR_KIND, project_ids=[project_id])
    except NotFound:
        pass  # not an id of one of its key pairs: perhaps a name
    try:
        validate_name(ref, field="key_names")
    except InvalidArgument:
        return None  # no key pair has a name like that (and it is never sent to the database)
    page = resource_store.list_page(
        conn,
        kind=KEYPAIR_KIND,
        project_ids=None,
        selector=[],
        page_size=1,
        page_token=None,
        scope_project_id=project_id,
        name=ref,
    )
    return page.items[0] if page.items else None


def public_keys_of(conn: Connection, project_id: str, names_or_ids: list[str]) -> list[str]:
    """The public key lines of the named key pairs of ``project_id``, in the order asked, each once.

    For server creation: the lines are copied into the server, so the server keeps them whatever
    happens to the key pairs later. ``InvalidArgument`` (field ``key_names``) names every key pair
    the project does not have.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for ref in dict.fromkeys(names_or_ids):
        keypair = _keypair_in(conn, project_id, ref)
        if keypair is None:
            missing.append(ref)
        else:
            found.setdefault(keypair.id, keypair.spec["public_key"])
    if missing:
        raise InvalidArgument(
            f"project {project_id} has no key pair named {', '.join(repr(m) for m in missing)}; "
            "`GET /v1/keypairs?project_id=...` (or `sovra keypair list`) shows its key pairs",
            field="key_names",
        )
    return list(found.values())
