"""Image download by URL: SSRF refusals (OSSA-2026-004 / CVE-2026-34881), pinning, redirects, limits.

Network rule of this module: every socket ``connect`` and every name lookup goes through the
autouse ``net`` guard, which lets through only the literal loopback addresses our own test servers
listen on, and records every attempt. A test of a refused target asserts that the guard saw *no*
attempt, so a regression that connects first and checks later fails here without sending anything
anywhere else.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sovra.images.fetch import FetchFailed, ImportPolicy, UrlRefused, check_url, fetch

LOOPBACK = ("127.0.0.1", "::1")
DATA = bytes(range(256)) * 1024  # 256 KiB, not a repeating pattern at chunk boundaries


# ----------------------------------------------------------------------------------------------
# Network guard and fake DNS
# ----------------------------------------------------------------------------------------------


@dataclass
class NetLog:
    connects: list[tuple[str, int]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    system_dns: dict[str, str] = field(default_factory=dict)
    """What the (fake) system resolver would answer now, e.g. after a DNS rebinding."""


@pytest.fixture(autouse=True)
def net(monkeypatch: pytest.MonkeyPatch) -> NetLog:
    """Refuse and record any connect/lookup that is not to a loopback literal (see module doc)."""
    log = NetLog()
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> None:
        host, port = str(address[0]), int(address[1])
        log.connects.append((host, port))
        if host not in LOOPBACK:
            raise AssertionError(f"test tried to connect to {host}:{port}")
        real_connect(sock, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in LOOPBACK:
            return real_getaddrinfo(host, port, *args, **kwargs)
        log.lookups.append(str(host))
        if host in log.system_dns:
            address = log.system_dns[host]
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]
        raise AssertionError(f"test tried a real DNS lookup of {host!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return log


class FakeDns:
    """An injected resolver: answers from a table (or a sequence of tables), records its calls."""

    def __init__(self, *tables: dict[str, list[str]]) -> None:
        self.tables = list(tables) or [{}]
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        table = self.tables[min(len(self.calls), len(self.tables) - 1)]
        self.calls.append((host, port))
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]


# ----------------------------------------------------------------------------------------------
# Local HTTP(S) servers
# ----------------------------------------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse lookup (getfqdn); we need no name.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        app = cast(Any, self.server).app
        app.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = app.routes.get(self.path)
        try:
            if route is None:
                self.send_error(404)
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalServer:
    """A threaded HTTP server on a loopback address, with per-path routes and a request log."""

    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        cls = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = cls((host, 0), _Handler)
        cast(Any, self.httpd).app = self
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    started: list[LocalServer] = []

    def start(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> LocalServer:
        started.append(LocalServer(host, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def server(serve: Callable[..., LocalServer]) -> LocalServer:
    return serve()


def body(
    data: bytes, *, pieces: int = 8, length: int | None = -1, headers: dict[str, str] | None = None
) -> Route:
    """Send ``data`` in ``pieces`` writes; ``length=None`` means no Content-Length (until close)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        if length is None:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        else:
            handler.send_header("Content-Length", str(len(data) if length == -1 else length))
        handler.end_headers()
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            handler.wfile.write(data[start : start + step])
            handler.wfile.flush()
        handler.close_connection = True  # also ends a body shorter than its Content-Length

    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def local_policy(
    *servers: LocalServer, networks: Sequence[str] = ("127.0.0.1/32",), **kw: Any
) -> ImportPolicy:
    ports = frozenset({80, 443, *(s.port for s in servers)})
    kw.setdefault("read_timeout", 5.0)
    return ImportPolicy(allowed_ports=ports, allowed_networks=list(networks), **kw)


def download(url: str, policy: ImportPolicy, **kw: Any) -> list[bytes]:
    with fetch(url, policy, **kw) as dl:
        return list(dl)


# ----------------------------------------------------------------------------------------------
# The parser: every spelling of a blocked address
# ----------------------------------------------------------------------------------------------

