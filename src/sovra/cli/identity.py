"""``sovra login``, ``sovra whoami``, ``sovra token`` and ``sovra project member``.

Who the CLI acts as, API tokens for automation (their secret is shown once, at creation), and
who holds which role in a project. Projects are addressed by name or id, as in ``sovra project``.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from sovra.cli import config as cli_config
from sovra.cli.client import (
    ApiError,
    CliError,
    Record,
    SovraClient,
    UrlOption,
    connect,
    resolve_url,
)
from sovra.cli.output import (
    CommandGroup,
    OutputFormat,
    OutputOption,
    emit,
    member_table,
    note,
    print_json,
    print_result,
    token_panel,
    token_table,
    whoami_panel,
)
from sovra.cli.projects import ProjectRef, project_path, resolve_project
from sovra.domain.errors import InvalidArgument
from sovra.domain.identity import Role

GROUP_PREFIX = "group:"

token_app = typer.Typer(
    cls=CommandGroup,
    help="API tokens for automation: shown once, stored hashed, expiring, revocable.",
    no_args_is_help=True,
)
member_app = typer.Typer(
    cls=CommandGroup, help="Who holds which role in a project (managers only).", no_args_is_help=True
)


def _check_role(value: str | None) -> str | None:
    """The role in canonical spelling; a usage error (nothing sent) if it is no role at all."""
    if value is None:
        return None
    try:
        return str(Role.parse(value))
    except InvalidArgument as exc:
        raise typer.BadParameter(exc.detail) from None


RoleOption = Annotated[
    str,
    typer.Option(
        "--role",
        "-r",
        callback=_check_role,
        help="reader, member or manager; no higher than your own (admin: global tokens only).",
    ),
]
ProjectOption = Annotated[
    str | None, typer.Option("--project", "-p", metavar="NAME_OR_ID", help="The project's name or id.")
]


def _whoami(client: SovraClient, output: OutputFormat) -> tuple[Record, dict[str, str]]:
    """The caller, and (for tables) the names of the projects it holds roles in."""
    me: Record = client.get("/v1/whoami")
    names: dict[str, str] = {}
    if me["roles"] and output is OutputFormat.TABLE:
        names = {p["id"]: p["name"] for p in client.iter_items("/v1/projects")}
    return me, names


def _show_whoami(me: Record, names: dict[str, str], output: OutputFormat) -> None:
    emit(output, me, lambda data: whoami_panel(data, names))


# login and whoami


def _login_url(url: str | None) -> str:
    """The URL to log in to; a broken config file must not keep anyone from logging in again."""
    try:
        return resolve_url(url)
    except CliError:
        return cli_config.DEFAULT_URL


def _read_token() -> str:
    """The token typed at a hidden prompt, or the first line piped on stdin."""
    if sys.stdin.isatty():
        return str(typer.prompt("API token", hide_input=True))
    return sys.stdin.readline()


def login(
    url: UrlOption = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="The API token. Without it, it is asked for (hidden) or read from stdin; "
            "prefer that, since options end up in the shell history.",
        ),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Check an API token against the API, then store it with the URL for the commands that follow.

    The file (mode 0600) is $SOVRA_CONFIG, else ~/.config/sovra/config.json. A token the API
    refuses is not stored.
    """
    api_url = _login_url(url)
    secret = (token if token is not None else _read_token()).strip()
    if not secret:
        raise CliError(
            "no token given",
            hint="pass --token, type it at the prompt, or pipe it: `sovra login < token-file`",
        )
    with SovraClient(api_url, secret) as client:
        try:
            me, names = _whoami(client, output)
        except ApiError as exc:
            if exc.status != 401:
                raise
            raise ApiError(exc.problem, hint=f"nothing was stored; is this a token of {api_url}?") from None
    path = cli_config.save(api_url, secret)
    note(f"Logged in to {api_url}; the token is stored in {path}.")
    _show_whoami(me, names, output)


