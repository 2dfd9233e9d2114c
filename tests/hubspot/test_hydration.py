"""Hydration: webhook events ask for records, the hydrator fetches them in batches of 100.

Events go in through the inbox and a real worker (tests.test_mirror's builders); the records
come from the fake HubSpot through service.hubspot.client; the mirror is read back from Postgres.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service import db, fetches, mirror, portals
from service.hubspot.client import HubSpotApi, Record, default_budgets
from service.hubspot.hydration import Hydrator, properties_for
from service.hubspot.ratelimit import RateLimiter
from service.settings import DEFAULT_MIRROR_PROPERTIES
from service.worker.apply import Worker
from tests.factories import OTHER_PORTAL, PORTAL, TOKEN, change, hs
from tests.fake_hubspot import FakeHubSpot, epoch_ms
from tests.support import InstallTokens, MakeApi, Sleeps, Store, store_events

BATCH_READ = "/crm/v3/objects/contacts/batch/read"

# Each test runs on the date-based paths and on v3 (the fake matches prefixes in either form).
pytestmark = pytest.mark.both_api_versions


@pytest.fixture
def hydrator(engine: sa.Engine, api: HubSpotApi) -> Hydrator:
    """A hydrator with the default properties and three attempts."""
    return Hydrator(engine, api, {}, max_attempts=3)


def created(object_type: str, ids: Sequence[int | str], *, portal_id: int = PORTAL) -> list[Any]:
    """`<type>.creation` events, as HubSpot sends them when records are created."""
    singular = {"contacts": "contact", "companies": "company", "deals": "deal"}[object_type]
    return [hs(f"{singular}.creation", int(i), 1_700_000_000_000, portalId=portal_id) for i in ids]


def mirrored(engine: sa.Engine, object_type: str = "contacts") -> dict[int, Any]:
    """The mirror's rows of one type, by object id."""
    with engine.connect() as connection:
        return {
            r.object_id: r
            for r in connection.execute(
                sa.text("SELECT * FROM crm_objects WHERE object_type = :t ORDER BY object_id"),
                {"t": object_type},
            )
        }


def requests(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT *, next_attempt_at > now() AS later FROM hydration_requests"
                    " ORDER BY portal_id, object_type, object_id"
                )
            )
        )


def make_due(engine: sa.Engine) -> None:
    """Time passes: every request's next attempt is due now."""
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE hydration_requests SET next_attempt_at = now()"))


# --- the happy path --------------------------------------------------------------------------


def test_created_records_are_fetched_and_missing_ones_archived(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, hydrator: Hydrator
) -> None:
    store(created("contacts", [101, 102, 999]))
    worker.drain()

    assert hydrator.drain() == 3

    rows = mirrored(engine)
    assert rows[101].properties["email"] == "ada@example.com"
    assert rows[101].properties["phone"] == "+44 20 7946 0001"  # a default property
    assert rows[102].properties["lastname"] == "Babbage"
    assert rows[101].archived is False
    assert rows[999].archived is True  # HubSpot reported it missing
    assert rows[999].properties == {}
    assert requests(engine) == []
    assert fake.count(BATCH_READ) == 1


def test_a_paused_portals_records_wait_to_be_fetched_until_it_resumes(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, hydrator: Hydrator
) -> None:
    store(created("contacts", [101, 102]))
    worker.drain()
    with engine.begin() as connection:
        portals.pause(connection, PORTAL)

    assert hydrator.drain() == 0
    assert fake.count(BATCH_READ) == 0
    assert len(requests(engine)) == 2

    with engine.begin() as connection:
        portals.resume(connection, PORTAL)
    assert hydrator.drain() == 2
    assert mirrored(engine)[101].properties["email"] == "ada@example.com"