BLOCKED_HOSTS = [
    # IPv4 loopback, every spelling inet_aton / the WHATWG URL parser accepts
    "127.0.0.1",
    "127.0.0.1.",
    "127.255.255.254",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.0.0.1",
    "0x7f.0x0.0x0.0x1",
    "0x7f.1",
    "0177.0.0.1",
    "0177.0000.0000.0001",
    "017700000001",
    "127.1",
    "127.0.1",
    "127.000.000.001",
    "１２７.０.０.１",  # fullwidth digits (IDNA/NFKC maps them)  # noqa: RUF001
    "127。0。0。1",  # ideographic full stops
    # "this network" (0.0.0.0 reaches the local host on Linux)
    "0",
    "0.0.0.0",
    "0x0",
    "0.0.0.7",
    # RFC 1918
    "10.0.0.1",
    "10.1",
    "012.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "3232235521",
    "0xc0a80001",
    "0300.0250.0.1",
    # link-local and cloud metadata
    "169.254.1.1",
    "169.254.169.254",
    "2852039166",
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "169.254.43518",
    "169.254.170.2",
    "100.100.100.200",
    # CGNAT, multicast, reserved, broadcast, other special-purpose
    "100.64.0.1",
    "100.127.255.254",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "4294967295",
    "192.0.0.170",
    "198.18.0.1",
    "192.0.2.1",
    # IPv6 loopback / unspecified in several spellings, with zone ids
    "[::1]",
    "[0:0:0:0:0:0:0:1]",
    "[0000:0000:0000:0000:0000:0000:0000:0001]",
    "[::1%25lo]",
    "[::]",
    # IPv4-mapped / -compatible / -translated IPv6
    "[::ffff:127.0.0.1]",
    "[::FFFF:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[::ffff:10.0.0.1]",
    "[::ffff:0.0.0.0]",
    "[::127.0.0.1]",
    "[::ffff:0:127.0.0.1]",
    # NAT64 and 6to4 carrying loopback/private/metadata IPv4
    "[64:ff9b::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b::c0a8:1]",
    "[64:ff9b:1::a00:1]",
    "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]",
    "[2002:c0a8:1::1]",
    "[2002:a00:1::]",
    # ULA, metadata, link-local (with zones), site-local, multicast, Teredo/doc/discard
    "[fd00:ec2::254]",
    "[fc00::1]",
    "[fd12:3456:789a::1]",
    "[fe80::1]",
    "[fe80::1%25eth0]",
    "[fe80::1%eth0]",
    "[fec0::1]",
    "[ff02::1]",
    "[ff05::1:3]",
    "[2001::1]",
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
    "[2001:db8::1]",
    "[3fff::1]",
    "[100::1]",
]


@pytest.mark.parametrize("host", BLOCKED_HOSTS)
def test_every_spelling_of_a_blocked_address_is_refused_before_any_connection(host: str, net: NetLog) -> None:
    dns = FakeDns()
    with (
        pytest.raises(UrlRefused) as caught,
        fetch(f"http://{host}/image.qcow2", ImportPolicy(), resolver=dns),
    ):
        pytest.fail("fetch opened a blocked address")
    assert caught.value.code == "ADDRESS_NOT_ALLOWED"
    assert caught.value.status == 400
    assert net.connects == []
    assert net.lookups == []
    assert dns.calls == []  # an address literal is never looked up as a name


@pytest.mark.parametrize(
    "url",
    [
        "http://8.8.8.8/image",
        "https://[2606:4700:4700::1111]/image",
        "http://[64:ff9b::808:808]/image",  # NAT64 of a public IPv4 host
        "http://[::ffff:8.8.8.8]/image",
    ],
)
def test_public_address_literals_pass_the_check(url: str, net: NetLog) -> None:
    """The blocklist is not 'refuse everything': public unicast literals are accepted (not fetched)."""
    target = check_url(url, ImportPolicy(), resolver=FakeDns())
    assert len(target.addresses) == 1
    assert target.addresses[0].is_global
    assert net.connects == []


