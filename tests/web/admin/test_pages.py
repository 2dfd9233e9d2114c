"""service.web.admin.pages and forms: login, session cookie, CSRF, the pages on real rows."""

from __future__ import annotations

import re

import sqlalchemy as sa
from starlette.testclient import TestClient

from tests.factories import ADMIN_TOKEN, PORTAL, hubspot_event, numbered_event
from tests.fake_hubspot import FakeHubSpot
from tests.support import DbClock, MakeApi, Store, breakable_worker, dead_run_and_fetch

PAGES = (
    "/admin/",
    "/admin/events",
    "/admin/actions",
    "/admin/hydration",
    "/admin/portals",
    "/admin/rules",
)


def log_in(client: TestClient) -> str:
    """Log in with the admin token; returns the CSRF token the pages' forms carry."""
    response = client.post("/admin/login", data={"token": ADMIN_TOKEN, "next": "/admin/events"})
    assert response.status_code == 200
    assert response.url.path == "/admin/events"
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', response.text)
    assert found is not None
    return found[1]


def test_pages_redirect_to_the_login_form_without_a_session(admin_client: TestClient) -> None:
    response = admin_client.get("/admin/events?status=dead", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=%2Fadmin%2Fevents%3Fstatus%3Ddead"
    assert admin_client.get("/admin/login").status_code == 200


def test_a_wrong_token_is_refused_and_sets_no_cookie(admin_client: TestClient) -> None:
    response = admin_client.post("/admin/login", data={"token": "not-the-admin-token"})
    assert response.status_code == 401
    assert "not the admin token" in response.text
    assert "set-cookie" not in response.headers
    assert "not-the-admin-token" not in response.text


def test_login_sets_a_signed_httponly_strict_cookie(admin_client: TestClient) -> None:
    response = admin_client.post(
        "/admin/login", data={"token": ADMIN_TOKEN}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert "path=/admin" in cookie
    assert "secure" not in cookie, "plain http here: Secure only on https"
    assert ADMIN_TOKEN.lower() not in cookie


def test_a_tampered_cookie_is_no_session(admin_client: TestClient) -> None:
    log_in(admin_client)
    [name] = list(admin_client.cookies.keys())
    value = admin_client.cookies[name]
    admin_client.cookies.clear()
    admin_client.cookies.set(name, value[:-1] + ("0" if value[-1] != "0" else "1"), path="/admin")
    assert admin_client.get("/admin/", follow_redirects=False).status_code == 303


def test_a_login_never_sends_the_browser_off_site(admin_client: TestClient) -> None:
    response = admin_client.post(
        "/admin/login",
        data={"token": ADMIN_TOKEN, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/admin/"


def test_every_page_renders_real_rows_and_never_the_token(
    admin_client: TestClient, store: Store, engine: sa.Engine
) -> None:
    store([numbered_event(1)])
    breakable = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900, objectId=501)])
    breakable.worker.drain()
    dead_run_and_fetch(engine, inbox_id=2)
    log_in(admin_client)

    for path in PAGES:
        response = admin_client.get(path)
        assert response.status_code == 200, path
        assert ADMIN_TOKEN not in response.text
        assert response.headers["cache-control"] == "no-store"
    overview = admin_client.get("/admin/").text
    assert '<svg viewBox="0 0 600 100"' in overview
    assert 'id="dead-inbox" href="/admin/events?status=dead"><div class="n">1<' in overview
    assert "No worker has been seen" in overview
    dead = admin_client.get("/admin/events", params={"status": "dead"}).text
    assert dead.count('action="/admin/events/2/replay"') == 1
    assert "/admin/events/1/replay" not in dead
    assert 'action="/admin/actions/1/replay"' in admin_client.get("/admin/actions").text
    hydration = admin_client.get("/admin/hydration").text
    assert f'action="/admin/hydration/{PORTAL}/contacts/501/retry"' in hydration
    assert admin_client.get("/admin/actions/1").status_code == 200
    assert admin_client.get("/admin/events/99").status_code == 404
    bad = admin_client.get("/admin/events", params={"portal": "x"})
    assert bad.status_code == 400
    assert "portal must be a non-negative integer" in bad.text


def test_empty_pages_say_what_to_do_next(admin_client: TestClient) -> None:
    log_in(admin_client)
    assert "hubspot-webhooks send contact.creation" in admin_client.get("/admin/events").text
    assert "RULES_FILE" in admin_client.get("/admin/actions").text
    assert "hubspot-webhooks worker" in admin_client.get("/admin/").text
    assert "/oauth/install" in admin_client.get("/admin/portals").text


def test_the_portals_page_shows_recent_429s(
    admin_client: TestClient, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    fake.fail_next(2, status=429)
    make_api(limiter_sleep=DbClock(engine)).batch_read(PORTAL, "contacts", [101], ["email"])
    log_in(admin_client)

    page = admin_client.get("/admin/portals").text

    assert "<th>429s, last 5 min</th>" in page
    assert '<td><span class="s s-failed">2</span></td>' in page


def test_the_raw_event_masks_emails_and_phone_numbers(
    admin_client: TestClient, store: Store
) -> None:
    store(
        [
            numbered_event(1, propertyValue="ada.lovelace@example.com"),
            numbered_event(2, propertyName="phone", propertyValue="+44 20 7946 0958"),
        ]
    )
    log_in(admin_client)
    email = admin_client.get("/admin/events/1").text
    assert "ada.lovelace@example.com" not in email
    assert "a***@example.com" in email
    phone = admin_client.get("/admin/events/2").text
    assert "7946" not in phone
    assert "***-**58" in phone


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(
    admin_client: TestClient, store: Store, engine: sa.Engine
) -> None:
    breakable = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900, objectId=501)])
    breakable.worker.drain()
    csrf = log_in(admin_client)

    assert admin_client.post("/admin/events/1/replay").status_code == 403
    assert admin_client.post("/admin/events/1/replay", data={"csrf": "0" * 64}).status_code == 403
    assert admin_client.post("/admin/logout").status_code == 403
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT status FROM inbox_events")) == "dead"

    replayed = admin_client.post("/admin/events/1/replay", data={"csrf": csrf})
    assert replayed.url.path == "/admin/events/1"
    assert "Re-queued" in replayed.text
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT status FROM inbox_events")) == "pending"


