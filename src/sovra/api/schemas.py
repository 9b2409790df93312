"""Request and response bodies shared by several routers."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, Field

from sovra.domain.edges import RelatedResource

T = TypeVar("T")
Labels = dict[Annotated[str, Field(max_length=317)], Annotated[str, Field(max_length=63)]]
"""Request-side label maps; keys and values are checked in full by ``domain.labels``."""


class ListResponse(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = Field(default=None, description="Pass as page_token for the next page.")


class RelatedList(BaseModel):
    items: list[RelatedResource]