@pytest.mark.parametrize("host", ["0x08080808", "134744072", "8.8.2056", "010.010.010.010"])
def test_unusual_spelling_of_an_acceptable_address_is_a_bad_url(host: str) -> None:
    """Strict: we connect only to what we checked, but refuse to guess what an odd spelling meant."""
    with pytest.raises(UrlRefused) as caught:
        check_url(f"http://{host}/", ImportPolicy(), resolver=FakeDns())
    assert caught.value.code == "BAD_URL"


def test_refusal_messages_name_the_problem_and_the_remedy() -> None:
    with pytest.raises(UrlRefused) as private:
        check_url("http://0x0a000005/x", ImportPolicy())
    assert "10.0.0.5" in private.value.detail
    assert "private" in private.value.detail
    assert "allowed_networks" in private.value.detail
    assert "10.0.0.5/32" in private.value.detail
    with pytest.raises(UrlRefused) as metadata:
        check_url("http://169.254.169.254/latest/meta-data/", ImportPolicy())
    assert "metadata" in metadata.value.detail
    assert "never" in metadata.value.detail
    assert "allowed_networks" not in metadata.value.detail


# ----------------------------------------------------------------------------------------------
# The parser: schemes, ports, credentials, malformed URLs, names
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "ftp://mirror.example/image.qcow2",
        "gopher://127.0.0.1:70/_GET%20/",
        "data:application/octet-stream;base64,UUZJ",
        "dict://127.0.0.1:11211/stat",
        "jar:http://mirror.example/x.jar!/",
        "ldap://mirror.example/",
    ],
)
def test_other_schemes_are_refused(url: str, net: NetLog) -> None:
    dns = FakeDns({"mirror.example": ["93.184.215.14"]})
    with pytest.raises(UrlRefused) as caught, fetch(url, ImportPolicy(), resolver=dns):
        pytest.fail("fetched a non-http URL")
    assert caught.value.code == "SCHEME_NOT_ALLOWED"
    assert "http" in caught.value.detail
    assert net.connects == [] and dns.calls == []


def test_http_is_refused_when_the_policy_allows_only_https() -> None:
    with pytest.raises(UrlRefused) as caught:
        check_url("http://mirror.example/x", ImportPolicy(allowed_schemes=frozenset({"https"})))
    assert caught.value.code == "SCHEME_NOT_ALLOWED"


@pytest.mark.parametrize(
    "url", ["http://mirror.example:8080/x", "https://mirror.example:22/x", "http://mirror.example:443/x"]
)
def test_ports_outside_the_policy_are_refused_before_resolving(url: str, net: NetLog) -> None:
    policy = ImportPolicy(allowed_ports=frozenset({80, 443}))
    if url.endswith(":443/x"):
        policy = ImportPolicy(allowed_ports=frozenset({80}))
    dns = FakeDns({"mirror.example": ["93.184.215.14"]})
    with pytest.raises(UrlRefused) as caught, fetch(url, policy, resolver=dns):
        pytest.fail("fetched from a refused port")
    assert caught.value.code == "PORT_NOT_ALLOWED"
    assert "allowed_ports" in caught.value.detail
    assert net.connects == [] and dns.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@mirror.example/x",
        "http://user@mirror.example/x",
        "http://:@mirror.example/x",
        "http://mirror.example:80@169.254.169.254/x",
    ],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    dns = FakeDns({"mirror.example": ["93.184.215.14"]})
    with pytest.raises(UrlRefused) as caught:
        check_url(url, ImportPolicy(), resolver=dns)
    assert caught.value.code == "CREDENTIALS_IN_URL"
    assert dns.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "",
        "mirror.example/x",
        "http://",
        "http:///x",
        "http://mirror .example/x",
        "http://mirror.example/x y",
        "http://mirror.example\t/x",
        "http://mirror.example\\@127.0.0.1/x",
        "http://mirror.ex%61mple/x",
        "http://mirror_1.example/x",
        "http://-mirror.example/x",
        "http://a..b/x",
        "http://mirror.example:/x",
        "http://mirror.example:+80/x",
        "http://mirror.example:0/x",
        "http://mirror.example:65536/x",
        "http://[::1/x",
        "http://::1/x",
        "http://[127.0.0.1]/x",
        "http://[v1.fe]/x",
        "http://1.2.3.4.5/x",
        "http://1.2.3.256/x",
        "http://08.0.0.1/x",
        "http://1.2.3.09/x",
        "http://99999999999999999999/x",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    dns = FakeDns({"mirror.example": ["93.184.215.14"]})
    with pytest.raises(UrlRefused) as caught:
        check_url(url, ImportPolicy(), resolver=dns)
    assert caught.value.code == "BAD_URL", caught.value.detail
    assert dns.calls == []


