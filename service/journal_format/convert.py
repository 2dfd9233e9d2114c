"""One Webhooks Journal event -> the push-shaped events service.events reads (HUBSPOT.md §5).

The journal's file format is not documented by HubSpot in text; service.journal_format says
what is assumed, and which shapes are tolerated. Here: the classic form (`contact.*`) for the
standard types 0-1/0-2/0-3/0-5/0-7/0-8, the generic `object.*` with `objectTypeId` otherwise.
UPDATE and SNAPSHOT give one propertyChange per property; CREATE a creation and one
propertyChange per property it carries; DELETE, RESTORE and MERGE their kinds; ASSOCIATION_ADDED
and _REMOVED an associationChange (the other side in `associatedObjectTypeId`/`toObjectTypeId`
and `associatedObjectId`/`toObjectId`, with `associationTypeId` and `associationCategory`);
GDPR_DELETE `contact.privacyDeletion`. Any other action (APP_INSTALL, lists, unknown), or an
UPDATE without changes, gives one event of kind OTHER (`<prefix>.<ACTION>`): stored, visible.

`eventId` (the inbox's dedupe key with portal, object and occurredAt) is not in the file; it is
derived: the first 63 bits of the SHA-256 of a canonical JSON array of the entry's offset (or
the event's own `offset`), portalId, objectTypeId, objectId, action, property name ("" for the
events that are not property changes), occurredAt, and for associations the other side's type,
id and association type id, for merges the merged ids, for actions mapped to OTHER their
remaining fields (a list id). It is *stable*: every input is what HubSpot wrote into an
immutable journal entry; nothing comes from the time of reading, the attempt, or the event's
position in the file, so reading the same entry again (after a crash, a replay, a re-ordered
file) gives the same ids and the inbox counts those events as duplicates. It is *distinct*: two
events of one entry differ in at least one of those fields (one change per object, action,
property and moment), so no event of an entry is taken for another. It is never 0.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.batches import INT64_MAX, json_type

CONTACT_TYPE_ID = "0-1"
# The standard objects with a classic subscription prefix (HUBSPOT.md §2).
CLASSIC_PREFIXES = {
    "0-1": "contact",
    "0-2": "company",
    "0-3": "deal",
    "0-5": "ticket",
    "0-7": "product",
    "0-8": "line_item",
}
# Journal actions and the push event kind (the part after the dot) each maps to.
ACTION_KINDS = {
    "CREATE": "creation",
    "DELETE": "deletion",
    "RESTORE": "restore",
    "MERGE": "merge",
    "ASSOCIATION_ADDED": "associationChange",
    "ASSOCIATION_REMOVED": "associationChange",
    "GDPR_DELETE": "privacyDeletion",
}
_PROPERTY_ACTIONS = ("CREATE", "UPDATE", "SNAPSHOT")
NAME_KEYS = ("propertyName", "name", "property")
_VALUE_KEYS = ("newValue", "propertyValue", "value")
VALUE_FIELDS = ("propertyChanges", "properties")  # never copied into the `journal` key
_OTHER_SIDE_TYPE = ("associatedObjectTypeId", "toObjectTypeId")
_OTHER_SIDE_ID = ("associatedObjectId", "toObjectId")
_TYPE_ID = re.compile(r"[0-9]{1,10}-[0-9]{1,20}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidJournalFile(Exception):
    """A journal file cannot be read into events; the message says what and where (event index)."""


@dataclass(slots=True)
class _Source:
    """One journal event's common fields, and how its push events are made."""

    where: str
    portal: int
    occurred: int
    action: str
    type_id: str | None
    object_id: int | None
    key_offset: str
    prefix: str | None  # contact, company, ... for the classic form; None: generic
    base: dict[str, Any]
    journal: dict[str, Any]

    def push(
        self, kind: str, prop: str = "", extra: Mapping[str, Any] | None = None, tail: Any = None
    ) -> dict[str, Any]:
        """A push event of this journal event; `prop` and `tail` complete its eventId key."""
        key = [self.key_offset, self.portal, self.type_id, self.object_id, self.action]
        return {
            "eventId": _event_id([*key, prop, self.occurred, tail]),
            "subscriptionType": f"{self.prefix or 'object'}.{kind}",
            **self.base,
            **(extra or {}),
            "journal": self.journal,
        }


