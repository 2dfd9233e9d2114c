"""Small local HTTP servers: `Receiver` stands in for Slack or a customer's webhook endpoint (the
targets of actions); `WebhookEndpoint` stands in for our own webhook endpoint (the target of
`hubspot-webhooks send`).

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
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self, cast

from service import inbox
from service.signature import InvalidSignature, verify_request
from tests.factories import CLIENT_SECRET


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


# --- a stand-in for our own webhook endpoint -------------------------------------------------


@dataclass(frozen=True)
class EndpointRequest:
    """One request as it arrived at the endpoint, on the wire."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def events(self) -> list[dict[str, Any]]:
        """The JSON array in the body."""
        data = json.loads(self.body)
        assert isinstance(data, list)
        return data


@dataclass
class WebhookEndpoint:
    """A stand-in for the service's webhook endpoint (service.web.webhook), without a database:
    records requests, verifies the v3 signature, stores each event once, answers counts."""

    secret: str = CLIENT_SECRET
    status: int = 200
    delay: float = 0.0
    port: int = 0
    requests: list[EndpointRequest] = field(default_factory=list)
    stored: set[tuple[Any, ...]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The webhook URL of this endpoint."""
        return f"http://127.0.0.1:{self.port}/webhooks/hubspot"

    def events(self) -> list[dict[str, Any]]:
        """Every event received, in arrival order, duplicates included."""
        with self.lock:
            return [e for r in self.requests for e in r.events()]

    def handle(self, received: EndpointRequest) -> tuple[int, dict[str, Any]]:
        """The answer service.web.webhook would give."""
        with self.lock:
            self.requests.append(received)
        time.sleep(self.delay)
        if self.status != 200:
            return self.status, {"error": "unavailable"}
        try:
            verify_request(
                headers=received.headers,
                secrets=(self.secret,),
                method=received.method,
                uri=f"http://{received.headers['host']}{received.target}",
                body=received.body,
                now_ms=int(time.time() * 1000),
                tolerance_ms=300_000,
                accept_legacy=False,
            )
        except InvalidSignature as exc:
            return 401, {"error": "unauthorized", "reason": exc.reason}
        events = inbox.parse_batch(received.body).events
        with self.lock:
            keys = [_event_key(e) for e in events]
            new = {k for k in keys if k not in self.stored}
            self.stored |= new
        return 200, {
            "received": len(events),
            "stored": len(new),
            "duplicates": len(events) - len(new),
        }


def _event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    object_id = event.get("objectId", event.get("fromObjectId"))
    return (
        event["portalId"],
        event.get("subscriptionId"),
        event["eventId"],
        object_id,
        event["occurredAt"],
    )


class _EndpointServer(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: WebhookEndpoint


class _EndpointHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        endpoint = cast(_EndpointServer, self.server).endpoint
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = endpoint.handle(EndpointRequest(self.command, self.path, headers, body))
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


@contextmanager
def webhook_endpoint() -> Iterator[WebhookEndpoint]:
    """A running WebhookEndpoint on a free port of 127.0.0.1, shut down on exit."""
    state = WebhookEndpoint()
    server = _EndpointServer(("127.0.0.1", 0), _EndpointHandler)
    server.endpoint = state
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
