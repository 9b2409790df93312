"""Build the FastAPI application."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import sovra
from sovra import metrics
from sovra.api import (
    audit,
    flavors,
    graph,
    health,
    hosts,
    identity,
    images,
    keypairs,
    operations,
    problems,
    projects,
    server_groups,
    servers,
    signing,
    tokens,
)
from sovra.api.audit_trail import MUTATING, AuditNote
from sovra.api.audit_trail import write as write_audit
from sovra.api.deps import request_id_of
from sovra.auth import policy
from sovra.auth.authenticate import Authenticator, TokenVerifier
from sovra.auth.ratelimit import RateLimiter
from sovra.config import Settings
from sovra.images.blobstore import LocalBlobStore
from sovra.operations.registry import default_registry
from sovra.store.database import Database


class _ProcessAndStore(Collector):
    """This process's metrics plus the database-wide operation counts."""

    def __init__(self, db: Database) -> None:
        self._operations = metrics.OperationsCollector(db)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self._operations.collect()


_UPLOAD_PATH = re.compile(r"^/v1/images/[^/]+/versions/[^/]+/file$")


class RequestMiddleware:
    """Per request: the request id (``X-Request-ID`` in and out), the body size limit, the latency
    histogram per route template, and an audit record for every mutating call.

    Plain ASGI rather than ``BaseHTTPMiddleware``: it adds no task or copy per request.
    """

    def __init__(self, app: ASGIApp, db: Database, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.db = db
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def _limit_for(self, path: str) -> int:
        """JSON bodies are small; image uploads (streamed, never buffered) have their own cap."""
        return self.max_upload_bytes if _UPLOAD_PATH.match(path) else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request_id_of(request)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        note = None
        if scope["method"] in MUTATING:
            note = AuditNote(
                scope["method"], scope["path"], request.client.host if request.client else "", request_id
            )
            state["audit"] = note
        started = time.perf_counter()
        status, location = 500, None

        audited = False

        async def record(route: object) -> None:
            nonlocal audited
            if note is not None and not audited:
                audited = True
                await run_in_threadpool(
                    write_audit, self.db, note, route, scope.get("path_params", {}), status, location
                )

        async def send_with_id(message: Message) -> None:
            nonlocal status, location
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                location = next((v.decode() for k, v in headers if k == b"location"), None)
                headers.append((b"x-request-id", request_id.encode()))
                # the audit record is written before the caller hears the outcome
                await record(scope.get("route"))
            await send(message)

        limit = self._limit_for(scope["path"])
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                status = 413
                response = problems.standalone_problem(
                    413, "Payload too large", _too_large(limit), scope["path"]
                )
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, self._limited(receive, limit), send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            metrics.API_LATENCY.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
            await record(route)  # a request that failed before any response

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        """Count what a body without (or with a lying) Content-Length really sends."""
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, _too_large(limit))  # FastAPI passes these through
            return message

        return receive_limited


def _too_large(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes"


def _check_every_route_has_a_rule(app: FastAPI) -> None:
    routes = [
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    ]
    missing = policy.missing_rules(routes)
    if missing:
        raise RuntimeError(f"routes without an access rule in sovra.auth.policy: {missing}")


def create_app(settings: Settings, db: Database, oidc: TokenVerifier | None = None) -> FastAPI:
    app = FastAPI(
        title="Sovra",
        version=sovra.__version__,
        description="Compute control plane for sovereign IaaS clouds.",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.db = db
    bootstrap = settings.admin_token.get_secret_value() if settings.admin_token else None
    app.state.authenticator = Authenticator(db, bootstrap, oidc)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    registry = CollectorRegistry(auto_describe=False)  # describing would query the DB now
    registry.register(_ProcessAndStore(db))
    app.state.metrics_registry = registry
    app.state.blobs = LocalBlobStore(settings.resolved_blob_dir)
    app.state.registry = default_registry(settings.plugins)  # for the hooks of cancelled operations
    problems.install(app)
    for module in (
        projects,
        tokens,
        identity,
        images,
        signing,
        hosts,
        flavors,
        keypairs,
        server_groups,
        servers,
        operations,
        graph,
        audit,
        health,
    ):
        app.include_router(module.router)
    _check_every_route_has_a_rule(app)
    app.add_middleware(
        RequestMiddleware,
        db=db,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.image_max_bytes,
    )
    return app
