"""Liveness, readiness and Prometheus metrics: unauthenticated, outside /v1."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sovra.store.migrate import is_current

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the database answers and its schema is current."""
    try:
        current = is_current(request.app.state.db)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"database: {type(exc).__name__}"}, 503)
    if not current:
        return JSONResponse({"status": "unavailable", "reason": "database schema is not migrated"}, 503)
    return JSONResponse({"status": "ok"})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
