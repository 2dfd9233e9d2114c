"""The admin tree's query parameters: filters and page cursors, checked, as the owners' filters.

The API and the pages share these, so `?status=dead&portal=62515` means the same in both. A bad
value raises `BadParameter` naming the parameter (the API answers 400, a page shows it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from service import fetches, inbox, outbox, portals
from service.models import INBOX_STATUSES

PAGE_SIZE = 50
_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


class BadParameter(Exception):
    """A query parameter is malformed; the message names it and what it should be."""


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    return value or None


def _int(query: Mapping[str, str], name: str) -> int | None:
    value = _text(query, name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise BadParameter(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def portal_id(value: object) -> int:
    """A portal (HubSpot account) id from a path or a form: a positive integer below 2^63."""
    text = str(value).strip()
    try:
        return portals.check_portal(int(text) if text.isdigit() else 0)
    except portals.InvalidPortal:
        raise BadParameter(
            f"portal must be a portal (HubSpot account) id, a positive integer, got {text!r}"
        ) from None


def _time(query: Mapping[str, str], name: str, now: datetime) -> datetime | None:
    """An ISO 8601 time (UTC when it names no zone), or a time ago: 15m, 2h, 7d."""
    value = _text(query, name)
    if value is None:
        return None
    relative = _RELATIVE.match(value)
    if relative:
        return now - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadParameter(
            f"{name} must be an ISO 8601 time (2026-01-31T09:00Z) or an age (15m, 2h, 7d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _choice(query: Mapping[str, str], name: str, options: tuple[str, ...]) -> str | None:
    value = _text(query, name)
    if value is not None and value not in options:
        raise BadParameter(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def event_filters(query: Mapping[str, str], *, now: datetime) -> inbox.Filters:
    """?status= &type= &portal= &object= &since= &until= as the inbox's filters."""
    status = _choice(query, "status", INBOX_STATUSES)
    return inbox.Filters(
        statuses=(status,) if status else (),
        subscription_type=_text(query, "type"),
        portal_id=_int(query, "portal"),
        object_id=_int(query, "object"),
        since=_time(query, "since", now),
        until=_time(query, "until", now),
    )


def run_filters(query: Mapping[str, str], *, now: datetime) -> outbox.RunFilters:
    """?status= &rule= &portal= &event= &since= as the outbox's filters."""
    status = _choice(query, "status", outbox.RUN_STATUSES)
    return outbox.RunFilters(
        statuses=(status,) if status else (),
        rule=_text(query, "rule"),
        portal_id=_int(query, "portal"),
        inbox_id=_int(query, "event"),
        since=_time(query, "since", now),
    )


def fetch_filters(query: Mapping[str, str]) -> fetches.Filters:
    """?status= &portal= &object_type= &object= as the fetch queue's filters."""
    return fetches.Filters(
        status=_choice(query, "status", fetches.STATUSES),
        portal_id=_int(query, "portal"),
        object_type=_text(query, "object_type"),
        object_id=_int(query, "object"),
    )


def before_id(query: Mapping[str, str]) -> int | None:
    """The `before` cursor of an id-ordered list: the last id of the previous page."""
    return _int(query, "before")


def fetch_cursor(query: Mapping[str, str]) -> fetches.ObjectKey | None:
    """The `after` cursor of the hydration list: `portal:object_type:object_id`."""
    value = _text(query, "after")
    if value is None:
        return None
    portal, _, rest = value.partition(":")
    object_type, _, object_id = rest.partition(":")
    if not portal.isdigit() or not object_type or not object_id.isdigit():
        raise BadParameter("after must be portal:object_type:object_id, as `next` gave it")
    return int(portal), object_type, int(object_id)


def fetch_key(row: Any) -> str:
    """A hydration request's cursor (and its address in the admin URLs)."""
    return f"{row.portal_id}:{row.object_type}:{row.object_id}"


def is_unfiltered(filters: object) -> bool:
    """Whether no filter was given at all (replaying everything needs `all`)."""
    return filters == type(filters)()
