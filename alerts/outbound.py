"""The one outbound HTTP door for webhook delivery: refuses non-public addresses, connects to the
address it checked, never follows redirects, caps the body read, and bounds it all by one deadline.

Standard library only, no Django: callers pass the settings in. Hand-written because no client
library pins the checked address without a custom transport, and the pinning is the point.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_USER_AGENT = "Vigil-Webhooks/1"
DEFAULT_PORTS = {"http": 80, "https": 443}
# Framing and routing headers belong to the door: a caller's Host could point the request at
# another virtual host than the one checked, and a wrong Content-Length would desync the stream.
_DOOR_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class UnsafeURL(ValueError):
    """The URL is refused: bad scheme, no host, credentials, unresolvable, or resolves to a non-public address."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # "invalid_url", "unresolvable" or "private_address"


class SendError(Exception):
    """No HTTP response: `kind` is "unsafe", "connect", "timeout", "tls" or "protocol"; str() is a short message."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes  # at most max_body bytes
    truncated: bool
    elapsed_ms: float


def _translated_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 host that a mapped, compatible or NAT64 address stands for: packets to it go there."""
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _IPV4_COMPATIBLE or address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)]
    if address in _NAT64_LOCAL:
        # A local-use prefix may be deployed as a /96 (IPv4 in the low 32 bits) or as the /48
        # itself (RFC 6052: bits 48-63 and 72-87); we cannot know which, so both must be public.
        n = int(address)
        as_48 = ((n >> 64) & 0xFFFF) << 16 | (n >> 40) & 0xFFFF
        return [ipaddress.IPv4Address(n & 0xFFFF_FFFF), ipaddress.IPv4Address(as_48)]
    return []


def _relay_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 relays a 6to4 or Teredo address is routed through (Teredo: server and client)."""
    if address.sixtofour is not None:
        return [address.sixtofour]
    return list(address.teredo) if address.teredo is not None else []


def address_is_public(address: IPAddress) -> bool:
    """Whether a webhook may be sent to this address: globally routable and of no special purpose."""
    if isinstance(address, ipaddress.IPv6Address):
        if translated := _translated_ipv4(address):
            # These prefixes only carry the IPv4 address (Python calls them "reserved"): judge that alone.
            return all(address_is_public(inner) for inner in translated)
        if not all(address_is_public(relay) for relay in _relay_ipv4(address)):
            return False
    # is_global alone lets multicast (224/4, ff00::/8) and IPv6 site-local (fec0::/10) through.
    special = (
        address.is_multicast
        or address.is_private
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )
    return address.is_global and not special


def url_resolve(url: str, *, allow_private: bool) -> tuple[urllib.parse.SplitResult, list[str]]:
    """Validate the URL (http/https, a host, no credentials, port 1-65535) and resolve it once; return the
    parsed URL and its addresses. Every address must be public unless allow_private: a name answering
    one public and one private address is refused, since the connection may use either."""
    # Whitespace and control characters would end up in the request line or the Host header.
    if not url.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeURL("invalid_url", "the URL must be ASCII without spaces (punycode names, percent-encoded paths)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:  # bad brackets, non-numeric or out-of-range port
        raise UnsafeURL("invalid_url", f"the URL cannot be parsed: {e}") from e
    if parts.scheme not in DEFAULT_PORTS:
        raise UnsafeURL("invalid_url", f"the scheme must be http or https, not {parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise UnsafeURL("invalid_url", "the URL must not contain credentials (user:password@)")
    host = parts.hostname
    if not host:
        raise UnsafeURL("invalid_url", "the URL has no host")
    if port == 0:
        raise UnsafeURL("invalid_url", "the port must be between 1 and 65535")
    # IP literals go through getaddrinfo too: it accepts the odd spellings ("127.1", "2130706433",
    # "0x7f.1") and returns the canonical address, which is what gets judged.
    try:
        infos = socket.getaddrinfo(host, port or DEFAULT_PORTS[parts.scheme], type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise UnsafeURL("unresolvable", f"{host} does not resolve ({e})") from e
    families = (socket.AF_INET, socket.AF_INET6)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in families))
    if not addresses:
        raise UnsafeURL("unresolvable", f"{host} has no IPv4 or IPv6 address")
    if not allow_private:
        for text in addresses:
            address = ipaddress.ip_address(text)
            if not address_is_public(address):
                raise UnsafeURL("private_address", f"{host} resolves to {text}, {_describe(address)} address")
    return parts, addresses


def _describe(address: IPAddress) -> str:
    """Why an address is not public, for the error message ("a loopback", "a private", ...)."""
    inside = _translated_ipv4(address) + _relay_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else []
    for candidate in [*inside, address]:
        for flag in ("loopback", "link_local", "multicast", "unspecified", "private", "reserved", "site_local"):
            if getattr(candidate, f"is_{flag}", False):
                return ("an " if flag == "unspecified" else "a ") + flag.replace("_", "-")
    return "a non-public"


def url_check(url: str, *, allow_private: bool) -> None:
    """Refuse an unsafe webhook URL when it is saved (raises UnsafeURL); post() checks again at send time."""
    url_resolve(url, allow_private=allow_private)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("total timeout reached")
    return remaining


class _DeadlineSocket:
    """The connection's socket as http.client sees it (it calls only sendall, makefile and close), with
    one total deadline: each send and read gets the time left as its timeout. A plain socket timeout
    is per call, so a server trickling one byte at a time would never trip it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def arm(self) -> None:
        self.sock.settimeout(_remaining(self.deadline))

    def sendall(self, data: ReadableBuffer) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self))

    def close(self) -> None:
        """Nothing: http.client closes the connection as soon as the headers say `Connection: close`,
        before the body is read (a real socket outlives its makefile()); post() closes self.sock."""


