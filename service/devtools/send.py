"""`hubspot-webhooks send`: sign and POST HubSpot-shaped webhook batches to a receiver.

For local and ngrok testing, and for checking a deployment. The requests carry what HubSpot's
carry (HUBSPOT.md §1, §2): a compact JSON array of events, a v3 signature with its timestamp,
and a v1 signature, so a receiver cannot tell them from HubSpot's own.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from service.settings import Settings, SettingsError
from service.signature import sign_v1, sign_v3

__all__ = [
    "Outcome",
    "SampleSpec",
    "SendError",
    "add_arguments",
    "build_event",
    "build_events",
    "describe_outcome",
    "encode_batch",
    "load_events",
    "post_batches",
    "run",
    "save_events",
    "send",
    "signed_headers",
    "signing_uri",
    "summarize",
    "with_duplicates",
]

Event = dict[str, Any]

WEBHOOK_PATH = "/webhooks/hubspot"  # the route in service.web.app
MAX_BATCH = 100  # HubSpot sends at most 100 events per request (HUBSPOT.md §3)
HUBSPOT_RESPONSE_SECONDS = 5.0  # HubSpot waits 5 s for the answer, then counts a failure
DEFAULT_PORTAL_ID = 62515  # the portal of HubSpot's documentation samples
DEFAULT_APP_ID = 54321
DEFAULT_CHANGE_SOURCE = "CRM_UI"
USER_AGENT = "hubspot-webhooks-send/0.1"

# The built-in samples named in --help; any other <object>.<kind> works too.
SAMPLE_TYPES = (
    "contact.creation",
    "contact.propertyChange",
    "contact.deletion",
    "contact.restore",
    "contact.merge",
    "contact.associationChange",
    "contact.privacyDeletion",
    "company.creation",
    "company.propertyChange",
    "deal.creation",
    "deal.propertyChange",
    "ticket.creation",
    "conversation.newMessage",
    "object.creation",
    "object.propertyChange",
    "object.associationChange",
)

# Generic (object.*) events name their object type by id (HUBSPOT.md §2).
OBJECT_TYPE_IDS: Mapping[str, str] = {
    "contact": "0-1",
    "company": "0-2",
    "deal": "0-3",
    "ticket": "0-5",
    "product": "0-7",
    "line_item": "0-8",
}
_OBJECT_NAMES = {type_id: name for name, type_id in OBJECT_TYPE_IDS.items()}

# What a propertyChange sample changes when --property/--value are not given.
DEFAULT_PROPERTIES: Mapping[str, tuple[str, str]] = {
    "contact": ("lifecyclestage", "customer"),
    "company": ("lifecyclestage", "customer"),
    "deal": ("dealstage", "closedwon"),
    "ticket": ("hs_pipeline_stage", "4"),  # "Closed" in the default ticket pipeline
    "product": ("price", "100"),
    "line_item": ("quantity", "2"),
    "conversation": ("status", "CLOSED"),
}
_FALLBACK_PROPERTY = ("name", "Example")

# The other end of a sample classic association (associationType FROM_TO_TO).
_ASSOCIATION_PARTNERS: Mapping[str, str] = {
    "contact": "company",
    "company": "contact",
    "deal": "contact",
    "ticket": "contact",
    "line_item": "deal",
    "product": "deal",
}
# The other end of a sample generic association: (toObjectTypeId, category, associationTypeId),
# HubSpot-defined unlabeled association type ids.
_GENERIC_ASSOCIATIONS: Mapping[str, tuple[str, str, int]] = {
    "0-1": ("0-2", "HUBSPOT_DEFINED", 279),
    "0-2": ("0-1", "HUBSPOT_DEFINED", 280),
    "0-3": ("0-1", "HUBSPOT_DEFINED", 3),
    "0-5": ("0-1", "HUBSPOT_DEFINED", 16),
    "0-8": ("0-3", "HUBSPOT_DEFINED", 20),
}
_CUSTOM_ASSOCIATION = ("0-1", "USER_DEFINED", 1)

_SUBSCRIPTION_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.[A-Za-z]+")
_OBJECT_TYPE_ID_RE = re.compile(r"[0-9]+-[0-9]+")
_BODY_PREVIEW_CHARS = 1000


class SendError(Exception):
    """The send options or the events file cannot be used; the message says which."""


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """What the built-in sample events look like; every field has a realistic default."""

    subscription_type: str = "contact.creation"
    portal_id: int = DEFAULT_PORTAL_ID
    app_id: int = DEFAULT_APP_ID
    object_id: int | None = None  # None: a random id per event
    object_type_id: str = "0-1"  # object.* events only
    property_name: str | None = None  # propertyChange only; None: the object's default
    property_value: str | None = None
    change_source: str = DEFAULT_CHANGE_SOURCE

    @property
    def object_name(self) -> str:
        """The part before the dot: `contact`, `deal`, `object`, ..."""
        return self.subscription_type.split(".", 1)[0]

    @property
    def kind(self) -> str:
        """The part after the dot: `creation`, `propertyChange`, ..."""
        return self.subscription_type.split(".", 1)[1]

    @property
    def is_generic(self) -> bool:
        """Whether this is a generic `object.*` subscription (object type in objectTypeId)."""
        return self.object_name == "object"

    def property_change(self) -> tuple[str, str]:
        """The (propertyName, propertyValue) of a propertyChange sample."""
        name = self.object_name
        if self.is_generic:
            name = _OBJECT_NAMES.get(self.object_type_id, "")
        default_name, default_value = DEFAULT_PROPERTIES.get(name, _FALLBACK_PROPERTY)
        property_name = default_name if self.property_name is None else self.property_name
        if self.property_value is not None:
            return property_name, self.property_value
        if property_name == default_name:
            return property_name, default_value
        return property_name, _FALLBACK_PROPERTY[1]

    def subscription_id(self) -> int:
        """A stable subscription id for this subscription: same type and property, same id."""
        parts = [str(self.app_id), self.subscription_type]
        if self.is_generic:
            parts.append(self.object_type_id)
        if self.kind == "propertyChange":
            parts.append(self.property_change()[0])
        return 1_000_000 + zlib.crc32(":".join(parts).encode()) % 9_000_000


def _random_object_id(rng: random.Random) -> int:
    return rng.randrange(10_000, 100_000_000_000)


def build_event(spec: SampleSpec, *, event_id: int, occurred_at: int, rng: random.Random) -> Event:
    """One event as HubSpot sends it for `spec.subscription_type` (HUBSPOT.md §2)."""
    object_id = spec.object_id if spec.object_id is not None else _random_object_id(rng)
    event: Event = {
        "eventId": event_id,
        "subscriptionId": spec.subscription_id(),
        "portalId": spec.portal_id,
        "appId": spec.app_id,
        "occurredAt": occurred_at,
        "subscriptionType": spec.subscription_type,
        "attemptNumber": 0,
    }
    kind = spec.kind
    if kind == "associationChange":
        # Association events name both ends instead of an objectId (and, when generic, both
        # object types instead of objectTypeId).
        event["changeSource"] = spec.change_source
        event.update(_association_fields(spec, object_id, rng))
        return event
    event["objectId"] = object_id
    if spec.is_generic:
        event["objectTypeId"] = spec.object_type_id
    event["changeSource"] = spec.change_source
    if kind == "creation":
        event["changeFlag"] = "NEW"
    elif kind == "propertyChange":
        event["propertyName"], event["propertyValue"] = spec.property_change()
        if spec.change_source == "CRM_UI":
            event["sourceId"] = f"userId:{rng.randrange(10_000_000, 1_000_000_000)}"
    elif kind == "merge":
        merged = _random_object_id(rng)
        while merged == object_id:
            merged = _random_object_id(rng)
        event["primaryObjectId"] = object_id
        event["mergedObjectIds"] = [merged]
        event["newObjectId"] = object_id
        event["numberOfPropertiesMoved"] = rng.randint(1, 40)
    elif kind == "newMessage":
        event["messageId"] = rng.randbytes(16).hex()
        event["messageType"] = "MESSAGE"
    return event


def _association_fields(spec: SampleSpec, from_id: int, rng: random.Random) -> Event:
    to_id = _random_object_id(rng)
    if spec.is_generic:
        to_type, category, type_id = _GENERIC_ASSOCIATIONS.get(
            spec.object_type_id, _CUSTOM_ASSOCIATION
        )
        return {
            "fromObjectTypeId": spec.object_type_id,
            "fromObjectId": from_id,
            "toObjectTypeId": to_type,
            "toObjectId": to_id,
            "associationTypeId": type_id,
            "associationCategory": category,
            "associationRemoved": False,
            "isPrimaryAssociation": False,
        }
    partner = _ASSOCIATION_PARTNERS.get(spec.object_name, "contact")
    return {
        "associationType": f"{spec.object_name.upper()}_TO_{partner.upper()}",
        "fromObjectId": from_id,
        "toObjectId": to_id,
        "associationRemoved": False,
        "isPrimaryAssociation": False,
    }


def build_events(
    spec: SampleSpec, count: int, *, rng: random.Random, now_ms: int | None = None
) -> list[Event]:
    """`count` distinct sample events, with random 9-10 digit eventIds unique in the run."""
    occurred_at = int(time.time() * 1000) if now_ms is None else now_ms
    seen: set[int] = set()
    events: list[Event] = []
    while len(events) < count:
        event_id = rng.randrange(100_000_000, 10_000_000_000)
        if event_id in seen:
            continue
        seen.add(event_id)
        events.append(build_event(spec, event_id=event_id, occurred_at=occurred_at, rng=rng))
    return events


def with_duplicates(events: Sequence[Event], duplicates: int, rng: random.Random) -> list[Event]:
    """`events` plus `duplicates` exact re-sends of random ones, each somewhere after its original.

    The originals keep their order; a re-send is the identical event (same eventId, occurredAt
    and attemptNumber), so a receiver that deduplicates stores each event once.
    """
    if not events:
        return []
    size = len(events)
    keyed = [(float(index), event) for index, event in enumerate(events)]
    for _ in range(duplicates):
        original = rng.randrange(size)
        keyed.append((rng.uniform(original, size), events[original]))
    # Stable sort: a re-send whose key ties with its original still comes after it.
    keyed.sort(key=lambda pair: pair[0])
    return [event for _, event in keyed]


def encode_batch(events: Sequence[Event]) -> bytes:
    """The request body: a compact JSON array with non-ASCII as `\\u` escapes.

    HubSpot's bodies carry such escapes (HUBSPOT.md §1), which catches a receiver that hashes a
    re-serialised body instead of the raw bytes.
    """
    return json.dumps(list(events), separators=(",", ":")).encode()


def load_events(path: Path) -> list[Event]:
    """The events in a JSON file holding an array of event objects, or one event object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SendError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SendError(f"{path} is not a JSON file: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise SendError(f"{path} must hold a JSON array of event objects, or one event object")
    if not data:
        raise SendError(f"{path} holds no events")
    return data


def save_events(path: Path, events: Sequence[Event]) -> None:
    """Write `events` as a JSON array that `--file` sends again unchanged."""
    try:
        path.write_text(json.dumps(list(events), indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise SendError(f"cannot write {path}: {exc.strerror or exc}") from None


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


# --- the command line ---------------------------------------------------------------------

_DESCRIPTION = """\
Sign events exactly as HubSpot does (X-HubSpot-Signature-v3 with its timestamp, plus a v1
X-HubSpot-Signature) and POST them to a webhook receiver, then print each response and a
summary. The secret is --secret, else HUBSPOT_CLIENT_SECRET, else the `dev` command's secret
in DATA_DIR. Exit code 0 only if every request was answered 2xx."""

_EPILOG = f"""\
subscription types:
  Built-in samples shaped like HubSpot's, with the fields of their kind:
{textwrap.fill(", ".join(SAMPLE_TYPES), width=92, initial_indent="    ", subsequent_indent="    ")}
  Any other <object>.<kind> gets the common fields. Each run draws new random eventIds, so a
  receiver stores every run's events. To send the same events again, --save them and re-send
  the file with --file: a receiver that deduplicates stores nothing new, and the summary says
  "stored 0, duplicates N (already stored)".

examples:
  hubspot-webhooks send contact.creation
  hubspot-webhooks send contact.propertyChange --property lifecyclestage --value customer
  hubspot-webhooks send deal.propertyChange --property dealstage --value closedwon
  hubspot-webhooks send object.propertyChange --object-type 0-3 --property amount --value 5000
  hubspot-webhooks send contact.creation --count 1000 --batch 100 --concurrency 10 \\
      --duplicate-rate 0.2
  hubspot-webhooks send contact.creation --save batch.json     # send and keep the events
  hubspot-webhooks send --file batch.json                      # the same events again
  hubspot-webhooks send contact.creation --url https://abc.ngrok.app/webhooks/hubspot
"""


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < low or (high is not None and number > high):
            limit = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"expected an integer {limit}, got {number}")
        return number

    return parse


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0 <= rate < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 up to (not incl.) 1: {rate}")
    return rate


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < seconds <= 600:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 600, got {seconds:g}")
    return seconds


def _url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise argparse.ArgumentTypeError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise argparse.ArgumentTypeError("expected an absolute http:// or https:// URL")
    if url.fragment:
        raise argparse.ArgumentTypeError("must not contain a #fragment")
    return value


def _subscription_type(value: str) -> str:
    if not _SUBSCRIPTION_TYPE_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"expected <object>.<kind> such as contact.creation, got {value!r}"
        )
    return value


def _object_type(value: str) -> str:
    if _OBJECT_TYPE_ID_RE.fullmatch(value):
        return value
    if value.lower() in OBJECT_TYPE_IDS:
        return OBJECT_TYPE_IDS[value.lower()]
    names = ", ".join(OBJECT_TYPE_IDS)
    raise argparse.ArgumentTypeError(f"expected an objectTypeId such as 0-3, or one of {names}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `hubspot-webhooks send`."""
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "subscription_type",
        nargs="?",
        type=_subscription_type,
        metavar="SUBSCRIPTION_TYPE",
        help="built-in samples of this type, e.g. contact.creation (or use --file)",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        type=_url,
        help=f"where to POST (default http://127.0.0.1:$PORT{WEBHOOK_PATH}, PORT default 8000);"
        " the v3 signature covers this exact URL, query string included",
    )
    target.add_argument(
        "--secret",
        help="the client secret to sign with (default HUBSPOT_CLIENT_SECRET; never printed)",
    )
    target.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds to wait for each response (default 10; HubSpot waits 5)",
    )
    events = parser.add_argument_group("events")
    events.add_argument(
        "--file",
        type=Path,
        metavar="F",
        help="send the events in F (a JSON array, or one event object) exactly as they are",
    )
    events.add_argument(
        "--save",
        type=Path,
        metavar="F",
        help="also write the events sent (each once) to F, to re-send later with --file F",
    )
    events.add_argument(
        "--count",
        type=_int_at_least(1),
        metavar="N",
        help="total events to send, duplicates included (default 1; not with --file)",
    )
    events.add_argument(
        "--duplicate-rate",
        type=_rate,
        default=0.0,
        metavar="R",
        help="fraction of the events sent that are exact re-sends of earlier ones in the run,"
        " to exercise idempotency (default 0)",
    )
    sample = parser.add_argument_group("built-in samples")
    sample.add_argument(
        "--portal",
        type=_int_at_least(1),
        metavar="ID",
        help=f"portalId (default {DEFAULT_PORTAL_ID})",
    )
    sample.add_argument(
        "--app-id", type=_int_at_least(1), metavar="ID", help=f"appId (default {DEFAULT_APP_ID})"
    )
    sample.add_argument(
        "--object-id",
        type=_int_at_least(1),
        metavar="ID",
        help="objectId of every event (fromObjectId for associations; default random per event)",
    )
    sample.add_argument(
        "--object-type",
        type=_object_type,
        metavar="TYPE",
        help="objectTypeId of object.* events, e.g. 0-3 or deal (default 0-1, contact)",
    )
    sample.add_argument("--property", metavar="NAME", help="propertyName of propertyChange events")
    sample.add_argument(
        "--value",
        metavar="VALUE",
        help='propertyValue of propertyChange events ("" = cleared; default a sample value)',
    )
    sample.add_argument(
        "--change-source",
        metavar="SOURCE",
        help=f"changeSource, e.g. CRM_UI, API, IMPORT, WORKFLOWS (default {DEFAULT_CHANGE_SOURCE})",
    )
    delivery = parser.add_argument_group("delivery")
    delivery.add_argument(
        "--batch",
        type=_int_at_least(1, MAX_BATCH),
        default=MAX_BATCH,
        metavar="N",
        help=f"events per request (default and maximum {MAX_BATCH}, like HubSpot)",
    )
    delivery.add_argument(
        "--concurrency",
        type=_int_at_least(1, 100),
        default=1,
        metavar="N",
        help="requests in flight at once (default 1; HubSpot uses up to 10 per account)",
    )


