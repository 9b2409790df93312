"""The Project resource: the unit of tenancy that owns everything else."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

PROJECT_KIND = "Project"


class ProjectState(StrEnum):
    ACTIVE = "ACTIVE"
    DELETING = "DELETING"


class ProjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(default="", max_length=1024)
