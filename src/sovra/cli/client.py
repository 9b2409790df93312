"""The CLI's HTTP client for the Sovra REST API, and the errors it turns failures into.

Every command talks to the API through ``SovraClient``: it adds the bearer token, follows
pagination, and turns problem+json answers and transport failures into ``CliError`` exceptions that
the command group prints (see ``sovra.cli.output.CommandGroup``) before exiting with their code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from itertools import islice
from types import TracebackType
from typing import Annotated, Any

import httpx
import typer

from sovra.cli import config as cli_config
from sovra.cli.config import DEFAULT_URL

MAX_PAGE_SIZE = 1000  # the API's upper bound for page_size
EXIT_API_ERROR = 1
EXIT_USAGE = 2

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="SOVRA_URL",
        help=f"Base URL of the Sovra API [default: from `sovra login`, else {DEFAULT_URL}]",
        show_envvar=True,
    ),
]
Params = Mapping[str, str | int | None]
Record = dict[str, Any]  # one API object as decoded JSON


class CliError(Exception):
    """A failure meant for the user: a message, an optional hint, and the exit code."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code


class ApiError(CliError):
    """The API answered 4xx/5xx; ``problem`` is its RFC 9457 body (or one made up for a non-problem)."""

    STANDARD_FIELDS = frozenset({"type", "title", "status", "detail", "instance", "errors"})

    def __init__(self, problem: dict[str, Any], *, hint: str | None = None) -> None:
        self.problem = problem
        self.status = int(problem.get("status") or 0)
        self.title = str(problem.get("title") or "Error")
        self.detail = str(problem.get("detail") or "")
        super().__init__(f"{self.title}: {self.detail}", hint=hint, exit_code=EXIT_API_ERROR)

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        errors = self.problem.get("errors") or []
        return [(str(e.get("field", "")), str(e.get("message", ""))) for e in errors if isinstance(e, dict)]

    @property
    def extensions(self) -> dict[str, Any]:
        """Problem members beyond the standard ones, e.g. ``blocking_operation`` or ``dependents``."""
        return {k: v for k, v in self.problem.items() if k not in self.STANDARD_FIELDS}


def _stored() -> dict[str, Any]:
    try:
        return cli_config.load()
    except ValueError as exc:
        raise CliError(str(exc), hint="run `sovra login` again") from exc


def resolve_url(url: str | None) -> str:
    """``--url``/``SOVRA_URL``, else the URL `sovra login` stored, else the local default."""
    return url or str(_stored().get("url") or DEFAULT_URL)


def resolve_token() -> str:
    """``SOVRA_TOKEN``, else the token `sovra login` stored."""
    token = os.environ.get("SOVRA_TOKEN", "").strip() or str(_stored().get("token") or "").strip()
    if not token:
        raise CliError(
            f"no API token: SOVRA_TOKEN is unset and {cli_config.config_path()} has none",
            hint="run `sovra login` with the token `sovra up` printed, or set SOVRA_TOKEN",
        )
    return token


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem document of an error response; a synthetic one if the body is not problem+json."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "title" in body:
        return body
    text = response.text.strip()[:300]
    return {
        "title": response.reason_phrase or "HTTP error",
        "status": response.status_code,
        "detail": text or f"HTTP {response.status_code} from {response.request.url}",
    }


def _hint_for(status: int) -> str | None:
    if status == 401:
        return "check SOVRA_TOKEN, or run `sovra login` again with a valid token"
    return None


class SovraClient:
    """A thin synchronous client: JSON in, JSON out, ``CliError`` on any failure."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        try:
            self._http = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=timeout,
            )
        except (httpx.InvalidURL, ValueError) as exc:
            raise CliError(
                f"invalid API URL {url!r}: {exc}", hint="e.g. --url http://127.0.0.1:8790"
            ) from exc

    def __enter__(self) -> SovraClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; raise ``ApiError`` on 4xx/5xx and ``CliError`` when the API is unreachable."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=query, json=json, headers=headers)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot connect to the Sovra API at {self.url}: {exc}",
                hint="is `sovra up` running? set SOVRA_URL (or --url) to where the API listens",
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"the Sovra API at {self.url} did not answer in time ({exc!r})") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise CliError(
                f"invalid API URL {self.url!r}: {exc}", hint="e.g. --url http://127.0.0.1:8790"
            ) from exc
        except httpx.TransportError as exc:
            raise CliError(f"talking to the Sovra API at {self.url} failed: {exc}") from exc
        if response.is_error:
            raise ApiError(_problem_of(response), hint=_hint_for(response.status_code))
        return response

    def get(self, path: str, params: Params | None = None) -> Any:
        return self.request("GET", path, params=params).json()

    def post(self, path: str, body: Any = None, params: Params | None = None) -> Any:
        return self.request("POST", path, json=body, params=params).json()

    def patch(self, path: str, body: Any, headers: Mapping[str, str] | None = None) -> Any:
        return self.request("PATCH", path, json=body, headers=headers).json()

    def delete(
        self, path: str, params: Params | None = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        response = self.request("DELETE", path, params=params, headers=headers)
        return None if response.status_code == 204 or not response.content else response.json()

    def iter_items(
        self, path: str, params: Params | None = None, page_size: int = MAX_PAGE_SIZE
    ) -> Iterator[Record]:
        """Every item of a list endpoint, fetching the next page only when it is needed."""
        token: str | None = None
        while True:
            page = self.get(path, {**(params or {}), "page_size": page_size, "page_token": token})
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return

    def list_all(self, path: str, params: Params | None = None, limit: int | None = None) -> list[Record]:
        """The ``items`` of a list endpoint across pages; at most ``limit`` items when given."""
        if limit is None:
            return list(self.iter_items(path, params))
        return list(islice(self.iter_items(path, params, min(limit, MAX_PAGE_SIZE)), limit))


def connect(url: str | None) -> SovraClient:
    """A client for ``url`` (or the configured one) with the configured token."""
    return SovraClient(resolve_url(url), resolve_token())
