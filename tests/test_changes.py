"""service.changes (the first inbox row to claim a change owns it) and events.change_key (what
"the same change" is, whichever way HubSpot delivered it)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from service import changes, partitions
from service.events import change_key
from service.settings import Settings
from service.worker.upkeep import schemes
from tests.factories import PORTAL, assoc, event, hs, merge
from tests.support import statements_run

AT = 1_700_000_000_000
DAY_MS = 86_400_000


def claim(engine: sa.Engine, keyed: list[changes.Keyed]) -> set[int]:
    """claim_first in a transaction of its own, committed."""
    with engine.begin() as connection:
        return changes.claim_first(connection, keyed)


def claims(engine: sa.Engine) -> dict[tuple[int, int, int], int]:
    """(portal, key, occurredAt) -> the owning inbox id, as stored."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT portal_id, change_key, occurred_at, inbox_id FROM applied_changes")
        )
        return {(r.portal_id, r.change_key, r.occurred_at): r.inbox_id for r in rows}


# --- events.change_key: the same change -------------------------------------------------------


def property_change(**fields: Any) -> dict[str, Any]:
    """A classic contact.propertyChange of contact 501's email at AT; `fields` override."""
    raw = hs("contact.propertyChange", 501, AT, propertyName="email", propertyValue="ada@x.com")
    return raw | fields


def key(raw: dict[str, Any]) -> int:
    return change_key(event(raw))


def test_a_change_key_is_a_non_negative_63_bit_integer() -> None:
    keys = [key(property_change(objectId=n)) for n in range(200)]

    assert all(0 <= k < 2**63 for k in keys)
    assert len(set(keys)) == 200


def test_delivery_details_and_the_value_do_not_make_another_change() -> None:
    pushed = property_change()
    journal_copy = property_change(
        eventId=987_654_321_012,
        subscriptionId=0,
        attemptNumber=3,
        changeSource="INTEGRATION",
        propertyValue="ADA@x.com",
        appId=None,
        journal={"offset": "5f1e-offset", "action": "UPDATE"},
    )

    assert key(journal_copy) == key(pushed)


def test_classic_and_generic_forms_of_one_object_type_are_the_same_change() -> None:
    classic = property_change()
    generic = hs(
        "object.propertyChange",
        501,
        AT,
        objectTypeId="0-1",
        propertyName="email",
        propertyValue="ada@x.com",
    )

    assert key(generic) == key(classic)


@pytest.mark.parametrize(
    "other",
    [
        {"portalId": PORTAL + 1},
        {"objectId": 502},
        {"propertyName": "phone"},
        {"occurredAt": AT + 1},
        {"subscriptionType": "company.propertyChange"},
    ],
)
def test_portal_object_property_and_occurred_at_each_make_another_change(
    other: dict[str, Any],
) -> None:
    assert key(property_change(**other)) != key(property_change())


def test_kind_makes_another_change() -> None:
    created = hs("contact.creation", 501, AT)
    deleted = hs("contact.deletion", 501, AT)
    restored = hs("contact.restore", 501, AT)

    assert len({key(created), key(deleted), key(restored), key(property_change())}) == 4


def test_association_sides_type_and_direction_make_another_change() -> None:
    added = assoc("CONTACT_TO_COMPANY", 501, 9001, AT)

    assert key(dict(added, eventId=424242)) == key(added)
    assert key(assoc("CONTACT_TO_COMPANY", 501, 9002, AT)) != key(added)
    assert key(assoc("CONTACT_TO_COMPANY", 501, 9001, AT, removed=True)) != key(added)
    assert key(assoc("CONTACT_TO_DEAL", 501, 9001, AT)) != key(added)


def test_merged_ids_are_a_set_and_other_ids_another_merge() -> None:
    merged = merge("contact", 501, [502, 503], AT)

    assert key(merge("contact", 501, [503, 502], AT)) == key(merged)
    assert key(merge("contact", 501, [502, 504], AT)) != key(merged)


# --- changes.claim_first ------------------------------------------------------------------------


def test_the_first_inbox_row_to_claim_a_change_owns_it(clean_db: str, engine: sa.Engine) -> None:
    assert claim(engine, [(PORTAL, 11, AT, 1)]) == {1}

    assert claim(engine, [(PORTAL, 11, AT, 2)]) == set()
    assert claims(engine) == {(PORTAL, 11, AT): 1}


def test_the_owner_retried_still_owns_its_change(clean_db: str, engine: sa.Engine) -> None:
    claim(engine, [(PORTAL, 11, AT, 1)])
    claim(engine, [(PORTAL, 11, AT, 2)])

    assert claim(engine, [(PORTAL, 11, AT, 2), (PORTAL, 11, AT, 1)]) == {1}
    assert claim(engine, [(PORTAL, 11, AT, 1)]) == {1}


def test_within_one_call_the_first_row_of_a_change_owns_it(
    clean_db: str, engine: sa.Engine
) -> None:
    owners = claim(engine, [(PORTAL, 11, AT, 9), (PORTAL, 11, AT, 3), (PORTAL, 12, AT, 4)])

    assert owners == {9, 4}
    assert claims(engine) == {(PORTAL, 11, AT): 9, (PORTAL, 12, AT): 4}