def push_events(
    index: int, raw: Any, entry_offset: str, contacts: set[tuple[int, int]]
) -> list[dict[str, Any]]:
    """The push events of the file's `index`-th event; adds the contacts they name to
    `contacts`. InvalidJournalFile when it lacks portalId/occurredAt or an id is ill-formed."""
    source, changes = _source(f"event [{index}]", raw, entry_offset)
    produced = _action_events(source, raw)
    if source.action in _PROPERTY_ACTIONS:
        for name, value in changes:
            values = {"propertyName": name, "propertyValue": value}
            produced.append(source.push("propertyChange", prop=name, extra=values))
    if not produced:  # an action this service does not map: kept as an event of kind OTHER
        if source.prefix is None:
            source.prefix = "object" if _TYPE_ID.fullmatch(source.type_id or "") else "journal"
        rest = {k: v for k, v in source.journal.items() if k not in source.base}
        del rest["offset"]
        produced.append(source.push(source.action, tail=_canonical(rest)))
    for event in produced:
        contacts.update((source.portal, i) for i in _contacts_named(event))
    return produced


def _source(where: str, raw: Any, entry_offset: str) -> tuple[_Source, list[tuple[str, str]]]:
    """The event's common fields, checked, and its property changes."""
    if not isinstance(raw, dict):
        raise InvalidJournalFile(f"{where} must be a JSON object, got {json_type(raw)}")
    if raw.get("portalId") is None:
        raise InvalidJournalFile(f"{where}: missing required field portalId")
    portal = parse_id(raw["portalId"], f"{where}: portalId")
    occurred = _time(raw.get("occurredAt"), where)
    action = raw.get("action")
    if action is not None and not isinstance(action, str):
        raise InvalidJournalFile(f"{where}: action must be a string, got {json_type(action)}")
    type_id = raw.get("objectTypeId")
    if type_id is not None and not isinstance(type_id, str):
        raise InvalidJournalFile(f"{where}: objectTypeId must be a string like 0-1")
    object_id = _optional_id(raw, ("objectId",), where)
    changes = _property_changes(raw.get("propertyChanges"), where)
    own_offset = raw.get("offset")
    journal = {k: v for k, v in raw.items() if k not in VALUE_FIELDS and k != "offset"}
    journal |= {"offset": entry_offset, "action": (action or "UNKNOWN").upper()}
    if own_offset is not None:
        journal["eventOffset"] = own_offset
    if changes:
        journal["propertyNames"] = [name for name, _ in changes]
    base: dict[str, Any] = {
        "subscriptionId": 0,
        "portalId": portal,
        "occurredAt": occurred,
        "objectId": object_id,
        "attemptNumber": 0,
    }
    base |= {k: raw[k] for k in ("changeSource", "sourceId") if isinstance(raw.get(k), str)}
    if type_id is not None:
        base["objectTypeId"] = type_id
    source = _Source(
        where=where,
        portal=portal,
        occurred=occurred,
        action=journal["action"],
        type_id=type_id,
        object_id=object_id,
        key_offset=entry_offset if own_offset is None else str(own_offset),
        prefix=CLASSIC_PREFIXES.get(type_id or ""),
        base=base,
        journal=journal,
    )
    return source, changes


