"""service.ops.journal_checks through `doctor`: with the Webhooks Journal as the source, the app
token, the journal answering `latest` (the fake HubSpot's journal) and the reader's state (its
rows, written by service.journal); nothing at all in push mode."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from service import journal
from service.hubspot.appauth import AppApi, AppToken
from service.hubspot.journal_api import JournalApi
from service.ops import doctor, journal_checks
from service.ops.checks import Check
from tests.factories import PORTAL, journal_read
from tests.fake_hubspot import FakeHubSpot
from tests.fake_journal import FakeJournal

JOURNAL_LINES = ["journal token", "journal", "journal reader"]


def journal_env(
    database_url: str, fake: FakeHubSpot, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """A deployment reading the journal of the fake HubSpot with the app's client credentials."""
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "HUBSPOT_EVENT_SOURCE": "journal",
        "HUBSPOT_CLIENT_ID": fake.client_id,
        "HUBSPOT_CLIENT_SECRET": fake.client_secret,
        "HUBSPOT_API_BASE_URL": fake.url,
        **extra,
    }


def journal_checks_of(env: dict[str, str]) -> dict[str, Check]:
    """doctor's journal lines, by name, in order."""
    checks = [c for c in doctor.run_checks(env) if c.name.startswith("journal")]
    assert [c.name for c in checks] == JOURNAL_LINES
    return {c.name: c for c in checks}


def an_entry(fake: FakeHubSpot, portal: int = PORTAL) -> str:
    event = FakeJournal.event("UPDATE", portal, "0-1", 101, occurred_at=1_700_000_000_000)
    return fake.journal.append(portal, [event])


def test_push_mode_has_no_journal_line(clean_db: str, fake: FakeHubSpot, tmp_path: Path) -> None:
    env = journal_env(clean_db, fake, tmp_path, HUBSPOT_EVENT_SOURCE="push")

    assert not [c for c in doctor.run_checks(env) if c.name.startswith("journal")]


def test_a_journal_not_read_yet_answers_latest_and_says_start_the_worker(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    an_entry(fake)
    latest = an_entry(fake)

    found = journal_checks_of(journal_env(clean_db, fake, tmp_path))

    assert found["journal token"].status == "ok"
    assert "developer.webhooks_journal.read" in found["journal token"].detail
    assert found["journal"].status == "ok"
    assert found["journal"].detail == f"the global journal answers latest: offset {latest}"
    assert found["journal reader"].status == "warn"
    assert found["journal reader"].detail == "the global journal has not been read yet"
    assert "hubspot-webhooks worker" in found["journal reader"].fix


def test_the_local_journal_is_checked_and_an_empty_one_is_fine(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    an_entry(fake, portal=PORTAL + 1)  # another portal's: not in PORTAL's local journal
    env = journal_env(clean_db, fake, tmp_path, HUBSPOT_JOURNAL_PORTAL_ID=str(PORTAL))

    found = journal_checks_of(env)

    assert found["journal"].status == "ok"
    assert found["journal"].detail == f"the local:{PORTAL} journal answers latest: no entry yet"


def test_client_credentials_hubspot_refuses_fail_and_the_journal_cannot_be_told(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    env = journal_env(clean_db, fake, tmp_path, HUBSPOT_CLIENT_SECRET="not-the-app-secret")

    found = journal_checks_of(env)

    assert found["journal token"].status == "fail"
    assert "refused the app's client credentials" in found["journal token"].detail
    assert "HUBSPOT_CLIENT_SECRET" in found["journal token"].fix
    assert "not-the-app-secret" not in found["journal token"].line()
    assert found["journal"].status == "warn"
    assert found["journal"].detail == "cannot tell: see journal token"


def test_a_token_without_the_journal_scope_is_refused_and_the_fix_names_it(
    fake: FakeHubSpot,
) -> None:
    an_entry(fake)
    token = AppToken(
        fake.url, fake.client_id, fake.client_secret, scopes=("crm.objects.contacts.read",)
    )
    api = JournalApi(AppApi(fake.url, token))

    check = journal_checks.check_latest(api)

    assert check.status == "fail"
    assert check.detail == "HubSpot refused the global journal to the app's token (403)"
    assert "developer.webhooks_journal.read" in check.fix


def test_the_reader_state_is_ok_while_it_keeps_up(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored", "stored"])
        journal.note_latest(connection, "global", latest_offset="global-2", behind=0)

    reader = journal_checks_of(journal_env(clean_db, fake, tmp_path))["journal reader"]

    assert reader.status == "ok", reader.line()
    assert reader.detail.startswith("global: offset global-2, last entry stored ")
    assert reader.detail.endswith("s ago, 0 behind latest, 0 failed entries, 0 open gaps, 0 errors")


def test_failed_entries_and_open_gaps_are_warnings_with_their_fix(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored", "failed"])
    env = journal_env(clean_db, fake, tmp_path)

    failed = journal_checks_of(env)["journal reader"]
    with engine.begin() as connection:
        journal.record_gap(
            connection,
            "global",
            reason="offset_expired",
            since_ms=1,
            until_ms=2,
            from_offset="global-2",
            to_offset=None,
        )
    gap = journal_checks_of(env)["journal reader"]

    assert failed.status == "warn"
    assert "1 failed entries" in failed.detail
    assert failed.fix == "fix the parser, then run `hubspot-webhooks journal replay --failed`"
    assert gap.status == "warn"
    assert "1 open gaps" in gap.detail
    assert "reconciles the missed window" in gap.fix


def test_a_reader_whose_last_round_failed_fails_until_a_round_succeeds(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    env = journal_env(clean_db, fake, tmp_path)
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored"])
    with engine.begin() as connection:
        journal.note_error(
            connection, "global", "HubSpotUnavailable: GET /batch: HubSpot answered 503\nmore"
        )

    failing = journal_checks_of(env)["journal reader"]
    with engine.begin() as connection:
        journal.note_latest(connection, "global", latest_offset="global-1", behind=0)
    recovered = journal_checks_of(env)["journal reader"]

    assert failing.status == "fail"
    assert failing.detail.endswith(
        "1 errors; last round failed: HubSpotUnavailable: GET /batch: HubSpot answered 503"
    )
    assert recovered.status == "ok", recovered.line()
