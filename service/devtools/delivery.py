"""Delivering event batches as HubSpot does: encode, sign, POST concurrently, report.

The requests carry what HubSpot's carry (HUBSPOT.md §1, §2): a compact JSON array of events, a
v3 signature with its timestamp, and a v1 signature. Each request is signed as it leaves, so
its timestamp is fresh however long the run takes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import httpx

from service.devtools.samples import RawEvent
from service.signature import sign_v1, sign_v3

__all__ = [
    "HUBSPOT_RESPONSE_SECONDS",
    "Outcome",
    "describe_outcome",
    "encode_batch",
    "post_batches",
    "signed_headers",
    "signing_uri",
    "summarize",
]

HUBSPOT_RESPONSE_SECONDS = 5.0  # HubSpot waits 5 s for the answer, then counts a failure
USER_AGENT = "hubspot-webhooks-send/0.1"
_BODY_PREVIEW_CHARS = 1000


def encode_batch(events: Sequence[RawEvent]) -> bytes:
    """The request body: a compact JSON array with non-ASCII as `\\u` escapes.

    HubSpot's bodies carry such escapes (HUBSPOT.md §1), which catches a receiver that hashes a
    re-serialised body instead of the raw bytes.
    """
    return json.dumps(list(events), separators=(",", ":")).encode()


def signing_uri(url: str) -> str:
    """The URI that enters the v3 message: the target URL exactly as it goes on the wire."""
    # httpx normalises the URL it sends (default port dropped, spaces percent-encoded): sign
    # that form, the one the receiver rebuilds from the request line and Host header.
    return str(httpx.URL(url))


def signed_headers(*, secret: str, url: str, body: bytes, timestamp_ms: int) -> dict[str, str]:
    """The headers HubSpot puts on a webhook POST of `body` to `url`: v3 and v1 signatures."""
    timestamp = str(timestamp_ms)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", signing_uri(url), body, timestamp),
        "X-HubSpot-Request-Timestamp": timestamp,
        "X-HubSpot-Signature": sign_v1(secret, body),
        "X-HubSpot-Signature-Version": "v1",
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one request: a response, an error, or not sent at all."""

    index: int
    events: int
    status: int | None = None
    body: str = ""
    location: str | None = None
    error: str | None = None
    unreachable: bool = False
    elapsed_ms: float = 0.0
    skipped: bool = False
    reported: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


def _reported_counts(body: str) -> dict[str, int]:
    """`stored` and `duplicates` from a receiver answering like service.web.app, else nothing."""
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    counts = {k: data.get(k) for k in ("stored", "duplicates")}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts.values()):
        return {}
    return {k: int(v) for k, v in counts.items() if isinstance(v, int)}


