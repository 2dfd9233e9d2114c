"""Builders of what HubSpot and the service's users send, and the constants tests share.

Events are plain dicts, exactly as HubSpot delivers them (HUBSPOT.md §2); keyword arguments add
or override fields. `hs` and its kin number their events from one counter, so events built by
different tests never share an eventId.
"""

from __future__ import annotations

import base64
import itertools
import random
import time
from collections.abc import Mapping
from typing import Any

import httpx
import sqlalchemy as sa

from service import journal
from service.actions import RunContext
from service.devtools import samples
from service.devtools.samples import SampleSpec
from service.events import Event, normalise
from service.hubspot.client import HubSpotApi
from service.signature import sign_v3

# --- identities ------------------------------------------------------------------------------

PORTAL = 62515  # the seed portal of tests/payloads/hubspot_seed.json
OTHER_PORTAL = 77001  # the seed file's second portal
TOKEN = "pat-na1-00000000-0000-4000-8000-000000062515"  # PORTAL's private app token in the seed
APP_ID = 54321
CLIENT_SECRET = "test-client-secret-0123456789"  # HubSpot's signing secret in these tests
WEBHOOK_URL = "http://testserver/webhooks/hubspot"  # the endpoint as Starlette's TestClient sees it
METRICS_TOKEN = "test-metrics-token-0123456789"  # METRICS_TOKEN of the web tests that set one
ADMIN_TOKEN = "test-admin-token-0123456789"  # ADMIN_TOKEN of the admin tests
# TOKEN_ENCRYPTION_KEY of the tests (Fernet keys: 32 bytes in URL-safe base64), and a second one
# to rotate to.
TOKEN_KEY = base64.urlsafe_b64encode(b"key-1:tokens-at-rest-test-value!").decode()
NEW_TOKEN_KEY = base64.urlsafe_b64encode(b"key-2:tokens-at-rest-test-value!").decode()

# --- rules and their targets -----------------------------------------------------------------

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"a-32-byte-test-key-for-hmac-256!").decode()
SLACK_PATH = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
HOOK_PATH = "/hook"
OUR_APP_ID = "424242"  # HUBSPOT_APP_ID: changes HubSpot attributes to it are our own writes

WHEN_WON: dict[str, Any] = {
    "object": "deals",
    "kind": "property_change",
    "property": "dealstage",
    "to": "closedwon",
}
DO_LOG: list[dict[str, Any]] = [{"action": "log", "message": "won {record.dealname}"}]

DEAL_WON = """
[[rules]]
name = "deal-won"
[rules.when]
object = "deals"
kind = "property_change"
property = "dealstage"
to = "Closed Won"

[[rules.do]]
action = "slack"
text = "Won: {record.dealname} ({record.amount|money})"

[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"
"""

# --- HubSpot's webhook events ----------------------------------------------------------------


def hubspot_event(subscription_type: str, **fields: Any) -> dict[str, Any]:
    """An event as HubSpot delivers it: the common fields, then the kind's own."""
    event: dict[str, Any] = {
        "eventId": 1001,
        "subscriptionId": 12345,
        "portalId": PORTAL,
        "appId": APP_ID,
        "occurredAt": 1_700_000_000_000,
        "subscriptionType": subscription_type,
        "attemptNumber": 0,
        "changeSource": "CRM_UI",
    }
    event.update(fields)
    return event


def numbered_event(event_id: int = 1, **fields: Any) -> dict[str, Any]:
    """A contact.propertyChange numbered `event_id`: each number is another event, with its own
    object (100 + n), time and email value."""
    return hubspot_event(
        "contact.propertyChange",
        **{
            "eventId": event_id,
            "occurredAt": 1_700_000_000_000 + event_id,
            "objectId": 100 + event_id,
            "propertyName": "email",
            "propertyValue": f"person{event_id}@example.com",
            **fields,
        },
    )


_ids = itertools.count(1)


def hs(
    subscription_type: str, object_id: int | None, occurred_at: int, **fields: Any
) -> dict[str, Any]:
    """A HubSpot event as delivered, with the next eventId and no object id when None."""
    event = hubspot_event(
        subscription_type,
        eventId=next(_ids),
        subscriptionId=7,
        appId=1,
        occurredAt=occurred_at,
    )
    if object_id is not None:
        event["objectId"] = object_id
    event.update(fields)
    return event


def change(obj: str, object_id: int, at: int, prop: str, value: str) -> dict[str, Any]:
    """`obj`'s `prop` became `value` at `at`."""
    return hs(f"{obj}.propertyChange", object_id, at, propertyName=prop, propertyValue=value)


