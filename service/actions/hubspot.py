"""The `hubspot_task` and `hubspot_note` actions: create an engagement on the record that fired.

Through `HubSpotApi.create_object` (rate limit, tokens, call counts). A create is a POST that
may have landed when the answer is lost, so the API client does not repeat it on 5xx; the
outbox retries the run instead (`ActionFailed`), at the risk of a second task after an
ambiguous failure. 4xx answers are final (`ActionRejected`).

The created id comes back in `Outcome.created` so the caller can record it as our own write
(echo suppression). Errors name status and category only: HubSpot's validation messages can
quote the values we sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.actions import ActionFailed, ActionRejected, Outcome, RunContext
from service.events import CLASSIC_TYPES, TASK_PRIORITIES, TYPE_BY_ID
from service.hubspot.client import HubSpotError, HubSpotUnavailable

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


def association(engagement: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The `associations` entry tying a new task or note to the payload's record."""
    raw_type = str(payload.get("object_type") or "")
    object_type = TYPE_BY_ID.get(raw_type, CLASSIC_TYPES.get(raw_type, raw_type))
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
        "hs_task_body": _text(payload, "body"),
        "hs_timestamp": hubspot_time(payload.get("due_at_ms")),
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": priority,
    }
    owner = payload.get("owner_id")
    if owner is not None and str(owner).strip():
        properties["hubspot_owner_id"] = str(owner).strip()
    task_id = _create(ctx, "tasks", properties, association("tasks", payload))
    return Outcome(f"created task {task_id}", ("tasks", task_id))


def create_note(ctx: RunContext) -> Outcome:
    """Create a note at `timestamp_ms` on the record's timeline; 'created note <id>'."""
    payload = ctx.payload
    properties = {
        "hs_note_body": _text(payload, "body")[:NOTE_BODY_MAX],
        "hs_timestamp": hubspot_time(payload.get("timestamp_ms")),
    }
    note_id = _create(ctx, "notes", properties, association("notes", payload))
    return Outcome(f"created note {note_id}", ("notes", note_id))


def _create(
    ctx: RunContext, object_type: str, properties: dict[str, str], link: dict[str, Any]
) -> int:
    kind = object_type[:-1]
    if ctx.api is None:
        raise ActionRejected(
            "no HubSpot credentials: set HUBSPOT_ACCESS_TOKEN or HUBSPOT_CLIENT_ID and install"
        )
    try:
        record = ctx.api.create_object(ctx.portal_id, object_type, properties, [link])
    except HubSpotUnavailable as exc:
        # Without a status the message is our own (connection error, rate limited, gave up).
        answer = f"HubSpot answered {exc.status}" if exc.status else str(exc)
        raise ActionFailed(f"creating the {kind}: {answer}") from None
    except HubSpotError as exc:
        if exc.status is None:  # no token, or the portal must reinstall: our own message
            raise ActionRejected(f"creating the {kind}: {exc}") from None
        reason = f"HubSpot refused it: {exc.status} {exc.category}".strip()
        raise ActionRejected(f"creating the {kind}: {reason}") from None
    return record.id
