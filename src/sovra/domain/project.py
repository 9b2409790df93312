"""The Project resource: the unit of tenancy that owns everything else."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sovra.domain.names import plain_text
from sovra.domain.resource import Condition, ConditionStatus, Status, set_condition

PROJECT_KIND = "Project"


class ProjectState(StrEnum):
    ACTIVE = "ACTIVE"
    DELETING = "DELETING"


class ProjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Annotated[str, AfterValidator(plain_text)] = Field(default="", max_length=1024)
    require_image_signature: bool = Field(
        default=False,
        description="Versions become active (and are served) only with a valid signature from one of "
        "the project's signing keys.",
    )


def applied(status: Status, generation: int, now: datetime) -> Status:
    """A project's spec takes effect as it is written: mark that generation observed and Ready."""
    ready = Condition(
        type="Ready", status=ConditionStatus.TRUE, reason="Applied", message="", last_transition_time=now
    )
    return set_condition(status, ready).model_copy(update={"observed_generation": generation})
