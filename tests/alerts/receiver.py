"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread that records every
request and answers what it is told.

    with Receiver() as receiver:
        receiver.answer(500, Answer(429, headers={"Retry-After": "5"}), 200)
        ... endpoint url = receiver.url ...
        receiver.wait_for_requests(3)

Answers are used in order, then 200. `Answer(delay=...)` holds the request before answering;
`release()` (called by `stop()`) lets held requests go at once, so nothing blocks teardown.
`Receiver(listening=False)` keeps its port closed (connections are refused) until `listen()`.
It verifies nothing: tests verify signatures with standardwebhooks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.waiting import wait_for


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to hold the request before answering


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic() when the request was read
    answered: int  # the status it was answered with (or will be, while held)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (timeout, killed worker) is part of the tests


class Receiver:
    path = "/hook"

    def __init__(self, *, listening: bool = True) -> None:
        self.requests: list[Received] = []
        self._answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # Reserve a free port: bound, never listened on, so connections to it are refused.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        if listening:
            self.listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def answer(self, *answers: Answer | int) -> None:
        """Queue the next answers (a bare int is that status with the default body)."""
        with self._lock:
            self._answers.extend(a if isinstance(a, Answer) else Answer(a) for a in answers)

    def listen(self) -> None:
        """Start answering on the reserved port."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    answer = receiver._answers.popleft() if receiver._answers else Answer()
                    receiver.requests.append(
                        Received(
                            method=self.command,
                            path=self.path,
                            headers={name.lower(): value for name, value in self.headers.items()},
                            body=body,
                            at=time.monotonic(),
                            answered=answer.status,
                        )
                    )
                if answer.delay:
                    receiver._released.wait(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST  # a followed redirect would show up as a GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", self.port), Handler)
        # A short poll interval: shutdown() waits for the serving loop to notice.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="receiver", daemon=True
        )
        self._thread.start()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Received]:
        wait_for(lambda: len(self.requests) >= count, timeout, f"{count} requests at the receiver")
        return self.received()

    def release(self) -> None:
        """Answer held requests now."""
        self._released.set()

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
