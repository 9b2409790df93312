"""Errors as RFC 9457 ``application/problem+json`` documents that name the offending field."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sovra.domain.errors import SovraError

log = logging.getLogger(__name__)
PROBLEM_TYPE_BASE = "https://sovra.dev/problems/"


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """The error body of every 4xx and 5xx answer."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = Field(default_factory=list)


def standalone_problem(
    status: int,
    title: str,
    detail: str,
    instance: str,
    errors: list[dict[str, str]] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """The problem+json answer for ``status``; also used by middleware outside exception handling."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "errors": errors or [],
        **extensions,
    }
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="sovra"'
    if status == 429 and "retry_after" in extensions:
        headers["Retry-After"] = str(extensions["retry_after"])
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    **extensions: Any,
) -> JSONResponse:
    return standalone_problem(status, title, detail, request.url.path, errors, **extensions)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        where, rest = parts[0], parts[1:]
        return ".".join(rest) if where == "body" and rest else f"{where}:{'.'.join(rest)}"
    return ".".join(parts)


async def _on_sovra_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SovraError)
    extensions = dict(exc.extensions)
    field = getattr(exc, "field", None) or extensions.pop("field", None)
    errors = [{"field": field, "message": exc.detail}] if field else []
    if exc.status >= 500:
        log.error("server error on %s: %s", request.url.path, exc.detail)
    return problem_response(request, exc.status, exc.title, exc.detail, errors, **extensions)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"field": _field_path(tuple(e.get("loc", ()))), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "the request is malformed"
    return problem_response(request, 422, "Unprocessable request", detail, errors)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 400: "Bad request", 413: "Payload too large"}
    title = titles.get(exc.status_code, "HTTP error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route for {request.method} {request.url.path}; see /openapi.json"
    return problem_response(request, exc.status_code, title, detail)


async def _on_data_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (e.g. a NUL character for PostgreSQL): the transaction was
    rolled back, nothing was written; it is the request's fault, not the server's."""
    log.info("refused a value the database cannot store on %s: %s", request.url.path, type(exc).__name__)
    return problem_response(
        request,
        400,
        "Invalid argument",
        "a value in the request cannot be stored or searched for (control characters?)",
    )


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        500,
        "Internal error",
        "the server failed; the request id in X-Request-ID helps find it in the logs",
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(SovraError, _on_sovra_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(DataError, _on_data_error)
    app.add_exception_handler(Exception, _on_unexpected)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description, "content": {"application/problem+json": {}}}
    for status, description in (
        (400, "Invalid argument"),
        (401, "Missing or invalid credentials"),
        (403, "The caller's role does not allow this"),
        (404, "Not found (or not visible to the caller)"),
        (409, "Conflict with the current state"),
        (412, "If-Match version is stale"),
        (422, "Request does not match the schema"),
        (429, "Too many requests from this principal; see Retry-After"),
    )
}
