"""service.worker.apply with HUBSPOT_EVENT_SOURCE=both: a change that arrives as a webhook and as
a journal event fires each rule once, in either order, in one batch or two, with workers racing;
different changes still fire each; with dedupe off (push) two copies fire twice."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import db, journal_format
from service.events import Event, Kind
from service.rules.registry import Registry
from service.settings import Settings
from service.worker.apply import Worker
from service.worker.process import _apply_stage
from tests.factories import PORTAL, hs
from tests.support import Harness, MakeHarness

AT = 1_700_000_000_000
ENTRY = "0b6f1c9e-5d1e-4c39-9a43-8f4f6c1f2d10"

RULES = """
[[rules]]
name = "created"
[rules.when]
object = "contacts"
kind = "creation"
[[rules.do]]
action = "log"
message = "created {event.object_id}"

[[rules]]
name = "email"
[rules.when]
object = "contacts"
kind = "property_change"
property = "email"
[[rules.do]]
action = "log"
message = "email of {event.object_id}"

[[rules]]
name = "phone"
[rules.when]
object = "contacts"
kind = "property_change"
property = "phone"
[[rules.do]]
action = "log"
message = "phone of {event.object_id}"

[[rules]]
name = "deleted"
[rules.when]
object = "contacts"
kind = "deletion"
[[rules.do]]
action = "log"
message = "deleted {event.object_id}"

[[rules]]
name = "associated"
[rules.when]
object = "contacts"
kind = "association_change"
[[rules.do]]
action = "log"
message = "associated {event.object_id}"
"""


# --- the two copies of a change -------------------------------------------------------------


def journal(*events: dict[str, Any]) -> list[dict[str, Any]]:
    """The journal's copies: one journal entry holding `events`, read as the journal stage
    reads it (service.journal_format), push-shaped."""
    data = json.dumps({"offset": ENTRY, "journalEvents": list(events)}).encode()
    return journal_format.read_file(data, entry_offset=ENTRY).events


def journal_event(action: str, object_id: int, at: int, **fields: Any) -> dict[str, Any]:
    """A journal event about a contact."""
    return {
        "portalId": PORTAL,
        "occurredAt": at,
        "action": action,
        "objectTypeId": "0-1",
        "objectId": object_id,
        **fields,
    }


def email(value: str) -> dict[str, Any]:
    return {"propertyChanges": [{"propertyName": "email", "newValue": value}]}


def pushed_changes() -> list[dict[str, Any]]:
    """Contact 601 created with an email and associated to company 9001; contact 602 deleted:
    as HubSpot's webhooks deliver them."""
    return [
        hs("contact.creation", 601, AT),
        hs("contact.propertyChange", 601, AT, propertyName="email", propertyValue="a@x.com"),
        hs("contact.deletion", 602, AT),
        hs(
            "object.associationChange",
            None,
            AT,
            fromObjectTypeId="0-1",
            fromObjectId=601,
            toObjectTypeId="0-2",
            toObjectId=9001,
            associationTypeId=279,
            associationCategory="HUBSPOT_DEFINED",
            associationRemoved=False,
            isPrimaryAssociation=False,
        ),
    ]


def journal_changes() -> list[dict[str, Any]]:
    """The same changes as the journal holds them."""
    return journal(
        journal_event("CREATE", 601, AT, **email("a@x.com")),
        journal_event("DELETE", 602, AT),
        journal_event(
            "ASSOCIATION_ADDED",
            601,
            AT,
            toObjectTypeId="0-2",
            toObjectId=9001,
            associationTypeId=279,
            associationCategory="HUBSPOT_DEFINED",
        ),
    )


ONCE_EACH = Counter({("created", 601): 1, ("email", 601): 1, ("deleted", 602): 1})
ONCE_EACH[("associated", 601)] = 1


def fired(h: Harness) -> Counter[tuple[str, int]]:
    """How many runs each (rule, object) has."""
    return Counter((rule, object_id) for rule, object_id, _ in h.fired())


def deduping(harness: MakeHarness, **env: str) -> Harness:
    h = harness(RULES, **env)
    h.worker.dedupe_changes = True
    return h


# --- once per change ------------------------------------------------------------------------


@pytest.mark.parametrize("journal_first", [False, True], ids=["push-first", "journal-first"])
@pytest.mark.parametrize("one_batch", [True, False], ids=["one-batch", "two-batches"])
def test_a_change_pushed_and_journaled_fires_each_rule_once(
    harness: MakeHarness, journal_first: bool, one_batch: bool
) -> None:
    h = deduping(harness)
    first, second = pushed_changes(), journal_changes()
    if journal_first:
        first, second = second, first

    assert h.store(*first) == 4
    if not one_batch:
        h.apply()
        assert fired(h) == ONCE_EACH
    assert h.store(*second) == 4
    h.apply()

    assert fired(h) == ONCE_EACH
    assert h.inbox_statuses() == ["done"] * 8
    with h.engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM applied_changes")) == 4


def test_the_copies_are_settled_done_and_counted_in_the_batch_report(
    harness: MakeHarness,
) -> None:
    h = deduping(harness)
    h.store(*pushed_changes(), *journal_changes())

    report = h.worker.run_batch()

    assert (report.claimed, report.done, report.copies) == (8, 8, 4)


