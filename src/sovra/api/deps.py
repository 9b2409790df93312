"""Shared FastAPI dependencies and parameter types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from sovra.api.context import RequestContext, authenticate
from sovra.config import Settings
from sovra.domain.errors import InvalidArgument
from sovra.store.database import Database

Context = Annotated[RequestContext, Depends(authenticate)]
PageSize = Annotated[int, Query(ge=1, le=1000, description="Items per page (capped by the server).")]
PageToken = Annotated[str | None, Query(max_length=512, description="next_page_token of the previous page.")]
IfMatch = Annotated[str | None, Header(description="ETag of the version you read; 412 if it is stale.")]


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DB = Annotated[Database, Depends(get_db)]
Config = Annotated[Settings, Depends(get_settings)]


def parse_if_match(value: str | None) -> int | None:
    """``"7"`` or ``W/"7"`` to 7; None when absent or ``*``."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 18:
        raise InvalidArgument(f"If-Match {value!r} is not an ETag this API issued", field="header:If-Match")
    return int(text)