def test_url_is_normalised() -> None:
    dns = FakeDns({"mirror.example": ["93.184.215.14"]})
    target = check_url("HTTPS://Mirror.EXAMPLE.:443/a/B?c=D#frag", ImportPolicy(), resolver=dns)
    assert (target.scheme, target.host, target.port) == ("https", "mirror.example", 443)
    assert target.url == "https://mirror.example/a/B?c=D"
    assert target.target == "/a/B?c=D"
    assert target.host_header == "mirror.example"
    assert dns.calls == [("mirror.example", 443)]


@pytest.mark.parametrize(
    "answers",
    [
        ["10.0.0.5"],
        ["93.184.215.14", "10.0.0.5"],  # every answer must pass, not just the first
        ["93.184.215.14", "127.0.0.1"],
        ["::ffff:192.168.0.1"],
        ["fe80::1%eth0"],
        ["169.254.169.254"],
        ["fd00:ec2::254"],
        ["2002:a9fe:a9fe::1"],
    ],
)
def test_names_resolving_to_blocked_addresses_are_refused(answers: list[str], net: NetLog) -> None:
    dns = FakeDns({"mirror.example": answers})
    with pytest.raises(UrlRefused) as caught, fetch("http://mirror.example/x", ImportPolicy(), resolver=dns):
        pytest.fail("fetched from a name resolving to a blocked address")
    assert caught.value.code == "ADDRESS_NOT_ALLOWED"
    assert "mirror.example" in caught.value.detail
    assert net.connects == []


def test_names_that_do_not_resolve_are_refused() -> None:
    for dns in (FakeDns(), FakeDns({"mirror.example": []})):
        with pytest.raises(UrlRefused) as caught:
            check_url("http://mirror.example/x", ImportPolicy(), resolver=dns)
        assert caught.value.code == "HOST_NOT_FOUND"


def test_allowed_networks_open_a_mirror_but_never_metadata_or_this_network() -> None:
    dns = FakeDns({"mirror.internal": ["10.20.0.5"]})
    policy = ImportPolicy(allowed_networks=["10.20.0.0/16", "169.254.0.0/16", "0.0.0.0/8"])
    assert check_url("http://mirror.internal/x", policy, resolver=dns).addresses[0].exploded == "10.20.0.5"
    assert str(check_url("http://10.20.0.6/x", policy).addresses[0]) == "10.20.0.6"
    assert str(check_url("http://169.254.1.2/x", policy).addresses[0]) == "169.254.1.2"
    for url in ("http://169.254.169.254/", "http://0.0.0.0/", "http://[::ffff:169.254.169.254]/"):
        with pytest.raises(UrlRefused) as caught:
            check_url(url, policy)
        assert caught.value.code == "ADDRESS_NOT_ALLOWED"
    with pytest.raises(UrlRefused):  # outside the allowance
        check_url("http://10.21.0.1/x", policy)


