"""service.hubspot.subscriptions against the fake HubSpot: the journal's subscriptions and their
filters with the app's client-credentials token, and a legacy app's v3 list with the developer
API key (never in an error)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.hubspot import subscriptions as journal
from service.hubspot.appauth import AppApi, AppToken
from service.hubspot.sdk import HubSpotError
from service.hubspot.subscriptions import Condition, Subscription
from tests.fake_hubspot import FakeHubSpot, legacy_path
from tests.fake_subscriptions import DEVELOPER_API_KEY
from tests.support import Sleeps

PORTAL = 62515
CONTACTS = Subscription(
    type="OBJECT",
    portal_id=PORTAL,
    object_type_id="0-1",
    actions=("CREATE", "UPDATE", "DELETE"),
    properties=("email", "lifecyclestage"),
    filters=(
        (
            Condition("lifecyclestage", "EQ", value="customer"),
            Condition("hs_lead_status", "IN", values=("NEW", "OPEN")),
        ),
    ),
)
ONE_OF_EACH = [
    CONTACTS,
    Subscription(
        type="ASSOCIATION",
        portal_id=PORTAL,
        object_type_id="0-1",
        actions=("ASSOCIATION_ADDED",),
        associated_object_type_ids=("0-2",),
    ),
    Subscription(type="APP_LIFECYCLE_EVENT", event_type_id="4-1234", properties=("x",)),
    Subscription(
        type="LIST_MEMBERSHIP", portal_id=PORTAL, actions=("ADDED_TO_LIST",), list_ids=(7,)
    ),
    Subscription(
        type="GDPR_PRIVACY_DELETION",
        portal_id=PORTAL,
        object_type_id="0-1",
        actions=("GDPR_DELETE",),
    ),
]


def app_api(fake: FakeHubSpot, scopes: tuple[str, ...] = journal.SCOPES) -> AppApi:
    """The app's API on the fake, with these scopes."""
    token = AppToken(fake.url, fake.client_id, fake.client_secret, scopes=scopes)
    return AppApi(fake.url, token, sleep=Sleeps())


def test_a_created_subscription_lists_with_its_filter_and_the_same_identity(
    fake: FakeHubSpot,
) -> None:
    api = app_api(fake)

    made = journal.create(api, CONTACTS)
    (listed,) = journal.list_subscriptions(api)

    assert made.id is not None
    assert listed.id == made.id
    assert listed.filter_ids == made.filter_ids
    assert len(made.filter_ids) == 1
    assert listed.identity() == CONTACTS.identity()
    (stored,) = fake.subscriptions.filters_of(made.id)
    assert stored["filter"]["conditions"][1] == {
        "filterType": "CRM_OBJECT_PROPERTY",
        "property": "hs_lead_status",
        "operator": "IN",
        "values": ["NEW", "OPEN"],
    }


@pytest.mark.parametrize("subscription", ONE_OF_EACH, ids=lambda s: s.type)
def test_every_type_is_sent_with_the_fields_the_spec_requires(
    fake: FakeHubSpot, subscription: Subscription
) -> None:
    api = app_api(fake)

    journal.create(api, subscription)
    (listed,) = journal.list_subscriptions(api)

    assert listed.type == subscription.type
    assert listed.identity() == subscription.identity()
    assert set(journal.REQUIRED[subscription.type]) <= set(fake.subscriptions.all()[0])


def test_identity_ignores_order_and_ids_but_not_values() -> None:
    shuffled = Subscription(
        type="OBJECT",
        portal_id=PORTAL,
        object_type_id="0-1",
        actions=("DELETE", "UPDATE", "CREATE"),
        properties=("lifecyclestage", "email"),
        filters=(tuple(reversed(CONTACTS.filters[0])),),
        id=5,
    )
    other_portal = replace(CONTACTS, portal_id=77001)
    other_value = replace(CONTACTS, filters=((Condition("lifecyclestage", "EQ", "lead"),),))

    assert shuffled.identity() == CONTACTS.identity()
    assert other_portal.identity() != CONTACTS.identity()
    assert other_value.identity() != CONTACTS.identity()


def test_delete_answers_204_and_false_once_it_is_gone(fake: FakeHubSpot) -> None:
    api = app_api(fake)
    made = journal.create(api, CONTACTS)
    assert made.id is not None

    assert journal.delete(api, made.id) is True
    assert journal.delete(api, made.id) is False
    assert journal.list_subscriptions(api) == []
    assert fake.subscriptions.filters_of(made.id) == []


def test_without_the_write_scope_listing_works_and_creating_is_refused(
    fake: FakeHubSpot,
) -> None:
    api = app_api(fake, scopes=journal.SCOPES[:1])

    assert journal.list_subscriptions(api) == []
    with pytest.raises(HubSpotError) as refused:
        journal.create(api, CONTACTS)
    assert refused.value.status == 403
    assert fake.subscriptions.all() == []


def test_a_request_missing_a_required_field_is_refused_naming_it(fake: FakeHubSpot) -> None:
    api = app_api(fake)

    with pytest.raises(HubSpotError) as refused:
        api.call("POST", journal.BASE, json_body={"subscriptionType": "LIST_MEMBERSHIP"})

    assert refused.value.status == 400
    assert "portalId is required" in str(refused.value)


def test_the_legacy_list_reads_v3_subscriptions_with_the_developer_key(
    fake: FakeHubSpot,
) -> None:
    fake.subscriptions.add_legacy("contact.creation")
    fake.subscriptions.add_legacy("deal.propertyChange", property_name="dealstage")
    fake.subscriptions.add_legacy("object.deletion", object_type_id="2-123", active=False)

    found = journal.legacy_list(fake.url, fake.app_id, DEVELOPER_API_KEY)

    assert [(s.event_type, s.property_name, s.active) for s in found] == [
        ("contact.creation", None, True),
        ("deal.propertyChange", "dealstage", True),
        ("object.deletion", None, False),
    ]
    assert found[2].object_type_id == "2-123"


def test_a_wrong_developer_key_is_a_401_whose_message_never_holds_the_key(
    fake: FakeHubSpot,
) -> None:
    key = "wrong-key-that-must-never-be-shown"

    with pytest.raises(HubSpotError) as refused:
        journal.legacy_list(fake.url, fake.app_id, key)

    assert refused.value.status == 401
    assert key not in str(refused.value)
    assert f"/webhooks/v3/{fake.app_id}/subscriptions" in str(refused.value)
    assert all("hapikey" not in call.path for call in fake.calls)


def test_the_fake_routes_journal_paths_as_they_are() -> None:
    for path in (journal.BASE, f"{journal.BASE}/filters", "/webhooks/v3/1/subscriptions"):
        assert legacy_path(path) == path
