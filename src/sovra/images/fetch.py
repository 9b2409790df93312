"""Download an image from an HTTP(S) URL without letting the URL reach places it must not.

Importing an image "by URL" makes the control plane send a request on a user's behalf, from inside
the cloud: a server-side request forgery (SSRF) target. Glance's OSSA-2026-004 / CVE-2026-34881
showed the two ways this goes wrong: redirects that were not re-checked, and IP addresses written in
unusual spellings (``2130706433``, ``0x7f000001``, ``0177.0.0.1``) that slipped past a blocklist
comparing strings. Here:

* Every URL (the first one and every redirect target) goes through :func:`check_url`: the scheme
  and port must be allowed, credentials in the URL are refused, the host is normalised the way the
  C library would read it (so every numeric spelling of an address is recognised), and every
  address the host resolves to must be public or inside a network an operator allowed.
* The connection goes to an address that was checked (it is *pinned*); the name is never handed to
  the HTTP stack, so DNS rebinding between the check and the connect cannot move the target. The
  ``Host`` header, TLS SNI and certificate check still use the original name.
* Redirects are followed by hand, at most ``max_redirects``. Caller headers (for example a token)
  are dropped for good as soon as a hop leaves the first origin. Environment proxies and ``.netrc``
  are ignored (no ``httpx.Client`` is involved): a proxy would make the pinned address meaningless.
* The body is streamed raw (``Accept-Encoding: identity``, never decompressed, so no decompression
  bomb) and cut off at ``max_bytes``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from sovra.domain.errors import InvalidArgument, SovraError

__all__ = [
    "Download",
    "Fetch",
    "FetchFailed",
    "ImportPolicy",
    "ParsedTarget",
    "Resolver",
    "UrlRefused",
    "check_address",
    "check_url",
    "fetch",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Iterable[str | IPAddress]]
"""``(host, port) -> addresses``. Injected in tests; :func:`system_resolver` by default."""

SUPPORTED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_CHUNK_SIZE = 64 * 1024
USER_AGENT = "sovra-image-fetch/1"
MAX_URL_LENGTH = 8192

# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class UrlRefused(InvalidArgument):
    """The policy does not let us fetch this URL (the one given, or a redirect target).

    ``code`` is stable for programs (``SCHEME_NOT_ALLOWED``, ``PORT_NOT_ALLOWED``,
    ``ADDRESS_NOT_ALLOWED``, ``BAD_URL``, ``CREDENTIALS_IN_URL``, ``HOST_NOT_FOUND``,
    ``TOO_MANY_REDIRECTS``, ``REDIRECT_LOOP``, ``INSECURE_REDIRECT``); the message is for people.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail, field="url", code=code)
        self.code = code


class FetchFailed(SovraError):
    """The URL was acceptable but the download did not succeed (502: the upstream failed us).

    Codes: ``CONNECT_FAILED``, ``TIMEOUT``, ``HTTP_STATUS``, ``BAD_RESPONSE``, ``TOO_LARGE``.
    """

    status = 502
    title = "Image download failed"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.code = code


# --------------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportPolicy:
    """What an image import by URL may reach. The defaults follow Glance's web-download defaults.

    ``allowed_networks`` lists CIDRs an operator allows even though they are not public (an internal
    mirror, say). It cannot open the addresses in :data:`NEVER_ALLOWED` (cloud metadata services,
    "this network", multicast, broadcast): no mirror lives there.
    """

    allowed_schemes: frozenset[str] = frozenset({"https", "http"})
    allowed_ports: frozenset[int] = frozenset({80, 443})
    allowed_networks: Sequence[str] = ()
    max_redirects: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_bytes: int = 1 << 40
    allow_https_downgrade: bool = False
    networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Fail at configuration time, not at the first download, and never silently open everything."""
        schemes = frozenset(s.lower() for s in self.allowed_schemes)
        if not schemes or not schemes <= SUPPORTED_SCHEMES:
            raise ValueError(f"allowed_schemes must be a non-empty subset of {sorted(SUPPORTED_SCHEMES)}")
        object.__setattr__(self, "allowed_schemes", schemes)
        object.__setattr__(self, "allowed_ports", frozenset(self.allowed_ports))
        if not all(1 <= p <= 65535 for p in self.allowed_ports):
            raise ValueError("allowed_ports must be TCP ports (1-65535)")
        if self.max_redirects < 0 or self.max_bytes <= 0:
            raise ValueError("max_redirects must be >= 0 and max_bytes > 0")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        object.__setattr__(self, "networks", tuple(_parse_network(n) for n in self.allowed_networks))

    def allows(self, address: IPAddress) -> bool:
        """True when an operator explicitly allowed the network this address is in."""
        return any(address.version == n.version and address in n for n in self.networks)


def _parse_network(text: str) -> IPNetwork:
    """Strict CIDR (host bits must be zero: a typo should not widen the allowance)."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"allowed_networks: {text!r} is not a CIDR network ({exc})") from exc
    if network.prefixlen == 0:
        raise ValueError(f"allowed_networks: {text!r} would allow every address; list the mirror's network")
    return network


