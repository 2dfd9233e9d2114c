"""The `journal` alert condition of service.worker.upkeep: an open gap, a failed entry, a reader
failing for longer than ALERT_LAG each fire it once (two workers' loops evaluating it), and it
resolves once all are clear; the Webhooks Journal reader's rows are written by service.journal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from service import journal
from service.worker.upkeep import safe_line
from tests.alerting import ALERT_HOOK_PATH, AlertFleet, alert_fleet
from tests.factories import WEBHOOK_SECRET, journal_read
from tests.receivers import Receiver

REPLAY = "`hubspot-webhooks journal replay --failed`"


def fires_once(fleet: AlertFleet) -> str:
    """The loops fire `journal` once; the Slack text of it."""
    fleet.run_loops()
    fleet.deliver()
    assert fleet.received() == [("journal", "firing")]
    [text] = fleet.slack_texts()
    return text


def resolves_once(fleet: AlertFleet) -> None:
    fleet.run_loops()
    fleet.deliver()
    assert fleet.received() == [("journal", "firing"), ("journal", "resolved")]
    assert "[RESOLVED]" in fleet.slack_texts()[1]


def a_gap(connection: sa.Connection) -> int:
    return journal.record_gap(
        connection,
        "global",
        reason="offset_expired",
        since_ms=1_700_000_000_000,
        until_ms=1_700_000_500_000,
        from_offset="global-1",
        to_offset=None,
    )


@pytest.fixture
def quick_fleet(clean_db: str, engine: sa.Engine, receiver: Receiver) -> Iterator[AlertFleet]:
    """The two workers' alert loops of the `fleet` fixture with ALERT_LAG at 200 ms, so that a
    round of the loops (0.6 s) is longer than it."""
    with alert_fleet(clean_db, engine, receiver, ALERT_LAG="200ms") as built:
        yield built


def test_a_journal_reader_without_trouble_does_not_alert(fleet: AlertFleet) -> None:
    with fleet.engine.begin() as connection:
        journal_read(connection, "global", ["stored", "stored"])
        journal.note_latest(connection, "global", latest_offset="global-2", behind=0)

    fleet.run_loops()

    assert fleet.deliver() == 0


def test_an_open_gap_fires_until_it_is_reconciled(fleet: AlertFleet) -> None:
    with fleet.engine.begin() as connection:
        journal_read(connection, "global", ["stored"])
        gap = a_gap(connection)

    text = fires_once(fleet)

    assert "[FIRING] The Webhooks Journal reader needs attention" in text
    assert f"journal gaps not reconciled 1, failed entries 0 ({REPLAY})" in text
    [hook] = [r for r in fleet.receiver.requests if r.path == ALERT_HOOK_PATH]
    facts = Webhook(WEBHOOK_SECRET).verify(hook.body, hook.headers)["facts"]
    assert facts == {"gaps_open": 1, "failed_entries": 0, "last_error": None}

    with fleet.engine.begin() as connection:
        journal.gap_reconciled(connection, gap, error="HubSpotUnavailable: HubSpot answered 503")
    fleet.run_loops()
    assert fleet.deliver() == 0, "a failed reconcile leaves the gap open"
    with fleet.engine.begin() as connection:
        journal.gap_reconciled(connection, gap)
    resolves_once(fleet)


def test_a_failed_entry_fires_until_it_is_replayed(fleet: AlertFleet) -> None:
    with fleet.engine.begin() as connection:
        journal_read(connection, "global", ["stored", "failed", "stored"])

    text = fires_once(fleet)
    assert f"journal gaps not reconciled 0, failed entries 1 ({REPLAY})" in text

    with fleet.engine.begin() as connection:
        journal.mark_replayed(connection, "global", "global-2", events=2, stored=2, contacts=[])
    resolves_once(fleet)


def test_a_reader_error_alerts_only_once_it_outlasts_alert_lag(fleet: AlertFleet) -> None:
    with fleet.engine.begin() as connection:
        journal_read(connection, "global", ["stored"])
    with fleet.engine.begin() as connection:
        journal.note_error(connection, "global", "HubSpotUnavailable: HubSpot answered 503")

    fleet.run_loops()  # newer than the last entry, by far less than ALERT_LAG (5 minutes)

    assert fleet.deliver() == 0


def test_a_reader_failing_for_longer_than_alert_lag_fires_without_secrets(
    quick_fleet: AlertFleet,
) -> None:
    fleet = quick_fleet
    with fleet.engine.begin() as connection:
        journal_read(connection, "global", ["stored"])
        journal.note_latest(connection, "global", latest_offset="global-1", behind=0)
    fleet.run_loops()  # no error yet; the loops' round is longer than ALERT_LAG
    assert fleet.deliver() == 0
    with fleet.engine.begin() as connection:
        journal.note_error(
            connection,
            "global",
            "FileExpired: GET https://files.example/j/1?X-Amz-Signature=abc123 answered 500"
            "\nTraceback: Authorization: Bearer A-secret-token",
        )

    text = fires_once(fleet)

    assert "failed entries 0" in text
    assert "reader failing: global: FileExpired: GET https://files.example/... answered 500" in text
    assert all(
        b"abc123" not in r.body and b"secret-token" not in r.body for r in fleet.receiver.requests
    )

    with fleet.engine.begin() as connection:  # the next round reads to the end again
        journal.note_latest(connection, "global", latest_offset="global-1", behind=0)
    resolves_once(fleet)


def test_an_alert_line_keeps_no_url_query_or_token() -> None:
    assert (
        safe_line("HubSpotError: token=abc refused\nsecond line")
        == "HubSpotError: token=... refused"
    )
    assert (
        safe_line("GET https://h.example/a/b?sig=1#x failed") == "GET https://h.example/... failed"
    )
    assert safe_line(None) == "unknown error"
    assert len(safe_line("x" * 1000)) == 200
