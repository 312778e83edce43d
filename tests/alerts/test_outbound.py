"""The outbound HTTP door (alerts/outbound.py) against a real local HTTP(S) server: which
addresses are refused, that the checked address is the one connected to, that redirects are
returned and not followed, that the body read is capped, and that one deadline bounds it all.

The server listens on 127.0.0.1, so posts that should reach it pass allow_private=True; the
resolver is faked (socket.getaddrinfo, the one lookup the door makes) to give names to it.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from alerts import outbound
from alerts.outbound import Response, SendError, UnsafeURL, address_is_public, post, url_check, url_resolve
from tests.waiting import wait_for

Behaviour = Callable[["_Handler"], None]
Serve = Callable[..., "_Server"]
Resolve = Callable[[dict[str, list[list[str]]]], "FakeResolver"]


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        """The value of a header sent exactly once."""
        (value,) = [v for n, v in self.headers if n.lower() == name.lower()]
        return value


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping or trickling never holds up server_close()

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        self.received: list[Received] = []
        self.connections = 0
        self.stop = threading.Event()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the client hanging up on a 10 MB body or a trickle is what the tests do."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(Received(self.command, self.path, list(self.headers.items()), body))
        self.server.behaviour(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


def reply(status: int = 200, headers: dict[str, str] | None = None, body: bytes = b"") -> Behaviour:
    def behaviour(handler: _Handler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return behaviour


def slow(handler: _Handler) -> None:
    """Answers after 5 s, or when the test ends."""
    handler.server.stop.wait(5)
    reply()(handler)


def trickle(where: str) -> Behaviour:
    """One byte every 0.1 s of the headers or the body, for 3 s, then the rest of a valid response: a
    per-read timeout longer than 0.1 s would never fire, and the post would end with a 200."""

    def behaviour(handler: _Handler) -> None:
        write = handler.wfile.write
        write(
            b"HTTP/1.0 200 OK\r\nX-Slow: " if where == "headers" else b"HTTP/1.0 200 OK\r\nContent-Length: 30\r\n\r\n"
        )
        for _ in range(30):
            write(b"x")
            if handler.server.stop.wait(0.1):
                return
        if where == "headers":
            write(b"\r\nContent-Length: 0\r\n\r\n")

    return behaviour


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a local server in a thread; stopped (and its sleeping handlers woken) at teardown."""
    started: list[tuple[_Server, threading.Thread]] = []

    def start(behaviour: Behaviour | None = None, tls: ssl.SSLContext | None = None) -> _Server:
        server = _Server(behaviour or reply())
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FakeResolver:
    """socket.getaddrinfo answering given names with successive lists of addresses (the last one
    repeats); other names go to the real resolver. Records every name asked."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.real = socket.getaddrinfo

    def names_resolved(self) -> list[str]:
        """The calls that were not IP literals (socket.create_connection passes its literal through
        getaddrinfo too, a numeric conversion that no DNS answer can change)."""
        return [host for host in self.calls if not _is_ip_literal(host)]

    def __call__(self, host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        self.calls.append(host)
        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        queue = self.answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        infos: list[tuple[Any, ...]] = []
        for address in addresses:
            if ":" in address:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@pytest.fixture
def resolve(monkeypatch: pytest.MonkeyPatch) -> Resolve:
    def install(answers: dict[str, list[list[str]]]) -> FakeResolver:
        resolver = FakeResolver(answers)
        monkeypatch.setattr(outbound.socket, "getaddrinfo", resolver)
        return resolver

    return install


def send(url: str, *, body: bytes = b"{}", headers: dict[str, str] | None = None, **options: Any) -> Response:
    settings: dict[str, Any] = {"connect_timeout": 2.0, "total_timeout": 5.0, "max_body": 65_536, "allow_private": True}
    return post(url, body=body, headers=headers or {}, **(settings | options))


# --- which addresses are public ---------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "255.255.255.255", "224.0.0.1", "198.18.0.1", "192.0.2.1", "240.0.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1", "ff0e::1", "fec0::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::a00:1",
    "64:ff9b:1::a00:1", "2002:7f00:1::", "2002:a00:1::", "2001:0:4136:e378:8000:63bf:3fff:fdd2",
]  # fmt: skip
ACCEPTED = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"]


@pytest.mark.parametrize("text", REFUSED)
def test_special_purpose_and_wrapped_private_addresses_are_not_public(text: str) -> None:
    assert address_is_public(ipaddress.ip_address(text)) is False


@pytest.mark.parametrize("text", ACCEPTED)
def test_global_addresses_and_their_ipv6_wrappings_are_public(text: str) -> None:
    assert address_is_public(ipaddress.ip_address(text)) is True


# --- url_check at save time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://example.com/hook", "invalid_url"),
        ("file:///etc/passwd", "invalid_url"),
        ("http://user:pw@example.com/", "invalid_url"),
        ("http:///nohost", "invalid_url"),
        ("http://example.com:0/", "invalid_url"),
        ("http://example.com:65536/", "invalid_url"),
        ("http://exa mple.com/", "invalid_url"),
        ("http://example.com/a\r\nX-Injected: 1", "invalid_url"),
        ("http://localhost/", "private_address"),
        ("http://127.1/", "private_address"),
        ("http://2130706433/", "private_address"),
        ("http://0x7f000001/", "private_address"),
        ("http://0x7f.1/", "private_address"),
        ("http://169.254.169.254/latest/meta-data/", "private_address"),
        ("http://[::1]/", "private_address"),
        ("http://[::ffff:127.0.0.1]/", "private_address"),
        ("http://[64:ff9b::7f00:1]:8080/", "private_address"),
    ],
)
def test_unsafe_urls_are_refused_with_a_code(url: str, code: str) -> None:
    with pytest.raises(UnsafeURL) as refused:
        url_check(url, allow_private=False)
    assert refused.value.code == code


def test_the_message_names_the_host_and_the_address() -> None:
    with pytest.raises(UnsafeURL, match=r"^127\.1 resolves to 127\.0\.0\.1, a loopback address$"):
        url_check("http://127.1/", allow_private=False)


@pytest.mark.parametrize("order", [["8.8.8.8", "10.0.0.1"], ["10.0.0.1", "8.8.8.8"]])
def test_a_name_with_one_private_address_among_public_ones_is_refused(resolve: Resolve, order: list[str]) -> None:
    resolve({"webhook.example": [order]})
    with pytest.raises(UnsafeURL, match=r"webhook\.example resolves to 10\.0\.0\.1, a private address") as refused:
        url_check("https://webhook.example/in", allow_private=False)
    assert refused.value.code == "private_address"


def test_an_unresolvable_name_is_refused_as_unresolvable() -> None:
    with pytest.raises(UnsafeURL) as refused:
        url_check("https://no-such-host.invalid/hook", allow_private=False)
    assert refused.value.code == "unresolvable"


def test_allow_private_accepts_a_local_address_but_still_checks_the_url() -> None:
    url_check("http://127.0.0.1:8080/hook", allow_private=True)
    parts, addresses = url_resolve("http://127.0.0.1:8080/hook", allow_private=True)
    assert (parts.hostname, parts.port, addresses) == ("127.0.0.1", 8080, ["127.0.0.1"])
    with pytest.raises(UnsafeURL):
        url_check("http://user:pw@127.0.0.1:8080/hook", allow_private=True)


def test_url_resolve_returns_every_address_in_resolver_order(resolve: Resolve) -> None:
    resolve({"webhook.example": [["8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"]]})
    _, addresses = url_resolve("https://webhook.example/in", allow_private=False)
    assert addresses == ["8.8.8.8", "2606:4700:4700::1111"]


# --- post against a real server ---------------------------------------------------------------


def test_body_and_headers_arrive_exactly_and_the_response_comes_back(serve: Serve) -> None:
    server = serve(reply(202, {"X-Request-Id": "abc", "Set-Cookie": "a=1"}, b"accepted"))
    body = b'{"event":"anomaly.opened","value":1.5}\n\x00\xff'
    headers = {"Content-Type": "application/json", "Webhook-Id": "msg_1", "Webhook-Signature": "v1,c2ln"}

    response = send(f"http://127.0.0.1:{server.port}/hooks/in?tenant=7", body=body, headers=headers)

    (request,) = server.received
    assert (request.method, request.path, request.body) == ("POST", "/hooks/in?tenant=7", body)
    for name, value in headers.items():
        assert request.header(name) == value
    assert request.header("Host") == f"127.0.0.1:{server.port}"
    assert request.header("Content-Length") == str(len(body))
    assert request.header("User-Agent") == "Vigil-Webhooks/1"
    assert (response.status, response.body, response.truncated) == (202, b"accepted", False)
    assert response.headers["x-request-id"] == "abc"
    assert response.headers["set-cookie"] == "a=1"
    assert response.elapsed_ms > 0


def test_the_callers_user_agent_is_kept_and_its_host_header_is_not(serve: Serve) -> None:
    server = serve()
    send(f"http://127.0.0.1:{server.port}/", headers={"user-agent": "Custom/2", "Host": "internal.example"})
    (request,) = server.received
    assert request.header("User-Agent") == "Custom/2"
    assert request.header("Host") == f"127.0.0.1:{server.port}"


def test_a_redirect_is_returned_and_its_target_never_requested(serve: Serve) -> None:
    server = serve(reply(302, {"Location": "/metadata"}))
    response = send(f"http://127.0.0.1:{server.port}/hook")
    assert response.status == 302
    assert response.headers["location"] == "/metadata"
    assert [request.path for request in server.received] == ["/hook"]


def test_a_huge_body_is_read_only_up_to_max_body(serve: Serve) -> None:
    payload = bytes(range(256)) * 40_960  # 10 MiB
    server = serve(reply(200, body=payload))
    response = send(f"http://127.0.0.1:{server.port}/", max_body=1000)
    assert (response.status, response.truncated, response.body) == (200, True, payload[:1000])


def test_a_body_of_exactly_max_body_is_not_truncated(serve: Serve) -> None:
    server = serve(reply(200, body=b"x" * 1000))
    response = send(f"http://127.0.0.1:{server.port}/", max_body=1000)
    assert (response.body, response.truncated) == (b"x" * 1000, False)


def test_a_server_slower_than_the_total_timeout_is_a_timeout(serve: Serve) -> None:
    server = serve(slow)
    with pytest.raises(SendError) as failed:
        send(f"http://127.0.0.1:{server.port}/", total_timeout=0.3)
    assert failed.value.kind == "timeout"
    wait_for(lambda: server.received, timeout=5, what="the request to reach the server")


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_trickling_server_is_cut_at_the_total_timeout_not_per_read(serve: Serve, where: str) -> None:
    server = serve(trickle(where))
    with pytest.raises(SendError) as failed:
        send(f"http://127.0.0.1:{server.port}/", total_timeout=0.5)
    assert failed.value.kind == "timeout"


def test_a_closed_port_is_a_connect_error() -> None:
    with socket.socket() as bound:  # bound but not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with pytest.raises(SendError) as failed:
            send(f"http://127.0.0.1:{port}/")
    assert failed.value.kind == "connect"


def test_an_unresolvable_name_at_send_time_is_a_connect_error() -> None:
    with pytest.raises(SendError) as failed:
        send("https://no-such-host.invalid/hook")
    assert failed.value.kind == "connect"


def test_a_private_address_at_send_time_is_refused_before_connecting(serve: Serve) -> None:
    server = serve()
    with pytest.raises(SendError, match=r"^127\.0\.0\.1 resolves to 127\.0\.0\.1, a loopback address$") as failed:
        send(f"http://127.0.0.1:{server.port}/", allow_private=False)
    assert failed.value.kind == "unsafe"
    assert server.connections == 0


# --- the checked address is the one connected to ----------------------------------------------


def test_a_name_is_resolved_once_and_its_address_used_with_the_original_host(serve: Serve, resolve: Resolve) -> None:
    server = serve()
    resolver = resolve({"hooks.example.test": [["127.0.0.1"]]})
    response = send(f"http://hooks.example.test:{server.port}/in")
    assert response.status == 200
    assert server.received[0].header("Host") == f"hooks.example.test:{server.port}"
    assert resolver.names_resolved() == ["hooks.example.test"]


def test_a_rebinding_name_cannot_swap_in_a_private_address_after_the_check(
    serve: Serve, resolve: Resolve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    resolver = resolve({"hooks.example.test": [["8.8.8.8"], ["127.0.0.1"]]})  # public when checked, then local
    connected: list[tuple[str, int]] = []

    def create_connection(address: tuple[str, int], timeout: float) -> socket.socket:
        connected.append(address)
        raise ConnectionRefusedError  # stands in for 8.8.8.8, which this test must not really reach

    monkeypatch.setattr(outbound.socket, "create_connection", create_connection)
    with pytest.raises(SendError) as failed:
        send(f"http://hooks.example.test:{server.port}/", allow_private=False)
    assert failed.value.kind == "connect"
    assert resolver.names_resolved() == ["hooks.example.test"]
    assert connected == [("8.8.8.8", server.port)]
    assert server.connections == 0


def test_the_checked_addresses_are_tried_in_order_until_one_connects(serve: Serve, resolve: Resolve) -> None:
    server = serve()
    resolve({"hooks.example.test": [["127.0.0.2", "127.0.0.1"]]})  # nothing listens on 127.0.0.2
    assert send(f"http://hooks.example.test:{server.port}/").status == 200
    assert server.connections == 1


# --- HTTPS ------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(serve: Serve, certificate: tuple[Path, Path]) -> _Server:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server: _Server = serve(tls=context)
    return server


@pytest.fixture
def trust(monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]) -> None:
    """Make the test certificate a trusted CA, as if it were in the system store."""
    default = ssl.create_default_context
    monkeypatch.setattr(outbound.ssl, "create_default_context", lambda: default(cafile=str(certificate[0])))


def test_an_untrusted_certificate_is_a_tls_error(tls_server: _Server) -> None:
    with pytest.raises(SendError, match="self-signed certificate") as failed:
        send(f"https://127.0.0.1:{tls_server.port}/")
    assert failed.value.kind == "tls"
    assert tls_server.received == []


def test_a_trusted_certificate_for_the_urls_host_is_accepted(tls_server: _Server, trust: None) -> None:
    response = send(f"https://localhost:{tls_server.port}/hook", body=b"signed")
    assert response.status == 200
    (request,) = tls_server.received
    assert (request.body, request.header("Host")) == (b"signed", f"localhost:{tls_server.port}")


def test_the_certificate_is_checked_against_the_urls_host_not_the_pinned_address(
    tls_server: _Server, trust: None, resolve: Resolve
) -> None:
    resolve({"hooks.example.test": [["127.0.0.1"]]})
    with pytest.raises(
        SendError, match=r"Hostname mismatch, certificate is not valid for 'hooks\.example\.test'"
    ) as failed:
        send(f"https://hooks.example.test:{tls_server.port}/")
    assert failed.value.kind == "tls"
    assert tls_server.received == []
