"""The request context: who is calling, with which roles, and where from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sovra.domain.identity import Role


@dataclass(frozen=True)
class RequestContext:
    """Resolved once per request and passed to every handler.

    ``roles`` maps project ids to the caller's effective role there (direct, via groups, via the
    identity provider's claims, or an API token's scope). Admins hold every role everywhere.
    """

    principal: str
    display_name: str
    is_admin: bool
    roles: Mapping[str, Role] = field(default_factory=dict)
    request_id: str = ""
    source: str = ""
    token_id: str | None = None

    @property
    def project_ids(self) -> tuple[str, ...] | None:
        """The projects the caller may see; None means all of them (admin)."""
        return None if self.is_admin else tuple(self.roles)

    def role_in(self, project_id: str | None) -> Role | None:
        if self.is_admin:
            return Role.ADMIN
        return self.roles.get(project_id) if project_id is not None else None
