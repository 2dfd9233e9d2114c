"""HubSpot event JSON -> one normalised internal event (classic and generic forms).

HubSpot's camelCase stops here. Classic events name the object in the subscription type
(`contact.propertyChange`); generic ones (`object.propertyChange`) carry `objectTypeId`.
See HUBSPOT.md §2.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from service.batches import INT64_MAX, json_type


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


# The part of a subscription type after the dot, and the kind it names.
KINDS = {
    "creation": Kind.CREATION,
    "deletion": Kind.DELETION,
    "restore": Kind.RESTORE,
    "propertyChange": Kind.PROPERTY_CHANGE,
    "merge": Kind.MERGE,
    "associationChange": Kind.ASSOCIATION_CHANGE,
    "privacyDeletion": Kind.PRIVACY_DELETION,
}
_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_OTHER = Kind.OTHER  # member lookups on an enum class are slow; normalise runs per event
_ASSOCIATION_CHANGE = Kind.ASSOCIATION_CHANGE

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

# HubSpot's internal property names: a lowercase letter, then lowercase letters, digits and
# underscores, at most 100 characters (HubSpot's property editor: "Internal name ... maximum 100
# characters"; the properties API answers "Names for properties should be lowercase and have
# less than 100 characters"). Names HubSpot derives keep to it: a pipeline stage id with hyphens
# gives hs_v2_date_entered_<the id, hyphens as underscores>_<n>.
_PROPERTY_NAME = re.compile(r"[a-z][a-z0-9_]{0,99}")
# Conversation threads are not CRM objects: their conversation.propertyChange names are
# camelCase (assignedTo, status, isArchived).
_THREAD_PROPERTY_NAME = re.compile(r"[a-z][A-Za-z0-9_]{0,99}")
_PROPERTY_NAME_RULES = {
    _PROPERTY_NAME: "a lowercase letter, then lowercase letters, digits or underscores",
    _THREAD_PROPERTY_NAME: "a lowercase letter, then letters, digits or underscores",
}
# Names already found good, so the same few hundred names are not matched again per event (a
# portal has a bounded set of properties; past this many, names are matched each time).
_GOOD_NAMES: set[tuple[re.Pattern[str], str]] = set()
_GOOD_NAMES_KEPT = 10_000
_MISSING = object()
_TYPE_ID = re.compile(r"[0-9]{1,10}-[0-9]{1,20}")  # 0-1, 2-3456789
_ASSOCIATION_CATEGORY = re.compile(r"[A-Z][A-Z_]{0,63}")  # HUBSPOT_DEFINED, USER_DEFINED, ...
_ASSOCIATION_TYPE = re.compile(r"[A-Z][A-Z0-9_]{0,99}")  # CONTACT_TO_COMPANY, ...

REDACTED = "REDACTED"
# The subscription type of `doctor --self-test`'s event: a namespace HubSpot never sends, so the
# row is recognisable as a test. It normalises to kind OTHER on object type "doctor", which the
# mirror ignores, and rules and handlers never see it (Event.is_self_test).
SELF_TEST_TYPE = "doctor.selfTest"


class InvalidEvent(Exception):
    """HubSpot cannot have sent this event: a field is missing or ill-formed (the message says
    which); it is kept, and ignored with that reason, never retried or applied."""


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


class Event(NamedTuple):
    """One HubSpot event in the service's own shape; immutable.

    A named tuple rather than a frozen dataclass: one is made per event per batch, and a frozen
    dataclass's __init__ cost ~26,000 instructions against ~4,000 (bench/README.md).
    """

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
    raw: Mapping[str, Any] = _NO_FIELDS

    def __repr__(self) -> str:  # the raw event is left out, as it may hold personal data
        shown = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._fields[:-1], self[:-1], strict=True)
        )
        return f"Event({shown})"

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
    """Turn a stored HubSpot event into an Event; unknown shapes become kind OTHER.

    Raises InvalidEvent when a field HubSpot always sends well-formed is not: ids that are not
    64-bit non-negative integers (booleans and fractions included), junk property names,
    associations without their ids or type.
    """
    # Once per event per batch: kept lean (the enum members as module constants, one lookup
    # per field, the optional fields skipped when absent); the checks are the same.
    get = raw.get
    subscription_type = get("subscriptionType") or get("eventType") or ""
    if type(subscription_type) is not str:
        subscription_type = str(subscription_type)
    prefix, _, action = subscription_type.partition(".")
    kind = KINDS.get(action, _OTHER)
    if prefix == "object":
        object_type = object_type_from_id(_generic_type_id(raw, kind))
    else:
        object_type = CLASSIC_TYPES.get(prefix, prefix)
    object_id = _id(raw, "objectId")
    if object_id is None and kind is _ASSOCIATION_CHANGE:
        # Association events name their object in fromObjectId (as the inbox key does).
        object_id = _id(raw, "fromObjectId")
    _id(raw, "subscriptionId")
    _id(raw, "attemptNumber")
    change_source = get("changeSource")
    source_id = get("sourceId")
    return Event(
        inbox_id,
        _required_id(raw, "portalId"),
        object_type,
        object_id,
        kind,
        _required_id(raw, "occurredAt"),
        subscription_type,
        _required_id(raw, "eventId"),
        _property_name(raw, object_type),
        _property_value(raw),
        None if change_source is None else str(change_source),
        None if source_id is None else str(source_id),
        _id(raw, "appId"),
        _id(raw, "newObjectId") or _id(raw, "primaryObjectId"),
        _merged_ids(raw),
        (
            _association(raw, object_type, generic=prefix == "object")
            if kind is _ASSOCIATION_CHANGE
            else None
        ),
        raw,
    )


def change_key(event: Event) -> int:
    """A 63-bit hash naming the CRM change an event reports, the same for every copy of it.

    HUBSPOT_EVENT_SOURCE=both delivers each change twice, as a webhook and as a journal event,
    under different eventIds; the apply stage fires rules and handlers for the first copy it
    applies only (service/changes.py). Two events are the same change when they agree on: the
    portal; the object type, canonical (classic `contact` and objectTypeId `0-1` are both
    `contacts`); the object id; the kind; the property name (property changes); the other side,
    the association type and added or removed (association changes); the merged ids, as a set
    (merges); and occurredAt, in ms. Not on the value, eventId, subscriptionId, attemptNumber or
    changeSource. This assumes HubSpot stamps one change with one occurredAt however it is
    delivered. The apply stage never takes an event of kind `other` for a copy.
    """
    parts: list[object] = [event.portal_id, event.object_type, event.object_id or 0, event.kind]
    if event.kind is Kind.PROPERTY_CHANGE:
        parts.append(event.property_name or "")
    association = event.association
    if association is not None:
        parts += [association.to_type, association.to_id, association.association_type]
        parts.append(association.removed)
    if event.kind is Kind.MERGE:
        parts += sorted(set(event.merged_ids))
    parts.append(event.occurred_at)
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _generic_type_id(raw: Mapping[str, Any], kind: Kind) -> str:
    # Generic association events may carry fromObjectTypeId instead of objectTypeId.
    name = "objectTypeId"
    if raw.get(name) is None and kind is Kind.ASSOCIATION_CHANGE:
        name = "fromObjectTypeId"
    return _type_id(raw, name)


def _type_id(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or _TYPE_ID.fullmatch(value) is None:
        raise InvalidEvent(f"{name} must be an object type id like 0-1, got {json_type(value)}")
    return value


def _property_name(raw: Mapping[str, Any], object_type: str) -> str | None:
    name = raw.get("propertyName")
    if name is None:
        return None
    if not isinstance(name, str):
        raise InvalidEvent(f"propertyName must be a string, got {json_type(name)}")
    form = _THREAD_PROPERTY_NAME if object_type == "conversations" else _PROPERTY_NAME
    if (form, name) in _GOOD_NAMES:
        return name
    if form.fullmatch(name) is None:
        shown = name if len(name) <= 100 else f"{name[:100]}..."
        raise InvalidEvent(
            f"propertyName {shown!r} is not a HubSpot internal name"
            f" ({_PROPERTY_NAME_RULES[form]}, at most 100 characters)"
        )
    if len(_GOOD_NAMES) < _GOOD_NAMES_KEPT:
        _GOOD_NAMES.add((form, name))
    return name


def _property_value(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("propertyValue")
    if value is not None and not isinstance(value, str):
        # HubSpot sends every value as a string; str(True) would store "True", not "true".
        raise InvalidEvent(f"propertyValue must be a string, got {json_type(value)}")
    return value


def _merged_ids(raw: Mapping[str, Any]) -> tuple[int, ...]:
    merged = raw.get("mergedObjectIds")
    if merged is None:
        return ()
    if not isinstance(merged, list):
        raise InvalidEvent(f"mergedObjectIds must be an array of ids, got {json_type(merged)}")
    return tuple(_parse_id(value, f"mergedObjectIds[{i}]") for i, value in enumerate(merged))


def _association(raw: Mapping[str, Any], object_type: str, *, generic: bool) -> Association:
    from_id, to_id = _id(raw, "fromObjectId"), _id(raw, "toObjectId")
    if from_id is None:
        raise InvalidEvent("associationChange without fromObjectId")
    if to_id is None:
        raise InvalidEvent("associationChange without toObjectId")
    removed, primary = _flag(raw, "associationRemoved"), _flag(raw, "isPrimaryAssociation")
    # The generic form names both object types and a type id; a classic event (whose name
    # says both types) may carry an associationTypeId too.
    if (
        generic
        or "fromObjectTypeId" in raw
        or ("associationTypeId" in raw and "associationType" not in raw)
    ):
        from_type = object_type_from_id(_type_id(raw, "fromObjectTypeId"))
        to_type = object_type_from_id(_type_id(raw, "toObjectTypeId"))
        type_id = _id(raw, "associationTypeId")
        if type_id is None:
            raise InvalidEvent("associationChange without associationTypeId")
        category = raw.get("associationCategory")
        if category is None:
            category = "HUBSPOT_DEFINED"
        elif not isinstance(category, str) or _ASSOCIATION_CATEGORY.fullmatch(category) is None:
            raise InvalidEvent(
                "associationCategory must be a category like HUBSPOT_DEFINED,"
                f" got {json_type(category)}"
            )
        association_type = f"{category}:{type_id}"
    else:
        name = raw.get("associationType")
        if name is None:
            raise InvalidEvent("associationChange without associationType")
        if not isinstance(name, str) or _ASSOCIATION_TYPE.fullmatch(name) is None:
            raise InvalidEvent(
                f"associationType must be a name like CONTACT_TO_COMPANY, got {json_type(name)}"
            )
        association_type = name
        sides = association_sides(association_type)
        from_type, to_type = (object_type, "") if sides is None else sides
    return Association(
        from_type=from_type,
        from_id=from_id,
        to_type=to_type,
        to_id=to_id,
        association_type=association_type,
        removed=removed,
        primary=primary,
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


def _required_id(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name, _MISSING)
    if type(value) is int and 0 <= value <= INT64_MAX:  # the common case, first and cheap
        return value
    if value is _MISSING:
        raise InvalidEvent(f"missing required field {name}")
    return _parse_id(value, name)


def _id(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is None or (type(value) is int and 0 <= value <= INT64_MAX):
        return value
    return _parse_id(value, name)


def _parse_id(value: object, name: str) -> int:
    """A HubSpot id: an integer in 0..2**63-1, never a boolean or a fraction. Digit strings
    are read too (rows stored before ingest checked types)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= INT64_MAX:
            return value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
        if number <= INT64_MAX:
            return number
    raise InvalidEvent(f"{name} must be a non-negative 64-bit integer, got {json_type(value)}")


def _flag(raw: Mapping[str, Any], name: str) -> bool:
    value = raw.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidEvent(f"{name} must be a boolean, got {json_type(value)}")
    return value