def whoami(output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """Who the API takes you for: principal, admin or not, and your role in each project."""
    with connect(url) as client:
        me, names = _whoami(client, output)
    _show_whoami(me, names, output)


# sovra token


def _project_tokens_path(client: SovraClient, project: str) -> str:
    return f"{project_path(str(resolve_project(client, project)['id']))}/tokens"


@token_app.command()
def create(
    name: Annotated[str, typer.Argument(help="1 to 63 letters, digits, '.', '_' or '-'.")],
    role: RoleOption,
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            "-p",
            metavar="NAME_OR_ID",
            help="The project the token acts in. Without it: a global token (admins only).",
        ),
    ] = None,
    expires_in_days: Annotated[
        int | None,
        typer.Option("--expires-in-days", min=1, help="Lifetime in days [default: the server's, 90]."),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Create an API token and print its secret: it is shown only now, Sovra keeps only a hash."""
    body: dict[str, Any] = {"name": name, "role": role}
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    with connect(url) as client:
        path = "/v1/tokens" if project is None else _project_tokens_path(client, project)
        created: Record = client.post(path, body)
    if output is OutputFormat.JSON:
        print_json(created)
        note("The secret is shown only now: Sovra keeps only its hash. Store it now.")
        return
    print_result(token_panel(created))
    note(
        "[bold]The secret below is shown only now[/]: Sovra keeps only its hash. Store it now "
        "(e.g. `sovra login` where it is used, or SOVRA_TOKEN):"
    )
    typer.echo(created["secret"])  # plain, so that nothing ever wraps or styles it


@token_app.command("list")
def list_tokens(
    project: ProjectOption = None, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None
) -> None:
    """Tokens, without secrets. With --project: the project's (all of them for managers, else
    yours); without: the ones you created anywhere (admins: every token)."""
    with connect(url) as client:
        path = "/v1/tokens" if project is None else _project_tokens_path(client, project)
        tokens = client.get(path)["items"]
    emit(output, tokens, token_table)


@token_app.command()
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", help="The token's id (not its secret).")],
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Revoke a token at once; its record stays for the audit trail."""
    with connect(url) as client:
        token: Record = client.delete(f"/v1/tokens/{quote(token_id, safe='')}")
    if output is OutputFormat.JSON:
        print_json(token)
        return
    print_result(f"Token {token['name']} ({token['id']}) is revoked.")


# sovra project member


def _members_path(project_id: str, subject: str | None = None) -> str:
    path = f"{project_path(project_id)}/members"
    return path if subject is None else f"{path}/{quote(subject, safe='')}"


def _subject(subject: str | None, group: str | None) -> str:
    if (subject is None) == (group is None):
        raise CliError(
            "give either SUBJECT or --group NAME",
            hint="SUBJECT is a principal as `sovra whoami` shows it (oidc:…#sub, token:…) or group:NAME",
        )
    return subject if subject is not None else GROUP_PREFIX + str(group)


SubjectArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="SUBJECT",
        help="A principal as `sovra whoami` shows it (oidc:…#sub, token:…) or group:NAME.",
        show_default=False,
    ),
]
GroupOption = Annotated[
    str | None, typer.Option("--group", "-g", metavar="NAME", help="The group NAME (same as group:NAME).")
]


@member_app.command("list")
def list_members(ref: ProjectRef, output: OutputOption = OutputFormat.TABLE, url: UrlOption = None) -> None:
    """The principals and groups holding a role in the project."""
    with connect(url) as client:
        project = resolve_project(client, ref)
        members = client.get(_members_path(project["id"]))["items"]
    emit(output, members, member_table)


@member_app.command()
def add(
    ref: ProjectRef,
    role: RoleOption,
    subject: SubjectArgument = None,
    group: GroupOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Give a principal or a group a role in the project, replacing the one it had.

    Nobody grants more than they hold.
    """
    who = _subject(subject, group)
    with connect(url) as client:
        project = resolve_project(client, ref)
        binding: Record = client.request("PUT", _members_path(project["id"], who), json={"role": role}).json()
    if output is OutputFormat.JSON:
        print_json(binding)
        return
    print_result(f"{who} is now {binding['role']} in project {project['name']}.")


@member_app.command()
def remove(
    ref: ProjectRef,
    subject: SubjectArgument = None,
    group: GroupOption = None,
    output: OutputOption = OutputFormat.TABLE,
    url: UrlOption = None,
) -> None:
    """Take a principal's or a group's role in the project away."""
    who = _subject(subject, group)
    with connect(url) as client:
        project = resolve_project(client, ref)
        members = client.get(_members_path(project["id"]))["items"]
        held = next((m for m in members if m["subject"] == who), None)
        client.request("DELETE", _members_path(project["id"], who))  # the API's 404 if it held none
    if output is OutputFormat.JSON:
        print_json(held)  # the binding that was removed
        return
    role = f" ({held['role']})" if held else ""
    print_result(f"Removed {who}{role} from project {project['name']}.")


def register(app: typer.Typer) -> None:
    """``sovra login``, ``sovra whoami`` and ``sovra token`` (``member`` goes under ``sovra project``)."""
    app.command()(login)
    app.command()(whoami)
    app.add_typer(token_app, name="token")
