"""Reconcile: pull records modified since a time through HubSpot's search API, and upsert them.

The fake HubSpot holds the records (fake.generate, 10 ms apart), enforces the 10,000-result cap
per query and its own search rate limit; the mirror and the checkpoint are read from Postgres.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service import db, portals
from service.hubspot.client import HubSpotApi, HubSpotError, HubSpotUnavailable, default_budgets
from service.hubspot.ratelimit import Budget
from service.hubspot.reconcile import (
    RECONCILE_LOCK,
    Progress,
    Summary,
    known_portals,
    reconcile,
    reconcile_all,
)
from service.worker.apply import Worker
from tests.factories import OTHER_PORTAL, PORTAL, TOKEN, change
from tests.fake_hubspot import FakeHubSpot, epoch_ms
from tests.support import InstallTokens, MakeApi, Store

SEARCH = "/crm/v3/objects/contacts/search"


def private_app_token_only(fake: FakeHubSpot) -> None:
    """Seed the fake: no records; portal 62515's private app token."""
    fake.add_token(TOKEN, PORTAL)


# Each test runs on the date-based paths and on v3 (the fake matches prefixes in either form).
pytestmark = [pytest.mark.fake_hubspot(seed=private_app_token_only), pytest.mark.both_api_versions]


@pytest.fixture
def fast_api(clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi) -> HubSpotApi:
    """A client for the big runs: the fake allows 100 searches a second, we use 80."""
    fake.set_rate_limit(search_per_second=100)
    return make_api(budgets=default_budgets(search=Budget(80, 1_000)))


def checkpoint(engine: sa.Engine, object_type: str = "contacts", portal_id: int = PORTAL) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.text(
                "SELECT * FROM reconcile_checkpoints WHERE portal_id = :p AND object_type = :t"
            ),
            {"p": portal_id, "t": object_type},
        ).one()


def mirrored(engine: sa.Engine, object_type: str = "contacts", portal_id: int = PORTAL) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM crm_objects WHERE portal_id = :p AND object_type = :t"
                    " AND properties ? 'email'"
                ),
                {"p": portal_id, "t": object_type},
            ).scalar_one()
        )


def mirrored_ids(engine: sa.Engine) -> set[int]:
    with engine.connect() as connection:
        return set(
            connection.scalars(
                sa.text("SELECT object_id FROM crm_objects WHERE properties <> '{}'")
            )
        )


def modified_ms(fake: FakeHubSpot, object_id: str) -> int:
    record = fake.get(PORTAL, "contacts", object_id)
    assert record is not None
    return epoch_ms(record["properties"]["lastmodifieddate"])


class _Interrupt(Progress):
    """A progress reporter that makes HubSpot fail once `pages` pages were read."""

    def __init__(self, fake: FakeHubSpot, pages: int, fault: str) -> None:
        super().__init__(stream=io.StringIO())
        self.fake, self.pages, self.fault = fake, pages, fault

    def update(self, summary: Summary, total: int) -> None:
        if summary.pages == self.pages:
            if self.fault == "drop":
                self.fake.drop_next(10, path_prefix=SEARCH)  # past every retry
            else:
                self.fake.fail_next(1, status=400, path_prefix=SEARCH)


# --- whole runs ------------------------------------------------------------------------------


