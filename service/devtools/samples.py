"""Sample HubSpot events for `hubspot-webhooks send`: which kinds exist and how each is built.

The only place that knows what HubSpot's webhook events look like from the sending side: every
sample carries the fields HubSpot's own events of its kind carry (HUBSPOT.md §2), with realistic
random ids, so a receiver cannot tell them from HubSpot's.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.events import CLASSIC_TYPES, TYPE_BY_ID

__all__ = [
    "DEFAULT_APP_ID",
    "DEFAULT_CHANGE_SOURCE",
    "DEFAULT_PORTAL_ID",
    "PREFIX_BY_TYPE_ID",
    "SAMPLE_CHANGES",
    "SAMPLE_TYPES",
    "RawEvent",
    "SampleSpec",
    "build_event",
    "build_events",
]

# One event as JSON, in HubSpot's camelCase (service.events.Event is the normalised form).
RawEvent = dict[str, Any]

DEFAULT_PORTAL_ID = 62515  # the portal of HubSpot's documentation samples
DEFAULT_APP_ID = 54321
DEFAULT_CHANGE_SOURCE = "CRM_UI"

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

# The classic subscription prefix of each standard objectTypeId (0-3 -> deal), from
# service.events. Generic (object.*) events name their object type by id (HUBSPOT.md §2); where
# CLASSIC_TYPES has two prefixes for one object (line_item, lineitem) the first is kept.
PREFIX_BY_TYPE_ID: Mapping[str, str] = {
    type_id: next(prefix for prefix, plural in CLASSIC_TYPES.items() if plural == name)
    for type_id, name in TYPE_BY_ID.items()
}

# The (propertyName, propertyValue) a propertyChange sample of each object sets when
# --property/--value are not given.
SAMPLE_CHANGES: Mapping[str, tuple[str, str]] = {
    "contact": ("lifecyclestage", "customer"),
    "company": ("lifecyclestage", "customer"),
    "deal": ("dealstage", "closedwon"),
    "ticket": ("hs_pipeline_stage", "4"),  # "Closed" in the default ticket pipeline
    "product": ("price", "100"),
    "line_item": ("quantity", "2"),
    "conversation": ("status", "CLOSED"),
}
_FALLBACK_CHANGE = ("name", "Example")

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


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """What the built-in sample events look like; every field has a realistic default."""

    subscription_type: str = "contact.creation"
    portal_id: int = DEFAULT_PORTAL_ID
    app_id: int = DEFAULT_APP_ID
    object_id: int | None = None  # None: a random id per event
    object_type_id: str = "0-1"  # object.* events only
    property_name: str | None = None  # propertyChange only; None: the object's sample change
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
            name = PREFIX_BY_TYPE_ID.get(self.object_type_id, "")
        sample_name, sample_value = SAMPLE_CHANGES.get(name, _FALLBACK_CHANGE)
        property_name = sample_name if self.property_name is None else self.property_name
        if self.property_value is not None:
            return property_name, self.property_value
        if property_name == sample_name:
            return property_name, sample_value
        return property_name, _FALLBACK_CHANGE[1]

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


def build_event(
    spec: SampleSpec, *, event_id: int, occurred_at: int, rng: random.Random
) -> RawEvent:
    """One event as HubSpot sends it for `spec.subscription_type` (HUBSPOT.md §2)."""
    object_id = spec.object_id if spec.object_id is not None else _random_object_id(rng)
    event: RawEvent = {
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


def _association_fields(spec: SampleSpec, from_id: int, rng: random.Random) -> RawEvent:
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
) -> list[RawEvent]:
    """`count` distinct sample events, with random 9-10 digit eventIds unique in the run."""
    occurred_at = int(time.time() * 1000) if now_ms is None else now_ms
    seen: set[int] = set()
    events: list[RawEvent] = []
    while len(events) < count:
        event_id = rng.randrange(100_000_000, 10_000_000_000)
        if event_id in seen:
            continue
        seen.add(event_id)
        events.append(build_event(spec, event_id=event_id, occurred_at=occurred_at, rng=rng))
    return events