def post_batches(
    *,
    url: str,
    secret: str,
    bodies: Sequence[tuple[bytes, int]],
    concurrency: int,
    timeout: float,
    on_outcome: Callable[[Outcome], None],
) -> list[Outcome]:
    """POST each (body, event count), signed at send time, `concurrency` at a time.

    `on_outcome` is called on this thread as each request finishes. After a connection error
    the requests not yet started are skipped: the receiver is not there.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client_timeout = httpx.Timeout(timeout, connect=min(timeout, 5.0))
    outcomes: list[Outcome] = []
    with (
        httpx.Client(
            timeout=client_timeout, limits=limits, headers={"User-Agent": USER_AGENT}
        ) as client,
        ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="send") as pool,
    ):
        poster = _Poster(client=client, url=url, secret=secret, timeout=timeout)
        futures = [
            pool.submit(poster.post, index, body, count)
            for index, (body, count) in enumerate(bodies, start=1)
        ]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                on_outcome(outcome)
        except BaseException:
            # Ctrl-C: let the requests in flight finish, start no more.
            poster.stop.set()
            for future in futures:
                future.cancel()
            raise
    return sorted(outcomes, key=lambda o: o.index)


@dataclass
class _Poster:
    """Signs and sends one request at a time; shared by the worker threads."""

    client: httpx.Client
    url: str
    secret: str
    timeout: float
    stop: threading.Event = field(default_factory=threading.Event)

    def post(self, index: int, body: bytes, events: int) -> Outcome:
        """Sign `body` now (fresh timestamp) and POST it; never raises for network errors."""
        if self.stop.is_set():
            return Outcome(index=index, events=events, skipped=True)
        headers = signed_headers(
            secret=self.secret, url=self.url, body=body, timestamp_ms=int(time.time() * 1000)
        )
        started = time.perf_counter()
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Nobody is listening: skip the requests not started yet.
            self.stop.set()
            error = f"cannot connect to {self.url}: {_describe(exc)}"
            return Outcome(index=index, events=events, error=error, unreachable=True)
        except httpx.TimeoutException:
            error = f"no response within {self.timeout:g} s"
            return Outcome(index=index, events=events, error=error)
        except httpx.HTTPError as exc:
            error = f"request failed: {_describe(exc)}"
            return Outcome(index=index, events=events, error=error)
        return Outcome(
            index=index,
            events=events,
            status=response.status_code,
            body=response.text,
            location=response.headers.get("location"),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            reported=_reported_counts(response.text),
        )


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_outcome(outcome: Outcome, total: int) -> str:
    """One line about one request: status, time and body, or the error."""
    head = f"[{outcome.index}/{total}]"
    if outcome.skipped:
        return f"{head} not sent ({outcome.events} events): the receiver could not be reached"
    if outcome.status is None:
        return f"{head} failed ({outcome.events} events): {outcome.error}"
    body = outcome.body.strip()
    if len(body) > _BODY_PREVIEW_CHARS:
        body = body[:_BODY_PREVIEW_CHARS] + "..."
    line = f"{head} {outcome.status} in {outcome.elapsed_ms:.0f} ms ({outcome.events} events)"
    line = f"{line}: {body}" if body else line
    if outcome.location is not None and 300 <= outcome.status < 400:
        line = f"{line}\n      redirected to {outcome.location}: send to that URL instead"
    if outcome.elapsed_ms > HUBSPOT_RESPONSE_SECONDS * 1000:
        line = f"{line}\n      slower than HubSpot's 5 s limit: HubSpot would retry this batch"
    return line


def summarize(outcomes: Sequence[Outcome]) -> tuple[str, int]:
    """The closing summary and the exit code: 0 only when every request was answered 2xx."""
    attempted = [o for o in outcomes if not o.skipped]
    answered = [o for o in attempted if o.ok]
    failed = [o for o in attempted if not o.ok]
    skipped = [o for o in outcomes if o.skipped]
    events = sum(o.events for o in attempted)
    parts: list[str] = []
    counted = bool(answered) and all(o.reported for o in answered)
    stored = sum(o.reported.get("stored", 0) for o in answered)
    duplicates = sum(o.reported.get("duplicates", 0) for o in answered)
    if counted:
        parts.append(
            f"stored {stored}, duplicates {duplicates}"
            + (" (already stored)" if duplicates else "")
        )
    elif answered:
        parts.append(f"{len(answered)} answered 2xx (the receiver did not report what it stored)")
    if failed:
        lost = sum(o.events for o in failed)
        parts.append(f"{len(failed)} failed ({lost} events not confirmed stored)")
    if skipped:
        parts.append(f"{len(skipped)} not sent ({sum(o.events for o in skipped)} events)")
    text = f"sent {events} events in {len(attempted)} requests: " + "; ".join(parts)
    if counted and stored == 0 and not failed and not skipped:
        text += "\nnothing new stored: the receiver already had every event"
    if any(o.unreachable for o in failed):
        text += "\nis the receiver running? Start it with `hubspot-webhooks dev`, or pass --url."
    if any(o.status == 401 for o in failed):
        text += (
            "\n401: the receiver rejected the signature. The secret must be its"
            " HUBSPOT_CLIENT_SECRET, and --url the URL it believes it is (WEBHOOK_PUBLIC_URL)."
        )
    return text, 0 if outcomes and not failed and not skipped else 1
