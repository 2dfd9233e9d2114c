"""The hydrate stage as the worker runs it: woken by the fetch queue's NOTIFY, pipelined.

The poll interval in these tests is an hour, so a record fetched within the test's wait was
fetched because the apply stage's request woke the stage, not because a poll came round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from service import db, fetches
from service.hubspot.client import HubSpotApi
from service.hubspot.hydration import Hydrator
from service.worker import process
from service.worker.apply import Worker
from service.worker.loop import Wakeup, run_loop
from tests.factories import PORTAL, TOKEN, hs
from tests.fake_hubspot import FakeHubSpot
from tests.support import Store, make_settings, store_events

AN_HOUR = 3600.0
BATCH_READ = "/crm/v3/objects/contacts/batch/read"


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def email_of(engine: sa.Engine, object_id: int) -> str | None:
    with engine.connect() as connection:
        email: str | None = connection.execute(
            sa.text(
                "SELECT properties ->> 'email' FROM crm_objects"
                " WHERE object_type = 'contacts' AND object_id = :o"
            ),
            {"o": object_id},
        ).scalar()
    return email


@contextmanager
def hydrate_loop(engine: sa.Engine, hydrator: Hydrator, steps: list[int]) -> Iterator[None]:
    """The worker's hydrate loop in a thread: the fetch channel's wakeup, an hour's poll."""

    def step() -> int:
        steps.append(hydrator.run_once())
        return steps[-1]

    stop = threading.Event()
    thread = threading.Thread(
        target=run_loop,
        args=("hydrate", step, stop),
        kwargs={"idle_seconds": AN_HOUR, "wakeup": Wakeup(engine, fetches.CHANNEL)},
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        hydrator.close()
        assert not thread.is_alive(), "the loop did not stop"


def test_records_asked_for_are_fetched_at_once_not_at_the_next_poll(
    store: Store, worker: Worker, engine: sa.Engine, api: HubSpotApi
) -> None:
    hydrator = Hydrator(engine, api, {}, pipelined=True)
    steps: list[int] = []
    with hydrate_loop(engine, hydrator, steps):
        assert wait_for(lambda: steps == [0]), "the loop never went idle"
        store([hs("contact.creation", 101, 1_700_000_000_000)])
        worker.drain()  # asks for contact 101, and the commit wakes the loop
        assert wait_for(lambda: email_of(engine, 101) == "ada@example.com")
    assert steps[:2] == [0, 1]


def test_a_request_notifies_only_when_it_adds_or_rearms_a_fetch(
    clean_db: str, engine: sa.Engine
) -> None:
    with psycopg.connect(db.libpq_url(clean_db), autocommit=True) as listener:
        listener.execute(f"LISTEN {fetches.CHANNEL}")
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO crm_objects (portal_id, object_type, object_id, erased)"
                    " VALUES (:p, 'contacts', 7, true)"
                ),
                {"p": PORTAL},
            )
            fetches.request(connection, [fetches.Wanted((PORTAL, "contacts", 7), "created")])
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # erased: not asked

        with engine.begin() as connection:
            fetches.request(
                connection,
                [
                    fetches.Wanted((PORTAL, "contacts", 8), "created"),
                    fetches.Wanted((PORTAL, "contacts", 9), "created"),
                ],
            )
        [notice] = list(listener.notifies(timeout=5, stop_after=1))
        assert notice.channel == fetches.CHANNEL
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # one per transaction