def test_portal_and_occurred_at_are_part_of_the_change(clean_db: str, engine: sa.Engine) -> None:
    claim(engine, [(PORTAL, 11, AT, 1)])

    assert claim(engine, [(PORTAL + 1, 11, AT, 2), (PORTAL, 11, AT + 1, 3)]) == {2, 3}


def test_a_claim_rolled_back_claims_nothing(clean_db: str, engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert changes.claim_first(connection, [(PORTAL, 11, AT, 1)]) == {1}
        connection.rollback()

    assert claim(engine, [(PORTAL, 11, AT, 2)]) == {2}


def test_a_batch_is_claimed_in_one_statement(clean_db: str, engine: sa.Engine) -> None:
    claim(engine, [(PORTAL, n, AT, n) for n in range(0, 1000, 2)])
    keyed = [(PORTAL, n, AT, 10_000 + n) for n in range(1000)]

    with statements_run(engine, "WITH input") as seen:
        owners = claim(engine, keyed)

    assert len(seen) == 1
    assert owners == {10_000 + n for n in range(1, 1000, 2)}


def test_nothing_to_claim_is_no_statement(clean_db: str, engine: sa.Engine) -> None:
    with statements_run(engine, "WITH input") as seen:
        assert claim(engine, []) == set()

    assert seen == []


def waiting_for_a_lock(engine: sa.Engine, pid: int) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.scalar(
                sa.text("SELECT count(*) > 0 FROM pg_locks WHERE pid = :p AND NOT granted"),
                {"p": pid},
            )
        )


@pytest.mark.parametrize("first_commits", [True, False])
def test_a_concurrent_claim_of_the_same_change_waits_for_the_first_transaction(
    clean_db: str, engine: sa.Engine, first_commits: bool
) -> None:
    result: dict[str, set[int]] = {}
    with engine.connect() as first, engine.connect() as second:
        pid = int(second.scalar(sa.text("SELECT pg_backend_pid()")))
        second.commit()
        assert changes.claim_first(first, [(PORTAL, 11, AT, 1), (PORTAL, 12, AT, 2)]) == {1, 2}

        def claim_second() -> None:
            result["second"] = changes.claim_first(
                second, [(PORTAL, 11, AT, 3), (PORTAL, 13, AT, 4)]
            )
            second.commit()

        thread = threading.Thread(target=claim_second)
        thread.start()
        deadline = time.monotonic() + 10
        while not waiting_for_a_lock(engine, pid):
            assert time.monotonic() < deadline, "the second claim did not wait"
            time.sleep(0.02)
        assert "second" not in result
        if first_commits:
            first.commit()
        else:
            first.rollback()
        thread.join(10)

    if first_commits:
        assert result["second"] == {4}
        assert claims(engine) == {(PORTAL, 11, AT): 1, (PORTAL, 12, AT): 2, (PORTAL, 13, AT): 4}
    else:
        assert result["second"] == {3, 4}
        assert claims(engine) == {(PORTAL, 11, AT): 3, (PORTAL, 13, AT): 4}


# --- retention ------------------------------------------------------------------------------------


def test_upkeep_keeps_applied_changes_as_long_as_the_inbox() -> None:
    settings = Settings.from_env({"INBOX_RETENTION": "72h"})

    [scheme] = [s for s in schemes(settings) if s.table == "applied_changes"]

    assert scheme.retention_ms == 72 * 3_600_000
    assert scheme.keep == "false"
    assert scheme.width_ms == DAY_MS


def test_claims_go_with_their_expired_day_nothing_kept(own_engine: sa.Engine) -> None:
    now = int(time.time() * 1000)
    claim(own_engine, [(PORTAL, 11, now, 1)])

    report = partitions.maintain(
        own_engine, changes.partitioning(2 * 86_400), now_ms=now + 10 * DAY_MS
    )

    assert report is not None
    assert report.dropped
    assert report.kept == 0
    assert claims(own_engine) == {}


def test_a_claim_dated_before_the_retention_waits_in_the_default_as_long_as_its_inbox_row(
    own_engine: sa.Engine,
) -> None:
    with own_engine.begin() as connection:  # as once retention dropped the migration's past
        connection.execute(sa.text("DROP TABLE applied_changes_past"))
    now = int(time.time() * 1000)
    old = now - 5 * DAY_MS  # a late copy: no partition of its day any more
    claim(own_engine, [(PORTAL, 11, old, 1)])
    scheme = changes.partitioning(2 * 86_400)

    partitions.maintain(own_engine, scheme, now_ms=now)
    assert claims(own_engine) == {(PORTAL, 11, old): 1}
    assert claim(own_engine, [(PORTAL, 11, old, 2)]) == set()

    report = partitions.maintain(own_engine, scheme, now_ms=now + 3 * DAY_MS)
    assert report is not None
    assert report.cleaned == 1
    assert claims(own_engine) == {}
