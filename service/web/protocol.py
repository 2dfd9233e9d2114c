"""uvicorn's httptools protocol with read deadlines and a connection cap, for slow clients.

uvicorn times out idle keep-alive connections but nothing else: a client that sends half its
headers, or its headers and then a body a byte at a time, holds a socket (a file descriptor)
for as long as it likes, and the webhook reads the body before the signature can be checked, so
no secret is needed to do it (issue 10, finding 3). This protocol adds, per connection:

- a header deadline (HTTP_HEADER_TIMEOUT): from the moment a connection is accepted, or a new
  request on a kept-alive connection begins, its request line and headers must be complete in
  time; a connection that sent nothing is closed, one that sent part of a request is answered
  408 first;
- a body deadline (HTTP_BODY_TIMEOUT): from the end of the headers the whole body must arrive in
  time (trickling does not extend it); otherwise 408 with the service's JSON error body, and
  the connection is closed;
- a cap on open connections (MAX_CONNECTIONS, service.web.server derives it from the open-files
  limit): a connection beyond it closes the connection that has waited longest on its client
  (not yet sent a complete request, or idle between requests), so stalled clients cannot lock
  legitimate ones out; when every connection has a request in progress, the new one is answered
  503 and closed at once, before it costs more than its accept.

Requests in progress (body received, the app working) are never cut: their time is bounded by
the request deadline (REQUEST_DEADLINE), not here. Every connection closed here is counted and
logged at most every LOG_EVERY_SECONDS as one `slow_clients_closed` line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, OrderedDict
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

LOG_EVERY_SECONDS = 10.0
RETRY_AFTER_SECONDS = 10


class BoundedHttpProtocol(HttpToolsProtocol):
    """One HTTP/1.1 connection with header and body deadlines, under the connection cap.

    Use `bounded_protocol` to make a subclass with the limits set: uvicorn builds one instance
    per connection, and the waiting list is shared by the connections of one server."""

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024
    # Connections waiting on their client, longest waiting first: fresh, idle between requests,
    # or part-way through a request's headers or body. These are the ones the cap may close.
    waiting: ClassVar[OrderedDict[BoundedHttpProtocol, None]] = OrderedDict()
    closed: ClassVar[Counter[str]] = Counter()
    logged_at: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers" or "body" while a request arrives
        self._refused = False

    # --- the connection -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept under the cap (closing the longest-waiting connection to make room, or
        refusing this one with 503), then start the header deadline."""
        if len(self.connections) >= self.max_connections and not self._make_room():
            self._refused = True
            transport.write(_answer(503, "too_many_connections", "the server is at capacity"))
            transport.close()
            self._count("refused_at_capacity")
            return
        super().connection_made(transport)
        self._wait(self.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection; a refused one was never set up."""
        self._stop_waiting()
        if not self._refused:
            super().connection_lost(exc)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest on its client; False if none waits."""
        if not self.waiting:
            return False
        oldest, _ = self.waiting.popitem(last=False)
        oldest._give_up("closed_at_capacity")
        # It leaves uvicorn's set now, not when its close completes: the count is what matters.
        self.connections.discard(oldest)
        return True

    # --- the parser's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts arriving (a pipelined one gets its own header deadline here)."""
        super().on_message_begin()
        self._phase = "headers"
        if self._deadline is None:
            self._wait(self.header_timeout, "header_timeout")

    def on_headers_complete(self) -> None:
        """Headers in: the body's deadline starts (a request without a body ends at once)."""
        super().on_headers_complete()
        self._phase = "body"
        self._wait(self.body_timeout, "body_timeout")

    def on_message_complete(self) -> None:
        """The whole request is in: the app has it, and no deadline of ours applies."""
        super().on_message_complete()
        self._phase = None
        self._stop_waiting()

    def on_response_complete(self) -> None:
        """Answered and idle: uvicorn's keep-alive timeout closes the connection if no request
        comes, but any byte cancels that timer (a stray CRLF too), so the next request's
        headers are due within the keep-alive timeout plus the header timeout."""
        super().on_response_complete()
        if self._phase is None and self.timeout_keep_alive_task is not None:
            self._wait(self.timeout_keep_alive + self.header_timeout, "header_timeout")

    # --- deadlines ----------------------------------------------------------------------------

    def _wait(self, seconds: float, why: str) -> None:
        """Wait on the client for at most `seconds`; then give up on it for `why`."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._give_up, why)
        self.waiting[self] = None

    def _stop_waiting(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.waiting.pop(self, None)

    def _give_up(self, why: str) -> None:
        """Close this connection; answer 408 first if part of a request came and nothing has
        been answered to it."""
        self._stop_waiting()
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the current request's once its headers are in, else the last one
        if self._phase == "headers":
            answer = cycle is None or cycle.response_complete
        else:
            answer = self._phase == "body" and cycle is not None and not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app may be waiting for the rest of the body: it gets a disconnect, and what
            # it answers after this is dropped (uvicorn writes nothing on a disconnected cycle).
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            self.transport.write(_answer(408, "request_timeout", self._reason(why)))
        self.transport.close()
        self._count(why)

    def _reason(self, why: str) -> str:
        if why == "closed_at_capacity":
            return "the server is at capacity and this request was the slowest to arrive"
        if self._phase == "headers":
            return f"the request headers did not arrive within {self.header_timeout:g} s"
        return f"the request body did not arrive within {self.body_timeout:g} s"

    def _count(self, why: str) -> None:
        """Count a connection closed here; log the counts at most every LOG_EVERY_SECONDS."""
        counts = type(self).closed
        counts[why] += 1
        now = time.monotonic()
        if now - type(self).logged_at >= LOG_EVERY_SECONDS:
            type(self).logged_at = now
            log.warning(
                "slow_clients_closed",
                extra={"counts": dict(counts), "open_connections": len(self.connections)},
            )
            counts.clear()


def bounded_protocol(
    *, header_timeout: float, body_timeout: float, max_connections: int
) -> type[BoundedHttpProtocol]:
    """A protocol class for one server (uvicorn's `http=`), with these limits."""
    return type(
        "ServiceHttpProtocol",
        (BoundedHttpProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
            "waiting": OrderedDict(),
            "closed": Counter(),
            "logged_at": 0.0,
        },
    )


def _answer(status: int, error: str, reason: str) -> bytes:
    """A whole HTTP/1.1 answer with the service's JSON error body, closing the connection."""
    body = json.dumps({"error": error, "reason": reason}).encode()
    phrase = {408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = [
        f"HTTP/1.1 {status} {phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if status == 503:
        head.append(f"retry-after: {RETRY_AFTER_SECONDS}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
