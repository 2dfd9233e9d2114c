"""Convergence: any delivery order, duplication, batching and worker concurrency, one mirror.

DESIGN.md: "Applying the same events in any order, any number of times, gives the same mirror."
The reference applies each distinct event once, in occurredAt order, one event per batch. Every
other way HubSpot may deliver the same events (permuted, re-sent with another attemptNumber,
split over requests) and every way the workers may apply them (drained between requests, small
batches, two workers at once) must leave exactly the same rows.
"""

from __future__ import annotations

import itertools
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.rules.registry import Registry
from service.worker.apply import Worker
from tests.factories import assoc, change, hs, merge
from tests.support import dump, empty_tables, store_events

Raw = dict[str, Any]

PORTALS = (62515, 62516)
IDS = {"contact": (1, 2, 3), "company": (50, 51)}
# The id a merge creates "in some cases" (HUBSPOT.md §2: newObjectId may differ from primary).
NEW_IDS = {"contact": 9, "company": 59}
PROPERTIES = {"contact": ("email", "firstname", "lifecyclestage"), "company": ("name", "domain")}
VALUES = ("a", "b", "", "REDACTED")
TYPE_IDS = {"contact": "0-1", "company": "0-2"}
BATCH_SIZES = (1, 2, 3, 7, 500)
UNHANDLED = frozenset({"contact.somethingNew", "company.somethingNew", "conversation.newMessage"})


# --- histories -------------------------------------------------------------------------------


@st.composite
def _happenings(draw: st.DrawFn, at: int, pool: dict[str, list[int]]) -> list[Raw]:
    """What happens to one record at `at`, as the events HubSpot sends about it.

    Sometimes two rival things happen to the same record at the same instant (two values, a
    deletion and a restore, two survivors, an addition and a removal): the tie-breaks decide.
    """
    obj = draw(st.sampled_from(["contact", "company"]))
    object_id = draw(st.sampled_from(pool[obj]))
    kind = draw(
        st.sampled_from(
            ["lifecycle", "change", "change", "merge", "assoc", "assoc", "unknown"]
            + (["privacy"] if obj == "contact" else [])
        )
    )
    if kind == "unknown":
        # No handler: kept as `ignored` (DESIGN.md: unknown is kept).
        return [
            draw(
                st.sampled_from(
                    [
                        hs(f"{obj}.somethingNew", object_id, at),
                        hs("conversation.newMessage", object_id, at, messageId="m1"),
                    ]
                )
            )
        ]
    if kind == "lifecycle":
        actions = st.sampled_from(["creation", "deletion", "restore"])
        return [
            _maybe_generic(draw, obj, hs(f"{obj}.{action}", object_id, at))
            for action in draw(st.lists(actions, min_size=1, max_size=2, unique=True))
        ]
    if kind == "change":
        prop = draw(st.sampled_from(PROPERTIES[obj]))
        values = st.lists(st.sampled_from(VALUES), min_size=1, max_size=2, unique=True)
        return [
            _maybe_generic(draw, obj, change(obj, object_id, at, prop, value))
            for value in draw(values)
        ]
    if kind == "merge":
        # `object_id` is merged away; rival merges name other survivors.
        others = [i for i in IDS[obj] if i != object_id]
        events = []
        for primary in draw(st.lists(st.sampled_from(others), min_size=1, max_size=2, unique=True)):
            extra = draw(st.lists(st.sampled_from(others), max_size=1))
            losers = sorted({object_id, *extra} - {primary})
            new = draw(st.sampled_from([None, None, NEW_IDS[obj]]))
            events.append(merge(obj, primary, losers, at, new=new))
        return events
    if kind == "privacy":
        # HUBSPOT.md §2: a privacy deletion also fires contact.deletion, in any order. Values
        # written just before it must go; values that arrive late must never come back.
        events = [
            hs("contact.privacyDeletion", object_id, at),
            hs("contact.deletion", object_id, at),
        ]
        for offset in draw(st.lists(st.sampled_from([-5, 5]), max_size=2, unique=True)):
            prop = draw(st.sampled_from(PROPERTIES[obj]))
            value = draw(st.sampled_from(VALUES))
            events.append(
                _maybe_generic(draw, obj, change(obj, object_id, at + offset, prop, value))
            )
        return events
    contact = object_id if obj == "contact" else draw(st.sampled_from(pool["contact"]))
    company = object_id if obj == "company" else draw(st.sampled_from(pool["company"]))
    events = []
    for _ in range(draw(st.integers(1, 2))):
        removed, primary = draw(st.booleans()), draw(st.booleans())
        forward = assoc(
            "CONTACT_TO_COMPANY", contact, company, at, removed=removed, primary=primary
        )
        backward = assoc(
            "COMPANY_TO_CONTACT", company, contact, at, removed=removed, primary=primary
        )
        sides = draw(st.sampled_from([[forward], [backward], [forward, backward]]))
        events += sides
        if primary and draw(st.booleans()):
            # "a primary association also produces a non-primary twin"
            events += [{**e, "isPrimaryAssociation": False} for e in sides]
    return events