def _sample_spec(args: argparse.Namespace) -> SampleSpec:
    subscription_type: str = args.subscription_type
    spec = SampleSpec(
        subscription_type=subscription_type,
        portal_id=args.portal or DEFAULT_PORTAL_ID,
        app_id=args.app_id or DEFAULT_APP_ID,
        object_id=args.object_id,
        object_type_id=args.object_type or "0-1",
        property_name=args.property,
        property_value=args.value,
        change_source=args.change_source or DEFAULT_CHANGE_SOURCE,
    )
    if (args.property is not None or args.value is not None) and spec.kind != "propertyChange":
        raise SendError("--property and --value apply to propertyChange events only")
    if args.object_type is not None and not spec.is_generic:
        raise SendError(
            "--object-type applies to object.* events only;"
            f" {subscription_type} already names its object"
        )
    return spec


# Options that shape built-in samples; --file sends its events untouched, so they conflict.
_SAMPLE_OPTIONS = (
    "count",
    "portal",
    "app_id",
    "object_id",
    "object_type",
    "property",
    "value",
    "change_source",
)


def _plan(args: argparse.Namespace, rng: random.Random) -> tuple[list[Event], int]:
    """The distinct events to send and how many exact re-sends to add."""
    rate: float = args.duplicate_rate
    if args.file is not None:
        if args.subscription_type is not None:
            raise SendError("give a SUBSCRIPTION_TYPE or --file, not both")
        given = [
            f"--{n.replace('_', '-')}" for n in _SAMPLE_OPTIONS if getattr(args, n) is not None
        ]
        if given:
            raise SendError(
                f"{', '.join(given)}: not with --file, which sends its events as they are"
            )
        unique = load_events(args.file)
        # R is the share of re-sends among the events sent: n / (1 - R) events in all.
        return unique, round(len(unique) * rate / (1 - rate))
    if args.subscription_type is None:
        raise SendError("give a SUBSCRIPTION_TYPE (e.g. contact.creation) or --file F")
    spec = _sample_spec(args)
    total: int = args.count or 1
    duplicates = min(round(total * rate), total - 1)
    return build_events(spec, total - duplicates, rng=rng), duplicates


