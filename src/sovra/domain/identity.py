"""Principals and roles: the SCS role model (reader < member < manager < admin)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from sovra.domain.errors import InvalidArgument


class Role(IntEnum):
    """Roles are ordered: each includes everything the ones below it may do.

    ``admin`` is global (every project, hosts and settings); the others are held per project.
    """

    READER = 1
    MEMBER = 2
    MANAGER = 3
    ADMIN = 4

    @classmethod
    def parse(cls, text: str, field: str = "role") -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidArgument(
                f"unknown role {text!r}: use reader, member, manager or admin", field=field
            ) from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Identity:
    """Who a credential says the caller is, before Sovra's own role bindings are added.

    ``project_roles`` maps a project reference (an id or a name, as the identity provider knows it)
    to a role; the core resolves names to ids.
    """

    principal: str  # stable and unique: "oidc:<issuer>#<subject>", "token:<id>", "bootstrap"
    display_name: str
    groups: tuple[str, ...] = ()
    project_roles: Mapping[str, Role] = field(default_factory=dict)
    is_admin: bool = False
    source: str = "oidc"  # "oidc", "token" or "bootstrap"
