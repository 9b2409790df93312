"""The common shape of every Sovra resource: metadata, spec, status and a version.

``spec`` is what the user wants (a change bumps ``generation``); ``status`` is what is, written only
by Sovra; ``version`` increments on every write and is the optimistic-concurrency token (ETag).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(BaseModel):
    """One observed aspect of a resource, in the Kubernetes shape."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: datetime


class Status(BaseModel):
    """Output only: what Sovra observed about a resource.

    Kinds add their own observed facts as extra fields (e.g. an image version's digest and size);
    they are stored and returned as they are.
    """

    model_config = ConfigDict(extra="allow")

    state: str
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int = 0
    operation_id: str | None = Field(default=None, description="The operation now running on it.")


class Resource(BaseModel):
    """A stored resource of any kind; ``spec`` is validated by the kind's own model."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    name: str
    project_id: str | None
    public: bool = False
    labels: dict[str, str]
    spec: dict[str, Any]
    status: Status
    generation: int
    version: int
    created_at: datetime
    updated_at: datetime

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def set_condition(status: Status, condition: Condition) -> Status:
    """Return ``status`` with ``condition`` replacing any condition of the same type.

    The transition time is kept when the condition's status did not change.
    """
    kept = [c for c in status.conditions if c.type != condition.type]
    previous = next((c for c in status.conditions if c.type == condition.type), None)
    if previous is not None and previous.status == condition.status:
        condition = condition.model_copy(update={"last_transition_time": previous.last_transition_time})
    return status.model_copy(update={"conditions": [*kept, condition]})
