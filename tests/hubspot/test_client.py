"""service.hubspot client, oauth tokens and ratelimit against the fake HubSpot and a real Postgres.

Waits that would slow the suite go through fake sleeps: `Sleeps` records backoff pauses,
`DbClock` makes the shared limiter believe time passed (it moves the stored call times back),
`RefuseToWait` stops at the first wait and says how long it would have been. One test runs in
real time: threads sharing one budget never see a 429.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service import db
from service.hubspot.client import (
    MAX_TRIES,
    HubSpotApi,
    HubSpotError,
    HubSpotUnavailable,
    NeedsReinstall,
    NoToken,
    default_budgets,
    from_settings,
)
from service.hubspot.oauth import Tokens, portals_needing_reinstall, save_tokens
from service.hubspot.ratelimit import SAFETY_MARGIN_MS, Budget, RateLimiter
from service.settings import Settings
from tests.fake_hubspot import FakeHubSpot, epoch_ms

PORTAL = 62515
TOKEN = "pat-na1-00000000-0000-4000-8000-000000062515"
OTHER_PORTAL = 77001
BATCH_READ = "/crm/v3/objects/contacts/batch/read"


# --- helpers ---------------------------------------------------------------------------------


class Sleeps:
    """A fake `sleep` that records each pause; `real=True` also waits."""

    def __init__(self, *, real: bool = False) -> None:
        self.real = real
        self.pauses: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.real:
            time.sleep(seconds)


class DbClock(Sleeps):
    """A limiter `sleep` that advances the limiter's clock: stored call times move back."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        self.engine = engine

    def __call__(self, seconds: float) -> None:
        super().__call__(seconds)
        with self.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "UPDATE rate_limits SET calls = ARRAY(SELECT t - :ms FROM unnest(calls) t),"
                    " blocked_until_ms = blocked_until_ms - :ms"
                ),
                {"ms": int(seconds * 1000) + 1},
            )


