"""Listing a project-scoped kind: the same query parameters and visibility rules for every list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query
from sqlalchemy.engine import Connection

from sovra.api.deps import PageSize, PageToken, TextFilter
from sovra.api.schemas import ListResponse
from sovra.auth.context import RequestContext
from sovra.config import Settings
from sovra.domain.labels import parse_selector
from sovra.domain.resource import Resource
from sovra.store import resources as resource_store
from sovra.store.database import Database

T = TypeVar("T")


@dataclass
class ListQuery:
    """``?project_id=&name=&label_selector=&page_size=&page_token=`` of a list route."""

    project_id: TextFilter = None
    name: TextFilter = None
    label_selector: Annotated[str | None, Query(max_length=4096)] = None
    page_size: PageSize = 100
    page_token: PageToken = None


Listing = Annotated[ListQuery, Depends()]


def visible_page(
    db: Database,
    ctx: RequestContext,
    settings: Settings,
    kind: str,
    query: ListQuery,
    view: Callable[[Connection, Resource], T],
) -> ListResponse[T]:
    """One page of ``kind`` among what the caller may see (its projects' and public resources),
    each shown through ``view`` (in the reading transaction, for views that read more)."""
    with db.read() as conn:
        page = resource_store.list_page(
            conn,
            kind=kind,
            project_ids=ctx.project_ids,
            selector=parse_selector(query.label_selector),
            page_size=min(query.page_size, settings.max_page_size),
            page_token=query.page_token,
            scope_project_id=query.project_id,
            name=query.name,
        )
        items = [view(conn, r) for r in page.items]
    return ListResponse[T](items=items, next_page_token=page.next_page_token)