def test_two_workers_racing_over_both_copies_fire_each_change_once(
    harness: MakeHarness, clean_db: str
) -> None:
    h = deduping(harness)
    contacts = range(700, 760)
    pushed = [hs("contact.creation", c, AT + c) for c in contacts]
    journaled = journal(*(journal_event("CREATE", c, AT + c) for c in contacts))
    # Each change's copies next to each other: small batches split them across the workers.
    h.store(*(copy for pair in zip(pushed, journaled, strict=True) for copy in pair))
    engines = [db.create_engine(clean_db, pool_size=2) for _ in range(2)]
    workers = [
        Worker(e, batch_size=3, max_attempts=3, handlers=Registry(), rules=h.worker.rules)
        for e in engines
    ]
    for worker in workers:
        worker.dedupe_changes = True
    errors: list[BaseException] = []

    def drain(worker: Worker) -> None:
        try:
            worker.drain()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for e in engines:
        e.dispose()

    assert errors == []
    assert fired(h) == Counter({("created", c): 1 for c in contacts})
    assert h.inbox_statuses() == ["done"] * 2 * len(contacts)


@pytest.mark.parametrize("journal_first", [False, True], ids=["push-first", "journal-first"])
def test_copies_whose_values_differ_fire_once_in_one_batch(
    harness: MakeHarness, journal_first: bool
) -> None:
    # The mirror keeps the greater value of one moment; the copy carrying it is the one whose
    # rules may fire, so it must be the one that owns the change.
    h = deduping(harness)
    pushed = [hs("contact.propertyChange", 601, AT, propertyName="email", propertyValue="b@x")]
    journaled = journal(journal_event("UPDATE", 601, AT, **email("a@x")))
    h.store(*(journaled + pushed if journal_first else pushed + journaled))
    h.apply()

    assert fired(h) == Counter({("email", 601): 1})
    [run] = h.runs()
    with h.engine.connect() as connection:
        value = connection.scalar(
            sa.text("SELECT payload->>'propertyValue' FROM inbox_events WHERE id = :i"),
            {"i": run.inbox_id},
        )
    assert value == "b@x"


# --- different changes ----------------------------------------------------------------------


def test_another_property_at_the_same_moment_is_another_change(harness: MakeHarness) -> None:
    h = deduping(harness)
    h.store(
        hs("contact.propertyChange", 601, AT, propertyName="email", propertyValue="a@x.com"),
        *journal(
            journal_event(
                "UPDATE", 601, AT, propertyChanges=[{"propertyName": "phone", "newValue": "1"}]
            )
        ),
    )
    h.apply()

    assert fired(h) == Counter({("email", 601): 1, ("phone", 601): 1})


def test_the_same_property_at_another_moment_is_another_change(harness: MakeHarness) -> None:
    h = deduping(harness)
    h.store(hs("contact.propertyChange", 601, AT, propertyName="email", propertyValue="a@x.com"))
    h.apply()
    h.store(*journal(journal_event("UPDATE", 601, AT + 1, **email("b@x.com"))))
    h.apply()

    assert fired(h) == Counter({("email", 601): 2})


def test_with_dedupe_off_both_copies_fire(harness: MakeHarness) -> None:
    h = harness(RULES)
    h.store(hs("contact.creation", 601, AT), *journal(journal_event("DELETE", 602, AT)))
    h.store(*journal(journal_event("CREATE", 601, AT)), hs("contact.deletion", 602, AT))
    h.apply()

    assert fired(h) == Counter({("created", 601): 2, ("deleted", 602): 2})


# --- user handlers ----------------------------------------------------------------------------


def test_a_handler_runs_for_the_owner_only_and_its_retry_still_owns_the_change(
    harness: MakeHarness,
) -> None:
    handlers = Registry()
    calls: list[int] = []

    @handlers.on("contacts", Kind.CREATION)
    def created(event: Event, session: Session) -> None:
        calls.append(event.inbox_id)
        if len(calls) == 1:
            raise RuntimeError("downstream unavailable")

    h = harness(RULES, handlers=handlers)
    h.worker.dedupe_changes = True
    h.store(hs("contact.creation", 601, AT))
    h.apply()
    assert h.inbox_statuses() == ["failed"]
    h.store(*journal(journal_event("CREATE", 601, AT)))
    h.apply()  # the copy: done without its handler
    assert h.inbox_statuses() == ["failed", "done"]

    with h.engine.begin() as connection:
        connection.execute(sa.text("UPDATE inbox_events SET next_attempt_at = now()"))
    h.apply()

    [owner] = set(calls)
    assert len(calls) == 2
    assert h.inbox_statuses() == ["done", "done"]
    assert fired(h) == Counter({("created", 601): 1})
    with h.engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT inbox_id FROM applied_changes")) == owner


# --- wiring -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "dedupe"), [("push", False), ("journal", True), ("both", True)])
def test_the_worker_dedupes_changes_unless_events_only_come_by_push(
    engine: sa.Engine, source: str, dedupe: bool
) -> None:
    settings = Settings.from_env(
        {
            "HUBSPOT_EVENT_SOURCE": source,
            "HUBSPOT_CLIENT_ID": "client-id",
            "HUBSPOT_CLIENT_SECRET": "client-secret",
        }
    )

    assert _apply_stage(settings, engine, None).dedupe_changes is dedupe
