"""The `hubspot_task` and `hubspot_note` actions: create an engagement on the record that fired.

Through `HubSpotApi.create_object` (rate limit, tokens, call counts). 4xx answers are final
(`ActionRejected`); the created id comes back in `Outcome.created` so the caller can record it as
our own write (echo suppression). Errors name status and category only: HubSpot's validation
messages can quote the values we sent.

Once per action run, even when an answer is lost. HubSpot's create has no idempotency key, and a
create whose answer never arrived (connection reset, timeout, 5xx) may have landed; the API client
does not repeat such a POST, the outbox retries the run. So every task and note ends its body with
its run's marker, `(hubspot-webhooks run <id>)`, and a retry first searches the record's tasks or
notes due at the same `hs_timestamp` (both fixed when the rule fired) for that marker: found, the
run is done with that id; not found, it creates. The first attempt does not search: nothing can
exist yet, and search has its own small budget (4/s per portal).

HubSpot's search lags writes ("a few moments"; records created a second ago may not be found), so
an uncertain failure asks the outbox to wait SEARCH_SETTLE_SECONDS before the retry (Retry-After
is a floor of its backoff). A crash mid-create retries after the 300 s lease. A 429 proves
nothing was taken, so it is retried on the ordinary backoff. An operator's replay of a failed
run searches first too (the outbox keeps the run's last error across a replay).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.actions import ActionFailed, ActionRejected, Outcome, RunContext
from service.events import CLASSIC_TYPES, TASK_PRIORITIES, TYPE_BY_ID
from service.hubspot.client import HubSpotApi, HubSpotError, HubSpotUnavailable

# HUBSPOT_DEFINED association type ids from an engagement to the record it sits on
# (HubSpot's associations v4 docs, "Activity to object" type ids; tasks and notes guides).
ASSOCIATION_TYPE_IDS: Mapping[tuple[str, str], int] = {
    ("tasks", "contacts"): 204,
    ("tasks", "companies"): 192,
    ("tasks", "deals"): 216,
    ("tasks", "tickets"): 230,
    ("notes", "contacts"): 202,
    ("notes", "companies"): 190,
    ("notes", "deals"): 214,
    ("notes", "tickets"): 228,
}
NOTE_BODY_MAX = 65_536  # characters HubSpot accepts in hs_note_body
BODY_PROPERTY = {"tasks": "hs_task_body", "notes": "hs_note_body"}
# Search sees a new record after "a few moments" (HubSpot's CRM search guide); integrators
# advise waiting about 10 s after a create. A minute's margin costs only a late task.
SEARCH_SETTLE_SECONDS = 60.0
# The record types HubSpot's `associations.{type}` search pseudo-property names, singular.
_SINGULAR = {"contacts": "contact", "companies": "company", "deals": "deal", "tickets": "ticket"}
_TAG = re.compile(r"<[^>]*>")


def marker(run_id: int) -> str:
    """The line that ties a task or note to the action run that created it."""
    return f"(hubspot-webhooks run {run_id})"


def with_marker(text: str, run_id: int, limit: int | None = None) -> str:
    """`text`, cut to leave room when a `limit` applies, then a blank line and the marker."""
    line = marker(run_id)
    if not text:
        return line
    room = None if limit is None else max(0, limit - len(line) - 2)
    return f"{text[:room]}\n\n{line}"


def has_marker(body: str | None, run_id: int) -> bool:
    """Whether a body as HubSpot returns it (maybe rewritten as HTML) carries the run's marker."""
    text = " ".join(html.unescape(_TAG.sub(" ", body or "")).split())
    return re.search(re.escape(marker(run_id)).replace(r"\ ", r"\s+"), text) is not None


def record_type(payload: Mapping[str, Any]) -> str:
    """The payload's record type as a plural name (`deals`), from any form events use."""
    raw_type = str(payload.get("object_type") or "")
    return TYPE_BY_ID.get(raw_type, CLASSIC_TYPES.get(raw_type, raw_type))