def _action_events(source: _Source, raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The push events of the action itself (property changes aside)."""
    if source.action == "GDPR_DELETE":
        source.prefix = "contact"  # HubSpot deletes contacts for privacy (HUBSPOT.md §2)
        return [source.push("privacyDeletion")]
    if source.action == "MERGE":
        merge = _merge_fields(raw, source.where)
        if source.object_id is None and "primaryObjectId" in merge:
            source.base["objectId"] = merge["primaryObjectId"]
        tail = sorted(merge.get("mergedObjectIds", []))
        return [source.push("merge", extra=merge, tail=tail)]
    kind = ACTION_KINDS.get(source.action)
    if kind == "associationChange":
        other = _association_fields(raw, source)
        tail = [other.get(k) for k in ("toObjectTypeId", "toObjectId", "associationTypeId")]
        return [source.push(kind, extra=other, tail=tail)]
    return [] if kind is None else [source.push(kind)]


def _contacts_named(event: Mapping[str, Any]) -> list[int]:
    """The contact ids a push event names: its object, merge ids, an association's other side."""
    ids: list[Any] = []
    if (
        event["subscriptionType"].startswith("contact.")
        or event.get("objectTypeId") == CONTACT_TYPE_ID
    ):
        ids += [event.get("objectId"), event.get("primaryObjectId"), event.get("newObjectId")]
        ids += event.get("mergedObjectIds", [])
    if event.get("toObjectTypeId") == CONTACT_TYPE_ID:
        ids.append(event.get("toObjectId"))
    return [i for i in ids if isinstance(i, int)]


def _event_id(parts: list[Any]) -> int:
    """The first 63 bits of the SHA-256 of the parts as canonical JSON; never 0."""
    digest = hashlib.sha256(_canonical(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1 or 1


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _merge_fields(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("primaryObjectId", "newObjectId"):
        found = _optional_id(raw, (name,), where)
        if found is not None:
            fields[name] = found
    merged = raw.get("mergedObjectIds")
    if merged is not None:
        if not isinstance(merged, list):
            raise InvalidJournalFile(f"{where}: mergedObjectIds must be an array of ids")
        fields["mergedObjectIds"] = [
            parse_id(value, f"{where}: mergedObjectIds[{i}]") for i, value in enumerate(merged)
        ]
    moved = raw.get("numberOfPropertiesMoved")
    if isinstance(moved, int) and not isinstance(moved, bool):
        fields["numberOfPropertiesMoved"] = moved
    return fields


def _association_fields(raw: Mapping[str, Any], source: _Source) -> dict[str, Any]:
    """The fields service.events reads from an associationChange (its generic form)."""
    where = source.where
    fields: dict[str, Any] = {
        "fromObjectId": source.object_id,
        "associationRemoved": source.action == "ASSOCIATION_REMOVED",
    }
    if source.type_id is not None:
        fields["fromObjectTypeId"] = source.type_id
    other_type = next((raw[k] for k in _OTHER_SIDE_TYPE if raw.get(k) is not None), None)
    if other_type is not None:
        fields["toObjectTypeId"] = str(other_type)
    other_id = _optional_id(raw, _OTHER_SIDE_ID, where)
    if other_id is not None:
        fields["toObjectId"] = other_id
    type_number = _optional_id(raw, ("associationTypeId",), where)
    if type_number is not None:
        fields["associationTypeId"] = type_number
    category = raw.get("associationCategory")
    if category is not None:
        fields["associationCategory"] = category
    primary = raw.get("isPrimaryAssociation", raw.get("isPrimary"))
    if isinstance(primary, bool):
        fields["isPrimaryAssociation"] = primary
    return fields


def _property_changes(changes: Any, where: str) -> list[tuple[str, str]]:
    """(name, value as a string) of each property change, in the file's order."""
    if changes is None:
        return []
    found: list[tuple[str, str]] = []
    if isinstance(changes, list):
        for i, item in enumerate(changes):
            at = f"{where}: propertyChanges[{i}]"
            if not isinstance(item, dict):
                raise InvalidJournalFile(f"{at} must be an object, got {json_type(item)}")
            name = next((item[k] for k in NAME_KEYS if k in item), None)
            if not isinstance(name, str) or not name:
                raise InvalidJournalFile(f"{at} has no property name ({', '.join(NAME_KEYS)})")
            found.append((name, _value_in(item, f"{at} ({name})")))
    elif isinstance(changes, dict):
        for name, given in changes.items():
            at = f"{where}: propertyChanges.{name}"
            found.append((name, _value_in(given, at) if isinstance(given, dict) else _text(given)))
    else:
        raise InvalidJournalFile(f"{where}: propertyChanges must be an array or an object")
    return found


def _value_in(item: Mapping[str, Any], at: str) -> str:
    for key in _VALUE_KEYS:
        if key in item:
            return _text(item[key])
    # Never guess: "" would clear the mirror's value. The entry fails, kept for a replay.
    raise InvalidJournalFile(f"{at} has no value ({', '.join(_VALUE_KEYS)})")


def _text(value: Any) -> str:
    """A value as HubSpot's push events carry it: always a string ("" when cleared)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return _canonical(value)


def _time(value: Any, where: str) -> int:
    """occurredAt as epoch ms: a number, a digit string or ISO 8601."""
    if value is None:
        raise InvalidJournalFile(f"{where}: missing required field occurredAt")
    if isinstance(value, str) and not value.isdigit():
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidJournalFile(
                f"{where}: occurredAt must be epoch ms or an ISO 8601 time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = (moment - _EPOCH) // timedelta(milliseconds=1)
    return parse_id(value, f"{where}: occurredAt")


def _optional_id(raw: Mapping[str, Any], names: tuple[str, ...], where: str) -> int | None:
    for name in names:
        if raw.get(name) is not None:
            return parse_id(raw[name], f"{where}: {name}")
    return None


def parse_id(value: Any, what: str) -> int:
    """A HubSpot id: an integer (or digit string) in 0..2**63-1; InvalidJournalFile naming
    `what` otherwise."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX:
        return value
    raise InvalidJournalFile(
        f"{what} must be a non-negative 64-bit integer, got {json_type(value)}"
    )
