"""HubSpot event JSON -> one normalised internal event (classic and generic forms).

HubSpot's camelCase stops here. Classic events name the object in the subscription type
(`contact.propertyChange`); generic ones (`object.propertyChange`) carry `objectTypeId`.
See HUBSPOT.md §2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What happened to the object."""

    CREATION = "creation"
    DELETION = "deletion"
    RESTORE = "restore"
    PROPERTY_CHANGE = "property_change"
    MERGE = "merge"
    ASSOCIATION_CHANGE = "association_change"
    PRIVACY_DELETION = "privacy_deletion"
    OTHER = "other"


_KINDS = {
    "creation": Kind.CREATION,
    "deletion": Kind.DELETION,
    "restore": Kind.RESTORE,
    "propertyChange": Kind.PROPERTY_CHANGE,
    "merge": Kind.MERGE,
    "associationChange": Kind.ASSOCIATION_CHANGE,
    "privacyDeletion": Kind.PRIVACY_DELETION,
}

# Classic subscription prefixes and the standard objectTypeIds, mapped to CRM API object names.
CLASSIC_TYPES = {
    "contact": "contacts",
    "company": "companies",
    "deal": "deals",
    "ticket": "tickets",
    "product": "products",
    "line_item": "line_items",
    "lineitem": "line_items",
    "conversation": "conversations",
}
TYPE_BY_ID = {
    "0-1": "contacts",
    "0-2": "companies",
    "0-3": "deals",
    "0-5": "tickets",
    "0-7": "products",
    "0-8": "line_items",
}
# Engagements this service writes (tasks, notes): named, so their webhook echoes are recognised,
# but not mirrored.
ENGAGEMENT_TYPE_IDS = {"0-27": "tasks", "0-46": "notes"}
# The values HubSpot accepts for a task's hs_task_priority.
TASK_PRIORITIES = ("LOW", "MEDIUM", "HIGH")
# Objects the mirror keeps. Conversations are not CRM records; custom objects are `2-NNN`.
MIRRORED_TYPES = frozenset(TYPE_BY_ID.values())
_CUSTOM_TYPE = re.compile(r"^2-\d+$")
# CONTACT_TO_COMPANY -> (contacts, companies): the classic association type names.
_ASSOCIATION_NAME = re.compile(r"^([A-Z_]+?)_TO_([A-Z_]+)$")
_ASSOCIATION_OBJECTS = {
    "CONTACT": "contacts",
    "COMPANY": "companies",
    "DEAL": "deals",
    "TICKET": "tickets",
    "PRODUCT": "products",
    "LINE_ITEM": "line_items",
    "PARENT_COMPANY": "companies",
    "CHILD_COMPANY": "companies",
}

REDACTED = "REDACTED"
# The subscription type of `doctor --self-test`'s event: a namespace HubSpot never sends, so the
# row is recognisable as a test. It normalises to kind OTHER on object type "doctor", which the
# mirror ignores, and rules and handlers never see it (Event.is_self_test).
SELF_TEST_TYPE = "doctor.selfTest"


def is_mirrored(object_type: str) -> bool:
    """Whether the mirror keeps objects of this type (standard CRM objects and custom `2-NNN`)."""
    return object_type in MIRRORED_TYPES or bool(_CUSTOM_TYPE.match(object_type))


def object_type_from_id(type_id: str) -> str:
    """`0-1` -> `contacts`; custom `2-NNN` and unknown ids are kept as they are."""
    return TYPE_BY_ID.get(type_id) or ENGAGEMENT_TYPE_IDS.get(type_id, type_id)


@dataclass(frozen=True, slots=True)
class Association:
    """The association an `associationChange` event reports."""

    from_type: str
    from_id: int
    to_type: str
    to_id: int
    association_type: str
    removed: bool
    primary: bool


@dataclass(frozen=True, slots=True)
class Event:
    """One HubSpot event in the service's own shape."""

    inbox_id: int
    portal_id: int
    object_type: str
    object_id: int | None
    kind: Kind
    occurred_at: int
    subscription_type: str
    event_id: int
    property_name: str | None = None
    property_value: str | None = None
    change_source: str | None = None
    source_id: str | None = None
    app_id: int | None = None
    survivor_id: int | None = None
    merged_ids: tuple[int, ...] = ()
    association: Association | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def key(self) -> tuple[int, str, int]:
        """(portal, object type, object id): the mirror row this event is about."""
        return (self.portal_id, self.object_type, self.object_id or 0)

    @property
    def is_self_test(self) -> bool:
        """The marked test event `doctor --self-test` sends: no rule or handler may fire on it."""
        return self.subscription_type.startswith("doctor.")

    @property
    def redacted(self) -> bool:
        """HubSpot withheld a sensitive value; it must be fetched, never stored."""
        return self.property_value == REDACTED

    @property
    def merge_losers(self) -> tuple[int, ...]:
        """Ids merged away into the survivor (the primary too, when a new record survives)."""
        if self.kind is not Kind.MERGE or self.survivor_id is None:
            return ()
        ids = set(self.merged_ids)
        if self.object_id is not None:
            ids.add(self.object_id)
        ids.discard(self.survivor_id)
        return tuple(sorted(ids))


