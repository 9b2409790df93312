"""Server groups: servers that the scheduler places together (affinity) or apart (anti-affinity).

A server joins a group when it is created, by a ``uses`` edge from the server to the group; that edge
is what lists the group's members and what keeps the group from being deleted while it has any. The
policy is fixed at creation: the members were placed by it, so changing it would make their
placement a lie.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

SERVER_GROUP_KIND = "ServerGroup"


class Policy(StrEnum):
    AFFINITY = "affinity"  # every member on the same host
    ANTI_AFFINITY = "anti-affinity"  # no two members on the same host


class ServerGroupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Policy = Field(description="affinity or anti-affinity; cannot change after creation.")
