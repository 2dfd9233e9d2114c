"""The admin pages in a real headless Chromium against a real server (uvicorn on a free port):
log in, send events with the `send` command, watch the overview, filter, replay a dead event.

Set ADMIN_SCREENSHOTS=docs to save a screenshot of each page there (README's "Dashboard").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from service import journal
from tests.factories import ADMIN_TOKEN, CLIENT_SECRET, UNPARSEABLE, journal_read
from tests.support import breakable_worker, dead_run_and_fetch, run_cli

SCREENSHOTS = os.environ.get("ADMIN_SCREENSHOTS")


def shoot(page: Any, name: str) -> None:
    """Save a full-page screenshot as ADMIN_SCREENSHOTS/admin-NAME.png when asked to."""
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / f"admin-{name}.png"), full_page=True)


def number(page: Any, card: str) -> int:
    return int(page.inner_text(f"#{card} .n"))


def log_in(page: Any, token: str = ADMIN_TOKEN) -> None:
    page.goto("/admin/")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")


def test_an_operator_logs_in_sees_events_arrive_and_replays_a_dead_one(
    browser_page: Any, live_server: str, engine: sa.Engine, tmp_path: Path
) -> None:
    page = browser_page
    page.goto("/admin/")
    shoot(page, "login")
    log_in(page)
    page.wait_for_url("**/admin/")
    assert number(page, "events-last-hour") == 0

    sent = run_cli(
        "send",
        "contact.creation",
        "--count",
        "3",
        "--url",
        f"{live_server}/webhooks/hubspot",
        "--secret",
        CLIENT_SECRET,
        env={"DATA_DIR": str(tmp_path / "data")},
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    page.reload()
    assert number(page, "events-last-hour") == 3
    assert number(page, "inbox-pending") == 3

    breakable = breakable_worker(engine)
    assert breakable.worker.drain() == 3
    dead_run_and_fetch(engine, inbox_id=1)
    page.reload()
    assert number(page, "inbox-pending") == 0
    assert number(page, "dead-inbox") == 3
    shoot(page, "overview")

    page.click("header a[href='/admin/events']")
    page.select_option("select[name=status]", "dead")
    page.fill("input[name=type]", "contact.creation")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/admin/events?status=dead*")
    assert page.locator("table tr").count() == 4  # a header row and three dead events
    shoot(page, "events")

    page.click("table tr:nth-child(2) td a")
    page.wait_for_url("**/admin/events/*")
    assert page.inner_text("h1 .s") == "dead"
    assert "CRM sync for this contact is switched off" in page.inner_text("p.error")
    shoot(page, "event")
    page.click("button:has-text('Replay')")
    assert "Re-queued" in page.inner_text("p.notice")
    assert page.inner_text("h1 .s") == "pending"

    breakable.broken = False
    assert breakable.worker.drain() == 1
    page.reload()
    assert page.inner_text("h1 .s") == "done"

    for name in ("actions", "hydration", "portals", "rules"):
        page.click(f"header a[href='/admin/{name}']")
        page.wait_for_url(f"**/admin/{name}")
        shoot(page, name)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/admin/")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shoot(page, "phone")


def test_a_wrong_token_and_a_post_without_csrf_are_refused(browser_page: Any) -> None:
    page = browser_page
    log_in(page, token="not-the-admin-token")
    assert "not the admin token" in page.inner_text("p.error")
    assert page.context.cookies() == []

    log_in(page)
    page.wait_for_url("**/admin/")
    # The logout form without its CSRF field, submitted by the browser: refused, still in.
    page.evaluate("document.querySelector('header form input[name=csrf]').remove()")
    page.click("header button:has-text('Log out')")
    assert "CSRF" in page.inner_text("body")
    page.goto("/admin/")
    assert page.url.endswith("/admin/")


def test_an_operator_finds_the_journal_reader_its_failed_entry_and_open_gap(
    browser_page: Any, engine: sa.Engine
) -> None:
    page = browser_page
    log_in(page)
    page.wait_for_url("**/admin/")
    assert page.locator("header a[href='/admin/journal']").count() == 0, "push only: no link"

    with engine.begin() as connection:
        journal_read(connection, "global", ["stored", "failed", "stored"])
        journal.note_latest(connection, "global", latest_offset="global-5", behind=2)
        journal.record_gap(
            connection,
            "global",
            reason="offset_expired",
            since_ms=1_700_000_000_000,
            until_ms=1_700_000_500_000,
            from_offset="global-0",
            to_offset=None,
        )
    page.reload()
    page.click("header a[href='/admin/journal']")
    page.wait_for_url("**/admin/journal")

    assert page.inner_text("#offset-1 .n") == "global-3"
    assert page.inner_text("#behind-1 .n") == "2"
    assert page.inner_text("#failed-1 .n") == "1"
    assert page.inner_text("#gaps-1 .n") == "1"
    assert page.inner_text("#state-1") == "gap"
    assert page.inner_text("#replay-hint") == "hubspot-webhooks journal replay --failed"
    open_gap = page.locator("#gaps tr.open td").first
    assert open_gap.evaluate("td => getComputedStyle(td).backgroundColor") == "rgb(253, 226, 225)"
    shoot(page, "journal")

    page.click("#failed-1")
    page.wait_for_url("**/admin/journal?status=failed*")
    assert page.locator("#entries tr").count() == 2  # a header row and the failed entry
    assert UNPARSEABLE in page.inner_text("#entries")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
