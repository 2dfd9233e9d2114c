"""service.web.admin.journal through GET /admin/api/journal and the /admin/journal page: the
Webhooks Journal reader's cursors, entries and gaps on real rows (written by service.journal)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service import journal
from service.web.app import create_app
from tests.factories import ADMIN_TOKEN, PORTAL, UNPARSEABLE, journal_read
from tests.support import make_settings

BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REPLAY = "hubspot-webhooks journal replay --failed"


def reader_rows(engine: sa.Engine) -> int:
    """A global journal read to offset global-4 (global-2 failed), 3 behind, failing with an
    error that quotes an address, one reconciled gap and one open; the open gap's id."""
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored", "failed", "stored", "stored"])
        journal.note_latest(connection, "global", latest_offset="global-7", behind=3)
        journal.note_error(
            connection, "global", "HubSpotError: 400 for ada@example.com\nTraceback (most...)"
        )
        gaps = [
            journal.record_gap(
                connection,
                "global",
                reason=reason,
                since_ms=1_700_000_000_000,
                until_ms=1_700_000_500_000,
                from_offset="global-0",
                to_offset=None,
            )
            for reason in ("offset_expired", "file_expired")
        ]
        journal.gap_reconciled(connection, gaps[0])
    return gaps[1]


def log_in(client: TestClient) -> None:
    response = client.post("/admin/login", data={"token": ADMIN_TOKEN})
    assert response.status_code == 200, response.text


@pytest.fixture
def journal_client(clean_db: str) -> Iterator[TestClient]:
    """The admin app with the journal as the event source (and the client credentials it needs)."""
    settings = make_settings(
        ADMIN_TOKEN=ADMIN_TOKEN,
        HUBSPOT_EVENT_SOURCE="journal",
        HUBSPOT_CLIENT_ID="client-id-1",
    )
    with TestClient(create_app(settings, database_url=clean_db)) as client:
        yield client


def test_the_journal_api_needs_the_bearer_token(admin_client: TestClient) -> None:
    response = admin_client.get("/admin/api/journal")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_journal_api_is_empty_before_any_reader(api: TestClient) -> None:
    found = api.get("/admin/api/journal").json()

    assert found["event_source"] == "push"
    assert (found["cursors"], found["entries"], found["gaps"]) == ([], [], [])
    assert found["replay_hint"] == REPLAY


def test_the_journal_api_shows_cursors_entries_and_gaps(api: TestClient, engine: sa.Engine) -> None:
    open_gap = reader_rows(engine)

    found = api.get("/admin/api/journal").json()

    [cursor] = found["cursors"]
    assert cursor["journal"] == "global"
    assert cursor["current_offset"] == "global-4"
    assert (cursor["behind"], cursor["latest_offset"]) == (3, "global-7")
    assert (cursor["failed_entries"], cursor["open_gaps"], cursor["errors"]) == (1, 1, 1)
    assert cursor["state"] == "gap"
    assert 0 <= cursor["entry_age_seconds"] < 60
    assert cursor["last_error"] == "HubSpotError: 400 for a***@example.com"
    assert [e["entry_offset"] for e in found["entries"]] == [f"global-{n}" for n in (4, 3, 2, 1)]
    failed = found["entries"][2]
    assert (failed["status"], failed["error"], failed["events"], failed["stored"]) == (
        "failed",
        UNPARSEABLE,
        2,
        0,
    )
    assert all("file" not in e and e["file_kept"] for e in found["entries"])
    assert [(g["id"], g["open"]) for g in found["gaps"]] == [
        (open_gap, True),
        (open_gap - 1, False),
    ]
    assert found["gaps"][1]["reconciled_at"] is not None
    window = (found["gaps"][0]["since"], found["gaps"][0]["until"])
    assert window == ("2023-11-14T22:13:20+00:00", "2023-11-14T22:21:40+00:00")


def test_journal_entries_filter_by_status_and_journal(api: TestClient, engine: sa.Engine) -> None:
    reader_rows(engine)
    with engine.begin() as connection:
        journal_read(connection, f"local:{PORTAL}", ["failed"])

    failed = api.get("/admin/api/journal?status=failed").json()["entries"]
    local = api.get(f"/admin/api/journal?journal=local:{PORTAL}").json()["entries"]
    newest = api.get("/admin/api/journal?limit=2").json()["entries"]
    bad = api.get("/admin/api/journal?status=dead")

    assert [(e["journal"], e["entry_offset"]) for e in failed] == [
        (f"local:{PORTAL}", f"local:{PORTAL}-1"),
        ("global", "global-2"),
    ]
    assert [e["entry_offset"] for e in local] == [f"local:{PORTAL}-1"]
    assert len(newest) == 2
    assert bad.status_code == 400
    assert "status must be one of stored, failed" in bad.json()["detail"]


def test_a_reader_that_recovered_is_ok_and_one_still_failing_is_failing(
    api: TestClient, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        journal_read(connection, "global", ["stored"])
    with engine.begin() as connection:
        journal.note_error(connection, "global", "HubSpotUnavailable: HubSpot answered 503")
    assert api.get("/admin/api/journal").json()["cursors"][0]["state"] == "failing"

    with engine.begin() as connection:
        journal.note_latest(connection, "global", latest_offset="global-1", behind=0)
    assert api.get("/admin/api/journal").json()["cursors"][0]["state"] == "ok"


def nav_links(page: str) -> list[str]:
    header = page.split("<header>", 1)[1].split("</header>", 1)[0]
    return re.findall(r'<a href="([^"]+)"', header)


def test_the_nav_links_the_journal_only_once_it_is_used(
    admin_client: TestClient, engine: sa.Engine
) -> None:
    log_in(admin_client)
    assert "/admin/journal" not in nav_links(admin_client.get("/admin/").text)

    reader_rows(engine)

    assert "/admin/journal" in nav_links(admin_client.get("/admin/").text)


def test_in_journal_mode_the_nav_links_the_journal_page_before_any_row(
    journal_client: TestClient,
) -> None:
    log_in(journal_client)
    page = journal_client.get("/admin/journal")

    assert page.status_code == 200
    assert "/admin/journal" in nav_links(page.text)
    assert "HUBSPOT_EVENT_SOURCE=journal" in page.text
    assert "No journal has been read yet" in page.text


def test_the_journal_page_shows_the_reader_and_highlights_open_gaps(
    admin_client: TestClient, engine: sa.Engine
) -> None:
    reader_rows(engine)
    log_in(admin_client)

    page = admin_client.get("/admin/journal").text
    failed_only = admin_client.get("/admin/journal?status=failed").text

    assert "global-4" in page
    assert re.search(r'id="behind-1"><div class="n">3<', page)
    assert re.search(r'id="failed-1" href="[^"]+"><div class="n">1<', page)
    assert re.search(r'id="gaps-1"><div class="n">1<', page)
    assert page.count('<tr class="open">') == 1
    assert f'<code id="replay-hint">{REPLAY}</code>' in page
    assert "a***@example.com" in page
    assert "ada@example.com" not in page
    assert failed_only.count("<td><code>global-") == 1
    assert UNPARSEABLE in failed_only
