"""service.mirror.privacy: a privacy deletion erases a contact everywhere, in any order, for good.

End to end through the inbox and a real worker on a real Postgres.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from service.worker.apply import Worker
from tests.factories import assoc, change, hs
from tests.support import Store, hydrations, inbox_statuses, mirror_row

PERSONAL = ("ada@example.com", "Ada", "Lovelace")


def personal_history() -> list[dict[str, Any]]:
    return [
        hs("contact.creation", 1, 1000),
        change("contact", 1, 1100, "email", PERSONAL[0]),
        change("contact", 1, 1200, "firstname", PERSONAL[1]),
        change("contact", 1, 1300, "lastname", PERSONAL[2]),
        assoc("CONTACT_TO_COMPANY", 1, 50, 1400),
    ]


def assert_nothing_personal_anywhere(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        tables = connection.scalars(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        for table in tables:
            dump = json.dumps(
                [list(r) for r in connection.execute(sa.text(f'SELECT * FROM "{table}"'))],
                default=str,
            )
            for value in PERSONAL:
                assert value not in dump, f"{value!r} is still in {table}"


@pytest.mark.parametrize("deletion_first", [True, False])
def test_privacy_deletion_erases_everywhere_in_either_order(
    store: Store, worker: Worker, engine: sa.Engine, deletion_first: bool
) -> None:
    store(personal_history())
    worker.drain()
    assert mirror_row(engine, "hubspot_contacts", 1).email == PERSONAL[0]

    erase = [hs("contact.privacyDeletion", 1, 5000), hs("contact.deletion", 1, 5000)]
    for event in erase if deletion_first else erase[::-1]:
        store([event])
        worker.drain()

    contact = mirror_row(engine, "hubspot_contacts", 1)
    assert contact.erased is True
    assert contact.archived is True
    assert contact.properties == {}
    assert hydrations(engine) == []
    assert_nothing_personal_anywhere(engine)


def test_late_events_cannot_write_an_erased_contact_back(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([hs("contact.privacyDeletion", 1, 5000)])
    worker.drain()
    store(
        [
            *personal_history(),
            hs("contact.restore", 1, 6000),
            change("contact", 1, 7000, "email", PERSONAL[0]),
        ]
    )
    worker.drain()

    contact = mirror_row(engine, "hubspot_contacts", 1)
    assert contact.erased is True
    assert contact.properties == {}
    assert hydrations(engine) == []
    assert set(inbox_statuses(engine)) == {"done"}
    assert_nothing_personal_anywhere(engine)


def test_privacy_deletion_in_the_same_batch_as_the_values(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store([hs("contact.privacyDeletion", 1, 900), *personal_history()])
    worker.drain()

    assert mirror_row(engine, "hubspot_contacts", 1).properties == {}
    assert_nothing_personal_anywhere(engine)