def test_an_ipv4_mapped_literal_is_the_ipv4_host() -> None:
    policy = ImportPolicy(allowed_networks=["10.20.0.0/16"])
    target = check_url("http://[::ffff:10.20.0.1]/x", policy)
    assert [str(a) for a in target.addresses] == ["10.20.0.1"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allowed_schemes": frozenset({"ftp"})},
        {"allowed_schemes": frozenset()},
        {"allowed_ports": frozenset({0})},
        {"allowed_networks": ["0.0.0.0/0"]},
        {"allowed_networks": ["::/0"]},
        {"allowed_networks": ["10.0.0.1/8"]},  # host bits set: probably a typo
        {"allowed_networks": ["mirror.example"]},
        {"max_redirects": -1},
        {"max_bytes": 0},
    ],
)
def test_policy_refuses_unsafe_or_meaningless_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ImportPolicy(**kwargs)


# ----------------------------------------------------------------------------------------------
# Real downloads from a local server
# ----------------------------------------------------------------------------------------------


def test_download_from_an_allowed_local_server_streams_the_bytes(server: LocalServer, net: NetLog) -> None:
    gate = threading.Event()
    gate_seen: list[bool] = []

    def route(handler: BaseHTTPRequestHandler) -> None:
        half = len(DATA) // 2
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(DATA)))
        handler.end_headers()
        handler.wfile.write(DATA[:half])
        handler.wfile.flush()
        gate_seen.append(gate.wait(5))  # the rest only once the client has consumed a chunk
        handler.wfile.write(DATA[half:])

    server.routes["/image.qcow2"] = route
    with fetch(server.url("/image.qcow2"), local_policy(server), chunk_size=16384) as dl:
        chunks = iter(dl)
        first = next(chunks)
        gate.set()
        received = [first, *chunks]
        assert dl.content_length == len(DATA)
        assert dl.final_url == server.url("/image.qcow2")
        assert str(dl.address) == "127.0.0.1"
    assert b"".join(received) == DATA
    assert gate_seen == [True], "the first chunk arrived only after the whole body: not streamed"
    assert len(received) > 1
    assert all(0 < len(c) <= 16384 for c in received)
    assert net.connects == [("127.0.0.1", server.port)]
    seen = server.requests[0].headers
    assert seen["host"] == f"127.0.0.1:{server.port}"
    assert seen["accept-encoding"] == "identity"


def test_fetch_can_be_iterated_directly_for_the_chunks(server: LocalServer, net: NetLog) -> None:
    server.routes["/image"] = body(DATA)
    assert b"".join(fetch(server.url("/image"), local_policy(server))) == DATA
    chunks = iter(fetch(server.url("/image"), local_policy(server, networks=())))
    assert net.connects == [("127.0.0.1", server.port)]  # nothing happens before the first chunk
    with pytest.raises(UrlRefused) as caught:
        next(chunks)
    assert caught.value.code == "ADDRESS_NOT_ALLOWED"
    assert net.connects == [("127.0.0.1", server.port)]


def test_the_same_server_is_refused_without_the_allowance(server: LocalServer, net: NetLog) -> None:
    server.routes["/image"] = body(DATA)
    with pytest.raises(UrlRefused) as caught, fetch(server.url("/image"), local_policy(server, networks=())):
        pytest.fail("fetched from loopback without an allowance")
    assert caught.value.code == "ADDRESS_NOT_ALLOWED"
    with (
        pytest.raises(UrlRefused) as port_refused,
        fetch(server.url("/image"), ImportPolicy(allowed_networks=["127.0.0.1/32"])),
    ):
        pytest.fail("fetched from a port that is not allowed")
    assert port_refused.value.code == "PORT_NOT_ALLOWED"
    assert net.connects == []
    assert server.requests == []


