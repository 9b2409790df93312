"""Who may call what: one table of rules, enforced for every route by one dependency.

Each API route names the role it needs and how to find the project it acts on. A caller with no
role in that project gets 404 (the project might as well not exist); a caller who can see it but
whose role is too low gets 403. Routes missing from the table are refused: the app checks at
start-up that every route has a rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from sqlalchemy.engine import Connection

from sovra.auth.context import RequestContext
from sovra.domain.errors import Forbidden, NotFound
from sovra.domain.identity import Role
from sovra.domain.project import PROJECT_KIND
from sovra.store import operations as operation_store
from sovra.store import resources as resource_store
from sovra.store import tokens as token_store


class Scope(Enum):
    PUBLIC = "public"  # no credential needed (health, metrics)
    CALLER = "caller"  # any authenticated caller; the handler shows only what the caller may see
    GLOBAL = "global"  # not tied to a project: only the role itself counts (admin)
    PROJECT = "project"  # the path parameter is a project id
    RESOURCE = "resource"  # the path parameter is a resource id; its project counts
    OPERATION = "operation"  # the path parameter is an operation id; its project counts
    TOKEN = "token"  # the path parameter is an API token id; its creator may act too


@dataclass(frozen=True)
class Rule:
    """``lookup`` lets a GLOBAL (admin-only) rule still answer 404 rather than 403 to callers who
    cannot see the target: it names how the path parameter is found (a PROJECT or a RESOURCE)."""

    role: Role
    scope: Scope
    param: str | None = None
    lookup: Scope | None = None


R, M, G, A = Role.READER, Role.MEMBER, Role.MANAGER, Role.ADMIN

RULES: Mapping[tuple[str, str], Rule] = {
    ("GET", "/healthz"): Rule(R, Scope.PUBLIC),
    ("GET", "/readyz"): Rule(R, Scope.PUBLIC),
    ("GET", "/metrics"): Rule(R, Scope.PUBLIC),
    ("GET", "/v1/whoami"): Rule(R, Scope.CALLER),
    # projects
    ("GET", "/v1/projects"): Rule(R, Scope.CALLER),
    ("POST", "/v1/projects"): Rule(A, Scope.GLOBAL),
    ("GET", "/v1/projects/{project_id}"): Rule(R, Scope.PROJECT, "project_id"),
    ("PATCH", "/v1/projects/{project_id}"): Rule(G, Scope.PROJECT, "project_id"),
    ("DELETE", "/v1/projects/{project_id}"): Rule(A, Scope.GLOBAL, "project_id", lookup=Scope.PROJECT),
    ("GET", "/v1/projects/{project_id}/teardown-order"): Rule(R, Scope.PROJECT, "project_id"),
    # members and tokens
    ("GET", "/v1/projects/{project_id}/members"): Rule(G, Scope.PROJECT, "project_id"),
    ("PUT", "/v1/projects/{project_id}/members/{subject:path}"): Rule(G, Scope.PROJECT, "project_id"),
    ("DELETE", "/v1/projects/{project_id}/members/{subject:path}"): Rule(G, Scope.PROJECT, "project_id"),
    ("GET", "/v1/projects/{project_id}/tokens"): Rule(R, Scope.PROJECT, "project_id"),
    ("POST", "/v1/projects/{project_id}/tokens"): Rule(R, Scope.PROJECT, "project_id"),
    ("GET", "/v1/tokens"): Rule(R, Scope.CALLER),
    ("POST", "/v1/tokens"): Rule(A, Scope.GLOBAL),
    ("DELETE", "/v1/tokens/{token_id}"): Rule(G, Scope.TOKEN, "token_id"),
    # operations
    ("GET", "/v1/operations"): Rule(R, Scope.CALLER),
    ("GET", "/v1/operations/{operation_id}"): Rule(R, Scope.OPERATION, "operation_id"),
    ("POST", "/v1/operations/{operation_id}:cancel"): Rule(M, Scope.OPERATION, "operation_id"),
    # graph
    ("POST", "/v1/edges"): Rule(A, Scope.GLOBAL),
    ("DELETE", "/v1/edges/{source_id}/{edge_type}/{target_id}"): Rule(
        A, Scope.GLOBAL, "source_id", lookup=Scope.RESOURCE
    ),
    ("GET", "/v1/resources/{resource_id}/edges"): Rule(R, Scope.RESOURCE, "resource_id"),
    ("GET", "/v1/resources/{resource_id}/dependents"): Rule(R, Scope.RESOURCE, "resource_id"),
    ("GET", "/v1/resources/{resource_id}/dependencies"): Rule(R, Scope.RESOURCE, "resource_id"),
    # audit
    ("GET", "/v1/audit"): Rule(R, Scope.CALLER),
    # hosts: the provider's machines, admins only
    ("GET", "/v1/hosts"): Rule(A, Scope.GLOBAL),
    ("POST", "/v1/hosts"): Rule(A, Scope.GLOBAL),
    ("GET", "/v1/hosts/{host_id}"): Rule(A, Scope.GLOBAL),
    ("PATCH", "/v1/hosts/{host_id}"): Rule(A, Scope.GLOBAL),
    ("DELETE", "/v1/hosts/{host_id}"): Rule(A, Scope.GLOBAL),
    ("POST", "/v1/hosts/{host_id}:refresh"): Rule(A, Scope.GLOBAL),
    # flavors: the provider's global, public catalogue; everyone reads it, admins change it
    ("GET", "/v1/flavors"): Rule(R, Scope.CALLER),
    ("POST", "/v1/flavors"): Rule(A, Scope.GLOBAL),
    ("GET", "/v1/flavors/{flavor_id}"): Rule(R, Scope.CALLER),
    ("PATCH", "/v1/flavors/{flavor_id}"): Rule(A, Scope.GLOBAL),
    ("DELETE", "/v1/flavors/{flavor_id}"): Rule(A, Scope.GLOBAL),
    # images
    ("GET", "/v1/images"): Rule(R, Scope.CALLER),
    ("POST", "/v1/projects/{project_id}/images"): Rule(M, Scope.PROJECT, "project_id"),
    ("GET", "/v1/images/{image_id}"): Rule(R, Scope.RESOURCE, "image_id"),
    ("PATCH", "/v1/images/{image_id}"): Rule(M, Scope.RESOURCE, "image_id"),
    ("DELETE", "/v1/images/{image_id}"): Rule(M, Scope.RESOURCE, "image_id"),
    ("GET", "/v1/images/{image_id}/versions"): Rule(R, Scope.RESOURCE, "image_id"),
    ("POST", "/v1/images/{image_id}/versions"): Rule(M, Scope.RESOURCE, "image_id"),
    ("GET", "/v1/images/{image_id}/versions/{version_id}"): Rule(R, Scope.RESOURCE, "version_id"),
    ("DELETE", "/v1/images/{image_id}/versions/{version_id}"): Rule(M, Scope.RESOURCE, "version_id"),
    ("GET", "/v1/images/{image_id}/versions/{version_id}/file"): Rule(R, Scope.RESOURCE, "version_id"),
    ("PUT", "/v1/images/{image_id}/versions/{version_id}/file"): Rule(M, Scope.RESOURCE, "version_id"),
    ("GET", "/v1/images/{image_id}/versions/{version_id}/signatures"): Rule(R, Scope.RESOURCE, "version_id"),
    ("POST", "/v1/images/{image_id}/versions/{version_id}:deprecate"): Rule(M, Scope.RESOURCE, "version_id"),
    ("POST", "/v1/images/{image_id}/versions/{version_id}:promote"): Rule(M, Scope.RESOURCE, "version_id"),
    ("GET", "/v1/images/{image_id}/lifecycle"): Rule(R, Scope.RESOURCE, "image_id"),
    ("POST", "/v1/images/{image_id}/lifecycle:apply"): Rule(M, Scope.RESOURCE, "image_id"),
    ("POST", "/v1/images/{image_id}/versions/{version_id}/signatures"): Rule(M, Scope.RESOURCE, "version_id"),
    # signing keys: trusting a key is a security decision for the project's managers
    ("GET", "/v1/projects/{project_id}/signing-keys"): Rule(R, Scope.PROJECT, "project_id"),
    ("POST", "/v1/projects/{project_id}/signing-keys"): Rule(G, Scope.PROJECT, "project_id"),
    ("DELETE", "/v1/signing-keys/{key_id}"): Rule(G, Scope.RESOURCE, "key_id"),
    # SSH key pairs and server groups: the project's resources, like images
    ("GET", "/v1/keypairs"): Rule(R, Scope.CALLER),
    ("POST", "/v1/projects/{project_id}/keypairs"): Rule(M, Scope.PROJECT, "project_id"),
    ("GET", "/v1/keypairs/{keypair_id}"): Rule(R, Scope.RESOURCE, "keypair_id"),
    ("DELETE", "/v1/keypairs/{keypair_id}"): Rule(M, Scope.RESOURCE, "keypair_id"),
    ("GET", "/v1/server-groups"): Rule(R, Scope.CALLER),
    ("POST", "/v1/projects/{project_id}/server-groups"): Rule(M, Scope.PROJECT, "project_id"),
    ("GET", "/v1/server-groups/{group_id}"): Rule(R, Scope.RESOURCE, "group_id"),
    ("PATCH", "/v1/server-groups/{group_id}"): Rule(M, Scope.RESOURCE, "group_id"),
    ("DELETE", "/v1/server-groups/{group_id}"): Rule(M, Scope.RESOURCE, "group_id"),
    # servers
    ("POST", "/v1/projects/{project_id}/servers"): Rule(M, Scope.PROJECT, "project_id"),
    ("GET", "/v1/servers"): Rule(R, Scope.CALLER),
    ("GET", "/v1/servers/{server_id}"): Rule(R, Scope.RESOURCE, "server_id"),
    ("PATCH", "/v1/servers/{server_id}"): Rule(M, Scope.RESOURCE, "server_id"),
    ("DELETE", "/v1/servers/{server_id}"): Rule(M, Scope.RESOURCE, "server_id"),
    ("POST", "/v1/servers/{server_id}:start"): Rule(M, Scope.RESOURCE, "server_id"),
    ("POST", "/v1/servers/{server_id}:stop"): Rule(M, Scope.RESOURCE, "server_id"),
    ("POST", "/v1/servers/{server_id}:reboot"): Rule(M, Scope.RESOURCE, "server_id"),
    ("POST", "/v1/servers/{server_id}:resize"): Rule(M, Scope.RESOURCE, "server_id"),
    ("POST", "/v1/servers/{server_id}:rebuild"): Rule(M, Scope.RESOURCE, "server_id"),
    ("POST", "/v1/servers/{server_id}:snapshot"): Rule(M, Scope.RESOURCE, "server_id"),
    # the console may show secrets a guest prints: members, not readers
    ("GET", "/v1/servers/{server_id}/console"): Rule(M, Scope.RESOURCE, "server_id"),
}


def rule_for(method: str, path: str) -> Rule | None:
    return RULES.get((method, path))


def missing_rules(routes: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Routes that have no rule: the app refuses to start with any."""
    return sorted(route for route in routes if route not in RULES)