def _maybe_generic(draw: st.DrawFn, obj: str, event: Raw) -> Raw:
    """The event in its classic form, or in the generic one (`object.*` with objectTypeId)."""
    if not draw(st.booleans()):
        return event
    action = event["subscriptionType"].partition(".")[2]
    return {**event, "subscriptionType": f"object.{action}", "objectTypeId": TYPE_IDS[obj]}


def _subscription_id(subscription_type: str) -> int:
    """One subscription per subscription type, as an app configures them."""
    return zlib.crc32(subscription_type.encode()) % 100_000 + 1


def _identity(event: Raw) -> tuple[Any, ...]:
    """The inbox's dedupe key (DESIGN.md: never attemptNumber)."""
    return (
        event["portalId"],
        event["subscriptionId"],
        event["eventId"],
        event.get("objectId", event.get("fromObjectId", 0)),
        event["occurredAt"],
    )


@dataclass
class History:
    """Distinct events, and one way of delivering and applying them."""

    events: list[Raw]
    chunks: list[list[Raw]]
    drains: list[int]  # after each chunk: 0 = none, 1 = one worker, 2 = two workers at once
    batch_sizes: tuple[int, int]
    final_workers: int


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Events over a few objects in one or two portals, and a chaotic delivery of them."""
    count = draw(st.integers(1, 10))
    # Mostly distinct instants, some equal: the mirror's tie-breaks must decide alike.
    spread = draw(st.sampled_from([1, 3]))
    instants = draw(st.lists(st.integers(0, spread * count), min_size=count, max_size=count))
    portals = PORTALS[: draw(st.integers(1, 2))]
    # Often only one or two records: then histories pile up on them and collide.
    pool = {
        obj: draw(st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids), unique=True))
        for obj, ids in IDS.items()
    }
    reuse_event_ids = draw(st.booleans())
    events: list[Raw] = []
    taken: set[tuple[Any, ...]] = set()
    for instant in instants:
        portal = draw(st.sampled_from(portals))
        for event in draw(_happenings(1_000 + 10 * instant, pool)):
            event["portalId"] = portal
            event["subscriptionId"] = _subscription_id(event["subscriptionType"])
            # HubSpot: eventId is not guaranteed unique; distinct events may share one.
            event["eventId"] = draw(st.integers(1, 3)) if reuse_event_ids else len(events) + 1
            if _identity(event) in taken:
                event["eventId"] = 1_000_000 + len(events)
            taken.add(_identity(event))
            events.append(event)
    resent = draw(st.lists(st.sampled_from(events), max_size=len(events)))
    copies = [{**e, "attemptNumber": draw(st.integers(0, 3))} for e in resent]
    deliveries = draw(st.permutations(events + copies))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(deliveries) - 1)), max_size=4)))
    bounds = [0, *(c for c in cuts if c < len(deliveries)), len(deliveries)]
    chunks = [deliveries[a:b] for a, b in itertools.pairwise(bounds)]
    return History(
        events=events,
        chunks=chunks,
        drains=[draw(st.integers(0, 2)) for _ in chunks],
        batch_sizes=(draw(st.sampled_from(BATCH_SIZES)), draw(st.sampled_from(BATCH_SIZES))),
        final_workers=draw(st.integers(1, 2)),
    )


# --- applying and reading back ---------------------------------------------------------------


def drain_concurrently(workers: list[Worker]) -> None:
    """Every worker drains at the same time, each in its own thread."""
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for future in [pool.submit(w.drain) for w in workers]:
            future.result()


def apply_in_order(url: str, engine: sa.Engine, events: list[Raw]) -> None:
    """The reference: each distinct event once, in occurredAt order, one event per batch."""
    ordered = sorted(events, key=lambda e: e["occurredAt"])
    assert store_events(url, ordered) == len(events)
    # One statement stores them, so they are claimed in id order, which is the order above.
    Worker(engine, batch_size=1, handlers=Registry()).drain()


def apply_chaotically(url: str, engine: sa.Engine, history: History) -> None:
    """Deliver the chunks, draining between some with one or two workers, then drain."""
    workers = [Worker(engine, batch_size=b, handlers=Registry()) for b in history.batch_sizes]
    stored = 0
    for chunk, drain in zip(history.chunks, history.drains, strict=True):
        stored += store_events(url, chunk)
        if drain == 1:
            workers[0].drain()
        elif drain == 2:
            drain_concurrently(workers)
    drain_concurrently(workers[: history.final_workers])
    assert stored == len(history.events), "duplicates must be stored once, distinct events all"


# --- the property ----------------------------------------------------------------------------


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories())
def test_any_delivery_and_application_converges_on_the_in_order_mirror(
    clean_db: str, engine: sa.Engine, history: History
) -> None:
    empty_tables(engine)
    apply_in_order(clean_db, engine, history.events)
    expected = dump(engine)

    empty_tables(engine)
    apply_chaotically(clean_db, engine, history)
    actual = dump(engine)

    unknown = sum(1 for e in history.events if e["subscriptionType"] in UNHANDLED)
    outcomes = [row[6:] for row in actual["inbox_events"]]
    assert sorted(outcomes) == sorted(
        [("done", 1)] * (len(history.events) - unknown) + [("ignored", 1)] * unknown
    )
    assert_no_erased_values_in_the_inbox(engine)
    assert_no_fetch_of_erased_contacts(engine)
    assert actual == expected


def assert_no_erased_values_in_the_inbox(engine: sa.Engine) -> None:
    """DESIGN.md: privacy deletion scrubs the contact's values from every stored raw event."""
    with engine.connect() as connection:
        leaks = connection.execute(
            sa.text(
                "SELECT i.id FROM inbox_events i JOIN crm_objects o"
                " ON o.portal_id = i.portal_id AND o.object_type = 'contacts'"
                " AND o.object_id = i.object_id AND o.erased"
                " WHERE (i.subscription_type LIKE 'contact.%'"
                " OR i.payload->>'objectTypeId' = '0-1')"
                " AND jsonb_typeof(i.payload->'propertyValue') = 'string'"
            )
        ).all()
    assert leaks == []