def test_download_over_ipv6_loopback(serve: Callable[..., LocalServer], net: NetLog) -> None:
    try:
        server = serve("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server.routes["/image"] = body(DATA)
    assert b"".join(download(server.url("/image"), local_policy(server, networks=["::1/128"]))) == DATA
    assert net.connects == [("::1", server.port)]
    assert server.requests[0].headers["host"] == f"[::1]:{server.port}"


def test_environment_proxies_are_ignored(
    server: LocalServer, net: NetLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would receive the request instead of the vetted address (and see the Host)."""
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://203.0.113.9:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server.routes["/image"] = body(DATA)
    assert b"".join(download(server.url("/image"), local_policy(server))) == DATA
    assert net.connects == [("127.0.0.1", server.port)]


# ----------------------------------------------------------------------------------------------
# Redirects
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", "ADDRESS_NOT_ALLOWED"),
        ("//169.254.169.254/latest/meta-data/", "ADDRESS_NOT_ALLOWED"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "ADDRESS_NOT_ALLOWED"),
        ("http://0x7f000002:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://2130706434:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://0177.0.0.2:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://127.0.0.2:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://[::1]:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://[::ffff:127.0.0.2]:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://internal.example:{port}/image", "ADDRESS_NOT_ALLOWED"),
        ("http://0x7f000001:{port}/image", "BAD_URL"),
        ("file:///etc/passwd", "SCHEME_NOT_ALLOWED"),
        ("gopher://127.0.0.1:{port}/_x", "SCHEME_NOT_ALLOWED"),
        ("http://127.0.0.1:22/", "PORT_NOT_ALLOWED"),
        ("http://user:pw@127.0.0.1:{port}/image", "CREDENTIALS_IN_URL"),
    ],
)
def test_redirect_to_a_refused_target_is_refused_at_that_hop(
    location: str, code: str, server: LocalServer, net: NetLog
) -> None:
    server.routes["/start"] = redirect(location.format(port=server.port))
    server.routes["/image"] = body(DATA)
    dns = FakeDns({"internal.example": ["10.1.2.3"]})
    with pytest.raises(UrlRefused) as caught, fetch(server.url("/start"), local_policy(server), resolver=dns):
        pytest.fail("followed a redirect to a refused target")
    assert caught.value.code == code
    assert "Redirect 1" in caught.value.detail
    assert net.connects == [("127.0.0.1", server.port)]  # the first hop only
    assert server.paths == ["/start"]


def test_allowed_redirects_are_followed_and_reported(server: LocalServer) -> None:
    server.routes["/start"] = redirect("/middle", 301)
    server.routes["/middle"] = redirect(server.url("/image"), 307)
    server.routes["/image"] = body(DATA)
    with fetch(server.url("/start"), local_policy(server)) as dl:
        assert b"".join(dl) == DATA
        assert dl.redirects == (server.url("/middle"), server.url("/image"))
        assert dl.final_url == server.url("/image")
    assert server.paths == ["/start", "/middle", "/image"]


def test_caller_headers_never_follow_a_redirect_to_another_origin(
    serve: Callable[..., LocalServer],
) -> None:
    first, other = serve(), serve()
    first.routes["/start"] = redirect("/same-origin")
    first.routes["/same-origin"] = redirect(other.url("/elsewhere"))
    other.routes["/elsewhere"] = redirect(first.url("/image"))
    first.routes["/image"] = body(DATA)
    headers = {"Authorization": "Bearer s3cret", "X-Auth-Token": "t0ken"}
    assert b"".join(download(first.url("/start"), local_policy(first, other), headers=headers)) == DATA
    by_path = {r.path: r.headers for r in first.requests + other.requests}
    assert by_path["/start"]["authorization"] == "Bearer s3cret"
    assert by_path["/same-origin"]["x-auth-token"] == "t0ken"
    for path in ("/elsewhere", "/image"):  # dropped when leaving, not restored on coming back
        assert "authorization" not in by_path[path]
        assert "x-auth-token" not in by_path[path]


def test_redirect_loops_are_refused(server: LocalServer) -> None:
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect("/a")
    with pytest.raises(UrlRefused) as caught, fetch(server.url("/a"), local_policy(server)):
        pytest.fail("followed a redirect loop")
    assert caught.value.code == "REDIRECT_LOOP"
    assert server.paths == ["/a", "/b"]


def test_too_many_redirects_are_refused(server: LocalServer) -> None:
    for n in range(10):
        server.routes[f"/r/{n}"] = redirect(f"/r/{n + 1}")
    with (
        pytest.raises(UrlRefused) as caught,
        fetch(server.url("/r/0"), local_policy(server, max_redirects=3)),
    ):
        pytest.fail("followed too many redirects")
    assert caught.value.code == "TOO_MANY_REDIRECTS"
    assert server.paths == ["/r/0", "/r/1", "/r/2", "/r/3"]  # 3 redirects followed, the 4th refused


def test_max_redirects_zero_refuses_any_redirect(server: LocalServer) -> None:
    server.routes["/start"] = redirect("/image")
    server.routes["/image"] = body(DATA)
    with (
        pytest.raises(UrlRefused) as caught,
        fetch(server.url("/start"), local_policy(server, max_redirects=0)),
    ):
        pytest.fail("followed a redirect with max_redirects=0")
    assert caught.value.code == "TOO_MANY_REDIRECTS"
    assert server.paths == ["/start"]


# ----------------------------------------------------------------------------------------------
# Size limit and bad responses
# ----------------------------------------------------------------------------------------------


def test_max_bytes_is_enforced_mid_stream(server: LocalServer) -> None:
    server.routes["/big"] = body(DATA * 4, pieces=64, length=None)  # 1 MiB, no Content-Length
    received: list[bytes] = []
    policy = local_policy(server, max_bytes=100_000)
    with pytest.raises(FetchFailed) as caught, fetch(server.url("/big"), policy, chunk_size=8192) as dl:
        assert dl.content_length is None
        received.extend(dl)
    assert caught.value.code == "TOO_LARGE"
    total = sum(map(len, received))
    assert 100_000 - 8192 < total <= 100_000
    assert b"".join(received) == (DATA * 4)[:total]


def test_announced_length_over_max_bytes_is_refused_before_reading(server: LocalServer) -> None:
    server.routes["/big"] = body(DATA)
    with (
        pytest.raises(FetchFailed) as caught,
        fetch(server.url("/big"), local_policy(server, max_bytes=1000)),
    ):
        pytest.fail("opened a body larger than max_bytes")
    assert caught.value.code == "TOO_LARGE"


def test_a_body_of_exactly_max_bytes_is_accepted(server: LocalServer) -> None:
    server.routes["/image"] = body(DATA, length=None)
    assert b"".join(download(server.url("/image"), local_policy(server, max_bytes=len(DATA)))) == DATA


@pytest.mark.parametrize(
    ("route", "code"),
    [
        (body(b"gzip bytes", headers={"Content-Encoding": "gzip"}), "BAD_RESPONSE"),
        (redirect(""), "BAD_RESPONSE"),
        (body(DATA[:10], length=1000), "BAD_RESPONSE"),  # truncated
    ],
)
def test_bad_responses_fail(route: Route, code: str, server: LocalServer) -> None:
    server.routes["/image"] = route
    with pytest.raises(FetchFailed) as caught:
        download(server.url("/image"), local_policy(server))
    assert caught.value.code == code


def test_error_status_fails_with_the_status(server: LocalServer) -> None:
    with pytest.raises(FetchFailed) as caught:
        download(server.url("/missing"), local_policy(server))
    assert caught.value.code == "HTTP_STATUS"
    assert "404" in caught.value.detail


# ----------------------------------------------------------------------------------------------
# DNS rebinding and pinning
# ----------------------------------------------------------------------------------------------


def test_dns_rebinding_cannot_move_the_connection(server: LocalServer, net: NetLog) -> None:
    """The check sees 127.0.0.1 (allowed); any later lookup would say 169.254.169.254."""
    server.routes["/image"] = body(DATA)
    dns = FakeDns({"rebind.example": ["127.0.0.1"]}, {"rebind.example": ["169.254.169.254"]})
    net.system_dns["rebind.example"] = "169.254.169.254"
    url = f"http://rebind.example:{server.port}/image"
    assert b"".join(download(url, local_policy(server), resolver=dns)) == DATA
    assert dns.calls == [("rebind.example", server.port)]  # resolved once, for the check
    assert net.lookups == []  # the HTTP stack never resolved the name itself
    assert net.connects == [("127.0.0.1", server.port)]
    assert server.requests[0].headers["host"] == f"rebind.example:{server.port}"


def test_every_redirect_hop_is_resolved_and_vetted_again(server: LocalServer, net: NetLog) -> None:
    server.routes["/start"] = redirect("/image")
    server.routes["/image"] = body(DATA)
    dns = FakeDns({"mirror.example": ["127.0.0.1"]}, {"mirror.example": ["10.0.0.7"]})
    url = f"http://mirror.example:{server.port}/start"
    with pytest.raises(UrlRefused) as caught, fetch(url, local_policy(server), resolver=dns):
        pytest.fail("followed a redirect to a name that now resolves to a private address")
    assert caught.value.code == "ADDRESS_NOT_ALLOWED"
    assert "10.0.0.7" in caught.value.detail
    assert len(dns.calls) == 2
    assert net.connects == [("127.0.0.1", server.port)]
    assert server.paths == ["/start"]


# ----------------------------------------------------------------------------------------------
# HTTPS: pinned address, original SNI / Host / certificate name
# ----------------------------------------------------------------------------------------------


def _tls_contexts(tmp_path: Path, cert_name: str) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    """A server context with a self-signed certificate for ``cert_name``, a client trusting it,
    and the list the server's SNI callback records names in."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cert_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cert_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sni: list[str | None] = []

    def record(_sock: Any, server_name: str | None, _ctx: Any) -> None:
        sni.append(server_name)

    server_ctx.sni_callback = record
    client_ctx = ssl.create_default_context(cadata=cert_pem.decode("ascii"))
    return server_ctx, client_ctx, sni


def test_https_connects_to_the_pinned_address_with_the_original_sni_and_host(
    serve: Callable[..., LocalServer], net: NetLog, tmp_path: Path
) -> None:
    server_ctx, client_ctx, sni = _tls_contexts(tmp_path, "images.example")
    server = serve(tls=server_ctx)
    server.routes["/image"] = body(DATA)
    dns = FakeDns({"images.example": ["127.0.0.1"]})
    url = f"https://images.example:{server.port}/image"
    assert b"".join(download(url, local_policy(server), resolver=dns, ssl_context=client_ctx)) == DATA
    assert sni == ["images.example"]
    assert server.requests[0].headers["host"] == f"images.example:{server.port}"
    assert net.connects == [("127.0.0.1", server.port)]
    assert net.lookups == []


def test_https_certificate_is_checked_against_the_original_name(
    serve: Callable[..., LocalServer], tmp_path: Path
) -> None:
    server_ctx, client_ctx, _ = _tls_contexts(tmp_path, "other.example")
    server = serve(tls=server_ctx)
    server.routes["/image"] = body(DATA)
    dns = FakeDns({"images.example": ["127.0.0.1"]})
    url = f"https://images.example:{server.port}/image"
    with pytest.raises(FetchFailed) as caught:
        download(url, local_policy(server), resolver=dns, ssl_context=client_ctx)
    assert caught.value.code == "CONNECT_FAILED"
    assert "certificate" in caught.value.detail.lower()
    assert server.requests == []


def test_https_to_http_redirect_is_refused(serve: Callable[..., LocalServer], tmp_path: Path) -> None:
    server_ctx, client_ctx, _ = _tls_contexts(tmp_path, "images.example")
    secure, plain = serve(tls=server_ctx), serve()
    plain.routes["/image"] = body(DATA)
    secure.routes["/start"] = redirect(plain.url("/image"))
    dns = FakeDns({"images.example": ["127.0.0.1"]})
    url = f"https://images.example:{secure.port}/start"
    with pytest.raises(UrlRefused) as caught:
        download(url, local_policy(secure, plain), resolver=dns, ssl_context=client_ctx)
    assert caught.value.code == "INSECURE_REDIRECT"
    assert plain.requests == []