class Slept(Exception):
    """The limiter wanted to wait."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"asked to wait {seconds:.3f} s")
        self.seconds = seconds


def refuse_to_wait(seconds: float) -> None:
    """A limiter `sleep` that stops the call instead of waiting."""
    raise Slept(seconds)


def make_api(
    engine: sa.Engine,
    fake: FakeHubSpot,
    *,
    token: str | None = TOKEN,
    sleep: Callable[[float], None] | None = None,
    limiter_sleep: Callable[[float], None] | None = None,
    budgets: dict[str, Budget] | None = None,
) -> HubSpotApi:
    """An API client on the fake: the private app token by default, OAuth with `token=None`."""
    return HubSpotApi(
        engine=engine,
        base_url=fake.url,
        limiter=RateLimiter(
            engine, budgets or default_budgets(), sleep=limiter_sleep or time.sleep
        ),
        private_token=token,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        sleep=sleep or Sleeps(),
    )


def install(
    engine: sa.Engine, fake: FakeHubSpot, portal_id: int, *, expires_in: timedelta
) -> Tokens:
    """OAuth tokens for `portal_id`, stored as the install would, expiring in `expires_in`."""
    access_token, refresh_token = fake.issue_tokens(portal_id)
    tokens = Tokens(access_token, refresh_token, db.utcnow() + expires_in)
    save_tokens(engine, portal_id, tokens, "oauth crm.objects.contacts.read")
    return tokens


def token_row(engine: sa.Engine, portal_id: int) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT * FROM hubspot_tokens WHERE portal_id = :p"), {"p": portal_id}
        ).one()


def set_expiry(engine: sa.Engine, portal_id: int, expires_in: timedelta) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE hubspot_tokens SET expires_at = :x WHERE portal_id = :p"),
            {"p": portal_id, "x": db.utcnow() + expires_in},
        )


def api_calls(engine: sa.Engine) -> dict[tuple[int, str, str], int]:
    """hubspot_api_calls as {(portal, endpoint, outcome): calls}."""
    with engine.connect() as connection:
        return {
            (r.portal_id, r.endpoint, r.outcome): r.calls
            for r in connection.execute(sa.text("SELECT * FROM hubspot_api_calls"))
        }


def rate_limit_row(engine: sa.Engine, portal_id: int, bucket: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT * FROM rate_limits WHERE portal_id = :p AND bucket = :b"),
            {"p": portal_id, "b": bucket},
        ).one()


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    """A running fake HubSpot with the seed portals (62515 and 77001) and their tokens."""
    with FakeHubSpot() as server:
        server.load_seed_file()
        yield server


@pytest.fixture
def api(clean_db: str, engine: sa.Engine, fake: FakeHubSpot) -> HubSpotApi:
    """The private app client for portal 62515, on a clean database."""
    return make_api(engine, fake)


# --- CRM calls -------------------------------------------------------------------------------


def test_batch_read_returns_records_and_the_ids_hubspot_reports_missing(api: HubSpotApi) -> None:
    records, missing = api.batch_read(
        PORTAL, "contacts", [101, 102, 999, 104], ["email", "firstname"]
    )

    by_id = {r.id: r for r in records}
    assert set(by_id) == {101, 102}
    assert missing == [999, 104]  # 104 is archived: batch read does not return it
    ada = by_id[101]
    assert ada.properties["email"] == "ada@example.com"
    assert ada.properties["firstname"] == "Ada"
    assert "phone" not in ada.properties  # only what was asked for
    assert ada.updated_at_ms == epoch_ms("2026-03-01T12:00:00.000Z")
    assert ada.archived is False


def test_batch_read_refuses_more_than_100_ids_before_calling(
    api: HubSpotApi, fake: FakeHubSpot
) -> None:
    with pytest.raises(ValueError, match="100"):
        api.batch_read(PORTAL, "contacts", list(range(1, 102)), ["email"])

    assert fake.calls == []


def test_search_returns_records_modified_since_oldest_first_with_a_cursor(
    api: HubSpotApi, fake: FakeHubSpot
) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    ids = fake.generate(PORTAL, "companies", 5, start=start, step=timedelta(minutes=1))
    since = epoch_ms(start + timedelta(minutes=2))

    first = api.search_modified_since(
        PORTAL, "companies", since_ms=since, properties=["name"], limit=2
    )
    rest = api.search_modified_since(
        PORTAL, "companies", since_ms=since, properties=["name"], after=first.after
    )

    assert [r.id for r in first.records] == [int(i) for i in ids[2:4]]
    assert first.total == 3
    assert first.after == "2"
    assert [r.id for r in rest.records] == [int(ids[4])]
    assert rest.after is None
    record = first.records[0]
    assert record.properties["name"] == "Company 2"
    assert record.properties["hs_lastmodifieddate"] == "2026-05-01T00:02:00.000Z"
    assert record.updated_at_ms == since
    assert api_calls(api.engine) == {(PORTAL, "search", "ok"): 2}


def test_create_object_sends_properties_and_associations(
    api: HubSpotApi, fake: FakeHubSpot
) -> None:
    on_contact = {
        "to": {"id": "101"},
        "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}],
    }

    task = api.create_object(
        PORTAL,
        "tasks",
        {"hs_task_subject": "Call Ada", "hs_timestamp": "2026-03-10T09:00:00.000Z"},
        [on_contact],
    )

    [created] = fake.created("tasks", portal_id=PORTAL)
    assert task.id == int(created.id)
    assert created.properties["hs_task_subject"] == "Call Ada"
    assert created.associations == [on_contact]
    assert api_calls(api.engine) == {(PORTAL, "create_tasks", "ok"): 1}


def test_pipelines_list_stages_with_their_ids(api: HubSpotApi) -> None:
    [sales] = api.pipelines(PORTAL, "deals")

    stages = {stage.label: stage.id for stage in sales.stages}
    assert stages["Closed Won"] == "closedwon"
    assert stages["Appointment Scheduled"] == "appointmentscheduled"


# --- retries and errors ----------------------------------------------------------------------


def test_server_errors_are_retried_with_growing_backoff(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    sleeps = Sleeps()
    api = make_api(engine, fake, sleep=sleeps)
    fake.fail_next(2, status=500)
    fake.fail_next(1, status=503)

    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    assert [c.status for c in fake.calls] == [500, 500, 503, 200]
    # 0.5 s, 1 s, 2 s, each with +-50 % jitter.
    first, second, third = sleeps.pauses
    assert 0.25 <= first <= 0.75
    assert 0.5 <= second <= 1.5
    assert 1.0 <= third <= 3.0
    assert api_calls(engine) == {
        (PORTAL, "batch_read", "500"): 2,
        (PORTAL, "batch_read", "503"): 1,
        (PORTAL, "batch_read", "ok"): 1,
    }


def test_dropped_connections_are_retried(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    sleeps = Sleeps()
    api = make_api(engine, fake, sleep=sleeps)
    fake.drop_next(2)

    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    assert [c.status for c in fake.calls] == [0, 0, 200]
    assert len(sleeps.pauses) == 2
    assert api_calls(engine) == {
        (PORTAL, "batch_read", "connection_error"): 2,
        (PORTAL, "batch_read", "ok"): 1,
    }


def test_hubspot_still_failing_after_every_try_is_unavailable(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    sleeps = Sleeps()
    api = make_api(engine, fake, sleep=sleeps)
    fake.fail_next(MAX_TRIES + 5, status=502)

    with pytest.raises(HubSpotUnavailable) as failed:
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert failed.value.status == 502
    assert fake.count(BATCH_READ) == MAX_TRIES
    assert len(sleeps.pauses) == MAX_TRIES - 1
    assert sleeps.pauses[-1] <= 30.0 * 1.5
    assert api_calls(engine) == {(PORTAL, "batch_read", "502"): MAX_TRIES}


@pytest.mark.parametrize("status", [400, 403, 404])
def test_other_client_errors_are_not_retried(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, status: int
) -> None:
    sleeps = Sleeps()
    api = make_api(engine, fake, sleep=sleeps)
    fake.fail_next(1, status=status)

    with pytest.raises(HubSpotError) as refused:
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert type(refused.value) is HubSpotError
    assert refused.value.status == status
    assert refused.value.category == "VALIDATION_ERROR"
    assert fake.count() == 1
    assert sleeps.pauses == []
    assert api_calls(engine) == {(PORTAL, "batch_read", str(status)): 1}


def test_validation_error_carries_hubspots_message(api: HubSpotApi, fake: FakeHubSpot) -> None:
    with pytest.raises(HubSpotError) as refused:
        api.create_object(PORTAL, "notes", {"hs_note_body": "no timestamp"})

    assert refused.value.status == 400
    assert refused.value.category == "VALIDATION_ERROR"
    assert "hs_timestamp is required" in str(refused.value)
    assert fake.created() == []


@pytest.mark.parametrize("fault", ["500", "drop"])
def test_a_create_that_may_have_landed_is_not_repeated(
    api: HubSpotApi, fake: FakeHubSpot, fault: str
) -> None:
    if fault == "drop":
        fake.drop_next(1)
    else:
        fake.fail_next(1, status=500)

    with pytest.raises(HubSpotUnavailable):
        api.create_object(PORTAL, "notes", {"hs_note_body": "x", "hs_timestamp": "1"})

    assert fake.count("/crm/v3/objects/notes") == 1


def test_429_blocks_the_bucket_for_retry_after_then_retries(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    waits = Sleeps(real=True)
    api = make_api(engine, fake, limiter_sleep=waits)
    fake.fail_next(1, status=429)  # Retry-After: 1

    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    assert [c.status for c in fake.calls] == [429, 200]
    assert 0.5 <= sum(waits.pauses) <= 1.5  # Retry-After: 1, less the time since the 429
    assert api_calls(engine) == {
        (PORTAL, "batch_read", "429"): 1,
        (PORTAL, "batch_read", "ok"): 1,
    }


def test_429_on_every_try_is_unavailable(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    clock = DbClock(engine)
    api = make_api(engine, fake, limiter_sleep=clock)
    fake.fail_next(MAX_TRIES + 5, status=429)

    with pytest.raises(HubSpotUnavailable, match="rate limited"):
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert fake.count(status=429) == MAX_TRIES
    # Each retry waited out the Retry-After (1 s) in the shared limiter.
    assert len(clock.pauses) == MAX_TRIES - 1
    assert all(0.5 <= pause <= 1.1 for pause in clock.pauses)


def test_a_429_on_search_does_not_block_other_calls(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    api = make_api(engine, fake, limiter_sleep=refuse_to_wait)
    fake.fail_next(1, status=429, path_prefix="/crm/v3/objects/contacts/search")

    with pytest.raises(Slept) as waited:
        api.search_modified_since(PORTAL, "contacts", since_ms=0, properties=[])
    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert 0.5 <= waited.value.seconds <= 1.0
    assert [r.id for r in records] == [101]
    assert rate_limit_row(engine, PORTAL, "api").blocked_until_ms == 0


# --- rate limits -----------------------------------------------------------------------------


def test_stricter_rate_limit_headers_are_adopted(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    fake.set_rate_limit(5, 10.0)
    api = make_api(engine, fake, limiter_sleep=refuse_to_wait)

    for _ in range(5):
        api.batch_read(PORTAL, "contacts", [101], ["email"])
    with pytest.raises(Slept) as waited:
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    row = rate_limit_row(engine, PORTAL, "api")
    assert (row.max_calls, row.window_ms) == (5, 10_000)
    assert 8.0 <= waited.value.seconds <= 10 + SAFETY_MARGIN_MS / 1000 + 0.01
    assert fake.count() == 5
    assert fake.count(status=429) == 0


def test_looser_rate_limit_headers_never_raise_the_budget(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    fake.set_rate_limit(190, 10.0)
    api = make_api(engine, fake, budgets=default_budgets(Budget(3, 10_000)))

    api.batch_read(PORTAL, "contacts", [101], ["email"])

    row = rate_limit_row(engine, PORTAL, "api")
    assert (row.max_calls, row.window_ms) == (3, 10_000)


def test_the_budget_is_shared_per_portal_and_bucket_through_postgres(
    clean_db: str, engine: sa.Engine
) -> None:
    budgets = {"api": Budget(3, 10_000), "search": Budget(2, 1_000)}
    one, two = DbClock(engine), DbClock(engine)
    first, second = RateLimiter(engine, budgets, sleep=one), RateLimiter(engine, budgets, sleep=two)

    waited = [
        first.acquire(PORTAL, "api"),
        second.acquire(PORTAL, "api"),
        first.acquire(PORTAL, "api"),
        second.acquire(OTHER_PORTAL, "api"),
        first.acquire(PORTAL, "search"),
        second.acquire(PORTAL, "search"),
    ]
    assert waited == [0.0] * 6
    assert one.pauses == two.pauses == []

    # The third search call waits about a second (the search window); the clock moves on.
    assert second.acquire(PORTAL, "search") > 0
    [search_pause] = two.pauses
    assert 0.5 <= search_pause <= 1 + SAFETY_MARGIN_MS / 1000 + 0.01
    # Three API calls were made in the same (fake) second: the fourth waits out the window.
    assert first.acquire(PORTAL, "api") > 0
    [api_pause] = one.pauses
    assert 7.5 <= api_pause <= 10 + SAFETY_MARGIN_MS / 1000 + 0.01


def test_the_search_bucket_allows_four_calls_a_second_by_default(
    api: HubSpotApi, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    api.limiter.sleep = refuse_to_wait

    for _ in range(4):
        api.search_modified_since(PORTAL, "contacts", since_ms=0, properties=[])
    with pytest.raises(Slept) as waited:
        api.search_modified_since(PORTAL, "contacts", since_ms=0, properties=[])

    assert 0.2 <= waited.value.seconds <= 1 + SAFETY_MARGIN_MS / 1000 + 0.01
    assert fake.count(status=429) == 0
    # Other calls have their own budget.
    api.batch_read(PORTAL, "contacts", [101], ["email"])


def test_workers_sharing_one_budget_in_real_time_never_see_a_429(
    clean_db: str, database_url: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    fake.set_rate_limit(10, 1.0)
    budgets = default_budgets(Budget(10, 1_000))
    calls_each, workers = 8, 3
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        own = db.create_engine(database_url, pool_size=1)
        try:
            api = make_api(own, fake, budgets=budgets)
            barrier.wait()
            for _ in range(calls_each):
                api.batch_read(PORTAL, "contacts", [101, 102], ["email"])
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started

    assert errors == []
    assert fake.count(status=429) == 0
    assert fake.count(BATCH_READ, status=200) == calls_each * workers
    # 24 calls at 10 per (1 s + margin): the limiter really spread them out.
    assert elapsed >= 2.0
    assert api_calls(engine) == {(PORTAL, "batch_read", "ok"): calls_each * workers}


# --- tokens ----------------------------------------------------------------------------------


def test_without_a_private_token_or_install_there_is_no_token(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    api = make_api(engine, fake, token=None)

    with pytest.raises(NoToken, match="/oauth/install"):
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert fake.calls == []


def test_oauth_token_is_used_until_five_minutes_before_it_expires(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    tokens = install(engine, fake, PORTAL, expires_in=timedelta(minutes=6))
    api = make_api(engine, fake, token=None)

    assert api.token_for(PORTAL) == tokens.access_token
    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])
    assert [r.id for r in records] == [101]
    assert fake.refresh_count == 0

    set_expiry(engine, PORTAL, timedelta(minutes=4))
    refreshed = api.token_for(PORTAL)

    assert refreshed != tokens.access_token
    assert fake.refresh_count == 1
    row = token_row(engine, PORTAL)
    assert row.access_token == refreshed
    assert row.refresh_token == tokens.refresh_token
    # expires_at comes from HubSpot's expires_in (1800 s).
    expected = db.utcnow() + timedelta(seconds=fake.access_token_ttl)
    assert abs((row.expires_at - expected).total_seconds()) < 5
    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])
    assert [r.id for r in records] == [101]
    assert fake.refresh_count == 1


def test_token_hubspot_says_expired_is_refreshed_once_and_the_call_repeated(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    tokens = install(engine, fake, PORTAL, expires_in=timedelta(minutes=20))
    fake.expire_token(tokens.access_token)
    api = make_api(engine, fake, token=None)

    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    assert [c.status for c in fake.calls if c.path == BATCH_READ] == [401, 200]
    assert fake.refresh_count == 1
    assert token_row(engine, PORTAL).access_token != tokens.access_token


def test_concurrent_refreshes_across_processes_happen_once(
    clean_db: str, database_url: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    install(engine, fake, PORTAL, expires_in=timedelta(minutes=1))
    fake.refresh_delay = 0.3
    workers = 4
    barrier = threading.Barrier(workers)
    used: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        # Each thread is a process of its own: its own engine, limiter and client.
        own = db.create_engine(database_url, pool_size=2)
        try:
            api = make_api(own, fake, token=None)
            barrier.wait()
            records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])
            assert [r.id for r in records] == [101]
            used.append(api.token_for(PORTAL))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert fake.refresh_count == 1
    assert fake.max_concurrent_refreshes == 1
    assert len(set(used)) == 1
    assert used[0] == token_row(engine, PORTAL).access_token


def test_threads_waiting_for_another_processes_refresh_need_one_connection_each(
    clean_db: str, database_url: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    install(engine, fake, PORTAL, expires_in=timedelta(minutes=1))
    fake.refresh_delay = 1.0
    # Two threads of one process (say a worker's hydrate and reconcile threads) share an
    # engine with a connection each; another process is refreshing the portal's token.
    shared = sa.create_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=3)
    other = db.create_engine(database_url, pool_size=2)
    results: dict[str, str | BaseException] = {}

    def run(name: str, api: HubSpotApi) -> None:
        try:
            results[name] = api.token_for(PORTAL)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            results[name] = exc

    try:
        refreshing = threading.Thread(target=run, args=("other", make_api(other, fake, token=None)))
        refreshing.start()
        deadline = time.monotonic() + 5
        while fake.refresh_count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = [
            threading.Thread(target=run, args=(name, make_api(shared, fake, token=None)))
            for name in ("hydrate", "reconcile")
        ]
        for thread in waiting:
            thread.start()
        for thread in [refreshing, *waiting]:
            thread.join(30)
    finally:
        shared.dispose()
        other.dispose()

    assert fake.refresh_count == 1
    assert results["hydrate"] == results["reconcile"] == results["other"]
    assert results["other"] == token_row(engine, PORTAL).access_token


def test_revoked_refresh_token_needs_reinstall_and_other_portals_go_on(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    broken = install(engine, fake, PORTAL, expires_in=timedelta(minutes=1))
    install(engine, fake, OTHER_PORTAL, expires_in=timedelta(minutes=1))
    fake.revoke_refresh_token(broken.refresh_token)
    api = make_api(engine, fake, token=None)

    with pytest.raises(NeedsReinstall):
        api.batch_read(PORTAL, "contacts", [101], ["email"])
    records, _ = api.batch_read(OTHER_PORTAL, "contacts", [101], ["email"])

    assert records[0].properties["email"] == "other-portal@example.com"
    row = token_row(engine, PORTAL)
    assert row.needs_reinstall is True
    assert "BAD_REFRESH_TOKEN" in row.last_error
    assert token_row(engine, OTHER_PORTAL).needs_reinstall is False
    assert portals_needing_reinstall(engine) == [PORTAL]
    # Marked once: later calls fail at once, without asking HubSpot again.
    refreshes = fake.refresh_count
    with pytest.raises(NeedsReinstall):
        api.batch_read(PORTAL, "contacts", [101], ["email"])
    assert fake.refresh_count == refreshes
    assert fake.count(BATCH_READ, portal_id=PORTAL) == 0
    # Installing again clears the mark.
    install(engine, fake, PORTAL, expires_in=timedelta(minutes=30))
    assert portals_needing_reinstall(engine) == []
    assert [r.id for r in api.batch_read(PORTAL, "contacts", [101], ["email"])[0]] == [101]


def test_refresh_refused_by_hubspot_needs_reinstall(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    install(engine, fake, PORTAL, expires_in=timedelta(minutes=1))
    fake.fail_next(1, status=400, path_prefix="/oauth/v1/token")
    api = make_api(engine, fake, token=None)

    with pytest.raises(NeedsReinstall):
        api.token_for(PORTAL)

    assert portals_needing_reinstall(engine) == [PORTAL]


def test_refresh_hitting_a_server_error_is_not_a_reinstall(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    tokens = install(engine, fake, PORTAL, expires_in=timedelta(minutes=1))
    fake.fail_next(1, status=503, path_prefix="/oauth/v1/token")
    api = make_api(engine, fake, token=None)

    with pytest.raises(HubSpotUnavailable):
        api.token_for(PORTAL)

    assert portals_needing_reinstall(engine) == []
    assert api.token_for(PORTAL) != tokens.access_token  # the next try refreshes


def test_private_app_token_is_never_refreshed(api: HubSpotApi, fake: FakeHubSpot) -> None:
    fake.fail_next(1, status=401)

    with pytest.raises(HubSpotError) as refused:
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert refused.value.status == 401
    assert fake.refresh_count == 0


# --- settings --------------------------------------------------------------------------------


def test_from_settings_builds_a_client_only_with_credentials(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot
) -> None:
    base = {"HUBSPOT_CLIENT_SECRET": fake.client_secret, "HUBSPOT_API_BASE_URL": fake.url}

    assert from_settings(Settings.from_env(base), engine) is None
    private = from_settings(
        Settings.from_env(
            {
                **base,
                "HUBSPOT_ACCESS_TOKEN": TOKEN,
                "HUBSPOT_RATE_LIMIT": "50/10s",
                "HUBSPOT_SEARCH_RATE_LIMIT": "3/1s",
            }
        ),
        engine,
    )
    oauth = from_settings(Settings.from_env({**base, "HUBSPOT_CLIENT_ID": fake.client_id}), engine)

    assert private is not None
    assert oauth is not None
    assert private.private_token == TOKEN
    assert private.limiter.budgets == {"api": Budget(50, 10_000), "search": Budget(3, 1_000)}
    assert oauth.private_token is None
    assert (oauth.client_id, oauth.client_secret) == (fake.client_id, fake.client_secret)
    assert oauth.limiter.budgets == default_budgets()
    assert [r.id for r in private.batch_read(PORTAL, "contacts", [101], ["email"])[0]] == [101]
