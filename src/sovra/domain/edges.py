"""Typed relationships between resources and what each type means for deletion.

Every edge reads "source <type> target":

* ``owns``: the source owns the target; deleting the source deletes the target (cascade).
* ``uses``: the source uses the target; the target cannot be deleted while the source lives.
* ``runs-on``: the source is placed on the target (a server runs on a host).
* ``derived-from``: the source was made from the target (provenance).

For graph questions an edge is normalised to "dependent depends on dependency": for ``owns`` the
owned target depends on its owner; for the other types the source depends on the target.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

MAX_DEPTH = 64
"""Deepest graph walk; edges that would close a cycle are refused, so real graphs stay far below."""


class EdgeType(StrEnum):
    OWNS = "owns"
    USES = "uses"
    RUNS_ON = "runs-on"
    DERIVED_FROM = "derived-from"


BLOCKS_TARGET_DELETION = frozenset({EdgeType.USES})


class Edge(BaseModel):
    model_config = ConfigDict(frozen=True)

    source_id: str
    target_id: str
    type: EdgeType


class RelatedResource(BaseModel):
    """A resource reached by a graph walk, with how far and over which edge type."""

    id: str
    kind: str
    name: str
    project_id: str | None
    depth: int
    via: EdgeType
