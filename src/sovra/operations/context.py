"""What a running step can see and do."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sovra.config import Settings
from sovra.domain.operation import Operation
from sovra.operations.errors import Cancelled, DeadlineExceeded
from sovra.store import operations as operation_store
from sovra.store.database import Database


@dataclass
class StepContext:
    """Handed to every step. ``results`` holds what earlier steps returned, by step name."""

    operation: Operation
    db: Database
    settings: Settings
    worker_id: str
    step: str
    deadline: float  # time.monotonic() value
    results: dict[str, Any]
    cancelled: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)

    @property
    def params(self) -> dict[str, Any]:
        return self.operation.params

    @property
    def remaining_seconds(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Stop here if the operation was cancelled, taken over or ran out of time.

        Long steps call this between units of work; it is their safe point.
        """
        if self.cancelled.is_set():
            raise Cancelled(self.operation.id)
        if self.lease_lost.is_set():
            raise operation_store.LeaseLost(self.operation.id)
        if time.monotonic() > self.deadline:
            raise DeadlineExceeded(self.step)

    def sleep(self, seconds: float) -> None:
        """Wait, waking early to honour cancellation, loss of lease and the deadline."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            self.cancelled.wait(min(left, 0.05))
        self.check()

    def progress(self, percent: int, message: str = "") -> None:
        with self.db.write() as conn:
            operation_store.set_progress(conn, self.operation.id, self.worker_id, percent, message)
