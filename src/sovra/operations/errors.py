"""Exceptions a step raises to tell the engine what to do next."""

from __future__ import annotations

from typing import Any


class StepError(Exception):
    """A failure with a stable ``code``; permanent unless it is a ``RetryableError``."""

    retryable = False

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class RetryableError(StepError):
    """A transient failure (a host unreachable, a lock held): the step runs again after a back-off."""

    retryable = True


class Cancelled(Exception):
    """Raised by ``StepContext.check`` when the operation was cancelled."""


class DeadlineExceeded(Exception):
    """Raised by ``StepContext.check`` when the step ran past its deadline."""