def normalise(inbox_id: int, raw: Mapping[str, Any]) -> Event:
    """Turn a stored HubSpot event into an Event; unknown shapes become kind OTHER."""
    subscription_type = str(raw.get("subscriptionType") or raw.get("eventType") or "")
    prefix, _, action = subscription_type.partition(".")
    kind = _KINDS.get(action, Kind.OTHER)
    if prefix == "object":
        # Generic association events carry fromObjectTypeId instead of objectTypeId.
        type_id = raw.get("objectTypeId") or raw.get("fromObjectTypeId") or ""
        object_type = object_type_from_id(str(type_id))
    else:
        object_type = CLASSIC_TYPES.get(prefix, prefix)
    value = raw.get("propertyValue")
    return Event(
        inbox_id=inbox_id,
        portal_id=int(raw["portalId"]),
        object_type=object_type,
        # Association events name their object in fromObjectId (as the inbox key does).
        object_id=_int(raw.get("objectId"))
        if raw.get("objectId") is not None or kind is not Kind.ASSOCIATION_CHANGE
        else _int(raw.get("fromObjectId")),
        kind=kind,
        occurred_at=int(raw["occurredAt"]),
        subscription_type=subscription_type,
        event_id=int(raw["eventId"]),
        property_name=_str(raw.get("propertyName")),
        property_value=None if value is None else str(value),
        change_source=_str(raw.get("changeSource")),
        source_id=_str(raw.get("sourceId")),
        app_id=_int(raw.get("appId")),
        survivor_id=_int(raw.get("newObjectId")) or _int(raw.get("primaryObjectId")),
        merged_ids=tuple(
            i for i in (_int(v) for v in raw.get("mergedObjectIds") or ()) if i is not None
        ),
        association=_association(raw, object_type) if kind is Kind.ASSOCIATION_CHANGE else None,
        raw=raw,
    )


def _association(raw: Mapping[str, Any], object_type: str) -> Association | None:
    from_id, to_id = _int(raw.get("fromObjectId")), _int(raw.get("toObjectId"))
    if from_id is None or to_id is None:
        return None
    if "fromObjectTypeId" in raw or "associationTypeId" in raw:
        from_type = object_type_from_id(str(raw.get("fromObjectTypeId", "")))
        to_type = object_type_from_id(str(raw.get("toObjectTypeId", "")))
        category = str(raw.get("associationCategory") or "HUBSPOT_DEFINED")
        association_type = f"{category}:{raw.get('associationTypeId')}"
    else:
        association_type = str(raw.get("associationType") or "")
        sides = association_sides(association_type)
        if sides is None:
            from_type, to_type = object_type, ""
        else:
            from_type, to_type = sides
    return Association(
        from_type=from_type,
        from_id=from_id,
        to_type=to_type,
        to_id=to_id,
        association_type=association_type,
        removed=bool(raw.get("associationRemoved")),
        primary=bool(raw.get("isPrimaryAssociation")),
    )


def association_sides(association_type: str) -> tuple[str, str] | None:
    """`CONTACT_TO_COMPANY` -> (contacts, companies); None for names it cannot read."""
    match = _ASSOCIATION_NAME.match(association_type)
    if match is None:
        return None
    from_type = _ASSOCIATION_OBJECTS.get(match.group(1))
    to_type = _ASSOCIATION_OBJECTS.get(match.group(2))
    if from_type is None or to_type is None:
        return None
    return from_type, to_type


def inverse_association_type(association_type: str) -> str | None:
    """`CONTACT_TO_COMPANY` -> `COMPANY_TO_CONTACT`; None when the name has no known inverse."""
    if association_sides(association_type) is None:
        return None
    left, _, right = association_type.partition("_TO_")
    return f"{right}_TO_{left}"


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _str(value: object) -> str | None:
    return None if value is None else str(value)
