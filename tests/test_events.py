"""service.events: HubSpot's classic and generic webhook payloads become one Event shape.

Payloads follow HUBSPOT.md §2 and the samples in HubSpot's webhook docs.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.events import (
    Association,
    InvalidEvent,
    Kind,
    association_sides,
    inverse_association_type,
    is_mirrored,
    normalise,
    object_type_from_id,
)
from tests.factories import APP_ID, PORTAL, hubspot_event

# --- classic subscription types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "object_type"),
    [
        ("contact", "contacts"),
        ("company", "companies"),
        ("deal", "deals"),
        ("ticket", "tickets"),
        ("product", "products"),
        ("line_item", "line_items"),
        ("conversation", "conversations"),
    ],
)
def test_classic_subscription_prefix_names_the_object_type(prefix: str, object_type: str) -> None:
    event = normalise(1, hubspot_event(f"{prefix}.creation", objectId=123))
    assert event.object_type == object_type
    assert event.kind is Kind.CREATION


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        ("creation", Kind.CREATION),
        ("deletion", Kind.DELETION),
        ("restore", Kind.RESTORE),
        ("propertyChange", Kind.PROPERTY_CHANGE),
        ("merge", Kind.MERGE),
        ("associationChange", Kind.ASSOCIATION_CHANGE),
        ("privacyDeletion", Kind.PRIVACY_DELETION),
        ("newMessage", Kind.OTHER),
    ],
)
def test_subscription_action_gives_the_kind(action: str, kind: Kind) -> None:
    fields: dict[str, Any] = {"objectId": 123}
    if action == "associationChange":
        fields = {"associationType": "CONTACT_TO_COMPANY", "fromObjectId": 123, "toObjectId": 9}
    event = normalise(1, hubspot_event(f"contact.{action}", **fields))
    assert event.kind is kind


def test_classic_property_change_keeps_the_common_fields() -> None:
    raw = hubspot_event(
        "contact.propertyChange",
        objectId=123,
        propertyName="lifecyclestage",
        propertyValue="customer",
        changeSource="CRM_UI",
        sourceId="userId:882761034",
    )
    event = normalise(77, raw)
    assert event.inbox_id == 77
    assert event.portal_id == PORTAL
    assert event.app_id == APP_ID
    assert event.object_type == "contacts"
    assert event.object_id == 123
    assert event.kind is Kind.PROPERTY_CHANGE
    assert event.occurred_at == 1_700_000_000_000
    assert event.subscription_type == "contact.propertyChange"
    assert event.event_id == 1001
    assert event.property_name == "lifecyclestage"
    assert event.property_value == "customer"
    assert event.change_source == "CRM_UI"
    assert event.source_id == "userId:882761034"
    assert event.raw is raw
    assert event.key == (PORTAL, "contacts", 123)
    assert not event.redacted


def test_missing_change_source_and_source_id_are_none() -> None:
    raw = hubspot_event("deal.creation", objectId=5)
    del raw["changeSource"]
    event = normalise(1, raw)
    assert event.change_source is None
    assert event.source_id is None


@pytest.mark.parametrize("source", ["API", "IMPORT", "INTEGRATION", "WORKFLOWS", "CRM_UI"])
def test_change_source_is_passed_through(source: str) -> None:
    event = normalise(1, hubspot_event("deal.creation", objectId=5, changeSource=source))
    assert event.change_source == source


def test_cleared_property_value_is_an_empty_string_not_none() -> None:
    raw = hubspot_event(
        "contact.propertyChange", objectId=123, propertyName="phone", propertyValue=""
    )
    event = normalise(1, raw)
    assert event.property_value == ""
    assert not event.redacted


def test_redacted_property_value_is_marked_redacted() -> None:
    raw = hubspot_event(
        "contact.propertyChange",
        objectId=123,
        propertyName="hs_sensitive_note",
        propertyValue="REDACTED",
    )
    assert normalise(1, raw).redacted


def test_event_without_property_value_is_not_redacted() -> None:
    event = normalise(1, hubspot_event("contact.creation", objectId=123))
    assert event.property_name is None
    assert event.property_value is None
    assert not event.redacted


def test_old_event_type_field_is_read_when_subscription_type_is_absent() -> None:
    raw = hubspot_event("contact.deletion", objectId=123)
    raw["eventType"] = raw.pop("subscriptionType")
    event = normalise(1, raw)
    assert event.kind is Kind.DELETION
    assert event.subscription_type == "contact.deletion"


def test_numeric_strings_are_read_as_ids() -> None:
    raw = hubspot_event("company.creation", objectId="456", appId="54321")
    event = normalise(1, raw)
    assert event.object_id == 456
    assert event.app_id == APP_ID


def test_conversation_new_message_is_kind_other_and_not_mirrored() -> None:
    raw = hubspot_event(
        "conversation.newMessage", objectId=3001, messageId="abc123", messageType="MESSAGE"
    )
    event = normalise(1, raw)
    assert event.kind is Kind.OTHER
    assert event.object_type == "conversations"
    assert not is_mirrored(event.object_type)


def test_unknown_subscription_type_is_kind_other() -> None:
    event = normalise(1, hubspot_event("contact.somethingNew", objectId=1))
    assert event.kind is Kind.OTHER
    assert event.object_type == "contacts"


def test_contact_privacy_deletion_is_its_own_kind() -> None:
    event = normalise(1, hubspot_event("contact.privacyDeletion", objectId=123))
    assert event.kind is Kind.PRIVACY_DELETION
    assert event.key == (PORTAL, "contacts", 123)


# --- generic object.* subscription types ------------------------------------------------------


@pytest.mark.parametrize(
    ("type_id", "object_type"),
    [
        ("0-1", "contacts"),
        ("0-2", "companies"),
        ("0-3", "deals"),
        ("0-5", "tickets"),
        ("0-7", "products"),
        ("0-8", "line_items"),
    ],
)
def test_generic_event_object_type_comes_from_object_type_id(
    type_id: str, object_type: str
) -> None:
    raw = hubspot_event("object.propertyChange", objectTypeId=type_id, objectId=123)
    raw.update(propertyName="hs_lastmodifieddate", propertyValue="1700000000000")
    event = normalise(1, raw)
    assert event.object_type == object_type
    assert event.kind is Kind.PROPERTY_CHANGE
    assert is_mirrored(event.object_type)


def test_generic_and_classic_forms_of_one_change_normalise_alike() -> None:
    common = {"objectId": 123, "propertyName": "firstname", "propertyValue": "Ada"}
    classic = normalise(1, hubspot_event("contact.propertyChange", **common))
    generic = normalise(1, hubspot_event("object.propertyChange", objectTypeId="0-1", **common))
    assert generic.object_type == classic.object_type == "contacts"
    assert generic.kind is classic.kind
    assert generic.key == classic.key
    assert (generic.property_name, generic.property_value) == ("firstname", "Ada")


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        ("creation", Kind.CREATION),
        ("deletion", Kind.DELETION),
        ("restore", Kind.RESTORE),
        ("propertyChange", Kind.PROPERTY_CHANGE),
        ("merge", Kind.MERGE),
    ],
)
def test_generic_actions_give_the_same_kinds_as_classic_ones(action: str, kind: Kind) -> None:
    event = normalise(1, hubspot_event(f"object.{action}", objectTypeId="0-3", objectId=8))
    assert event.kind is kind
    assert event.object_type == "deals"


def test_custom_object_type_id_is_kept_and_mirrored() -> None:
    raw = hubspot_event("object.creation", objectTypeId="2-3456789", objectId=42)
    event = normalise(1, raw)
    assert event.object_type == "2-3456789"
    assert is_mirrored("2-3456789")
    assert event.key == (PORTAL, "2-3456789", 42)


@pytest.mark.parametrize(("type_id", "name"), [("0-27", "tasks"), ("0-46", "notes")])
def test_engagement_type_ids_are_named_but_not_mirrored(type_id: str, name: str) -> None:
    event = normalise(1, hubspot_event("object.creation", objectTypeId=type_id, objectId=9))
    assert event.object_type == name
    assert not is_mirrored(name)


@pytest.mark.parametrize("type_id", ["0-999", "2-", "2-12a", "3-1"])
def test_unknown_object_type_ids_are_kept_as_they_are_and_not_mirrored(type_id: str) -> None:
    assert object_type_from_id(type_id) == type_id
    assert not is_mirrored(type_id)


# --- associations ---------------------------------------------------------------------------


def test_classic_association_change_names_both_sides() -> None:
    raw = hubspot_event(
        "contact.associationChange",
        associationType="CONTACT_TO_COMPANY",
        fromObjectId=123,
        toObjectId=456,
        associationRemoved=False,
        isPrimaryAssociation=True,
    )
    event = normalise(1, raw)
    assert event.kind is Kind.ASSOCIATION_CHANGE
    assert event.object_type == "contacts"
    # No objectId in an association event: it is about its from-object.
    assert event.object_id == 123
    assert event.association == Association(
        from_type="contacts",
        from_id=123,
        to_type="companies",
        to_id=456,
        association_type="CONTACT_TO_COMPANY",
        removed=False,
        primary=True,
    )


def test_removed_association_is_marked_removed() -> None:
    raw = hubspot_event(
        "deal.associationChange",
        associationType="DEAL_TO_CONTACT",
        fromObjectId=8,
        toObjectId=123,
        associationRemoved=True,
        isPrimaryAssociation=False,
    )
    association = normalise(1, raw).association
    assert association is not None
    assert (association.from_type, association.to_type) == ("deals", "contacts")
    assert association.removed
    assert not association.primary


def test_generic_association_change_reads_type_ids_and_category() -> None:
    raw = hubspot_event(
        "object.associationChange",
        fromObjectTypeId="0-3",
        toObjectTypeId="0-1",
        fromObjectId=8,
        toObjectId=123,
        associationTypeId=3,
        associationCategory="HUBSPOT_DEFINED",
        associationRemoved=False,
        isPrimaryAssociation=False,
    )
    event = normalise(1, raw)
    assert event.kind is Kind.ASSOCIATION_CHANGE
    assert event.object_type == "deals"
    assert event.object_id == 8
    assert event.association == Association(
        from_type="deals",
        from_id=8,
        to_type="contacts",
        to_id=123,
        association_type="HUBSPOT_DEFINED:3",
        removed=False,
        primary=False,
    )


def test_generic_association_to_a_custom_object_keeps_its_type_id_and_label_category() -> None:
    raw = hubspot_event(
        "object.associationChange",
        fromObjectTypeId="0-1",
        toObjectTypeId="2-3456789",
        fromObjectId=123,
        toObjectId=42,
        associationTypeId=71,
        associationCategory="USER_DEFINED",
    )
    association = normalise(1, raw).association
    assert association is not None
    assert association.to_type == "2-3456789"
    assert association.association_type == "USER_DEFINED:71"


def test_association_event_without_both_ids_is_invalid() -> None:
    raw = hubspot_event(
        "contact.associationChange", associationType="CONTACT_TO_COMPANY", fromObjectId=123
    )
    with pytest.raises(InvalidEvent, match=r"^associationChange without toObjectId$"):
        normalise(1, raw)


def generic_association(**fields: Any) -> dict[str, Any]:
    """An object.associationChange deal 8 -> contact 123, with `fields` changed (None: absent)."""
    raw = hubspot_event(
        "object.associationChange",
        fromObjectTypeId="0-3",
        toObjectTypeId="0-1",
        fromObjectId=8,
        toObjectId=123,
        associationTypeId=3,
        associationCategory="HUBSPOT_DEFINED",
        associationRemoved=False,
        isPrimaryAssociation=False,
    )
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"associationTypeId": None}, "associationChange without associationTypeId"),
        ({"associationTypeId": "three"}, "associationTypeId must be a non-negative 64-bit"),
        ({"associationTypeId": True}, "associationTypeId must be a non-negative 64-bit"),
        ({"toObjectTypeId": None}, "toObjectTypeId must be an object type id"),
        ({"toObjectTypeId": 1}, "toObjectTypeId must be an object type id"),
        ({"fromObjectTypeId": "contacts"}, "fromObjectTypeId must be an object type id"),
        ({"associationCategory": ["USER_DEFINED"]}, "associationCategory must be"),
        ({"associationCategory": "user defined"}, "associationCategory must be"),
        ({"associationRemoved": "false"}, "associationRemoved must be a boolean"),
        ({"isPrimaryAssociation": 1}, "isPrimaryAssociation must be a boolean"),
        ({"toObjectId": 1.5}, "toObjectId must be a non-negative 64-bit integer"),
    ],
)
def test_generic_association_missing_or_ill_typed_field_is_invalid(
    fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=f"^{reason}"):
        normalise(1, generic_association(**fields))


def test_generic_association_without_a_category_is_hubspot_defined() -> None:
    association = normalise(1, generic_association(associationCategory=None)).association
    assert association is not None
    assert association.association_type == "HUBSPOT_DEFINED:3"


def test_a_classic_association_that_also_carries_a_type_id_reads_its_name() -> None:
    raw = hubspot_event(
        "contact.associationChange",
        associationType="CONTACT_TO_COMPANY",
        associationTypeId=1,
        fromObjectId=1,
        toObjectId=2,
    )
    association = normalise(1, raw).association
    assert association is not None
    assert (association.from_type, association.to_type) == ("contacts", "companies")
    assert association.association_type == "CONTACT_TO_COMPANY"


@pytest.mark.parametrize("name", [None, 5, "", "contact to company"])
def test_classic_association_without_a_readable_type_is_invalid(name: object) -> None:
    raw = hubspot_event("contact.associationChange", fromObjectId=1, toObjectId=2)
    if name is not None:
        raw["associationType"] = name
    with pytest.raises(InvalidEvent, match="associationType"):
        normalise(1, raw)


def test_unreadable_association_name_keeps_the_event_object_type_as_from_side() -> None:
    raw = hubspot_event(
        "contact.associationChange",
        associationType="CONTACT_TO_SOMETHING_NEW",
        fromObjectId=1,
        toObjectId=2,
    )
    association = normalise(1, raw).association
    assert association is not None
    assert (association.from_type, association.to_type) == ("contacts", "")
    assert association.association_type == "CONTACT_TO_SOMETHING_NEW"


def test_non_association_events_carry_no_association() -> None:
    event = normalise(1, hubspot_event("contact.creation", objectId=1, fromObjectId=1))
    assert event.association is None


@pytest.mark.parametrize(
    ("name", "sides"),
    [
        ("CONTACT_TO_COMPANY", ("contacts", "companies")),
        ("COMPANY_TO_CONTACT", ("companies", "contacts")),
        ("DEAL_TO_LINE_ITEM", ("deals", "line_items")),
        ("LINE_ITEM_TO_DEAL", ("line_items", "deals")),
        ("TICKET_TO_DEAL", ("tickets", "deals")),
        ("PARENT_COMPANY_TO_CHILD_COMPANY", ("companies", "companies")),
        ("CONTACT_TO_WIDGET", None),
        ("contact_to_company", None),
        ("CONTACTCOMPANY", None),
        ("", None),
    ],
)
def test_association_sides_read_classic_names(name: str, sides: tuple[str, str] | None) -> None:
    assert association_sides(name) == sides


@pytest.mark.parametrize(
    ("name", "inverse"),
    [
        ("CONTACT_TO_COMPANY", "COMPANY_TO_CONTACT"),
        ("DEAL_TO_LINE_ITEM", "LINE_ITEM_TO_DEAL"),
        ("PARENT_COMPANY_TO_CHILD_COMPANY", "CHILD_COMPANY_TO_PARENT_COMPANY"),
        ("CONTACT_TO_WIDGET", None),
        ("HUBSPOT_DEFINED:3", None),
    ],
)
def test_inverse_association_type_swaps_the_sides(name: str, inverse: str | None) -> None:
    assert inverse_association_type(name) == inverse


def test_inverse_of_the_inverse_is_the_original() -> None:
    inverse = inverse_association_type("TICKET_TO_COMPANY")
    assert inverse is not None
    assert inverse_association_type(inverse) == "TICKET_TO_COMPANY"


# --- merges ----------------------------------------------------------------------------------


def test_merge_survivor_is_the_primary_when_no_new_object_is_created() -> None:
    raw = hubspot_event(
        "contact.merge",
        objectId=100,
        primaryObjectId=100,
        mergedObjectIds=[200],
        newObjectId=100,
        numberOfPropertiesMoved=12,
    )
    event = normalise(1, raw)
    assert event.kind is Kind.MERGE
    assert event.survivor_id == 100
    assert event.merged_ids == (200,)
    assert event.merge_losers == (200,)


def test_merge_into_a_new_object_loses_the_primary_too() -> None:
    raw = hubspot_event(
        "contact.merge",
        objectId=100,
        primaryObjectId=100,
        mergedObjectIds=[200, 150],
        newObjectId=300,
        numberOfPropertiesMoved=4,
    )
    event = normalise(1, raw)
    assert event.survivor_id == 300
    assert event.merge_losers == (100, 150, 200)


def test_merge_without_new_object_id_falls_back_to_the_primary() -> None:
    raw = hubspot_event(
        "object.merge",
        objectTypeId="0-2",
        objectId=100,
        primaryObjectId=100,
        mergedObjectIds=["200", 201],
    )
    event = normalise(1, raw)
    assert event.object_type == "companies"
    assert event.survivor_id == 100
    assert event.merged_ids == (200, 201)
    assert event.merge_losers == (200, 201)


@pytest.mark.parametrize(
    ("merged", "reason"),
    [
        ([2, None], r"mergedObjectIds\[1\] must be a non-negative 64-bit integer, got null"),
        ([2, "x"], r"mergedObjectIds\[1\] must be a non-negative 64-bit integer, got string"),
        ([True], r"mergedObjectIds\[0\] must be a non-negative 64-bit integer, got boolean"),
        ([2.0], r"mergedObjectIds\[0\] must be a non-negative 64-bit integer, got number"),
        (7, "mergedObjectIds must be an array of ids, got number"),
    ],
)
def test_merge_with_merged_ids_that_are_not_ids_is_invalid(merged: object, reason: str) -> None:
    raw = hubspot_event("deal.merge", objectId=1, primaryObjectId=1, mergedObjectIds=merged)
    with pytest.raises(InvalidEvent, match=f"^{reason}$"):
        normalise(1, raw)


def test_merge_losers_are_empty_for_other_kinds() -> None:
    raw = hubspot_event("contact.deletion", objectId=200, mergedObjectIds=[200])
    event = normalise(1, raw)
    assert event.merge_losers == ()


def test_merge_without_a_survivor_has_no_losers() -> None:
    event = normalise(1, hubspot_event("contact.merge", objectId=100, mergedObjectIds=[200]))
    assert event.survivor_id is None
    assert event.merge_losers == ()


# --- malformed payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["portalId", "occurredAt", "eventId"])
def test_missing_required_field_is_invalid(missing: str) -> None:
    raw = hubspot_event("contact.creation", objectId=1)
    del raw[missing]
    with pytest.raises(InvalidEvent, match=f"^missing required field {missing}$"):
        normalise(1, raw)


@pytest.mark.parametrize(
    ("name", "value", "got"),
    [
        ("portalId", "not-a-portal", "string"),
        ("occurredAt", "yesterday", "string"),
        ("eventId", "abc", "string"),
        ("eventId", "\u00b2", "string"),  # a digit to str.isdigit(), not to int()
        ("portalId", None, "null"),
        ("portalId", True, "boolean"),
        ("occurredAt", 1.7e12, "number"),
        ("eventId", 1.0, "number"),
        ("eventId", -1, "out-of-range number"),
        ("portalId", 2**63, "out-of-range number"),
    ],
)
def test_required_field_that_is_not_a_64_bit_id_is_invalid(
    name: str, value: object, got: str
) -> None:
    raw = hubspot_event("contact.creation", objectId=1, **{name: value})
    with pytest.raises(
        InvalidEvent, match=f"^{name} must be a non-negative 64-bit integer, got {got}$"
    ):
        normalise(1, raw)


def test_ids_stored_as_digit_strings_are_read() -> None:
    event = normalise(1, hubspot_event("contact.creation", portalId="62515", objectId="7"))
    assert (event.portal_id, event.object_id) == (62515, 7)


def test_event_without_any_type_is_kind_other_with_empty_type() -> None:
    raw = hubspot_event("contact.creation", objectId=1)
    del raw["subscriptionType"]
    event = normalise(1, raw)
    assert event.kind is Kind.OTHER
    assert event.subscription_type == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("objectId", True),
        ("objectId", 1.5),
        ("appId", False),
        ("appId", 2.0),
        ("objectId", [1]),
        ("appId", 2**64),
        ("subscriptionId", "12-34"),
    ],
)
def test_ill_typed_optional_id_is_invalid_not_coerced(name: str, value: object) -> None:
    with pytest.raises(InvalidEvent, match=f"^{name} must be a non-negative 64-bit integer"):
        normalise(1, hubspot_event("contact.creation", **{"objectId": 1, name: value}))


# --- property names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "email",
        "hs_lead_status",
        "hs_v2_date_entered_customer",
        "hs_v2_date_entered_baedc188_ba76_4a41_8723_5bb99fe7c5bf_1220797901",
        "hs_date_entered_4018240",
        "address2",
        "lead_country__c",
        "x",
        "p" * 100,
    ],
)
def test_hubspot_internal_property_names_are_accepted(name: str) -> None:
    raw = hubspot_event("deal.propertyChange", objectId=5, propertyName=name, propertyValue="v")
    assert normalise(1, raw).property_name == name


@pytest.mark.parametrize(
    "name",
    [
        -1,
        True,
        [],
        {"name": "email"},
        1.5,
        "",
        "-1",
        "[]",
        "Email",
        "1st_touch",
        "_hidden",
        "hs-lead-status",
        "email\n",
        "e mail",
        "\u00e9mail",
        "email'); DROP TABLE seen_properties; --",
        "p" * 101,
    ],
)
def test_junk_property_names_are_invalid(name: object) -> None:
    raw = hubspot_event("contact.propertyChange", objectId=1, propertyName=name, propertyValue="v")
    with pytest.raises(InvalidEvent, match=r"^propertyName "):
        normalise(1, raw)


def test_a_property_name_is_checked_on_generic_events_too() -> None:
    raw = hubspot_event(
        "object.propertyChange", objectTypeId="0-3", objectId=5, propertyName=[], propertyValue="v"
    )
    with pytest.raises(InvalidEvent, match=r"^propertyName must be a string"):
        normalise(1, raw)


@pytest.mark.parametrize("name", ["assignedTo", "status", "isArchived"])
def test_conversation_thread_properties_keep_their_camel_case_names(name: str) -> None:
    # HubSpot's conversation.propertyChange names thread properties in camelCase.
    raw = hubspot_event("conversation.propertyChange", objectId=9, propertyName=name)
    assert normalise(1, raw).property_name == name


@pytest.mark.parametrize("name", [-1, "[]", "is archived", "x" * 101])
def test_junk_conversation_property_names_are_invalid(name: object) -> None:
    raw = hubspot_event("conversation.propertyChange", objectId=9, propertyName=name)
    with pytest.raises(InvalidEvent, match=r"^propertyName "):
        normalise(1, raw)


@pytest.mark.parametrize("value", [5, True, ["a"], {"a": 1}])
def test_a_property_value_that_is_not_a_string_is_invalid(value: object) -> None:
    raw = hubspot_event("contact.propertyChange", objectId=1, propertyName="email")
    raw["propertyValue"] = value
    with pytest.raises(InvalidEvent, match=r"^propertyValue must be a string"):
        normalise(1, raw)