def test_the_workers_hydrate_stage_wakes_on_the_fetch_channel(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    settings = make_settings(
        DATABASE_URL=clean_db,
        DATA_DIR=str(tmp_path),
        HUBSPOT_ACCESS_TOKEN=TOKEN,
        HUBSPOT_API_BASE_URL=fake.url,
        WORKER_POLL_SECONDS=str(AN_HOUR),
        WORKER_PARTITION_UPKEEP="false",
    )
    with process.in_background(settings, clean_db):
        time.sleep(0.5)  # every stage has found nothing to do and waits
        store_events(clean_db, [hs("contact.creation", 102, 1_700_000_000_000)])
        assert wait_for(lambda: email_of(engine, 102) == "charles@example.com", 20)
    assert fake.count(BATCH_READ) == 1


def test_a_stopping_stage_gives_back_the_group_it_claimed_ahead(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, api: HubSpotApi
) -> None:
    ids = fake.generate(PORTAL, "contacts", 150)
    store([hs("contact.creation", int(i), 1_700_000_000_000) for i in ids])
    worker.drain()
    hydrator = Hydrator(engine, api, {}, pipelined=True)

    assert hydrator.run_once() == 100  # and the other 50 are claimed while those are read
    hydrator.close()

    with engine.connect() as connection:
        left = connection.execute(
            sa.text(
                "SELECT count(*), max(attempts), bool_and(next_attempt_at <= now())"
                " FROM hydration_requests"
            )
        ).one()
    assert tuple(left) == (50, 0, True)  # due now, as if never claimed
    assert Hydrator(engine, api, {}).drain() == 50
    assert fake.count(BATCH_READ) == 2


def test_a_failed_background_write_surfaces_and_its_records_are_fetched_again(
    store: Store, worker: Worker, engine: sa.Engine, api: HubSpotApi
) -> None:
    store([hs("contact.creation", 101, 1_700_000_000_000)])
    worker.drain()
    hydrator = Hydrator(engine, api, {}, pipelined=True)
    with engine.begin() as connection:  # the apply cannot write the mirror
        connection.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            )
        )
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse BEFORE UPDATE ON crm_objects FOR EACH ROW"
                " EXECUTE FUNCTION refuse()"
            )
        )
    try:
        assert hydrator.run_once() == 1
        with pytest.raises(sa.exc.DBAPIError):
            hydrator.flush()
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER refuse ON crm_objects"))
            connection.execute(sa.text("DROP FUNCTION refuse()"))
        hydrator.close()
    with engine.connect() as connection:
        leased = connection.execute(
            sa.text("SELECT next_attempt_at > now() FROM hydration_requests")
        ).scalar_one()
    assert leased is True  # still leased: fetched again when the lease runs out
    assert email_of(engine, 101) is None


def test_a_pipelined_hydrator_counts_its_calls_in_the_apply_transaction(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, api: HubSpotApi
) -> None:
    ids = fake.generate(PORTAL, "contacts", 250)
    store([hs("contact.creation", int(i), 1_700_000_000_000) for i in ids])
    worker.drain()
    fake.fail_next(1, status=500, path_prefix=BATCH_READ)  # retried: two attempts counted
    last: dict[int, str] = {}  # per connection, the statement before each count
    before_count: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().startswith("WITH minute AS"):
            before_count.append(last.get(id(connection), ""))
        else:
            last[id(connection)] = statement.lstrip()

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert Hydrator(engine, api, {}).drain() == 250
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)

    with engine.connect() as connection:
        counted: dict[str, int] = dict(
            connection.execute(
                sa.text(
                    "SELECT outcome, calls FROM hubspot_api_calls WHERE endpoint = 'batch_read'"
                )
            ).all()
        )
    assert counted == {"ok": 3, "500": 1}
    # Each read's counts follow its apply (the requests' completion) in its transaction.
    assert len(before_count) == 4
    assert {" ".join(statement.split()[:3]) for statement in before_count} == {"WITH done AS"}


def test_an_operators_retry_wakes_the_hydrate_stage(clean_db: str, engine: sa.Engine) -> None:
    with engine.begin() as connection:
        fetches.request(connection, [fetches.Wanted((PORTAL, "contacts", 8), "created")])
    with psycopg.connect(db.libpq_url(clean_db), autocommit=True) as listener:
        listener.execute(f"LISTEN {fetches.CHANNEL}")
        with engine.begin() as connection:
            assert fetches.retry(connection, fetches.Filters(object_id=9)) == 0
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []  # nothing re-queued

        with engine.begin() as connection:
            assert fetches.retry(connection, fetches.Filters(object_id=8)) == 1
        [notice] = list(listener.notifies(timeout=5, stop_after=1))
    assert notice.channel == fetches.CHANNEL