@dataclass(frozen=True)
class Target:
    project_id: str | None
    creator: str | None = None
    public: bool = False


def _target_of(conn: Connection, rule: Rule, value: str) -> Target:
    """Where what the path parameter names belongs; NotFound if it does not exist."""
    if rule.scope == Scope.PROJECT:
        return Target(resource_store.get(conn, value, kind=PROJECT_KIND).id)
    if rule.scope == Scope.RESOURCE:
        resource = resource_store.get(conn, value)
        project_id = resource.id if resource.kind == PROJECT_KIND else resource.project_id
        return Target(project_id, public=resource.public)
    if rule.scope == Scope.OPERATION:
        return Target(operation_store.get(conn, value).project_id)
    token = token_store.get(conn, value)
    return Target(token.project_id, creator=token.created_by)


_NAMED = {
    Scope.PROJECT: "project",
    Scope.RESOURCE: "resource",
    Scope.OPERATION: "operation",
    Scope.TOKEN: "token",
}


def _hidden(rule: Rule, value: str) -> NotFound:
    """The same answer for "does not exist" and "exists in a project you cannot see"."""
    return NotFound(f"{_NAMED[rule.scope]} {value!r} not found")


def resolve(rule: Rule, path_params: Mapping[str, str], conn: Connection) -> Target | None:
    """What the request acts on (None for routes not tied to one); NotFound if it does not exist."""
    if rule.scope == Scope.GLOBAL and rule.lookup is not None and rule.param is not None:
        try:  # only to tell callers who cannot see it "not found"; the handler does the real work
            return _target_of(conn, Rule(rule.role, rule.lookup, rule.param), path_params[rule.param])
        except NotFound:
            return None
    if rule.scope in (Scope.PUBLIC, Scope.CALLER, Scope.GLOBAL):
        return None
    assert rule.param is not None
    value = path_params[rule.param]
    try:
        return _target_of(conn, rule, value)
    except NotFound:
        raise _hidden(rule, value) from None


