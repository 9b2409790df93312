"""The Operation resource (shape of Google AIP-151) and its state machine."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class OperationState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def done(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED})
ACTIVE_STATES = frozenset({OperationState.PENDING, OperationState.RUNNING})


class StepState(StrEnum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class ErrorInfo(BaseModel):
    """A structured error: a stable machine code, a human message, and where it happened."""

    code: str
    message: str
    step: str | None = None
    retryable: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class StepRecord(BaseModel):
    """One attempt of one step: the audit trail of an operation."""

    model_config = ConfigDict(frozen=True)

    name: str
    attempt: int
    worker: str
    state: StepState
    started_at: datetime
    finished_at: datetime | None
    result: Any = None
    error: ErrorInfo | None = None


class Operation(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str | None
    target_id: str | None
    target_kind: str | None
    verb: str
    state: OperationState
    progress: int = Field(ge=0, le=100)
    progress_message: str = ""
    params: dict[str, Any]
    result: Any = None
    error: ErrorInfo | None = None
    request_id: str | None
    principal: str
    origin_request_id: str | None = Field(default=None, description="The API request that created it.")
    attempt: int
    cancel_requested: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    not_before: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    version: int
    steps: list[StepRecord] = Field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state.done
