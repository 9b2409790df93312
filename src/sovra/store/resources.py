"""The resource repository: every kind shares one table and one set of rules.

Writes check ``version`` (optimistic concurrency): an update names the version it read and fails
with ``PreconditionFailed`` when someone else wrote in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from sovra.domain.errors import Conflict, NotFound, PreconditionFailed
from sovra.domain.ids import is_id, new_id
from sovra.domain.labels import Operator, Requirement
from sovra.domain.resource import Resource, Status
from sovra.store.pagination import Page, decode_token, paginate, query_fingerprint
from sovra.store.schema import edges, resource_labels, resources
from sovra.store.types import utcnow

ANY_PROJECT = object()
"""Sentinel for listing across all projects (admin views)."""


def _to_resource(row: RowMapping) -> Resource:
    return Resource(
        id=row["id"],
        kind=row["kind"],
        name=row["name"],
        project_id=row["project_id"],
        public=row["public"],
        labels=row["labels"],
        spec=row["spec"],
        status=Status.model_validate(row["status"]),
        generation=row["generation"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _write_labels(conn: Connection, resource_id: str, labels: dict[str, str]) -> None:
    conn.execute(sa.delete(resource_labels).where(resource_labels.c.resource_id == resource_id))
    if labels:
        conn.execute(
            sa.insert(resource_labels),
            [{"resource_id": resource_id, "key": k, "value": v} for k, v in labels.items()],
        )


def _name_taken(kind: str, name: str) -> Conflict:
    return Conflict(f"a {kind} named {name!r} already exists here; choose another name", field="name")


def create(
    conn: Connection,
    *,
    kind: str,
    name: str,
    project_id: str | None,
    labels: dict[str, str],
    spec: dict[str, Any],
    state: str,
    resource_id: str | None = None,
    status: Status | None = None,
    public: bool = False,
) -> Resource:
    now = utcnow()
    new = resource_id or new_id()
    row: dict[str, Any] = {
        "id": new,
        "kind": kind,
        "name": name,
        "project_id": project_id,
        "public": public,
        "labels": labels,
        "spec": spec,
        "status": (status or Status(state=state)).model_dump(mode="json"),
        "generation": 1,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with conn.begin_nested():
            conn.execute(sa.insert(resources).values(**row))
    except IntegrityError as exc:
        raise _name_taken(kind, name) from exc
    _write_labels(conn, new, labels)
    if project_id is not None:  # a project owns its resources: teardown and cascades follow the graph
        conn.execute(
            sa.insert(edges).values(source_id=project_id, target_id=new, type="owns", created_at=now)
        )
    return _to_resource(row)  # type: ignore[arg-type]


def get(
    conn: Connection,
    resource_id: str,
    *,
    kind: str | None = None,
    project_ids: Sequence[str] | None = None,
    for_update: bool = False,
) -> Resource:
    """Read one resource. ``project_ids`` limits what the caller may see: others are "not found"."""
    if not is_id(resource_id):
        raise NotFound(f"{kind or 'resource'} {resource_id!r} not found")
    query = sa.select(resources).where(resources.c.id == resource_id)
    if kind is not None:
        query = query.where(resources.c.kind == kind)
    if project_ids is not None:
        query = query.where(_visible(project_ids))
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"{kind or 'resource'} {resource_id!r} not found")
    return _to_resource(row)


def _visible(project_ids: Sequence[str]) -> sa.ColumnElement[bool]:
    """What a caller with roles in ``project_ids`` may read: its projects, their resources, and
    anything public."""
    return sa.or_(
        resources.c.project_id.in_(project_ids), resources.c.id.in_(project_ids), resources.c.public.is_(True)
    )


def get_many(
    conn: Connection, resource_ids: Sequence[str], *, project_ids: Sequence[str] | None
) -> list[Resource]:
    """The resources among ``resource_ids`` that exist and the caller may see."""
    query = sa.select(resources).where(resources.c.id.in_(resource_ids))
    if project_ids is not None:
        query = query.where(_visible(project_ids))
    return [_to_resource(r) for r in conn.execute(query).mappings()]


def _label_clause(req: Requirement) -> sa.ColumnElement[bool]:
    match = sa.select(resource_labels.c.resource_id).where(
        resource_labels.c.resource_id == resources.c.id, resource_labels.c.key == req.key
    )
    if req.operator in (Operator.EQUALS, Operator.NOT_EQUALS, Operator.IN, Operator.NOT_IN):
        match = match.where(resource_labels.c.value.in_(req.values))
    negated = req.operator in (Operator.NOT_EQUALS, Operator.NOT_IN, Operator.NOT_EXISTS)
    return ~match.exists() if negated else match.exists()


def list_page(
    conn: Connection,
    *,
    kind: str,
    project_ids: Sequence[str] | None,
    selector: list[Requirement],
    page_size: int,
    page_token: str | None,
    scope_project_id: str | None = None,
    name: str | None = None,
) -> Page[Resource]:
    """One page of resources of ``kind`` in creation order.

    ``project_ids`` is the caller's visibility (None: everything); ``scope_project_id`` narrows the
    list to one project's resources.
    """
    fingerprint = query_fingerprint(
        kind, scope_project_id, name, [(r.key, r.operator, r.values) for r in selector]
    )
    after = decode_token(page_token, fingerprint)
    query = sa.select(resources).where(resources.c.kind == kind)
    if project_ids is not None:
        query = query.where(_visible(project_ids))
    if scope_project_id is not None:
        query = query.where(resources.c.project_id == scope_project_id)
    if name is not None:
        query = query.where(resources.c.name == name)
    for req in selector:
        query = query.where(_label_clause(req))
    if after is not None:
        query = query.where(resources.c.id > after)
    query = query.order_by(resources.c.id).limit(page_size + 1)
    rows = [_to_resource(r) for r in conn.execute(query).mappings()]
    return paginate(rows, page_size, "id", fingerprint)


def require_version(resource: Resource, expected_version: int | None) -> None:
    """Raise ``PreconditionFailed`` unless ``expected_version`` (from If-Match) is current."""
    if expected_version is not None and expected_version != resource.version:
        raise PreconditionFailed(
            f"{resource.kind} {resource.id} is at version {resource.version}, not {expected_version}: "
            "it changed since you read it; read it again and retry",
            current_version=resource.version,
        )


def update(
    conn: Connection,
    resource_id: str,
    *,
    expected_version: int | None,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    kind: str | None = None,
    project_ids: Sequence[str] | None = None,
    on_spec_change: Callable[[Status, int], Status] | None = None,
) -> Resource:
    """Change what the user owns (name, labels, spec) with a compare-and-swap on ``version``.

    ``on_spec_change(status, new_generation)`` lets a kind whose spec applies at once record that in
    its status within the same write.
    """
    current = get(conn, resource_id, kind=kind, project_ids=project_ids, for_update=True)
    require_version(current, expected_version)
    values: dict[str, Any] = {"version": current.version + 1, "updated_at": utcnow()}
    if name is not None and name != current.name:
        values["name"] = name
    if labels is not None and labels != current.labels:
        values["labels"] = labels
    if spec is not None and spec != current.spec:
        values["spec"] = spec
        values["generation"] = current.generation + 1
        if on_spec_change is not None:
            values["status"] = on_spec_change(current.status, values["generation"]).model_dump(mode="json")
    if len(values) == 2:
        return current  # nothing changed: no new version
    statement = (
        sa.update(resources)
        .where(resources.c.id == resource_id, resources.c.version == current.version)
        .values(**values)
    )
    try:
        with conn.begin_nested():
            result = conn.execute(statement)
    except IntegrityError as exc:
        raise _name_taken(current.kind, name or current.name) from exc
    if result.rowcount != 1:
        raise PreconditionFailed(f"{current.kind} {resource_id} changed concurrently; read it again")
    if "labels" in values:
        _write_labels(conn, resource_id, values["labels"])
    return get(conn, resource_id)


def update_status(conn: Connection, resource_id: str, change: Callable[[Status], Status]) -> Resource:
    """Apply ``change`` to the status under a row lock; status writes never bump ``generation``."""
    current = get(conn, resource_id, for_update=True)
    status = change(current.status)
    conn.execute(
        sa.update(resources)
        .where(resources.c.id == resource_id)
        .values(
            status=status.model_dump(mode="json"),
            version=current.version + 1,
            updated_at=utcnow(),
        )
    )
    return current.model_copy(update={"status": status, "version": current.version + 1})


def set_public(conn: Connection, resource_ids: Sequence[str], public: bool) -> None:
    """Publish or unpublish (visibility is not part of the user's spec versioning)."""
    if resource_ids:
        conn.execute(sa.update(resources).where(resources.c.id.in_(resource_ids)).values(public=public))


def delete(conn: Connection, resource_ids: Sequence[str]) -> int:
    if not resource_ids:
        return 0
    result = conn.execute(sa.delete(resources).where(resources.c.id.in_(resource_ids)))
    return result.rowcount