def test_a_run_passes_the_10000_result_cap_and_mirrors_every_record(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    ids = fake.generate(PORTAL, "contacts", 25_000)
    started = db.utcnow()

    summary = reconcile(
        engine,
        fast_api,
        portal_id=PORTAL,
        object_type="contacts",
        configured_properties={"contacts": ("email", "firstname")},
    )

    assert mirrored(engine) == 25_000
    searches = fake.count(SEARCH)
    # 125 pages of 200, plus a page or so per re-anchored query (the anchor record is re-read).
    assert 125 <= searches <= 130
    assert fake.count(SEARCH, status=400) == 0  # never paged past the cap
    assert (summary.pages, summary.api_calls) == (searches, searches)
    assert 25_000 <= summary.records <= 25_000 + summary.pages  # re-read anchors at most
    assert summary.changed == 25_000
    assert (summary.since_ms, summary.resumed) == (0, False)
    assert summary.seconds > 0
    assert summary.line().startswith(
        f"reconciled contacts of portal {PORTAL}: {searches} pages, {summary.records} records,"
        " 25000 changed"
    )
    row = checkpoint(engine)
    assert row.run_started_at is None
    assert row.cursor_ms == modified_ms(fake, ids[-1])
    assert row.last_success_at >= started
    assert row.last_success_since_ms == 0


def test_the_search_rate_limit_is_respected(
    engine: sa.Engine, fake: FakeHubSpot, api: HubSpotApi
) -> None:
    fake.generate(PORTAL, "contacts", 1_600)  # 8 pages or so, at 4 a second (HubSpot: 5)

    summary = reconcile(engine, api, portal_id=PORTAL, object_type="contacts")

    assert 8 <= summary.pages <= 9
    assert fake.count(status=429) == 0
    assert mirrored(engine) == 1_600


@pytest.mark.parametrize("fault", ["400", "drop"])
def test_an_interrupted_run_resumes_from_its_checkpoint(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi, fault: str
) -> None:
    ids = fake.generate(PORTAL, "contacts", 2_000)
    first_started = db.utcnow()

    with pytest.raises(HubSpotError) as interrupted:
        reconcile(
            engine,
            fast_api,
            portal_id=PORTAL,
            object_type="contacts",
            progress=_Interrupt(fake, 4, fault),
        )

    if fault == "drop":
        assert isinstance(interrupted.value, HubSpotUnavailable)
    fake.reset()
    row = checkpoint(engine)
    assert row.run_started_at >= first_started
    assert row.last_success_at is None
    # Four pages were applied; the cursor is the last modification time among them.
    applied = mirrored(engine)
    assert 790 <= applied <= 800
    assert row.cursor_ms == modified_ms(fake, ids[applied - 1])

    summary = reconcile(engine, fast_api, portal_id=PORTAL, object_type="contacts")

    assert summary.resumed is True
    assert summary.since_ms == row.cursor_ms
    # From the cursor on, not from 0: 1,200 or so records, 7 pages instead of 10.
    assert summary.pages == fake.count(SEARCH) == 7
    assert 2_000 - applied + 1 <= summary.records <= 2_000 - applied + summary.pages
    assert summary.changed == 2_000 - applied
    assert mirrored(engine) == 2_000
    assert "(resumed)" in summary.line()
    done = checkpoint(engine)
    assert done.run_started_at is None
    # The resumed run finishes the first: success is counted from when that one started.
    assert done.last_success_at == row.run_started_at
    assert done.last_success_since_ms == 0


def test_the_next_run_looks_back_from_the_last_success(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    fake.generate(
        PORTAL, "contacts", 300, start=datetime.now(UTC) - timedelta(days=3), step=timedelta(0)
    )  # one millisecond, three days ago
    fake.search_lag = 60  # a change just made is not searchable yet
    late = fake.upsert(PORTAL, "contacts", properties={"email": "late@example.com"})
    before = db.utcnow()

    first = reconcile(engine, fast_api, portal_id=PORTAL, object_type="contacts")
    success = checkpoint(engine).last_success_at
    after_first = mirrored_ids(engine)
    fake.search_lag = 0
    second = reconcile(
        engine, fast_api, portal_id=PORTAL, object_type="contacts", lookback_seconds=600
    )

    assert first.since_ms == 0
    assert len(after_first) == 300
    assert int(late) not in after_first
    assert before <= success <= db.utcnow()
    assert second.resumed is False
    assert second.since_ms == int(success.timestamp() * 1000 - 600_000)
    assert second.records == 1  # only the late change: not everything again
    assert second.changed == 1
    assert int(late) in mirrored_ids(engine)


def test_an_explicit_since_overrides_the_checkpoint(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    ids = fake.generate(PORTAL, "contacts", 10, start=start, step=timedelta(hours=1))
    reconcile(engine, fast_api, portal_id=PORTAL, object_type="contacts")

    summary = reconcile(
        engine,
        fast_api,
        portal_id=PORTAL,
        object_type="contacts",
        since_ms=epoch_ms(start + timedelta(hours=7)),
    )

    assert summary.records == 3
    assert summary.changed == 0
    assert summary.since_ms == modified_ms(fake, ids[7])


def test_reconcile_keeps_newer_webhook_values(
    store: Store, worker: Worker, engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    first, second = fake.generate(PORTAL, "contacts", 2, start=start)
    at = epoch_ms(start)
    store(
        [
            change("contact", int(first), at + 60_000, "firstname", "Newer"),
            change("contact", int(second), at - 60_000, "firstname", "Older"),
        ]
    )
    worker.drain()

    summary = reconcile(engine, fast_api, portal_id=PORTAL, object_type="contacts")

    with engine.connect() as connection:
        names: dict[int, str] = dict(
            connection.execute(sa.text("SELECT object_id, firstname FROM hubspot_contacts")).all()
        )
    assert names == {int(first): "Newer", int(second): "Contact"}
    assert summary.changed == 2  # each got its email; only the second its firstname


def test_records_modified_while_paging_do_not_push_others_out_of_the_run(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    ids = fake.generate(PORTAL, "contacts", 600)

    class EditAfterFirstPage(Progress):
        def update(self, summary: Summary, total: int) -> None:
            if summary.pages == 1:
                # A user edits a record already read: it moves to the end of the sort order.
                fake.upsert(PORTAL, "contacts", ids[50], {"firstname": "Edited"})

    reconcile(
        engine,
        fast_api,
        portal_id=PORTAL,
        object_type="contacts",
        progress=EditAfterFirstPage(stream=io.StringIO()),
    )

    missed = {int(i) for i in ids} - mirrored_ids(engine)
    assert missed == set()


# --- progress and summary --------------------------------------------------------------------


def test_progress_prints_plain_lines_when_not_a_tty(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    fake.generate(PORTAL, "contacts", 2_050)  # 11 pages
    stream = io.StringIO()

    reconcile(
        engine,
        fast_api,
        portal_id=PORTAL,
        object_type="contacts",
        progress=Progress(stream=stream, every_pages=10),
    )

    first, eleventh = stream.getvalue().splitlines()
    assert first == "reconcile contacts: page 1, 200 records, 200 changed"
    assert re.fullmatch(r"reconcile contacts: page 11, \d+ records, 2050 changed", eleventh)
    assert "\r" not in stream.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal() -> None:
    stream = _Terminal()
    progress = Progress(stream=stream)
    summary = Summary(portal_id=PORTAL, object_type="contacts", since_ms=0)

    summary.pages, summary.records, summary.changed = 1, 200, 150
    progress.update(summary, 400)
    summary.pages, summary.records, summary.changed = 2, 400, 150
    progress.update(summary, 400)
    progress.finish()

    frames = stream.getvalue().split("\r")[1:]
    assert frames[0] == f"contacts   [{'#' * 15}{'.' * 15}] 200 records, 150 changed"
    assert frames[1] == f"contacts   [{'#' * 30}] 400 records, 150 changed\n"


def test_summary_line_says_what_a_run_did() -> None:
    summary = Summary(
        portal_id=PORTAL,
        object_type="deals",
        since_ms=0,
        pages=3,
        records=450,
        changed=12,
        api_calls=3,
        seconds=1.25,
        resumed=True,
    )

    assert summary.line() == (
        f"reconciled deals of portal {PORTAL} (resumed): 3 pages, 450 records, 12 changed,"
        " 3 API calls, 1.2 s"
    )


# --- every portal ----------------------------------------------------------------------------


def test_reconcile_all_covers_every_portal_and_type(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi, install_tokens: InstallTokens
) -> None:
    fast_api.private_token = None
    install_tokens(PORTAL, expires_in=timedelta(minutes=30))
    install_tokens(OTHER_PORTAL, expires_in=timedelta(minutes=30))
    fake.generate(PORTAL, "contacts", 5)
    fake.generate(PORTAL, "companies", 3)
    fake.generate(OTHER_PORTAL, "contacts", 2)
    fake.generate(OTHER_PORTAL, "deals", 4)
    assert known_portals(engine) == [PORTAL, OTHER_PORTAL]

    summaries = reconcile_all(engine, fast_api, portals=known_portals(engine))

    assert summaries is not None
    assert [(s.portal_id, s.object_type, s.records) for s in summaries] == [
        (PORTAL, "contacts", 5),
        (PORTAL, "companies", 3),
        (PORTAL, "deals", 0),
        (OTHER_PORTAL, "contacts", 2),
        (OTHER_PORTAL, "companies", 0),
        (OTHER_PORTAL, "deals", 4),
    ]
    with engine.connect() as connection:
        deals = connection.execute(
            sa.text("SELECT count(*) FROM hubspot_deals WHERE portal_id = :p AND dealname <> ''"),
            {"p": OTHER_PORTAL},
        ).scalar_one()
    assert deals == 4


def test_reconcile_all_steps_aside_while_another_run_holds_the_lock(
    engine: sa.Engine, fake: FakeHubSpot, fast_api: HubSpotApi
) -> None:
    fake.generate(PORTAL, "contacts", 5)

    with engine.connect() as other:
        assert other.scalar(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": RECONCILE_LOCK})
        try:
            assert reconcile_all(engine, fast_api, portals=[PORTAL]) is None
        finally:
            other.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": RECONCILE_LOCK})
            other.commit()

    assert fake.calls == []
    summaries = reconcile_all(engine, fast_api, portals=[PORTAL], object_types=["contacts"])
    assert summaries is not None
    assert [s.records for s in summaries] == [5]


def test_known_portals_are_installs_in_good_standing_and_portals_in_the_mirror(
    store: Store,
    worker: Worker,
    engine: sa.Engine,
    fake: FakeHubSpot,
    install_tokens: InstallTokens,
) -> None:
    install_tokens(OTHER_PORTAL, expires_in=timedelta(minutes=30))
    install_tokens(5, expires_in=timedelta(minutes=30))
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE hubspot_tokens SET needs_reinstall = true WHERE portal_id = 5")
        )
    store([change("contact", 1, 1_000, "email", "a@example.com")])
    worker.drain()

    assert known_portals(engine) == [PORTAL, OTHER_PORTAL]
    # The scheduled reconcile leaves a paused portal alone (service/portals.py).
    with engine.begin() as connection:
        portals.pause(connection, OTHER_PORTAL)
    assert known_portals(engine) == [PORTAL]
