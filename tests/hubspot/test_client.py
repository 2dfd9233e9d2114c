"""service.hubspot.client: CRM calls, retries, call counts and rate limits against the fake
HubSpot and a real Postgres.

Waits that would slow the suite go through fake sleeps: `Sleeps` records backoff pauses,
`DbClock` makes the shared limiter believe time passed (it moves the stored call times back),
`refuse_to_wait` stops at the first wait and says how long it would have been. One test runs in
real time: threads sharing one budget never see a 429.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service import db, partitions
from service.hubspot.client import (
    MAX_TRIES,
    HubSpotApi,
    HubSpotError,
    HubSpotUnavailable,
    call_log_partitioning,
    default_budgets,
    from_settings,
)
from service.hubspot.ratelimit import SAFETY_MARGIN_MS, Budget
from service.settings import Settings
from tests.factories import PORTAL, TOKEN
from tests.fake_hubspot import FakeHubSpot, epoch_ms
from tests.support import DbClock, InstallTokens, MakeApi, Sleeps

BATCH_READ = "/crm/v3/objects/contacts/batch/read"

# Each test runs on the date-based paths and on v3 (the fake matches prefixes in either form).
pytestmark = pytest.mark.both_api_versions


# --- helpers ---------------------------------------------------------------------------------


class Slept(Exception):
    """The limiter wanted to wait."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"asked to wait {seconds:.3f} s")
        self.seconds = seconds


def refuse_to_wait(seconds: float) -> None:
    """A limiter `sleep` that stops the call instead of waiting."""
    raise Slept(seconds)


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


def test_every_crm_call_goes_on_the_configured_path_family(
    api: HubSpotApi, fake: FakeHubSpot, api_version: str
) -> None:
    api.batch_read(PORTAL, "contacts", [101], ["email"])
    api.search_modified_since(PORTAL, "contacts", since_ms=0, properties=["email"])
    api.create_object(PORTAL, "notes", {"hs_timestamp": "2026-03-10T09:00:00.000Z"})
    api.pipelines(PORTAL, "deals")

    if api_version == "v3":
        objects, pipelines = "/crm/v3/objects", "/crm/v3/pipelines"
    else:
        objects, pipelines = f"/crm/objects/{api_version}", f"/crm/pipelines/{api_version}"
    assert [(c.method, c.path, c.status) for c in fake.calls] == [
        ("POST", f"{objects}/contacts/batch/read", 200),
        ("POST", f"{objects}/contacts/search", 200),
        ("POST", f"{objects}/notes", 201),
        ("GET", f"{pipelines}/deals", 200),
    ]


def test_an_oauth_refresh_goes_on_the_configured_token_path(
    make_api: MakeApi, fake: FakeHubSpot, install_tokens: InstallTokens, api_version: str
) -> None:
    install_tokens(PORTAL, expires_in=timedelta(minutes=1))  # inside the refresh margin

    records, _ = make_api(token=None).batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    family = "v1" if api_version == "v3" else api_version
    assert fake.count(f"/oauth/{family}/token", method="POST", status=200) == 1
    assert fake.refresh_count == 1


# --- retries and errors ----------------------------------------------------------------------


def test_server_errors_are_retried_with_growing_backoff(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    sleeps = Sleeps()
    api = make_api(sleep=sleeps)
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
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    sleeps = Sleeps()
    api = make_api(sleep=sleeps)
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
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    sleeps = Sleeps()
    api = make_api(sleep=sleeps)
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
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, status: int, make_api: MakeApi
) -> None:
    sleeps = Sleeps()
    api = make_api(sleep=sleeps)
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
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    waits = Sleeps(real=True)
    api = make_api(limiter_sleep=waits)
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
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    clock = DbClock(engine)
    api = make_api(limiter_sleep=clock)
    fake.fail_next(MAX_TRIES + 5, status=429)

    with pytest.raises(HubSpotUnavailable, match="rate limited"):
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert fake.count(status=429) == MAX_TRIES
    # Each retry waited out the Retry-After (1 s) in the shared limiter.
    assert len(clock.pauses) == MAX_TRIES - 1
    assert all(0.5 <= pause <= 1.1 for pause in clock.pauses)


def test_a_429_on_search_does_not_block_other_calls(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    api = make_api(limiter_sleep=refuse_to_wait)
    fake.fail_next(1, status=429, path_prefix="/crm/v3/objects/contacts/search")

    with pytest.raises(Slept) as waited:
        api.search_modified_since(PORTAL, "contacts", since_ms=0, properties=[])
    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert 0.5 <= waited.value.seconds <= 1.0
    assert [r.id for r in records] == [101]
    assert rate_limit_row(engine, PORTAL, "api").blocked_until_ms == 0


def test_call_minutes_older_than_the_retention_go_with_their_day_and_the_totals_stay(
    make_api: MakeApi, own_engine: sa.Engine
) -> None:
    api = make_api(own_engine)
    api.batch_read(PORTAL, "contacts", [101], ["email"])
    scheme = call_log_partitioning(86_400)
    days_later = int(time.time() * 1000) + 3 * 86_400_000  # three days pass

    report = partitions.maintain(own_engine, scheme, now_ms=days_later)
    api.batch_read(PORTAL, "contacts", [101], ["email"])  # dated now: stored all the same

    assert report is not None
    assert "hubspot_api_call_minutes_legacy" in report.dropped, "dropped whole, not deleted"
    assert report.kept == 0, "nothing outlives its partition"
    assert len(report.created) == 3, "three days on, the days ahead are ready again"
    with own_engine.connect() as connection:
        minutes = connection.execute(
            sa.text(
                "SELECT outcome, calls, now() - minute < interval '1 minute' AS recent"
                " FROM hubspot_api_call_minutes"
            )
        ).all()
    assert [tuple(m) for m in minutes] == [("ok", 1, True)]
    assert api_calls(own_engine) == {(PORTAL, "batch_read", "ok"): 2}


# --- rate limits -----------------------------------------------------------------------------


def test_stricter_rate_limit_headers_are_adopted(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    fake.set_rate_limit(5, 10.0)
    api = make_api(limiter_sleep=refuse_to_wait)

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
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    fake.set_rate_limit(190, 10.0)
    api = make_api(budgets=default_budgets(Budget(3, 10_000)))

    api.batch_read(PORTAL, "contacts", [101], ["email"])

    row = rate_limit_row(engine, PORTAL, "api")
    assert (row.max_calls, row.window_ms) == (3, 10_000)


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
    clean_db: str, database_url: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    fake.set_rate_limit(10, 1.0)
    budgets = default_budgets(Budget(10, 1_000))
    calls_each, workers = 8, 3
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work() -> None:
        own = db.create_engine(database_url, pool_size=1)
        try:
            api = make_api(own, budgets=budgets)
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