def merge(
    obj: str, primary: int, merged: list[int], at: int, new: int | None = None
) -> dict[str, Any]:
    """`merged` records were merged into `primary` (or into a `new` record) at `at`."""
    return hs(
        f"{obj}.merge",
        primary,
        at,
        primaryObjectId=primary,
        mergedObjectIds=merged,
        newObjectId=primary if new is None else new,
        numberOfPropertiesMoved=3,
    )


def assoc(
    kind: str, from_id: int, to_id: int, at: int, *, removed: bool = False, primary: bool = False
) -> dict[str, Any]:
    """A classic associationChange of type `kind` (e.g. CONTACT_TO_COMPANY)."""
    obj = kind.split("_TO_", maxsplit=1)[0].lower()
    return hs(
        f"{obj}.associationChange",
        None,
        at,
        associationType=kind,
        fromObjectId=from_id,
        toObjectId=to_id,
        associationRemoved=removed,
        isPrimaryAssociation=primary,
    )


def stage_of(contact: int, at: int, value: str) -> dict[str, Any]:
    """A contact's lifecyclestage changed to `value` at `at`."""
    return change("contact", contact, at, "lifecyclestage", value)


def event(raw: Mapping[str, Any], inbox_id: int = 1) -> Event:
    """A HubSpot event as the worker sees it."""
    return normalise(inbox_id, raw)


def v3_headers(
    body: bytes, *, uri: str = WEBHOOK_URL, secret: str = CLIENT_SECRET, now_ms: int | None = None
) -> dict[str, str]:
    """Headers HubSpot sends with a v3 signature of this request."""
    timestamp = str(int(time.time() * 1000) if now_ms is None else now_ms)
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", uri, body, timestamp),
        "X-HubSpot-Request-Timestamp": timestamp,
    }


def sample(subscription_type: str, **options: Any) -> dict[str, Any]:
    """One built-in sample event of `hubspot-webhooks send`."""
    spec = SampleSpec(subscription_type=subscription_type, **options)
    return samples.build_event(spec, event_id=123456789, occurred_at=1, rng=random.Random(7))


# --- action runs -----------------------------------------------------------------------------


def run_context(
    http: httpx.Client,
    payload: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    *,
    run_id: int = 1,
    environ: Mapping[str, str] | None = None,
    slack_webhook_url: str | None = None,
    api: HubSpotApi | None = None,
    attempt: int = 1,
) -> RunContext:
    """One attempt of one action run for PORTAL, as the act stage hands it to `execute`."""
    return RunContext(
        run_id=run_id,
        portal_id=PORTAL,
        payload=payload,
        options=options or {},
        environ=environ or {},
        slack_webhook_url=slack_webhook_url,
        api=api,
        http=http,
        attempt=attempt,
    )


def slack_payload(text: str = "Won: Big deal ($1,000.00)", blocks: Any = None) -> dict[str, Any]:
    """A slack action's payload as the rule engine renders it."""
    return {"action": "slack", "text": text, "blocks": blocks}


def action_run(
    inbox_id: int,
    *,
    rule: str = "won",
    action: str = "log",
    occurred_at: int = 1_700_000_000_000,
) -> dict[str, Any]:
    """An action run of PORTAL's deal 1 as the rule engine enqueues it (`outbox.enqueue`), fired
    by an event that occurred at `occurred_at` (epoch ms; the events' default day)."""
    return {
        "portal_id": PORTAL,
        "inbox_id": inbox_id,
        "rule": rule,
        "action_index": 0,
        "event_occurred_at": occurred_at,
        "action": action,
        "object_type": "deals",
        "object_id": 1,
        "payload": {"action": action, "message": "won"},
    }


# --- the Webhooks Journal reader's rows ------------------------------------------------------

UNPARSEABLE = "InvalidJournalFile: event 1 has no portalId"


def journal_read(
    connection: sa.Connection, name: str, statuses: list[str], *, start: int = 1
) -> str:
    """A journal reader's rows as it leaves them, through service.journal: one entry per status
    (`stored` with 2 events, or `failed` with UNPARSEABLE), offsets `<name>-<n>` from `start`,
    the cursor moved past each in turn; returns the last offset."""
    previous = journal.cursor(connection, name)
    expected = None if previous is None else previous.current_offset
    for n, status in enumerate(statuses, start=start):
        offset, failed = f"{name}-{n}", status == "failed"
        journal.record_entry(
            connection,
            name,
            offset,
            expires_at=None,
            file=b"kept",
            file_bytes=4,
            events=2,
            stored=0 if failed else 2,
            status="failed" if failed else "stored",
            error=UNPARSEABLE if failed else None,
            contacts=[],
        )
        assert journal.advance(connection, name, expected=expected, offset=offset, last_event_ms=n)
        expected = offset
    assert expected is not None
    return expected