def test_replay_every_matching_event_needs_a_filter(
    admin_client: TestClient, store: Store, engine: sa.Engine
) -> None:
    breakable = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900 + n, objectId=500 + n) for n in (1, 2)])
    breakable.worker.drain()
    csrf = log_in(admin_client)

    assert admin_client.post("/admin/events/replay", data={"csrf": csrf}).status_code == 400
    done = admin_client.post("/admin/events/replay", data={"csrf": csrf, "status": "dead"})
    assert done.url.path == "/admin/events"
    assert "Re-queued every matching item" in done.text
    with engine.connect() as connection:
        assert (
            connection.scalar(sa.text("SELECT count(*) FROM inbox_events WHERE status = 'pending'"))
            == 2
        )


def paused_portals(engine: sa.Engine) -> list[tuple[int, str | None]]:
    with engine.connect() as connection:
        return [
            (r.portal_id, r.reason)
            for r in connection.execute(
                sa.text("SELECT portal_id, reason FROM portal_controls WHERE paused_at IS NOT NULL")
            )
        ]


def test_the_portals_page_pauses_and_resumes_a_portal_with_the_csrf_token(
    admin_client: TestClient, store: Store, engine: sa.Engine
) -> None:
    store([numbered_event(1)])
    csrf = log_in(admin_client)
    page = admin_client.get("/admin/portals").text
    assert f'action="/admin/portals/{PORTAL}/pause"' in page  # it has an event waiting

    assert admin_client.post(f"/admin/portals/{PORTAL}/pause").status_code == 403
    assert admin_client.post("/admin/portals/pause", data={"portal": "7"}).status_code == 403
    assert paused_portals(engine) == []

    by_id = admin_client.post(
        "/admin/portals/pause", data={"csrf": csrf, "portal": "7", "reason": "uninstalled"}
    )
    assert by_id.url.path == "/admin/portals"
    assert "Paused: its events are still stored" in by_id.text
    assert 'action="/admin/portals/7/resume"' in by_id.text
    assert "uninstalled" in by_id.text
    admin_client.post(f"/admin/portals/{PORTAL}/pause", data={"csrf": csrf})
    assert sorted(paused_portals(engine)) == [(7, "uninstalled"), (PORTAL, None)]

    resumed = admin_client.post("/admin/portals/7/resume", data={"csrf": csrf})
    assert "Resumed" in resumed.text
    assert 'action="/admin/portals/7/' not in resumed.text  # running, nothing waiting
    assert paused_portals(engine) == [(PORTAL, None)]
    bad = admin_client.post("/admin/portals/pause", data={"csrf": csrf, "portal": "0"})
    assert bad.status_code == 400
    assert "portal must be a portal (HubSpot account) id" in bad.text


def test_logout_ends_the_session(admin_client: TestClient) -> None:
    csrf = log_in(admin_client)
    response = admin_client.post("/admin/logout", data={"csrf": csrf})
    assert response.url.path == "/admin/login"
    assert admin_client.get("/admin/", follow_redirects=False).status_code == 303
