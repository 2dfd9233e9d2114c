"""`hubspot-webhooks send`: sign and POST HubSpot-shaped webhook batches to a receiver.

For local and ngrok testing, and for checking a deployment. This module is the command: its
options, the events files it reads and writes, and the plan of what to send; the events come
from service.devtools.samples (or a file) and go out through service.devtools.delivery.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import httpx

from service.devtools.delivery import (
    Outcome,
    describe_outcome,
    encode_batch,
    post_batches,
    summarize,
)
from service.devtools.samples import (
    DEFAULT_APP_ID,
    DEFAULT_CHANGE_SOURCE,
    DEFAULT_PORTAL_ID,
    PREFIX_BY_TYPE_ID,
    SAMPLE_TYPES,
    RawEvent,
    SampleSpec,
    build_events,
)
from service.settings import WEBHOOK_PATH, Settings, SettingsError, dev_client_secret

__all__ = [
    "SendError",
    "add_arguments",
    "load_events",
    "main",
    "save_events",
    "send",
    "with_duplicates",
]

MAX_BATCH = 100  # HubSpot sends at most 100 events per request (HUBSPOT.md §3)

_SUBSCRIPTION_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\.[A-Za-z]+")
_OBJECT_TYPE_ID_RE = re.compile(r"[0-9]+-[0-9]+")


class SendError(Exception):
    """The send options or the events file cannot be used; the message says which."""


def with_duplicates(
    events: Sequence[RawEvent], duplicates: int, rng: random.Random
) -> list[RawEvent]:
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


def load_events(path: Path) -> list[RawEvent]:
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


def save_events(path: Path, events: Sequence[RawEvent]) -> None:
    """Write `events` as a JSON array that `--file` sends again unchanged."""
    try:
        path.write_text(json.dumps(list(events), indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise SendError(f"cannot write {path}: {exc.strerror or exc}") from None


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
    for type_id, prefix in PREFIX_BY_TYPE_ID.items():
        if value.lower() == prefix:
            return type_id
    names = ", ".join(PREFIX_BY_TYPE_ID.values())
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


def _plan(args: argparse.Namespace, rng: random.Random) -> tuple[list[RawEvent], int]:
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


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`hubspot-webhooks send`, as the CLI calls it.

    Without --secret or HUBSPOT_CLIENT_SECRET it signs with the `dev` command's secret in
    DATA_DIR, when there is one (it never creates it).
    """
    if args.secret is None and not settings.client_secrets:
        local = dev_client_secret(settings.data_dir, create=False)
        if local is not None:
            settings = settings.with_overrides(client_secrets=(local,))
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
