"""Typed edges between resources and the questions asked of them, in SQL (recursive CTEs).

Walks use the normalised columns ``dependent_id``/``dependency_id`` (see ``domain.edges``), so
"dependents" and "dependencies" are each one indexed join per level, whatever the edge type.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from sovra.domain.edges import BLOCKS_TARGET_DELETION, MAX_DEPTH, Edge, EdgeType, RelatedResource
from sovra.domain.errors import Conflict, InvalidArgument, NotFound
from sovra.domain.ids import is_id
from sovra.domain.project import PROJECT_KIND
from sovra.store.schema import edges, resources
from sovra.store.types import utcnow


def _walk_sql(direction: str) -> sa.TextClause:
    """A walk from :root following "dependent -> dependency" (up) or the reverse (down)."""
    near, far = (
        ("dependency_id", "dependent_id") if direction == "down" else ("dependent_id", "dependency_id")
    )
    return sa.text(
        f"""
        WITH RECURSIVE walk(id, depth, via) AS (
            SELECT e.{far}, 1, e.type FROM edges e
             WHERE e.{near} = :root AND (:all_types OR e.type IN :types)
            UNION
            SELECT e.{far}, w.depth + 1, e.type FROM edges e JOIN walk w ON e.{near} = w.id
             WHERE w.depth < :max_depth AND (:all_types OR e.type IN :types)
        )
        SELECT r.id, r.kind, r.name, r.project_id, w.depth, w.via
          FROM walk w JOIN resources r ON r.id = w.id
         ORDER BY w.depth, r.id
        """
    ).bindparams(sa.bindparam("types", expanding=True))


_DEPENDENTS = _walk_sql("down")
_DEPENDENCIES = _walk_sql("up")


def _walk(
    conn: Connection, query: sa.TextClause, root: str, max_depth: int, types: Sequence[EdgeType] | None
) -> list[RelatedResource]:
    if not 1 <= max_depth <= MAX_DEPTH:
        raise InvalidArgument(f"depth must be between 1 and {MAX_DEPTH}", field="depth")
    rows = conn.execute(
        query,
        {
            "root": root,
            "max_depth": max_depth,
            "all_types": not types,
            "types": [str(t) for t in types] if types else [""],
        },
    ).mappings()
    nearest: dict[str, RelatedResource] = {}
    for row in rows:  # ordered by depth: the first row of an id is its shortest path
        if row["id"] not in nearest and row["id"] != root:
            nearest[row["id"]] = RelatedResource(
                id=row["id"],
                kind=row["kind"],
                name=row["name"],
                project_id=row["project_id"],
                depth=row["depth"],
                via=EdgeType(row["via"]),
            )
    return list(nearest.values())


def dependents(
    conn: Connection, resource_id: str, max_depth: int = MAX_DEPTH, types: Sequence[EdgeType] | None = None
) -> list[RelatedResource]:
    """What depends on ``resource_id``, transitively: what breaks if it goes away."""
    return _walk(conn, _DEPENDENTS, resource_id, max_depth, types)


def dependencies(
    conn: Connection, resource_id: str, max_depth: int = MAX_DEPTH, types: Sequence[EdgeType] | None = None
) -> list[RelatedResource]:
    """What ``resource_id`` depends on, transitively."""
    return _walk(conn, _DEPENDENCIES, resource_id, max_depth, types)


def _dependent_and_dependency(edge: Edge) -> tuple[str, str]:
    if edge.type == EdgeType.OWNS:
        return edge.target_id, edge.source_id
    return edge.source_id, edge.target_id


def _check_same_project(owner: RowMapping, owned: RowMapping) -> None:
    """An owner can only own what lives in its own project (a Project's project is itself)."""
    owner_scope = owner["id"] if owner["kind"] == PROJECT_KIND else owner["project_id"]
    if owned["project_id"] is not None and owned["project_id"] != owner_scope:
        raise Conflict(
            f"{owner['kind']} {owner['id']} cannot own {owned['kind']} {owned['id']}: it belongs to project "
            f"{owned['project_id']}; ownership never crosses projects (use a 'uses' edge)",
            field="target_id",
        )


def add(conn: Connection, edge: Edge) -> Edge:
    """Record an edge; idempotent. Refuses self-loops, missing ends and cycles."""
    if edge.source_id == edge.target_id:
        raise InvalidArgument("an edge cannot connect a resource to itself", field="target_id")
    _require_ids(edge)
    found = {
        row["id"]: row
        for row in conn.execute(
            sa.select(resources.c.id, resources.c.kind, resources.c.project_id).where(
                resources.c.id.in_([edge.source_id, edge.target_id])
            )
        ).mappings()
    }
    for field, rid in (("source_id", edge.source_id), ("target_id", edge.target_id)):
        if rid not in found:
            raise NotFound(f"resource {rid!r} not found", field=field)
    if edge.type == EdgeType.OWNS:
        _check_same_project(found[edge.source_id], found[edge.target_id])
    exists = conn.execute(
        sa.select(edges.c.source_id).where(
            edges.c.source_id == edge.source_id,
            edges.c.target_id == edge.target_id,
            edges.c.type == edge.type,
        )
    ).first()
    if exists:
        return edge
    dependent, dependency = _dependent_and_dependency(edge)
    if any(r.id == dependent for r in dependencies(conn, dependency)):
        raise Conflict(
            f"edge {edge.source_id} {edge.type} {edge.target_id} would close a dependency cycle",
            field="target_id",
        )
    conn.execute(
        sa.insert(edges).values(
            source_id=edge.source_id, target_id=edge.target_id, type=str(edge.type), created_at=utcnow()
        )
    )
    return edge


def _require_ids(edge: Edge) -> None:
    for field, rid in (("source_id", edge.source_id), ("target_id", edge.target_id)):
        if not is_id(rid):
            raise NotFound(f"resource {rid!r} not found", field=field)


def remove(conn: Connection, edge: Edge) -> None:
    _require_ids(edge)
    result = conn.execute(
        sa.delete(edges).where(
            edges.c.source_id == edge.source_id,
            edges.c.target_id == edge.target_id,
            edges.c.type == edge.type,
        )
    )
    if result.rowcount == 0:
        raise NotFound(f"edge {edge.source_id} {edge.type} {edge.target_id} not found")


def edges_of(conn: Connection, resource_id: str) -> list[Edge]:
    """Every edge that starts or ends at ``resource_id``."""
    rows = conn.execute(
        sa.select(edges.c.source_id, edges.c.target_id, edges.c.type)
        .where(sa.or_(edges.c.source_id == resource_id, edges.c.target_id == resource_id))
        .order_by(edges.c.type, edges.c.source_id, edges.c.target_id)
    ).mappings()
    return [Edge(source_id=r["source_id"], target_id=r["target_id"], type=EdgeType(r["type"])) for r in rows]


_TEARDOWN = sa.text(
    """
    WITH RECURSIVE owned(id) AS (
        SELECT CAST(:root AS VARCHAR(36))
        UNION
        SELECT e.target_id FROM edges e JOIN owned o ON e.source_id = o.id WHERE e.type = 'owns'
    ),
    walk(id, depth) AS (
        SELECT CAST(:root AS VARCHAR(36)), 0
        UNION
        SELECT e.dependent_id, w.depth + 1 FROM edges e JOIN walk w ON e.dependency_id = w.id
         WHERE w.depth < :max_depth AND e.dependent_id IN (SELECT id FROM owned)
    )
    SELECT r.id, r.kind, r.name, r.project_id, MAX(w.depth) AS depth
      FROM walk w JOIN resources r ON r.id = w.id
     GROUP BY r.id, r.kind, r.name, r.project_id
     ORDER BY MAX(w.depth) DESC, r.id
    """
)


def owned_closure(conn: Connection, root: str) -> list[str]:
    """``root`` and everything it owns, transitively."""
    rows = conn.execute(
        sa.text(
            """
            WITH RECURSIVE owned(id) AS (
                SELECT CAST(:root AS VARCHAR(36))
                UNION
                SELECT e.target_id FROM edges e JOIN owned o ON e.source_id = o.id WHERE e.type = 'owns'
            ) SELECT id FROM owned
            """
        ),
        {"root": root},
    ).scalars()
    return list(rows)


def teardown_order(conn: Connection, root: str) -> list[RelatedResource]:
    """Everything ``root`` owns, in an order that deletes each resource after all that depend on it.

    The longest dependency path from the root decides the position: deepest first, root last.
    """
    rows = conn.execute(_TEARDOWN, {"root": root, "max_depth": MAX_DEPTH}).mappings()
    return [
        RelatedResource(
            id=r["id"],
            kind=r["kind"],
            name=r["name"],
            project_id=r["project_id"],
            depth=r["depth"],
            via=EdgeType.OWNS,
        )
        for r in rows
    ]


def blocking_users(conn: Connection, doomed: Sequence[str]) -> list[RelatedResource]:
    """Resources outside ``doomed`` that still use something in it (``uses`` blocks deletion)."""
    if not doomed:
        return []
    blocking_types = [str(t) for t in BLOCKS_TARGET_DELETION]
    user = resources.alias("user")
    rows = conn.execute(
        sa.select(user.c.id, user.c.kind, user.c.name, user.c.project_id, edges.c.type)
        .join(edges, edges.c.source_id == user.c.id)
        .where(
            edges.c.target_id.in_(doomed),
            edges.c.type.in_(blocking_types),
            edges.c.source_id.not_in(doomed),
        )
        .distinct()
        .order_by(user.c.id)
    ).mappings()
    return [
        RelatedResource(
            id=r["id"],
            kind=r["kind"],
            name=r["name"],
            project_id=r["project_id"],
            depth=1,
            via=EdgeType(r["type"]),
        )
        for r in rows
    ]