class _DeadlineReader(io.RawIOBase):
    def __init__(self, owner: _DeadlineSocket) -> None:
        super().__init__()
        self.owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        self.owner.arm()
        return self.owner.sock.recv_into(buffer)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to the address checked by url_resolve, whatever `host` resolves to now.

    Resolving the name a second time would open the door to DNS rebinding: a name can answer a
    public address when checked and 127.0.0.1 or 169.254.169.254 a moment later, when connected."""

    def __init__(self, host: str, port: int, *, address: str, connect_timeout: float, deadline: float) -> None:
        super().__init__(host, port)
        self.address = address
        self.connect_timeout = connect_timeout
        self.deadline = deadline
        self.pinned: socket.socket | None = None

    def connect(self) -> None:
        timeout = min(self.connect_timeout, _remaining(self.deadline))
        sock = socket.create_connection((self.address, self.port), timeout)
        try:
            self.pinned = self._secure(sock)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(self.pinned, self.deadline)  # duck-typed: see _DeadlineSocket

    def _secure(self, sock: socket.socket) -> socket.socket:
        return sock

    def release(self) -> None:
        """Close the socket; the only place it is closed (see _DeadlineSocket.close)."""
        self.close()
        if self.pinned is not None:
            self.pinned.close()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """HTTPS to the checked address; the certificate is verified against the URL's host, not the address."""

    def _secure(self, sock: socket.socket) -> socket.socket:
        # A fresh default context: system CAs, certificate and host name verification on.
        return ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)


def _read_capped(response: http.client.HTTPResponse, max_body: int) -> tuple[bytes, bool]:
    """At most max_body bytes of the body, and whether there was more (one byte past the cap tells)."""
    body = bytearray()
    while len(body) <= max_body:
        chunk = response.read(min(65_536, max_body + 1 - len(body)))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:max_body]), True


def post(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    connect_timeout: float,
    total_timeout: float,
    max_body: int,
    allow_private: bool,
) -> Response:
    """POST `body` to the URL, checked again now and pinned to the checked address; a 3xx is returned,
    never followed; the body is read up to max_body bytes. total_timeout bounds connect, send and the
    whole response. Raises SendError for everything that is not an HTTP response."""
    started = time.monotonic()
    deadline = started + total_timeout
    try:
        parts, addresses = url_resolve(url, allow_private=allow_private)
    except UnsafeURL as e:
        raise SendError("connect" if e.code == "unresolvable" else "unsafe", str(e)) from e
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{parts.port}"
    request_headers = {name: value for name, value in headers.items() if name.lower() not in _DOOR_HEADERS}
    if not any(name.lower() == "user-agent" for name in request_headers):
        request_headers["User-Agent"] = DEFAULT_USER_AGENT
    request_headers |= {"Host": host_header, "Content-Length": str(len(body)), "Connection": "close"}
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection

    try:
        conn = _connect_first(connection_class, host, port, addresses, connect_timeout, deadline)
        try:
            conn.request("POST", target, body=body, headers=request_headers)
            with conn.getresponse() as response:
                data, truncated = _read_capped(response, max_body)
                status, received = response.status, response.getheaders()
        finally:
            conn.release()
    except TimeoutError as e:
        raise SendError("timeout", f"no complete response from {host} within {total_timeout:g}s") from e
    except ssl.SSLError as e:  # before OSError, its base class
        raise SendError("tls", f"TLS with {host} failed: {getattr(e, 'verify_message', None) or e.reason}") from e
    except http.client.HTTPException as e:  # before OSError: RemoteDisconnected is both
        raise SendError("protocol", f"{host} did not answer valid HTTP: {e!r}") from e
    except OSError as e:
        raise SendError("connect", f"connection to {host} failed: {e.strerror or e}") from e
    except ValueError as e:  # a header http.client refuses (newline, non-Latin-1); nothing was sent
        raise SendError("protocol", f"the request cannot be sent: {e}") from e

    response_headers: dict[str, str] = {}
    for name, value in received:
        key = name.lower()
        response_headers[key] = f"{response_headers[key]}, {value}" if key in response_headers else value
    elapsed_ms = (time.monotonic() - started) * 1000
    return Response(status=status, headers=response_headers, body=data, truncated=truncated, elapsed_ms=elapsed_ms)


def _connect_first(
    connection_class: type[_PinnedHTTPConnection],
    host: str,
    port: int,
    addresses: list[str],
    connect_timeout: float,
    deadline: float,
) -> _PinnedHTTPConnection:
    """A connection to the first checked address that accepts one, in resolver order."""
    error: OSError = OSError(f"no address for {host}")
    for address in addresses:
        conn = connection_class(host, port, address=address, connect_timeout=connect_timeout, deadline=deadline)
        try:
            conn.connect()
            return conn
        except ssl.SSLError:
            raise  # the same certificate would be presented by the next address
        except OSError as e:
            error = e
    raise error