def test_requests_are_coalesced_per_portal_and_type_into_reads_of_100(  # noqa: PLR0917 - one parameter per fixture
    store: Store,
    worker: Worker,
    engine: sa.Engine,
    fake: FakeHubSpot,
    hydrator: Hydrator,
    install_tokens: InstallTokens,
) -> None:
    ids = fake.generate(PORTAL, "contacts", 250)
    fake.generate(OTHER_PORTAL, "contacts", 5)
    # Each portal has installed the app: every read must use that portal's own token.
    hydrator.api.private_token = None
    install_tokens(PORTAL, expires_in=timedelta(minutes=30))
    install_tokens(OTHER_PORTAL, expires_in=timedelta(minutes=30))
    store(
        [
            *created("contacts", ids),
            *created("companies", [201, 202]),
            *created("contacts", [101], portal_id=OTHER_PORTAL),
        ]
    )
    worker.drain()

    assert hydrator.drain() == 253

    assert fake.count(BATCH_READ, portal_id=PORTAL, status=200) == 3  # 100 + 100 + 50
    assert fake.count("/crm/v3/objects/companies/batch/read", portal_id=PORTAL) == 1
    assert fake.count(BATCH_READ, portal_id=OTHER_PORTAL) == 1
    assert fake.count() == 5
    assert len(mirrored(engine)) == 251
    assert mirrored(engine, "companies")[202].properties["name"] == "Difference Works"
    with engine.connect() as connection:
        other = connection.execute(
            sa.text("SELECT email FROM hubspot_contacts WHERE portal_id = :p"),
            {"p": OTHER_PORTAL},
        ).scalar_one()
    assert other == "other-portal@example.com"


def test_a_burst_of_10000_creations_costs_100_batch_reads(
    clean_db: str, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, hydrator: Hydrator
) -> None:
    ids = fake.generate(PORTAL, "contacts", 10_000)
    store_events(clean_db, created("contacts", ids))
    worker.drain()

    assert hydrator.drain() == 10_000

    assert fake.count(BATCH_READ) == 100
    assert fake.count(status=429) == 0
    with engine.connect() as connection:
        emails = connection.execute(
            sa.text("SELECT count(*) FROM hubspot_contacts WHERE email LIKE 'contact%'")
        ).scalar_one()
    assert emails == 10_000


def test_hydration_asks_for_configured_and_seen_properties(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, api: HubSpotApi
) -> None:
    fake.upsert(
        PORTAL,
        "contacts",
        "101",
        {"favourite_engine": "analytical", "shoe_size": "38"},
        at=datetime(2026, 3, 1, 12, tzinfo=UTC),
    )
    # A webhook once mentioned favourite_engine: from now on it is always fetched.
    store(
        [
            change("contact", 101, 1_000, "favourite_engine", "difference"),
            *created("contacts", [101]),
        ]
    )
    worker.drain()
    with engine.connect() as connection:
        wanted = properties_for(connection, PORTAL, "contacts", {"contacts": ("email",)})
        default = properties_for(connection, PORTAL, "contacts", {})
        companies = properties_for(connection, PORTAL, "companies", {})
        custom = properties_for(connection, PORTAL, "2-123", {})
    assert wanted == ["email", "favourite_engine"]
    assert default == sorted({*DEFAULT_MIRROR_PROPERTIES["contacts"], "favourite_engine"})
    assert companies == sorted(DEFAULT_MIRROR_PROPERTIES["companies"])
    assert custom == ["createdate", "hs_lastmodifieddate", "hs_object_id"]

    Hydrator(engine, api, {"contacts": ("email",)}).drain()

    properties = mirrored(engine)[101].properties
    assert properties["email"] == "ada@example.com"
    assert properties["favourite_engine"] == "analytical"  # newer than the webhook's value
    assert "firstname" not in properties  # not configured
    assert "shoe_size" not in properties  # never seen, not configured


def test_snapshot_keeps_newer_webhook_values_and_overwrites_older_ones(
    store: Store, worker: Worker, engine: sa.Engine, hydrator: Hydrator
) -> None:
    updated_at = epoch_ms("2026-03-01T12:00:00.000Z")  # contact 101's updatedAt in HubSpot
    store(
        [
            *created("contacts", [101]),
            change("contact", 101, updated_at + 1_000, "firstname", "Augusta"),
            change("contact", 101, updated_at - 1_000, "lastname", "Byron"),
        ]
    )
    worker.drain()

    hydrator.drain()

    properties = mirrored(engine)[101].properties
    assert properties["firstname"] == "Augusta"  # the webhook is newer than the snapshot
    assert properties["lastname"] == "Lovelace"  # the snapshot is newer than the webhook
    assert properties["email"] == "ada@example.com"