def assert_no_fetch_of_erased_contacts(engine: sa.Engine) -> None:
    """DESIGN.md: an erased contact is never fetched again (its tombstone stays empty)."""
    with engine.connect() as connection:
        fetches = connection.execute(
            sa.text(
                "SELECT h.object_id FROM hydration_requests h JOIN crm_objects o"
                " USING (portal_id, object_type, object_id) WHERE o.erased"
            )
        ).all()
    assert fetches == []


# --- cases the property rarely draws ---------------------------------------------------------


def associations_view(engine: sa.Engine) -> set[tuple[Any, ...]]:
    """hubspot_associations as (from type, from id, to type, to id, type, primary)."""
    with engine.connect() as connection:
        return {
            tuple(r)
            for r in connection.execute(
                sa.text(
                    "SELECT from_type, from_id, to_type, to_id, association_type, is_primary"
                    " FROM hubspot_associations"
                )
            )
        }


def deliver_one_at_a_time(url: str, engine: sa.Engine, events: list[Raw]) -> None:
    """Each event in its own request, applied before the next one arrives."""
    worker = Worker(engine, batch_size=1, handlers=Registry())
    for event in events:
        store_events(url, [event])
        worker.drain()


def test_merged_records_associations_keep_the_primary_flag_in_any_arrival_order(
    clean_db: str, engine: sa.Engine
) -> None:
    # The loser's and the survivor's association resolve to one row of the view, decided at the
    # same instant: the primary flag must not depend on which row Postgres happens to see first.
    events = [
        assoc("CONTACT_TO_COMPANY", 1, 50, 1000, primary=True),
        assoc("CONTACT_TO_COMPANY", 2, 50, 1000, primary=False),
        merge("contact", 1, [2], 2000),
    ]
    for order in ([0, 1, 2], [1, 0, 2], [2, 0, 1], [2, 1, 0]):
        empty_tables(engine)
        deliver_one_at_a_time(clean_db, engine, [events[i] for i in order])

        assert associations_view(engine) == {
            ("contacts", 1, "companies", 50, "CONTACT_TO_COMPANY", True),
            ("companies", 50, "contacts", 1, "COMPANY_TO_CONTACT", True),
        }, f"arrival order {order}"


def test_associations_follow_a_chain_of_merges_to_the_last_survivor(
    clean_db: str, engine: sa.Engine
) -> None:
    # 3 is merged into 2, later 2 into 1. Nothing says the second merge repeats 3 among its
    # mergedObjectIds (HUBSPOT.md §2), so the safe reading is that it names only 2.
    deliver_one_at_a_time(
        clean_db,
        engine,
        [
            assoc("CONTACT_TO_COMPANY", 3, 50, 1000),
            merge("contact", 2, [3], 2000),
            merge("contact", 1, [2], 3000),
        ],
    )

    assert associations_view(engine) == {
        ("contacts", 1, "companies", 50, "CONTACT_TO_COMPANY", False),
        ("companies", 50, "contacts", 1, "COMPANY_TO_CONTACT", False),
    }