# --------------------------------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------------------------------

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

NEVER_ALLOWED: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("169.254.169.254/32"), "the cloud metadata service"),
    (_V4("169.254.170.2/32"), "the container metadata service"),
    (_V4("100.100.100.200/32"), "the cloud metadata service"),
    (_V6("fd00:ec2::254/128"), "the cloud metadata service"),
    (_V4("0.0.0.0/8"), "in 0.0.0.0/8 ('this network'; 0.0.0.0 reaches the local host)"),
    (_V4("255.255.255.255/32"), "the broadcast address"),
    (_V4("224.0.0.0/4"), "a multicast address"),
    (_V6("::/128"), "the unspecified address"),
    (_V6("ff00::/8"), "a multicast address"),
)
"""Refused even inside ``allowed_networks``."""

BLOCKED: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("127.0.0.0/8"), "a loopback address"),
    (_V4("10.0.0.0/8"), "a private address (RFC 1918)"),
    (_V4("172.16.0.0/12"), "a private address (RFC 1918)"),
    (_V4("192.168.0.0/16"), "a private address (RFC 1918)"),
    (_V4("169.254.0.0/16"), "a link-local address"),
    (_V4("100.64.0.0/10"), "a carrier-grade NAT address (RFC 6598)"),
    (_V4("192.0.0.0/24"), "an IETF protocol-assignment address"),
    (_V4("192.0.2.0/24"), "a documentation address"),
    (_V4("198.51.100.0/24"), "a documentation address"),
    (_V4("203.0.113.0/24"), "a documentation address"),
    (_V4("192.88.99.0/24"), "a 6to4 relay anycast address"),
    (_V4("198.18.0.0/15"), "a benchmarking address"),
    (_V4("240.0.0.0/4"), "a reserved address"),
    (_V6("::1/128"), "the loopback address"),
    (_V6("fc00::/7"), "a private (unique local) address"),
    (_V6("fe80::/10"), "a link-local address"),
    (_V6("fec0::/10"), "a site-local address"),
    (_V6("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_V6("100::/64"), "a discard-only address"),
    (_V6("2001::/23"), "an IETF special-purpose address (Teredo, ORCHID, ...)"),
    (_V6("2001:db8::/32"), "a documentation address"),
    (_V6("3fff::/20"), "a documentation address"),
)
"""Refused unless inside ``allowed_networks``. IPv6 outside 2000::/3 is refused as reserved too."""

_GLOBAL_UNICAST_V6 = _V6("2000::/3")
_NAT64_WELL_KNOWN = _V6("64:ff9b::/96")
_IPV4_TRANSLATED = _V6("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = _V6("::/96")


class _Verdict(NamedTuple):
    reason: str | None
    allowable: bool


def _canonical(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) *is* the IPv4 host: treat it as one."""
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or ipaddress.IPv6Address(int(address))  # drops a scope id
    return address


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a translation/tunnel prefix carries (6to4, NAT64, SIIT, IPv4-compatible)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64_WELL_KNOWN or address in _IPV4_TRANSLATED:
        return low32
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return low32
    return None


def _lookup(address: IPAddress, table: Sequence[tuple[IPNetwork, str]]) -> str | None:
    return next((why for net, why in table if net.version == address.version and address in net), None)


def _embedded_reason(address: IPAddress, judge: Callable[[ipaddress.IPv4Address], str | None]) -> str | None:
    embedded = _embedded_ipv4(address)
    why = judge(embedded) if embedded is not None else None
    return f"which embeds {embedded}, {why}" if why else None


def _never_allowed_reason(address: IPAddress) -> str | None:
    """Why no policy may open this address (metadata services, 0/8, multicast, broadcast)."""
    return _lookup(address, NEVER_ALLOWED) or _embedded_reason(address, lambda v4: _lookup(v4, NEVER_ALLOWED))


def _blocked_reason(address: IPAddress) -> str | None:
    """Why a non-public address is not fetched from by default (None for public unicast).

    An IPv6 address that carries an IPv4 address is refused when that IPv4 address would be; a
    well-known NAT64 address of a public IPv4 host is judged by that host alone.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if why := _embedded_reason(address, _blocked_reason):
            return why
        if address in _NAT64_WELL_KNOWN:
            return None
    reason = _lookup(address, BLOCKED)
    if reason is None and isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        reason = "a reserved address (outside IPv6 global unicast 2000::/3)"
    if reason is None and not address.is_global:
        reason = "not a globally routable address"
    return reason


def _verdict(address: IPAddress, policy: ImportPolicy) -> _Verdict:
    if why := _never_allowed_reason(address):
        return _Verdict(why, allowable=False)
    if policy.allows(address):
        return _Verdict(None, allowable=True)
    return _Verdict(_blocked_reason(address), allowable=True)


def check_address(address: IPAddress, policy: ImportPolicy, *, subject: str) -> IPAddress:
    """Return the address to connect to, or raise ``ADDRESS_NOT_ALLOWED``.

    ``subject`` says where the address came from, for the message ("the host 'x' resolves to").
    """
    address = _canonical(address)
    verdict = _verdict(address, policy)
    if verdict.reason is None:
        return address
    if verdict.allowable:
        advice = (
            "Image downloads only reach public addresses. If this is an internal image mirror, ask an "
            f"operator to add its network (for example {ipaddress.ip_network(address)}) to "
            "allowed_networks in the image import policy."
        )
    else:
        advice = "Image downloads can never reach it, whatever the policy; use another URL."
    raise UrlRefused("ADDRESS_NOT_ALLOWED", f"{subject} {address}, {verdict.reason}. {advice}")


# --------------------------------------------------------------------------------------------------
# URL parsing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedTarget:
    """A URL that passed every check, with the only addresses we will connect to for it."""

    url: str
    """Normalised absolute URL, without fragment; redirects are resolved against it."""
    scheme: str
    host: str
    """Lower-case ASCII name (IDNA), dotted-quad IPv4 or IPv6 without brackets or zone."""
    port: int
    target: str
    """Path and query, as sent in the request line."""
    addresses: tuple[IPAddress, ...]
    is_ip_literal: bool

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


_FORBIDDEN_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+", re.ASCII)
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII)


def system_resolver(host: str, port: int) -> list[str]:
    """Addresses from the system resolver (``getaddrinfo``), TCP only."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]


def check_url(url: str, policy: ImportPolicy, *, resolver: Resolver | None = None) -> ParsedTarget:
    """Parse ``url`` strictly and vet every address it leads to; raise :class:`UrlRefused` if not.

    Order matters for the messages only: scheme, credentials, host syntax, port, then addresses
    (an IP literal is checked without any lookup; a name is resolved and *all* its addresses must
    pass, since the resolver may hand any of them to a later connection).
    """
    parts = _split(url)
    scheme = _check_scheme(parts.scheme, policy)
    netloc = parts.netloc
    if "@" in netloc:
        raise UrlRefused(
            "CREDENTIALS_IN_URL",
            "The URL contains a user name or password (before '@'). Credentials in URLs are refused: "
            "they end up in logs and could be replayed to redirect targets. Publish the image at a URL "
            "that needs no credentials (for example a pre-signed URL).",
        )
    raw_host, port_text = _split_netloc(netloc)
    port = _check_port(port_text, scheme, policy)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    literal = _ip_literal(raw_host)
    if literal is not None:
        host, addresses = _vet_literal(raw_host, literal, policy)
    else:
        host = _normalise_hostname(raw_host)
        addresses = _resolve_and_vet(host, port, policy, resolver or system_resolver)
    netloc_out = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS[scheme]:
        netloc_out += f":{port}"
    return ParsedTarget(
        url=f"{scheme}://{netloc_out}{target}",
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        addresses=addresses,
        is_ip_literal=literal is not None,
    )


def _bad_url(detail: str) -> UrlRefused:
    return UrlRefused(
        "BAD_URL", f"{detail} Give an absolute http(s) URL such as https://mirror.example/image.qcow2."
    )


def _split(url: str) -> SplitResult:
    """``urlsplit`` silently drops tabs/newlines and trims spaces; refuse them instead."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise _bad_url(f"The URL must be a non-empty string of at most {MAX_URL_LENGTH} characters.")
    if _FORBIDDEN_URL_CHARS.search(url):
        raise _bad_url("The URL contains spaces, control characters or backslashes.")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad_url(f"The URL cannot be parsed ({exc}).") from exc
    if not parts.scheme:
        raise _bad_url("The URL has no scheme.")
    return parts


def _check_scheme(scheme: str, policy: ImportPolicy) -> str:
    scheme = scheme.lower()
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(sorted(policy.allowed_schemes))
        raise UrlRefused(
            "SCHEME_NOT_ALLOWED",
            f"The URL scheme {scheme!r} is not allowed for image downloads; use one of: {allowed}.",
        )
    return scheme


def _split_netloc(netloc: str) -> tuple[str, str | None]:
    """Split ``host[:port]`` / ``[v6]:port`` ourselves: ``urlsplit`` is lenient about both."""
    if netloc.startswith("["):
        end = netloc.find("]")
        rest = netloc[end + 1 :] if end > 0 else "x"
        if rest and not rest.startswith(":"):
            raise _bad_url("The bracketed IPv6 host is malformed.")
        return netloc[: end + 1], (rest[1:] if rest else None)
    host, colon, port = netloc.partition(":")
    if ":" in port:
        raise _bad_url("An IPv6 address in a URL must be written in brackets, e.g. http://[2001:db8::1]/.")
    if not host:
        raise _bad_url("The URL has no host.")
    return host, (port if colon else None)


def _check_port(port_text: str | None, scheme: str, policy: ImportPolicy) -> int:
    if port_text is None:
        port = DEFAULT_PORTS[scheme]
    elif not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise _bad_url(f"The port {port_text!r} is not a TCP port number.")
    else:
        port = int(port_text)
    if port not in policy.allowed_ports:
        allowed = ", ".join(str(p) for p in sorted(policy.allowed_ports))
        raise UrlRefused(
            "PORT_NOT_ALLOWED",
            f"Port {port} is not allowed for image downloads (allowed: {allowed}). Serve the image on an "
            f"allowed port, or ask an operator to add {port} to allowed_ports in the image import policy.",
        )
    return port


class _Literal(NamedTuple):
    address: IPAddress
    canonical_spelling: bool
    zone: str


def _ip_literal(raw_host: str) -> _Literal | None:
    """The IP address a host denotes if it is an address literal in any spelling, else None."""
    if raw_host.startswith("["):
        inner = raw_host[1:-1]
        text, _, zone = inner.partition("%")
        try:
            return _Literal(ipaddress.IPv6Address(text), canonical_spelling=True, zone=zone)
        except ValueError as exc:
            raise _bad_url(f"{raw_host!r} is not a valid IPv6 address.") from exc
    host = _ascii_host(raw_host)
    address = _parse_ipv4_spelling(host)
    if address is None:
        return None
    return _Literal(address, canonical_spelling=host == str(address), zone="")


def _ascii_host(raw_host: str) -> str:
    """Lower-case, IDNA-encoded, without one trailing dot.

    IDNA comes first because its NFKC mapping can *produce* an address literal (fullwidth digits
    and ideographic full stops become '127.0.0.1'); the trailing dot goes because '127.0.0.1.' is
    still 127.0.0.1 to the resolver.
    """
    host = raw_host.lower()
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _bad_url(f"The host {raw_host!r} is not a valid internationalised name.") from exc
    host = host.removesuffix(".")
    if not host or len(host) > 253:
        raise _bad_url(f"The host {raw_host!r} is empty or too long.")
    return host


def _parse_ipv4_spelling(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` as ``inet_aton`` (and the WHATWG URL standard) would, or None if it is a name.

    1 to 4 dot-separated numbers, each decimal, octal (leading 0) or hex (0x); the last one fills
    the remaining bytes: ``127.1``, ``0x7f.1``, ``2130706433``, ``017700000001`` are all 127.0.0.1.
    A host whose last label is numeric but which is not such an address is malformed, not a name.
    """
    labels = host.split(".")
    if not _NUMBER.fullmatch(labels[-1]):
        return None
    if len(labels) > 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        raise _bad_url(f"The host {host!r} looks like an IPv4 address but is not one.")
    try:
        values = [_parse_number(label) for label in labels]
    except ValueError as exc:
        raise _bad_url(f"The host {host!r} has an invalid number in it.") from exc
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise _bad_url(f"The host {host!r} is out of the IPv4 range.")
    value = last
    for index, byte in enumerate(head):
        value |= byte << (24 - 8 * index)
    return ipaddress.IPv4Address(value)


def _parse_number(label: str) -> int:
    if label.startswith("0x"):
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label.startswith("0"):
        return int(label, 8)
    return int(label)


def _vet_literal(raw_host: str, literal: _Literal, policy: ImportPolicy) -> tuple[str, tuple[IPAddress, ...]]:
    """Check an address literal; refuse odd spellings and zone ids even for allowed addresses."""
    address = check_address(literal.address, policy, subject=f"The host {raw_host!r} is the address")
    if not literal.canonical_spelling:
        raise _bad_url(
            f"The host {raw_host!r} is an unusual spelling of {literal.address}; write it as such."
        )
    if literal.zone:
        raise _bad_url(f"The host {raw_host!r} has an IPv6 zone identifier; these are not supported.")
    return str(literal.address), (address,)


def _normalise_hostname(raw_host: str) -> str:
    host = _ascii_host(raw_host)
    if not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise _bad_url(f"The host {raw_host!r} is not a valid DNS name (letters, digits, '-', '.').")
    return host


def _resolve_and_vet(host: str, port: int, policy: ImportPolicy, resolver: Resolver) -> tuple[IPAddress, ...]:
    """Resolve once and vet every answer: the caller then connects only to these addresses."""
    not_found = f"The host {host!r} could not be resolved; check the URL's host name."
    try:
        answers = list(resolver(host, port))
    except (OSError, UnicodeError) as exc:
        raise UrlRefused("HOST_NOT_FOUND", f"{not_found} ({exc})") from exc
    vetted: list[IPAddress] = []
    for answer in answers:
        try:
            address = ipaddress.ip_address(str(answer).partition("%")[0])
        except ValueError as exc:
            raise UrlRefused("HOST_NOT_FOUND", f"{not_found} (bad answer {answer!r})") from exc
        address = check_address(address, policy, subject=f"The host {host!r} resolves to")
        if address not in vetted:
            vetted.append(address)
    if not vetted:
        raise UrlRefused("HOST_NOT_FOUND", not_found)
    return tuple(vetted)


# --------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------


@dataclass
class Download:
    """An open download: iterate it (or ``chunks``) for the body, raw, at most ``max_bytes``."""

    final_url: str
    address: IPAddress
    """The vetted address the body comes from."""
    content_length: int | None
    content_type: str | None
    redirects: tuple[str, ...]
    chunks: Iterator[bytes]

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks


def fetch(
    url: str,
    policy: ImportPolicy,
    *,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Fetch:
    """Download ``url`` under ``policy``. Nothing is resolved or sent until the result is used.

    Two ways to use it: ``with fetch(url, policy) as download:`` gives a :class:`Download` (final
    URL, Content-Length, redirects) to iterate; ``for chunk in fetch(url, policy):`` gives just the
    chunks. Either way the connection is closed at the end. ``headers`` go to the first origin
    only. Raises :class:`UrlRefused` (before connecting to a refused target) or
    :class:`FetchFailed`; ``FetchFailed("TOO_LARGE")`` can also come mid-stream.
    """
    options = _Options(resolver, ssl_context or httpx.create_ssl_context(), dict(headers or {}), chunk_size)
    return Fetch(url, policy, options)


@dataclass(frozen=True)
class _Options:
    resolver: Resolver | None
    ssl_context: ssl.SSLContext
    headers: Mapping[str, str]
    chunk_size: int


class Fetch:
    """The result of :func:`fetch`: a context manager for a :class:`Download`, or an iterable of chunks."""

    def __init__(self, url: str, policy: ImportPolicy, options: _Options) -> None:
        self._url = url
        self._policy = policy
        self._options = options
        self._stack = ExitStack()

    def __enter__(self) -> Download:
        try:
            return _open_download(self._url, self._policy, self._options, self._stack)
        except BaseException:
            self._stack.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def __iter__(self) -> Iterator[bytes]:
        with self as download:
            yield from download


def _open_download(url: str, policy: ImportPolicy, options: _Options, stack: ExitStack) -> Download:
    response, address, current, redirects = _follow(url, policy, options, stack)
    length = _accept_response(response, current, policy)
    chunks = _limited_chunks(response, current.url, policy.max_bytes, options.chunk_size)
    stack.callback(chunks.close)
    return Download(
        final_url=current.url,
        address=address,
        content_length=length,
        content_type=response.headers.get("content-type"),
        redirects=tuple(redirects),
        chunks=chunks,
    )


def _follow(
    url: str, policy: ImportPolicy, options: _Options, outer: ExitStack
) -> tuple[httpx.Response, IPAddress, ParsedTarget, list[str]]:
    """Follow redirects by hand, re-running :func:`check_url` on every hop before connecting."""
    resolver = options.resolver
    current = check_url(url, policy, resolver=resolver)
    first_origin = current.origin
    extra = options.headers
    redirects: list[str] = []
    seen = {current.url}
    while True:
        hop, response, address = _open(current, extra, policy, options.ssl_context)
        try:
            location = _redirect_location(response, current)
        except BaseException:
            hop.close()
            raise
        if location is None:
            outer.enter_context(hop)
            return response, address, current, redirects
        hop.close()
        current = _next_hop(current, location, policy, resolver, redirects, seen)
        if current.origin != first_origin:
            extra = {}  # caller headers may be credentials; never show them to another origin


def _next_hop(
    current: ParsedTarget,
    location: str,
    policy: ImportPolicy,
    resolver: Resolver | None,
    redirects: list[str],
    seen: set[str],
) -> ParsedTarget:
    number = len(redirects) + 1
    if number > policy.max_redirects:
        raise UrlRefused(
            "TOO_MANY_REDIRECTS",
            f"{current.url} redirects more than {policy.max_redirects} times; give the final URL instead.",
        )
    next_url = urljoin(current.url, location)
    try:
        target = check_url(next_url, policy, resolver=resolver)
    except UrlRefused as exc:
        raise UrlRefused(exc.code, f"Redirect {number} from {current.url} was refused: {exc.detail}") from exc
    if target.url in seen:
        raise UrlRefused("REDIRECT_LOOP", f"Redirect {number} from {current.url} loops back to {target.url}.")
    if current.scheme == "https" and target.scheme == "http" and not policy.allow_https_downgrade:
        raise UrlRefused(
            "INSECURE_REDIRECT",
            f"Redirect {number} from {current.url} goes from https to plain http ({target.url}); "
            "give an https URL that stays on https.",
        )
    seen.add(target.url)
    redirects.append(target.url)
    return target


def _redirect_location(response: httpx.Response, current: ParsedTarget) -> str | None:
    if response.status_code not in REDIRECT_STATUSES:
        return None
    location = str(response.headers.get("location", ""))
    if not location:
        raise FetchFailed(
            "BAD_RESPONSE", f"{current.url} answered {response.status_code} without a Location."
        )
    return location


def _open(
    target: ParsedTarget, extra: Mapping[str, str], policy: ImportPolicy, context: ssl.SSLContext
) -> tuple[ExitStack, httpx.Response, IPAddress]:
    """Send the GET to the first vetted address that accepts a connection."""
    failure: FetchFailed | None = None
    for address in target.addresses:
        hop = ExitStack()
        try:
            response = _send(target, address, extra, policy, context, hop)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            hop.close()
            code = "TIMEOUT" if isinstance(exc, httpx.ConnectTimeout) else "CONNECT_FAILED"
            failure = FetchFailed(
                code, f"Could not connect to {target.host} at {address} port {target.port}: {exc}"
            )
            continue
        except httpx.TimeoutException as exc:
            hop.close()
            raise FetchFailed("TIMEOUT", f"{target.url} did not answer in time ({exc}).") from exc
        except httpx.HTTPError as exc:
            hop.close()
            raise FetchFailed("BAD_RESPONSE", f"{target.url} sent an invalid response ({exc}).") from exc
        except BaseException:
            hop.close()
            raise
        return hop, response, address
    if failure is None:  # check_url never returns a target without addresses
        raise RuntimeError(f"no vetted address for {target.url}")
    raise failure


def _send(
    target: ParsedTarget,
    address: IPAddress,
    extra: Mapping[str, str],
    policy: ImportPolicy,
    context: ssl.SSLContext,
    hop: ExitStack,
) -> httpx.Response:
    """One request on a fresh transport, with no ``httpx.Client`` around it.

    A client would add what we must not have here: environment proxies and ``.netrc`` (the proxy,
    not the vetted address, would receive the request), a cookie jar shared across hops, and its
    own parsing of ``Location`` (which rejects some spellings before our check can explain them).
    A fresh transport per hop also means no pooled connection is reused with another SNI.
    """
    transport = hop.enter_context(httpx.HTTPTransport(verify=context, retries=0, trust_env=False))
    headers = httpx.Headers(extra)
    headers["Host"] = target.host_header
    headers["Accept"] = "*/*"
    headers["Accept-Encoding"] = "identity"
    headers["User-Agent"] = USER_AGENT
    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    extensions: dict[str, Any] = {"timeout": timeout.as_dict()}
    if target.scheme == "https" and not target.is_ip_literal:
        extensions["sni_hostname"] = target.host
    host = f"[{address}]" if address.version == 6 else str(address)
    url = f"{target.scheme}://{host}:{target.port}{target.target}"
    request = httpx.Request("GET", url, headers=headers, extensions=extensions)
    response = transport.handle_request(request)
    response.request = request
    hop.callback(response.close)
    return response


def _accept_response(response: httpx.Response, current: ParsedTarget, policy: ImportPolicy) -> int | None:
    """Refuse what we cannot store verbatim before reading a byte of it."""
    if response.status_code != 200:
        raise FetchFailed(
            "HTTP_STATUS",
            f"{current.url} answered {response.status_code} {response.reason_phrase}; check the URL.",
        )
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchFailed("BAD_RESPONSE", f"{current.url} sent the image with Content-Encoding {encoding!r}.")
    text = response.headers.get("content-length")
    if text is None:
        return None
    if not text.isascii() or not text.isdigit():
        raise FetchFailed("BAD_RESPONSE", f"{current.url} sent an invalid Content-Length {text!r}.")
    length = int(text)
    if length > policy.max_bytes:
        raise _too_large(current.url, policy.max_bytes)
    return length


def _too_large(url: str, max_bytes: int) -> FetchFailed:
    return FetchFailed("TOO_LARGE", f"The image at {url} is larger than the limit of {max_bytes} bytes.")


def _limited_chunks(
    response: httpx.Response, url: str, max_bytes: int, chunk_size: int
) -> Generator[bytes, None, None]:
    """Raw body chunks; stop with ``TOO_LARGE`` before yielding a byte past the limit."""
    received = 0
    try:
        for chunk in response.iter_raw(chunk_size):
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(url, max_bytes)
            yield chunk
    except httpx.TimeoutException as exc:
        raise FetchFailed("TIMEOUT", f"Reading {url} timed out after {received} bytes.") from exc
    except httpx.HTTPError as exc:
        raise FetchFailed("BAD_RESPONSE", f"Reading {url} failed after {received} bytes ({exc}).") from exc
