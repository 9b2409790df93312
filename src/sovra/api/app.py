"""Build the FastAPI application."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import sovra
from sovra import metrics
from sovra.api import graph, health, operations, problems, projects
from sovra.api.context import request_id_of
from sovra.config import Settings
from sovra.store.database import Database


class _ProcessAndStore(Collector):
    """This process's metrics plus the database-wide operation counts."""

    def __init__(self, db: Database) -> None:
        self._operations = metrics.OperationsCollector(db)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self._operations.collect()


class RequestMiddleware:
    """Request id in and out (``X-Request-ID``) and the latency histogram per route template.

    Plain ASGI rather than ``BaseHTTPMiddleware``: it adds no task or copy per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        request_id = request_id_of(Request(scope))
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.API_LATENCY.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )


def create_app(settings: Settings, db: Database, admin_token: str | None) -> FastAPI:
    app = FastAPI(
        title="Sovra",
        version=sovra.__version__,
        description="Compute control plane for sovereign IaaS clouds.",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.db = db
    app.state.admin_token = admin_token
    registry = CollectorRegistry(auto_describe=False)  # describing would query the DB now
    registry.register(_ProcessAndStore(db))
    app.state.metrics_registry = registry
    problems.install(app)
    for router in (projects.router, operations.router, graph.router, health.router):
        app.include_router(router)
    app.add_middleware(RequestMiddleware)
    return app
