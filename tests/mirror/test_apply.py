"""service.mirror.apply: mirror semantics, end to end through the inbox and a real worker on a
real Postgres."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from service.worker.apply import Worker
from tests.factories import assoc, change, hs, merge
from tests.support import Store, hydrations, inbox_statuses, mirror_row


def scalars(engine: sa.Engine, sql: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.scalars(sa.text(sql)))


def associations(engine: sa.Engine) -> set[tuple[str, int, str, int, str]]:
    with engine.connect() as connection:
        return {
            (r.from_type, r.from_id, r.to_type, r.to_id, r.association_type)
            for r in connection.execute(sa.text("SELECT * FROM hubspot_associations"))
        }


# --- property changes ------------------------------------------------------------------------


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_newest_property_value_wins_whatever_the_arrival_order(
    store: Store, worker: Worker, engine: sa.Engine, order: tuple[int, int]
) -> None:
    events = [
        change("contact", 1, 1000, "lifecyclestage", "lead"),
        change("contact", 1, 2000, "lifecyclestage", "customer"),
    ]
    for index in order:
        store([events[index]])
        worker.drain()

    contact = mirror_row(engine, "hubspot_contacts", 1)
    assert contact.lifecyclestage == "customer"
    assert inbox_statuses(engine) == ["done", "done"]


def test_one_batch_with_many_changes_per_object_keeps_each_latest(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            change("contact", 1, 3000, "email", "new@example.com"),
            change("contact", 1, 1000, "email", "old@example.com"),
            change("contact", 1, 2000, "firstname", "Ada"),
            change("contact", 2, 1000, "firstname", "Grace"),
            change("contact", 1, 3000, "email", "new@example.com"),
        ]
    )
    worker.drain()

    first, second = (
        mirror_row(engine, "hubspot_contacts", 1),
        mirror_row(engine, "hubspot_contacts", 2),
    )
    assert (first.email, first.firstname) == ("new@example.com", "Ada")
    assert second.firstname == "Grace"
    assert second.email is None


def test_same_instant_tie_resolves_the_same_way_in_any_order(
    store: Store, worker: Worker, engine: sa.Engine, clean_db: str
) -> None:
    store([change("deal", 5, 1000, "dealstage", "b")])
    worker.drain()
    store([change("deal", 5, 1000, "dealstage", "a")])
    worker.drain()

    assert mirror_row(engine, "hubspot_deals", 5).dealstage == "b"


def test_redacted_value_is_never_stored_and_asks_for_a_fetch(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([change("contact", 1, 1000, "email", "a@example.com")])
    worker.drain()
    store([change("contact", 1, 2000, "email", "REDACTED")])
    worker.drain()

    assert mirror_row(engine, "hubspot_contacts", 1).email == "a@example.com"
    assert hydrations(engine) == [("contacts", 1)]


def test_cleared_value_is_stored_as_empty(store: Store, worker: Worker, engine: sa.Engine) -> None:
    store([change("company", 9, 1000, "domain", "x.com"), change("company", 9, 2000, "domain", "")])
    worker.drain()

    assert mirror_row(engine, "hubspot_companies", 9).domain == ""


def test_views_expose_typed_columns(store: Store, worker: Worker, engine: sa.Engine) -> None:
    store(
        [
            change("deal", 3, 1000, "amount", "1250.50"),
            change("deal", 3, 1000, "dealname", "Big one"),
            change("deal", 3, 1000, "pipeline", "default"),
            change("deal", 4, 1000, "amount", "n/a"),
            change("company", 8, 1000, "name", "Acme"),
            change("contact", 2, 1000, "lastname", "Lovelace"),
        ]
    )
    worker.drain()

    deal = mirror_row(engine, "hubspot_deals", 3)
    assert (deal.dealname, deal.pipeline, float(deal.amount)) == ("Big one", "default", 1250.5)
    assert mirror_row(engine, "hubspot_deals", 4).amount is None
    assert mirror_row(engine, "hubspot_companies", 8).name == "Acme"
    assert mirror_row(engine, "hubspot_contacts", 2).lastname == "Lovelace"
    assert deal.properties["amount"] == "1250.50"
    assert deal.archived is False
    assert deal.erased is False


def test_generic_object_events_land_in_the_same_mirror(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            hs(
                "object.propertyChange",
                3,
                1000,
                objectTypeId="0-3",
                propertyName="dealstage",
                propertyValue="closedwon",
            ),
            hs("object.creation", 77, 1000, objectTypeId="2-1234"),
        ]
    )
    worker.drain()

    assert mirror_row(engine, "hubspot_deals", 3).dealstage == "closedwon"
    assert hydrations(engine) == [("2-1234", 77)]


# --- creation, deletion, restore -------------------------------------------------------------


def test_creation_and_restore_ask_for_one_fetch_per_record(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([hs("contact.creation", 1, 1000), hs("contact.creation", 2, 1000)])
    store([hs("contact.restore", 1, 3000), hs("company.creation", 1, 1000)])
    worker.drain()

    assert hydrations(engine) == [("companies", 1), ("contacts", 1), ("contacts", 2)]


def test_older_change_never_resurrects_a_deleted_record(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([hs("contact.deletion", 1, 2000)])
    worker.drain()
    store([hs("contact.creation", 1, 500), change("contact", 1, 1500, "firstname", "Ada")])
    worker.drain()

    contact = mirror_row(engine, "hubspot_contacts", 1)
    assert contact.archived is True
    assert contact.firstname == "Ada"


def test_newer_restore_brings_a_record_back_and_older_deletion_does_not_undo_it(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([hs("deal.deletion", 4, 1000), hs("deal.restore", 4, 2000)])
    worker.drain()
    assert mirror_row(engine, "hubspot_deals", 4).archived is False

    store([hs("deal.deletion", 4, 1500)])
    worker.drain()
    assert mirror_row(engine, "hubspot_deals", 4).archived is False

    store([hs("deal.deletion", 4, 2500)])
    worker.drain()
    assert mirror_row(engine, "hubspot_deals", 4).archived is True


# --- merges ----------------------------------------------------------------------------------


def test_merge_marks_losers_and_refetches_the_survivor(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            change("contact", 2, 1000, "email", "loser@example.com"),
            merge("contact", 1, [2, 3], 2000),
        ]
    )
    worker.drain()

    assert mirror_row(engine, "hubspot_contacts", 2).merged_into == 1
    assert mirror_row(engine, "hubspot_contacts", 3).merged_into == 1
    assert mirror_row(engine, "hubspot_contacts", 1).merged_into is None
    assert hydrations(engine) == [("contacts", 1)]


def test_merge_into_a_new_record_merges_the_primary_too(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([merge("company", 1, [2], 2000, new=9)])
    worker.drain()

    assert mirror_row(engine, "hubspot_companies", 1).merged_into == 9
    assert mirror_row(engine, "hubspot_companies", 2).merged_into == 9
    assert hydrations(engine) == [("companies", 9)]


def test_losers_associations_move_to_the_survivor_even_when_they_arrive_late(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([merge("contact", 1, [2], 2000)])
    worker.drain()
    store([assoc("CONTACT_TO_COMPANY", 2, 50, 1000)])
    worker.drain()

    assert associations(engine) == {
        ("contacts", 1, "companies", 50, "CONTACT_TO_COMPANY"),
        ("companies", 50, "contacts", 1, "COMPANY_TO_CONTACT"),
    }


# --- associations ----------------------------------------------------------------------------


def test_association_is_kept_on_both_sides_and_twins_are_stored_once(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            assoc("CONTACT_TO_COMPANY", 1, 50, 1000, primary=True),
            assoc("CONTACT_TO_COMPANY", 1, 50, 1000, primary=False),
            assoc("COMPANY_TO_CONTACT", 50, 1, 1000),
        ]
    )
    worker.drain()

    assert associations(engine) == {
        ("contacts", 1, "companies", 50, "CONTACT_TO_COMPANY"),
        ("companies", 50, "contacts", 1, "COMPANY_TO_CONTACT"),
    }
    assert scalars(engine, "SELECT count(*) FROM crm_associations") == [2]
    assert scalars(
        engine, "SELECT is_primary FROM crm_associations WHERE from_type = 'contacts'"
    ) == [True]


def test_association_removal_wins_only_when_newer(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([assoc("DEAL_TO_CONTACT", 3, 1, 2000, removed=True)])
    worker.drain()
    store([assoc("DEAL_TO_CONTACT", 3, 1, 1000)])
    worker.drain()
    assert associations(engine) == set()

    store([assoc("CONTACT_TO_DEAL", 1, 3, 3000)])
    worker.drain()
    assert associations(engine) == {
        ("contacts", 1, "deals", 3, "CONTACT_TO_DEAL"),
        ("deals", 3, "contacts", 1, "DEAL_TO_CONTACT"),
    }


def test_generic_association_events_are_kept_by_type_id(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            hs(
                "object.associationChange",
                None,
                1000,
                fromObjectTypeId="0-3",
                toObjectTypeId="0-1",
                fromObjectId=3,
                toObjectId=1,
                associationTypeId=3,
                associationCategory="HUBSPOT_DEFINED",
                associationRemoved=False,
                isPrimaryAssociation=False,
            )
        ]
    )
    worker.drain()

    assert associations(engine) == {("deals", 3, "contacts", 1, "HUBSPOT_DEFINED:3")}


# --- outcomes --------------------------------------------------------------------------------


def test_events_without_a_handler_are_ignored(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(
        [
            hs("conversation.newMessage", 5, 1000, messageId="m1", messageType="MESSAGE"),
            hs("contact.somethingNew", 1, 1000),
            change("contact", 1, 1000, "email", "a@example.com"),
        ]
    )
    worker.drain()

    assert inbox_statuses(engine) == ["ignored", "ignored", "done"]