# --- failures --------------------------------------------------------------------------------


def test_a_failed_fetch_is_retried_later_with_its_error_recorded(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, hydrator: Hydrator
) -> None:
    store(created("contacts", [101, 102]))
    worker.drain()
    fake.fail_next(1, status=400, path_prefix=BATCH_READ)

    assert hydrator.run_once() == 2
    assert hydrator.run_once() == 0  # nothing due: the retry waits

    first, second = requests(engine)
    for request in (first, second):
        assert request.status == "pending"
        assert request.attempts == 1
        assert request.later is True
        assert "400" in request.last_error
    with engine.connect() as connection:
        delay = connection.execute(
            sa.text("SELECT min(next_attempt_at - now()) FROM hydration_requests")
        ).scalar_one()
    assert timedelta(seconds=5) <= delay <= timedelta(seconds=31)
    assert mirrored(engine)[101].properties == {}

    make_due(engine)
    assert hydrator.drain() == 2
    assert requests(engine) == []
    assert mirrored(engine)[101].properties["email"] == "ada@example.com"


def test_without_a_token_fetches_back_off_then_give_up_as_dead(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, api: HubSpotApi
) -> None:
    api.private_token = None  # and no OAuth install either
    hydrator = Hydrator(engine, api, {}, max_attempts=3)
    store(created("contacts", [101]))
    worker.drain()

    delays = []
    for _ in range(3):
        make_due(engine)
        assert hydrator.run_once() == 1
        [request] = requests(engine)
        assert "no HubSpot token for portal 62515" in request.last_error
        with engine.connect() as connection:
            delays.append(
                connection.execute(
                    sa.text("SELECT next_attempt_at - now() FROM hydration_requests")
                ).scalar_one()
            )

    [request] = requests(engine)
    assert (request.status, request.attempts) == ("dead", 3)
    assert delays[0] < delays[2]  # backoff grows (20 s, then 80 s, each +-50 %)
    make_due(engine)
    assert hydrator.run_once() == 0  # dead requests are not claimed
    assert fake.calls == []


def test_a_dead_request_asked_for_again_is_fetched_at_once(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, api: HubSpotApi
) -> None:
    hydrator = Hydrator(engine, api, {}, max_attempts=1)
    store(created("contacts", [101]))
    worker.drain()
    fake.fail_next(1, status=400, path_prefix=BATCH_READ)
    hydrator.run_once()
    assert [r.status for r in requests(engine)] == ["dead"]

    store([hs("contact.restore", 101, 1_700_000_001_000)])
    worker.drain()

    [request] = requests(engine)
    assert (request.status, request.attempts) == ("pending", 0)
    # "Asked again: fetch again" (service/mirror.py): not after the dead request's backoff.
    assert request.later is False
    assert hydrator.run_once() == 1
    assert mirrored(engine)[101].properties["email"] == "ada@example.com"


class _DuringFetch(HubSpotApi):
    """An API client that runs `hook` right after each batch read answered."""

    hook: Any = None

    def batch_read(
        self, portal_id: int, object_type: str, ids: Sequence[int], properties: Sequence[str]
    ) -> tuple[list[Record], list[int]]:
        answer = super().batch_read(portal_id, object_type, ids, properties)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return answer


def during_fetch(engine: sa.Engine, fake: FakeHubSpot) -> _DuringFetch:
    return _DuringFetch(
        engine=engine,
        base_url=fake.url,
        limiter=RateLimiter(engine, default_budgets()),
        private_token=TOKEN,
        sleep=Sleeps(),
    )


