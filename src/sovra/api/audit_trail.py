"""Record every mutating API call in the audit trail, whatever its outcome.

The middleware opens a note before the request runs; authorization fills in who and which project;
after the response the note becomes an append-only audit record. The resource is the path
parameter of the route, or for creations the id in the ``Location`` header.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from sovra.domain.ids import is_id
from sovra.store import audit
from sovra.store.database import Database

log = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANONYMOUS = "anonymous"

_KINDS = {
    "projects": "Project",
    "operations": "Operation",
    "tokens": "ApiToken",
    "members": "RoleBinding",
    "edges": "Edge",
    "resources": "Resource",
    "images": "Image",
    "hosts": "Host",
    "versions": "ImageVersion",
    "signing-keys": "SigningKey",
    "signatures": "Signature",
    "flavors": "Flavor",
    "keypairs": "KeyPair",
    "server-groups": "ServerGroup",
    "servers": "Server",
}


@dataclass
class AuditNote:
    method: str
    path: str
    source: str
    request_id: str
    principal: str = ANONYMOUS
    project_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _target(
    template: str, path_params: dict[str, str], location: str | None
) -> tuple[str | None, str | None]:
    """(kind, id) of what the call acted on, from the route template and its parameters."""
    parts = [p for p in template.split("/") if p]
    kind, resource_id = None, None
    for index, part in enumerate(parts):
        if part in _KINDS:
            kind = _KINDS[part]
            following = parts[index + 1] if index + 1 < len(parts) else ""
            # "{subject:path}" and "{operation_id}:cancel" name "subject" and "operation_id"
            named = re.match(r"\{(\w+)", following)
            name = named.group(1) if named else None
            resource_id = path_params.get(name) if name else None
    if resource_id is None and location:
        resource_id = next((seg for seg in reversed(location.split("/")) if is_id(seg)), None)
    return kind, resource_id


def _result(status: int) -> str:
    if status < 400:
        return "success"
    return "denied" if status in (401, 403, 429) else "failure"


def write(
    db: Database, note: AuditNote, route: Any, path_params: dict[str, str], status: int, location: str | None
) -> None:
    template = getattr(route, "path", note.path)
    kind, resource_id = _target(template, path_params, location)
    try:
        with db.write() as conn:
            audit.record(
                conn,
                principal=note.principal,
                project_id=note.project_id or (resource_id if kind == "Project" else None),
                action=getattr(route, "name", None) or f"{note.method} {note.path}",
                resource_kind=kind,
                resource_id=resource_id,
                result=_result(status),
                status_code=status,
                request_id=note.request_id,
                source=note.source,
                details={"method": note.method, "path": note.path, **note.extra},
            )
    except Exception:  # the response is already sent; losing an audit record must be loud
        log.exception(
            "could not write the audit record of %s %s (request %s)", note.method, note.path, note.request_id
        )
