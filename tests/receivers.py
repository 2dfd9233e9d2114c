"""A small local HTTP receiver standing in for Slack or for a customer's webhook endpoint.

    with Receiver() as slack:
        slack.fail_next(1, 400, body=b"invalid_blocks")
        ...  # POST to slack.url_for("/services/T000/B000/XXXX")
        assert slack.count() == 1
        assert slack.requests[0].json() == {"text": "hi"}

It answers 200 `ok` (as Slack does) unless told otherwise: `fail_next(n, status)`,
`always_fail(status)`, `drop_next(n)` (close the connection without answering) and
`latency(seconds)`. Every request is recorded, with what it was answered (0: dropped).
The server runs in its own threads on 127.0.0.1; every method is safe from the test's thread.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self


@dataclass(frozen=True, slots=True)
class Received:
    """One request the receiver got, and the status it answered (0: connection dropped)."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(slots=True)
class _Fault:
    kind: Literal["fail", "drop"]
    remaining: int  # -1: forever
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping in `latency` must not hold up stop()
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        receiver = self.server.receiver
        delay, fault = receiver._next_answer()
        extra: dict[str, str] = {}
        if fault is None:
            status, answer = receiver.status, receiver.body
        elif fault.kind == "drop":
            status, answer = 0, b""
        else:
            status, answer, extra = fault.status, fault.body, fault.headers
        # Recorded on arrival: a client that gives up during `latency` still shows up.
        receiver._record(Received(self.command, self.path, headers, body, status))
        if (delay > 0 and receiver._stopping.wait(delay)) or status == 0:
            self.close_connection = True
            return
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(answer)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer)
        except OSError:  # the client hung up while we waited: nobody to answer
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the tests read `requests`, not stderr."""


class Receiver:
    """An HTTP server on a free port of 127.0.0.1 that records requests and fails on demand."""

    def __init__(self, *, status: int = 200, body: bytes = b"ok") -> None:
        self.status = status
        self.body = body
        self.url = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: list[Received] = []
        self._faults: list[_Fault] = []
        self._latency = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve in a background thread; `url` is set on return."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="receiver", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop serving; requests still waiting out their latency are cut off."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def url_for(self, path: str = "/") -> str:
        """An absolute URL on this receiver."""
        return self.url + (path if path.startswith("/") else f"/{path}")

    # --- switches --------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next `n` requests with `status` (and `body`, `headers`)."""
        with self._lock:
            self._faults.append(_Fault("fail", n, status, body, dict(headers or {})))

    def always_fail(
        self, status: int = 500, *, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer every request with `status` until `reset()`."""
        with self._lock:
            self._faults.append(_Fault("fail", -1, status, body, dict(headers or {})))

    def drop_next(self, n: int = 1) -> None:
        """Close the connection of the next `n` requests without answering."""
        with self._lock:
            self._faults.append(_Fault("drop", n))

    def latency(self, seconds: float) -> None:
        """Wait `seconds` before answering each request; 0 turns it off."""
        with self._lock:
            self._latency = seconds

    def reset(self) -> None:
        """Forget faults, latency and recorded requests."""
        with self._lock:
            self._faults.clear()
            self._latency = 0.0
            self._requests.clear()

    # --- what happened ---------------------------------------------------------------------

    @property
    def requests(self) -> list[Received]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, path: str | None = None, *, status: int | None = None) -> int:
        """How many requests came (to `path`, answered with `status`, when given)."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (status is None or r.status == status)
        )

    # --- for the handler -------------------------------------------------------------------

    def _next_answer(self) -> tuple[float, _Fault | None]:
        with self._lock:
            fault: _Fault | None = None
            for candidate in self._faults:
                if candidate.remaining != 0:
                    fault = candidate
                    if candidate.remaining > 0:
                        candidate.remaining -= 1
                    break
            return self._latency, fault

    def _record(self, received: Received) -> None:
        with self._lock:
            self._requests.append(received)


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"