def test_a_record_asked_for_again_during_its_fetch_is_fetched_again(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    api = during_fetch(engine, fake)
    hydrator = Hydrator(engine, api, {})
    store(created("contacts", [101, 102]))
    worker.drain()

    def changed_meanwhile() -> None:
        # HubSpot's record changes after the read; a redacted change asks for a new fetch.
        fake.upsert(PORTAL, "contacts", "101", {"email": "ada@engines.example.com"})
        store([change("contact", 101, int(time.time() * 1000), "email", "REDACTED")])
        worker.drain()

    api.hook = changed_meanwhile
    assert hydrator.run_once() == 2

    [again] = requests(engine)
    assert (again.object_id, again.status, again.attempts, again.later) == (
        101,
        "pending",
        0,
        False,
    )
    assert mirrored(engine)[101].properties["email"] == "ada@example.com"
    assert hydrator.drain() == 1
    assert requests(engine) == []
    assert mirrored(engine)[101].properties["email"] == "ada@engines.example.com"
    assert fake.count(BATCH_READ) == 2


def test_erased_contacts_are_never_fetched(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, hydrator: Hydrator
) -> None:
    store([*created("contacts", [101]), hs("contact.privacyDeletion", 102, 1_700_000_000_000)])
    worker.drain()
    store(created("contacts", [102]))
    worker.drain()
    assert [r.object_id for r in requests(engine)] == [101]

    store([hs("contact.privacyDeletion", 101, 1_700_000_000_500)])
    worker.drain()

    assert requests(engine) == []
    assert hydrator.drain() == 0
    assert fake.calls == []
    assert {r.object_id: r.properties for r in mirrored(engine).values()} == {101: {}, 102: {}}


def test_a_contact_erased_while_its_fetch_runs_stays_erased(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    api = during_fetch(engine, fake)
    hydrator = Hydrator(engine, api, {})
    store(created("contacts", [101, 102]))
    worker.drain()

    def erased_meanwhile() -> None:
        store([hs("contact.privacyDeletion", 101, 1_700_000_000_500)])
        worker.drain()

    api.hook = erased_meanwhile
    hydrator.drain()

    rows = mirrored(engine)
    assert rows[101].erased is True
    assert rows[101].properties == {}
    assert rows[102].properties["email"] == "charles@example.com"
    assert requests(engine) == []


# --- concurrency, in real time ---------------------------------------------------------------


def test_three_workers_hydrate_5000_records_within_the_rate_limit(  # noqa: PLR0917 - one parameter per fixture
    clean_db: str,
    database_url: str,
    worker: Worker,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
) -> None:
    ids = fake.generate(PORTAL, "contacts", 5_000)
    store_events(clean_db, created("contacts", ids))
    worker.drain()
    barrier = threading.Barrier(3)
    handled: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        # Each thread is a worker process of its own: engine, limiter, client, hydrator.
        own = db.create_engine(database_url, pool_size=2)
        try:
            hydrator = Hydrator(own, make_api(own, sleep=time.sleep), {})
            barrier.wait()
            handled.append(hydrator.drain())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    assert sum(handled) == 5_000
    assert fake.count(status=429) == 0
    assert 50 <= fake.count(BATCH_READ) <= 53  # 100 records a call, not 5,000 calls
    assert requests(engine) == []
    with engine.connect() as connection:
        complete = connection.execute(
            sa.text(
                "SELECT count(*) FROM hubspot_contacts"
                " WHERE email = 'contact' || object_id || '@example.com' AND firstname = 'Contact'"
            )
        ).scalar_one()
    assert complete == 5_000


def test_claims_by_concurrent_workers_never_overlap(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    store(created("contacts", range(1, 251)))
    worker.drain()

    with engine.connect() as one, engine.connect() as two, engine.connect() as three:
        first = fetches.claim(one)
        second = fetches.claim(two)
        third = fetches.claim(three)
        for connection in (one, two, three):
            connection.commit()

    assert first is not None
    assert second is not None
    assert third is not None
    assert [len(c.ids) for c in (first, second, third)] == [100, 100, 50]
    assert sorted([*first.ids, *second.ids, *third.ids]) == list(range(1, 251))


def test_mirror_snapshot_api_archives_missing_and_counts_changes(
    clean_db: str, engine: sa.Engine
) -> None:
    snapshot = mirror.Snapshot(1, {"email": "a@example.com"}, 2_000)
    with engine.begin() as connection:
        changed = mirror.apply_snapshots(
            connection, PORTAL, "contacts", [snapshot], missing=[2], fetched_at_ms=3_000
        )
        again = mirror.apply_snapshots(connection, PORTAL, "contacts", [snapshot])

    assert (changed, again) == (1, 0)
    rows = mirrored(engine)
    assert rows[1].versions == {"email": 2_000}
    assert rows[2].archived is True