def _secret(args: argparse.Namespace, settings: Settings) -> str:
    if args.secret:
        return str(args.secret)
    if settings.client_secrets:
        return settings.client_secrets[0]
    raise SettingsError(
        "HUBSPOT_CLIENT_SECRET is not set and no --secret was given: sign with the client"
        " secret the receiver verifies with"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`hubspot-webhooks send`: build or load events, sign, POST, print, summarise."""
    return send(args, settings, out=sys.stdout, err=sys.stderr, rng=random.SystemRandom())


def send(
    args: argparse.Namespace,
    settings: Settings,
    *,
    out: TextIO,
    err: TextIO,
    rng: random.Random,
) -> int:
    """`run` with its streams and randomness given, for tests."""
    secret = _secret(args, settings)
    url: str = args.url or f"http://127.0.0.1:{settings.port}{WEBHOOK_PATH}"
    try:
        unique, duplicates = _plan(args, rng)
        if args.save is not None:
            save_events(args.save, unique)
    except SendError as exc:
        err.write(f"hubspot-webhooks send: {exc}\n")
        return 2
    events = with_duplicates(unique, duplicates, rng)
    size: int = args.batch
    bodies = [
        (encode_batch(events[i : i + size]), len(events[i : i + size]))
        for i in range(0, len(events), size)
    ]
    total = len(bodies)
    copies = f" ({len(unique)} distinct + {duplicates} re-sent)" if duplicates else ""
    out.write(
        f"sending {len(events)} events{copies} in {total} requests to {url}"
        f" ({args.concurrency} at a time)\n"
    )
    if args.save is not None:
        out.write(f"saved {len(unique)} events to {args.save}; send them again with --file\n")
    out.flush()

    def report(outcome: Outcome) -> None:
        out.write(describe_outcome(outcome, total) + "\n")
        out.flush()

    outcomes = post_batches(
        url=url,
        secret=secret,
        bodies=bodies,
        concurrency=args.concurrency,
        timeout=args.timeout,
        on_outcome=report,
    )
    text, code = summarize(outcomes)
    out.write(text + "\n")
    out.flush()
    return code
