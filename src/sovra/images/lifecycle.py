"""Retention and deprecation: what should happen next to each version of an image.

Rules, applied to an image's versions on a given day:

* ``provided_until`` passed → an active version is deprecated (still boots existing servers, not new
  ones);
* more than ``keep_last`` active versions → the older ones are deprecated (superseded);
* ``uuid_validity`` passed (a date), or ``last-N`` with N newer versions → the version is retired;
* with ``hide_superseded``, every active version but the newest is hidden from default lists.

Retired versions keep their record (the audit trail points at them) but lose their bytes once no
server uses them: their ``uses`` edges to blobs are dropped and the blob collector does the rest.
The planner is pure; ``apply`` performs the plan's transitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sqlalchemy.engine import Connection

from sovra.domain.edges import EdgeType, RelatedResource
from sovra.domain.image import IMAGE_VERSION_KIND, ImageSpec, ScsMetadata, VersionState
from sovra.domain.resource import Resource
from sovra.images import versions
from sovra.store import graph
from sovra.store import resources as resource_store

LIVE = (VersionState.ACTIVE, VersionState.DEPRECATED)


@dataclass(frozen=True)
class Action:
    version_id: str
    version: str
    current: VersionState
    target: VersionState
    reason: str
    affected_servers: list[RelatedResource] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    image_id: str
    actions: list[Action]
    hidden: list[str]  # version ids hidden from default lists


def _metadata(version: Resource) -> ScsMetadata:
    return ScsMetadata.model_validate(version.spec["metadata"])


def _newest_first(items: list[Resource]) -> list[Resource]:
    return sorted(items, key=lambda v: (_metadata(v).image_build_date, v.created_at), reverse=True)


def _retire_reason(version: Resource, newer_live: int, today: date) -> str | None:
    metadata = _metadata(version)
    validity = metadata.uuid_validity_date()
    if validity is not None and validity < today:
        return f"uuid_validity {validity} has passed"
    if metadata.uuid_validity and metadata.uuid_validity.startswith("last-"):
        keep = int(metadata.uuid_validity.removeprefix("last-"))
        if newer_live >= keep:
            return f"uuid_validity {metadata.uuid_validity}: {newer_live} newer versions exist"
    return None


def plan_for(image: Resource, image_versions: list[Resource], today: date) -> Plan:
    policy = ImageSpec.model_validate(image.spec).retention
    live = _newest_first([v for v in image_versions if VersionState(v.status.state) in LIVE])
    actions: list[Action] = []
    active_kept = 0
    for index, version in enumerate(live):
        state = VersionState(version.status.state)
        name = version.spec["version"]
        retire = _retire_reason(version, index, today)
        if retire is not None:
            actions.append(Action(version.id, name, state, VersionState.RETIRED, retire))
            continue
        if state != VersionState.ACTIVE:
            continue
        until = _metadata(version).provided_until_date()
        if until is not None and until < today:
            actions.append(
                Action(version.id, name, state, VersionState.DEPRECATED, f"provided_until {until} has passed")
            )
        elif active_kept >= policy.keep_last:
            actions.append(
                Action(
                    version.id,
                    name,
                    state,
                    VersionState.DEPRECATED,
                    f"superseded: the image keeps its {policy.keep_last} newest active version(s)",
                )
            )
        else:
            active_kept += 1
    still_active = [
        v.id
        for v in live
        if VersionState(v.status.state) == VersionState.ACTIVE and v.id not in {a.version_id for a in actions}
    ]
    hidden = still_active[1:] if policy.hide_superseded else []
    return Plan(image.id, actions, hidden)


def versions_of(conn: Connection, image_id: str) -> list[Resource]:
    ids = [r.id for r in graph.dependents(conn, image_id, max_depth=1) if r.kind == IMAGE_VERSION_KIND]
    return [resource_store.get(conn, i) for i in ids]


def servers_using(conn: Connection, version_id: str) -> list[RelatedResource]:
    return [
        r
        for r in graph.dependents(conn, version_id, max_depth=1, types=[EdgeType.USES])
        if r.kind == "Server"
    ]


def plan(conn: Connection, image: Resource, today: date) -> Plan:
    """The plan for one image, each action with the servers that use the version."""
    raw = plan_for(image, versions_of(conn, image.id), today)
    actions = [
        Action(a.version_id, a.version, a.current, a.target, a.reason, servers_using(conn, a.version_id))
        for a in raw.actions
    ]
    return Plan(raw.image_id, actions, raw.hidden)


def apply(conn: Connection, image: Resource, today: date) -> Plan:
    """Carry the plan out; a retired version no server uses also lets go of its bytes."""
    result = plan(conn, image, today)
    for action in result.actions:
        versions.move(conn, action.version_id, action.target, lifecycle_reason=action.reason)
        if action.target == VersionState.RETIRED and not action.affected_servers:
            versions.release_blobs(conn, action.version_id)
    return result