def association(engagement: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The `associations` entry tying a new task or note to the payload's record."""
    raw_type = str(payload.get("object_type") or "")
    object_type = record_type(payload)
    type_id = ASSOCIATION_TYPE_IDS.get((engagement, object_type))
    if type_id is None:
        raise ActionRejected(
            f"{engagement} can be attached to contacts, companies, deals or tickets,"
            f" not {raw_type[:40] or 'nothing'}"
        )
    object_id = payload.get("object_id")
    if isinstance(object_id, str) and object_id.isdigit():
        object_id = int(object_id)
    if isinstance(object_id, bool) or not isinstance(object_id, int) or object_id <= 0:
        raise ActionRejected(f"no {object_type} record to attach the {engagement[:-1]} to")
    return {
        "to": {"id": str(object_id)},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
    }


def hubspot_time(ms: Any) -> str:
    """Epoch milliseconds as the UTC ISO 8601 time HubSpot accepts for hs_timestamp."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        raise ActionRejected("timestamp must be epoch milliseconds")
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _text(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ActionRejected(f"{key} must be text")
    return value


def create_task(ctx: RunContext) -> Outcome:
    """Create a NOT_STARTED task, due at `due_at_ms`, on the record; 'created task <id>'."""
    payload = ctx.payload
    priority = str(payload.get("priority") or "MEDIUM").upper()
    if priority not in TASK_PRIORITIES:
        raise ActionRejected(f"task priority must be LOW, MEDIUM or HIGH, not {priority[:20]!r}")
    properties = {
        "hs_task_subject": _text(payload, "subject"),
        "hs_task_body": with_marker(_text(payload, "body"), ctx.run_id),
        "hs_timestamp": hubspot_time(payload.get("due_at_ms")),
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": priority,
    }
    owner = payload.get("owner_id")
    if owner is not None and str(owner).strip():
        properties["hubspot_owner_id"] = str(owner).strip()
    return _create_once(ctx, "tasks", properties, payload["due_at_ms"])


def create_note(ctx: RunContext) -> Outcome:
    """Create a note at `timestamp_ms` on the record's timeline; 'created note <id>'."""
    payload = ctx.payload
    properties = {
        "hs_note_body": with_marker(_text(payload, "body"), ctx.run_id, NOTE_BODY_MAX),
        "hs_timestamp": hubspot_time(payload.get("timestamp_ms")),
    }
    return _create_once(ctx, "notes", properties, payload["timestamp_ms"])


def _create_once(
    ctx: RunContext, object_type: str, properties: dict[str, str], at_ms: int
) -> Outcome:
    kind = object_type[:-1]
    link = association(object_type, ctx.payload)
    if ctx.api is None:
        raise ActionRejected(
            "no HubSpot credentials: set HUBSPOT_ACCESS_TOKEN or HUBSPOT_CLIENT_ID and install"
        )
    if ctx.attempt > 1 or ctx.tried_before:  # an earlier attempt may have created it unheard
        found = _find_earlier(ctx, ctx.api, object_type, int(at_ms))
        if found is not None:
            return Outcome(
                f"created {kind} {found} (by an earlier attempt whose answer was lost)",
                (object_type, found),
            )
    try:
        record = ctx.api.create_object(ctx.portal_id, object_type, properties, [link])
    except HubSpotUnavailable as exc:
        if exc.status == 429:  # HubSpot took nothing: retry on the ordinary backoff
            raise ActionFailed(
                f"creating the {kind}: HubSpot answered 429 (rate limited)"
            ) from None
        # Without a status the message is our own (a connection error, a timeout).
        answer = f"HubSpot answered {exc.status}" if exc.status else str(exc)
        raise ActionFailed(
            f"creating the {kind}: {answer}; it may have been created, so the retry, once search"
            f" can see it ({SEARCH_SETTLE_SECONDS:g} s), looks for it first",
            retry_after=SEARCH_SETTLE_SECONDS,
        ) from None
    except HubSpotError as exc:
        raise _rejected(f"creating the {kind}", exc) from None
    return Outcome(f"created {kind} {record.id}", (object_type, record.id))


def _find_earlier(ctx: RunContext, api: HubSpotApi, object_type: str, at_ms: int) -> int | None:
    """The id of this run's task or note if HubSpot has it: among the record's engagements at
    the same hs_timestamp, the oldest whose body carries the run's marker."""
    body = BODY_PROPERTY[object_type]
    on = f"associations.{_SINGULAR[record_type(ctx.payload)]}"
    query = {
        "filterGroups": [
            {
                "filters": [
                    {"propertyName": on, "operator": "EQ", "value": str(ctx.payload["object_id"])},
                    {"propertyName": "hs_timestamp", "operator": "EQ", "value": str(at_ms)},
                ]
            }
        ],
        "sorts": [{"propertyName": "hs_createdate", "direction": "ASCENDING"}],
        "properties": [body],
        "limit": 100,
    }
    doing = f"looking for the {object_type[:-1]} an earlier attempt may have created"
    try:
        page = api.search(ctx.portal_id, object_type, query)
    except HubSpotUnavailable as exc:
        answer = f"HubSpot answered {exc.status}" if exc.status else str(exc)
        raise ActionFailed(f"{doing}: {answer}") from None
    except HubSpotError as exc:
        raise _rejected(doing, exc) from None
    for record in page.records:
        if has_marker(record.properties.get(body), ctx.run_id):
            return record.id
    return None


def _rejected(doing: str, exc: HubSpotError) -> ActionRejected:
    if exc.status is None:  # no token, or the portal must reinstall: our own message
        return ActionRejected(f"{doing}: {exc}")
    return ActionRejected(f"{doing}: HubSpot refused it: {exc.status} {exc.category}".strip())
