"""service.devtools.samples: the sample events of `hubspot-webhooks send` carry what HubSpot's
events of their kind carry (HUBSPOT.md §2)."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from service import inbox
from service.devtools import delivery, samples
from service.devtools.samples import SampleSpec
from tests.factories import sample

COMMON_FIELDS = {
    "eventId",
    "subscriptionId",
    "portalId",
    "appId",
    "occurredAt",
    "subscriptionType",
    "attemptNumber",
    "changeSource",
}


@pytest.mark.parametrize(
    "subscription_type", [*samples.SAMPLE_TYPES, "contact.someFutureKind", "line_item.creation"]
)
def test_every_sample_type_is_a_batch_the_inbox_accepts(subscription_type: str) -> None:
    now_ms = int(time.time() * 1000)
    events = samples.build_events(
        SampleSpec(subscription_type=subscription_type), 3, rng=random.Random(1), now_ms=now_ms
    )
    batch = inbox.parse_batch(delivery.encode_batch(events))
    assert batch.events == events
    for event in events:
        assert event.keys() >= COMMON_FIELDS
        assert event["subscriptionType"] == subscription_type
        assert event["attemptNumber"] == 0
        assert event["occurredAt"] == now_ms
        assert event["portalId"] == samples.DEFAULT_PORTAL_ID
        assert event["appId"] == samples.DEFAULT_APP_ID
        assert isinstance(event.get("objectId", event.get("fromObjectId")), int)


def test_creation_is_flagged_new_and_carries_only_common_fields() -> None:
    event = sample("company.creation")
    assert event.keys() == COMMON_FIELDS | {"objectId", "changeFlag"}
    assert event["changeFlag"] == "NEW"
    assert event["changeSource"] == "CRM_UI"


@pytest.mark.parametrize(
    "subscription_type", ["contact.deletion", "contact.privacyDeletion", "deal.restore"]
)
def test_deletion_restore_and_privacy_deletion_carry_the_common_fields(
    subscription_type: str,
) -> None:
    assert sample(subscription_type).keys() == COMMON_FIELDS | {"objectId"}


def test_unknown_kinds_get_the_common_fields() -> None:
    assert sample("contact.someFutureKind").keys() == COMMON_FIELDS | {"objectId"}


@pytest.mark.parametrize(
    ("subscription_type", "options", "expected"),
    [
        ("contact.propertyChange", {}, ("lifecyclestage", "customer")),
        ("deal.propertyChange", {}, ("dealstage", "closedwon")),
        ("deal.propertyChange", {"property_name": "dealstage"}, ("dealstage", "closedwon")),
        ("deal.propertyChange", {"property_value": "closedlost"}, ("dealstage", "closedlost")),
        (
            "contact.propertyChange",
            {"property_name": "email", "property_value": "a@example.com"},
            ("email", "a@example.com"),
        ),
        ("contact.propertyChange", {"property_name": "phone", "property_value": ""}, ("phone", "")),
        ("contact.propertyChange", {"property_name": "jobtitle"}, ("jobtitle", "Example")),
        ("object.propertyChange", {"object_type_id": "0-3"}, ("dealstage", "closedwon")),
        ("object.propertyChange", {"object_type_id": "2-999"}, ("name", "Example")),
    ],
)
def test_property_change_names_a_property_and_its_new_value_as_a_string(
    subscription_type: str, options: dict[str, Any], expected: tuple[str, str]
) -> None:
    event = sample(subscription_type, **options)
    assert (event["propertyName"], event["propertyValue"]) == expected
    assert event["sourceId"].startswith("userId:")


def test_merge_names_primary_merged_and_new_object() -> None:
    event = sample("contact.merge", object_id=501)
    assert event["objectId"] == event["primaryObjectId"] == event["newObjectId"] == 501
    assert isinstance(event["mergedObjectIds"], list)
    assert event["mergedObjectIds"]
    assert 501 not in event["mergedObjectIds"]
    assert all(isinstance(i, int) for i in event["mergedObjectIds"])
    assert isinstance(event["numberOfPropertiesMoved"], int)


def test_association_change_names_both_ends_instead_of_an_object() -> None:
    event = sample("contact.associationChange", object_id=77)
    assert event.keys() == COMMON_FIELDS | {
        "associationType",
        "fromObjectId",
        "toObjectId",
        "associationRemoved",
        "isPrimaryAssociation",
    }
    assert event["associationType"] == "CONTACT_TO_COMPANY"
    assert event["fromObjectId"] == 77
    assert isinstance(event["toObjectId"], int)
    assert event["associationRemoved"] is False
    assert event["isPrimaryAssociation"] is False
    assert sample("deal.associationChange")["associationType"] == "DEAL_TO_CONTACT"


@pytest.mark.parametrize(
    "subscription_type",
    [f"object.{kind}" for kind in ("creation", "deletion", "merge", "restore", "propertyChange")],
)
def test_generic_object_events_carry_the_object_type_id(subscription_type: str) -> None:
    assert sample(subscription_type, object_type_id="0-3")["objectTypeId"] == "0-3"


def test_generic_association_names_both_object_types() -> None:
    event = sample("object.associationChange", object_type_id="0-1")
    assert "objectTypeId" not in event
    assert "objectId" not in event
    assert event["fromObjectTypeId"] == "0-1"
    assert event["toObjectTypeId"] == "0-2"
    assert event["associationCategory"] == "HUBSPOT_DEFINED"
    assert isinstance(event["associationTypeId"], int)
    assert isinstance(event["fromObjectId"], int)
    assert isinstance(event["toObjectId"], int)


def test_conversation_new_message_names_the_message() -> None:
    event = sample("conversation.newMessage")
    assert event["messageType"] == "MESSAGE"
    assert isinstance(event["messageId"], str)
    assert event["messageId"]


def test_event_ids_are_unique_9_to_10_digit_numbers_and_new_every_run() -> None:
    spec = SampleSpec(subscription_type="contact.creation")
    first = samples.build_events(spec, 500, rng=random.Random())
    second = samples.build_events(spec, 500, rng=random.Random())
    ids = [e["eventId"] for e in first]
    assert len(set(ids)) == 500
    assert all(100_000_000 <= i < 10_000_000_000 for i in ids)
    assert not set(ids) & {e["eventId"] for e in second}


def test_subscription_id_is_stable_per_subscription() -> None:
    contact = SampleSpec(subscription_type="contact.propertyChange")
    same = SampleSpec(subscription_type="contact.propertyChange", object_id=5, portal_id=9)
    assert contact.subscription_id() == same.subscription_id()
    other_property = SampleSpec(subscription_type="contact.propertyChange", property_name="email")
    deal = SampleSpec(subscription_type="object.creation", object_type_id="0-3")
    company = SampleSpec(subscription_type="object.creation", object_type_id="0-2")
    assert len({s.subscription_id() for s in (contact, other_property, deal, company)}) == 4


def test_object_id_is_fixed_when_given() -> None:
    spec = SampleSpec(subscription_type="contact.creation", object_id=42, portal_id=7)
    events = samples.build_events(spec, 5, rng=random.Random(3))
    assert {(e["objectId"], e["portalId"]) for e in events} == {(42, 7)}
