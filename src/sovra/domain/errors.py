"""Domain errors. The API maps each to an RFC 9457 problem with a status code."""

from __future__ import annotations

from typing import Any


class SovraError(Exception):
    """Base of all errors that carry a message meant for the user."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions


class InvalidArgument(SovraError):
    """The request is malformed; ``field`` names the offending part."""

    status = 400
    title = "Invalid argument"

    def __init__(self, detail: str, field: str | None = None, **extensions: Any) -> None:
        super().__init__(detail, **extensions)
        self.field = field


class Unauthenticated(SovraError):
    status = 401
    title = "Unauthenticated"


class Forbidden(SovraError):
    """The caller is known but its role does not allow this (only for resources it can see)."""

    status = 403
    title = "Forbidden"


class NotFound(SovraError):
    status = 404
    title = "Not found"


class Conflict(SovraError):
    """The request is valid but clashes with the current state (a running operation, a name)."""

    status = 409
    title = "Conflict"


class PreconditionFailed(SovraError):
    """An ``If-Match`` version no longer matches: someone else wrote first."""

    status = 412
    title = "Precondition failed"


class PayloadTooLarge(SovraError):
    status = 413
    title = "Payload too large"


class RateLimited(SovraError):
    """Too many requests; ``retry_after`` seconds is sent as the Retry-After header."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after