def check(ctx: RequestContext, rule: Rule, target: Target | None, path_params: Mapping[str, str]) -> None:
    """Raise unless ``ctx`` may do what ``rule`` guards on ``target``."""
    if rule.scope in (Scope.PUBLIC, Scope.CALLER):
        return
    if rule.scope == Scope.GLOBAL:
        if ctx.is_admin or rule.role == Role.READER:
            return
        if rule.lookup is not None and rule.param is not None:
            visible = target is not None and (target.public or ctx.role_in(target.project_id) is not None)
            if not visible:
                raise _hidden(Rule(rule.role, rule.lookup, rule.param), path_params[rule.param])
        raise Forbidden(f"this needs the {rule.role} role, which {ctx.display_name} does not hold")
    assert target is not None and rule.param is not None
    if ctx.is_admin or (target.creator is not None and target.creator == ctx.principal):
        return  # admins may do anything; callers may always manage their own tokens
    held = ctx.role_in(target.project_id)
    value = path_params[rule.param]
    if held is None and target.public:
        if rule.role == Role.READER:
            return  # public resources are readable by everyone
        raise Forbidden(f"{value!r} is public: everyone may read it, only its project change it")
    if held is None:
        raise _hidden(rule, value)
    if held < rule.role:
        raise Forbidden(
            f"this needs the {rule.role} role in project {target.project_id}; {ctx.display_name} is {held}"
        )


def ensure_can_publish(ctx: RequestContext) -> None:
    """Public resources are seen by every tenant: only admins (the provider) publish."""
    if not ctx.is_admin:
        raise Forbidden("only admins make resources public; ask your cloud provider to publish it")


def ensure_can_grant(ctx: RequestContext, project_id: str | None, role: Role) -> None:
    """Nobody hands out more than they hold: a token or a binding carries at most the caller's role."""
    held = ctx.role_in(project_id)
    if held is None or role > held:
        raise Forbidden(f"cannot grant {role}: {ctx.display_name} holds {held or 'no role'} here")
    if role == Role.ADMIN and project_id is not None:
        raise Forbidden("admin is a global role; project roles are reader, member and manager")


def can_see_all_tokens(ctx: RequestContext, project_id: str) -> bool:
    held = ctx.role_in(project_id)
    return held is not None and held >= Role.MANAGER
