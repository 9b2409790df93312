"""/v1/edges and graph queries: what depends on what, to any depth."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel

from sovra.api.deps import DB, Context
from sovra.api.problems import PROBLEM_RESPONSES
from sovra.api.schemas import RelatedList
from sovra.domain.edges import MAX_DEPTH, Edge, EdgeType
from sovra.store import graph
from sovra.store import resources as resource_store

router = APIRouter(prefix="/v1", tags=["graph"], responses=PROBLEM_RESPONSES)

Depth = Annotated[int, Query(ge=1, le=MAX_DEPTH, description="How many edges deep to walk.")]
Types = Annotated[list[EdgeType] | None, Query(description="Only follow these edge types.")]


class EdgeList(BaseModel):
    items: list[Edge]


@router.post("/edges", status_code=status.HTTP_201_CREATED, response_model=Edge)
def create_edge(edge: Edge, ctx: Context, db: DB, response: Response) -> Edge:
    """Record a relationship. Admin only: edges cross project boundaries."""
    with db.write() as conn:
        created = graph.add(conn, edge)
    response.headers["Location"] = f"/v1/resources/{edge.source_id}/edges"
    return created


@router.delete("/edges/{source_id}/{edge_type}/{target_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_edge(source_id: str, edge_type: EdgeType, target_id: str, ctx: Context, db: DB) -> Response:
    with db.write() as conn:
        graph.remove(conn, Edge(source_id=source_id, target_id=target_id, type=edge_type))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/resources/{resource_id}/edges", response_model=EdgeList)
def resource_edges(resource_id: str, ctx: Context, db: DB) -> EdgeList:
    with db.read() as conn:
        resource_store.get(conn, resource_id, project_ids=ctx.project_ids)
        items = graph.edges_of(conn, resource_id)
        if ctx.project_ids is not None:  # never name another tenant's resources
            ends = {e.source_id for e in items} | {e.target_id for e in items}
            visible = {r.id for r in resource_store.get_many(conn, list(ends), project_ids=ctx.project_ids)}
            items = [e for e in items if e.source_id in visible and e.target_id in visible]
        return EdgeList(items=items)


@router.get("/resources/{resource_id}/dependents", response_model=RelatedList)
def resource_dependents(
    resource_id: str, ctx: Context, db: DB, depth: Depth = MAX_DEPTH, type: Types = None
) -> RelatedList:
    """Everything that depends on the resource (what breaks if it goes), nearest first."""
    with db.read() as conn:
        resource_store.get(conn, resource_id, project_ids=ctx.project_ids)
        items = graph.dependents(conn, resource_id, depth, type)
    return RelatedList(items=_visible(items, ctx.project_ids))


@router.get("/resources/{resource_id}/dependencies", response_model=RelatedList)
def resource_dependencies(
    resource_id: str, ctx: Context, db: DB, depth: Depth = MAX_DEPTH, type: Types = None
) -> RelatedList:
    """Everything the resource depends on, nearest first."""
    with db.read() as conn:
        resource_store.get(conn, resource_id, project_ids=ctx.project_ids)
        items = graph.dependencies(conn, resource_id, depth, type)
    return RelatedList(items=_visible(items, ctx.project_ids))


def _visible(items: list, project_ids: tuple[str, ...] | None) -> list:  # type: ignore[type-arg]
    if project_ids is None:
        return items
    return [i for i in items if i.project_id in project_ids or i.id in project_ids]
