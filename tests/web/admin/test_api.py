"""service.web.admin.api: the admin JSON API on the real app and the real database."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from starlette.testclient import TestClient

from service.rules.registry import Registry
from service.web.app import create_app
from service.worker.apply import Worker
from tests.factories import ADMIN_TOKEN, PORTAL, hubspot_event, numbered_event
from tests.fake_hubspot import FakeHubSpot
from tests.support import (
    DbClock,
    MakeApi,
    Store,
    breakable_worker,
    dead_run_and_fetch,
    make_settings,
)


def test_the_admin_tree_is_404_when_admin_token_is_unset(clean_db: str) -> None:
    with TestClient(create_app(make_settings(), database_url=clean_db)) as client:
        for path in ("/admin", "/admin/", "/admin/login", "/admin/api/overview"):
            response = client.get(path, headers={"Authorization": "Bearer anything-at-all-1234"})
            assert response.status_code == 404, path
        assert client.post("/admin/api/events/replay", json={"all": True}).status_code == 404


def test_the_api_needs_the_bearer_token(admin_client: TestClient) -> None:
    missing = admin_client.get("/admin/api/overview")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = admin_client.get(
        "/admin/api/overview", headers={"Authorization": "Bearer " + ADMIN_TOKEN[:-1] + "x"}
    )
    assert wrong.status_code == 401
    refused = admin_client.post("/admin/api/events/replay", json={"all": True})
    assert refused.status_code == 401
    assert ADMIN_TOKEN not in missing.text + wrong.text


def test_overview_counts_queues_dead_letters_and_events_per_minute(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    store([numbered_event(n) for n in range(1, 4)])
    broken = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900, objectId=501)])
    assert broken.worker.drain() == 4
    dead_run_and_fetch(engine, inbox_id=4)

    stats = api.get("/admin/api/overview").json()

    assert stats["dead_letters"] == {"inbox": 1, "actions": 1, "hydration": 1}
    assert stats["queues"]["inbox"]["dead"] == 1
    assert stats["events_last_hour"] == 4
    assert len(stats["events_per_minute"]) == 60
    assert stats["events_per_minute"][-1] == 4
    assert stats["live_workers"] == []
    assert stats["portals_needing_reinstall"] == []


def test_events_filter_and_page_by_keyset(api: TestClient, store: Store) -> None:
    store([numbered_event(n) for n in range(1, 8)])
    store([hubspot_event("deal.creation", eventId=77, objectId=9, portalId=PORTAL + 1)])

    first = api.get("/admin/api/events", params={"type": "contact.propertyChange", "limit": 3})
    assert first.status_code == 200
    page = first.json()
    assert [e["id"] for e in page["items"]] == [7, 6, 5]
    assert "payload" not in page["items"][0]
    second = api.get(
        "/admin/api/events",
        params={"type": "contact.propertyChange", "limit": 3, "before": page["next"]},
    ).json()
    assert [e["id"] for e in second["items"]] == [4, 3, 2]
    last = api.get(
        "/admin/api/events",
        params={"type": "contact.propertyChange", "limit": 3, "before": second["next"]},
    ).json()
    assert [e["id"] for e in last["items"]] == [1]
    assert last["next"] is None

    by_portal = api.get("/admin/api/events", params={"portal": PORTAL + 1}).json()
    assert [e["subscription_type"] for e in by_portal["items"]] == ["deal.creation"]
    by_object = api.get("/admin/api/events", params={"object": 103}).json()
    assert [e["id"] for e in by_object["items"]] == [3]
    assert api.get("/admin/api/events", params={"since": "5m"}).json()["next"] is None
    assert api.get("/admin/api/events", params={"until": "2000-01-01"}).json()["items"] == []
    pending = api.get("/admin/api/events", params={"status": "pending"}).json()["items"]
    assert len(pending) == 8


def test_a_bad_filter_is_400_naming_it(api: TestClient) -> None:
    for params, name in (
        ({"status": "lost"}, "status"),
        ({"portal": "x"}, "portal"),
        ({"since": "yesterday"}, "since"),
        ({"limit": "0"}, "limit"),
    ):
        response = api.get("/admin/api/events", params=params)
        assert response.status_code == 400
        assert response.json()["detail"].startswith(name)


def test_one_event_has_payload_attempts_error_and_traceback(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    broken = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900, objectId=501)])
    broken.worker.drain()

    event = api.get("/admin/api/events/1").json()

    assert event["status"] == "dead"
    assert event["attempts"] == 1
    assert event["payload"]["objectId"] == 501
    assert event["error"] == "RuntimeError: CRM sync for this contact is switched off"
    assert "Traceback (most recent call last)" in event["traceback"]
    assert event["action_runs"] == []
    assert api.get("/admin/api/events/99").status_code == 404


def test_replaying_one_dead_event_requeues_it_and_a_drain_applies_it(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    broken = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900, objectId=501)])
    broken.worker.drain()
    broken.broken = False

    assert api.post("/admin/api/events/1/replay").json() == {"replayed": 1}
    assert api.get("/admin/api/events/1").json()["status"] == "pending"
    assert broken.worker.drain() == 1
    assert api.get("/admin/api/events/1").json()["status"] == "done"
    assert api.post("/admin/api/events/42/replay").status_code == 404


def test_replay_by_filter_needs_a_filter_or_all(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    store([numbered_event(n) for n in range(1, 3)])
    broken = breakable_worker(engine)
    store([hubspot_event("contact.creation", eventId=900 + n, objectId=500 + n) for n in (1, 2)])
    broken.worker.drain()

    assert api.post("/admin/api/events/replay", json={}).status_code == 400
    assert api.post("/admin/api/events/replay", json={"status": "dead"}).json() == {"replayed": 2}
    assert api.post("/admin/api/events/replay", json={"all": True}).json() == {"replayed": 4}


def test_action_runs_list_show_and_replay(api: TestClient, store: Store, engine: sa.Engine) -> None:
    store([numbered_event(1)])
    dead_run_and_fetch(engine, inbox_id=1)

    listed = api.get("/admin/api/actions", params={"status": "dead"}).json()
    assert [(r["rule"], r["status"]) for r in listed["items"]] == [("won", "dead")]
    assert listed["next"] is None
    run = api.get(f"/admin/api/actions/{listed['items'][0]['id']}").json()
    assert run["payload"] == {"email": "a***@example.com"}
    assert run["error"] == "HTTP 410 from the target"
    assert api.get("/admin/api/actions", params={"event": 2}).json()["items"] == []

    assert api.post(f"/admin/api/actions/{run['id']}/replay").json() == {"replayed": 1}
    assert api.get(f"/admin/api/actions/{run['id']}").json()["status"] == "pending"
    assert api.post("/admin/api/actions/replay", json={}).status_code == 400
    assert api.post("/admin/api/actions/replay", json={"rule": "won"}).json() == {"replayed": 1}
    assert api.get("/admin/api/actions/999").status_code == 404


def test_hydration_requests_list_and_retry(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    store([numbered_event(1)])
    dead_run_and_fetch(engine, inbox_id=1)

    [dead] = api.get("/admin/api/hydration", params={"status": "dead"}).json()["items"]
    assert (dead["object_type"], dead["object_id"], dead["last_error"]) == (
        "contacts",
        501,
        "HubSpot answered 403",
    )
    retried = api.post(f"/admin/api/hydration/{PORTAL}/contacts/501/retry").json()
    assert retried == {"retried": 1}
    [pending] = api.get("/admin/api/hydration").json()["items"]
    assert (pending["status"], pending["attempts"]) == ("pending", 0)
    assert api.post("/admin/api/hydration/retry", json={}).status_code == 400
    assert api.get("/admin/api/hydration", params={"after": "nonsense"}).status_code == 400


def test_portals_show_token_state_and_never_the_token(api: TestClient, engine: sa.Engine) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO hubspot_tokens (portal_id, access_token, refresh_token, expires_at,"
                " needs_reinstall, last_error) VALUES (:p, 'secret-access', 'secret-refresh',"
                " now(), true, 'refresh token revoked')"
            ),
            {"p": PORTAL},
        )
    response = api.get("/admin/api/portals")
    [portal] = response.json()["items"]
    assert portal["portal_id"] == PORTAL
    assert portal["needs_reinstall"] is True
    assert "secret" not in response.text
    overview = api.get("/admin/api/overview").json()
    assert [p["portal_id"] for p in overview["portals_needing_reinstall"]] == [PORTAL]


def test_portals_show_the_429s_of_the_last_five_minutes(
    api: TestClient, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    hubspot = make_api(limiter_sleep=DbClock(engine))
    fake.fail_next(2, status=429)
    hubspot.batch_read(PORTAL, "contacts", [101], ["email"])
    with engine.begin() as connection:  # six minutes pass
        connection.execute(
            sa.text("UPDATE hubspot_api_call_minutes SET minute = minute - interval '6 minutes'")
        )
    fake.fail_next(1, status=429)
    hubspot.batch_read(PORTAL, "contacts", [101], ["email"])

    [portal] = api.get("/admin/api/portals").json()["items"]

    assert portal["recent_429s"] == 1
    assert portal["api_calls"] == {"429": 3, "ok": 2}


def test_pausing_a_portal_holds_its_events_and_resuming_lets_a_drain_apply_them(
    api: TestClient, admin_client: TestClient, store: Store, engine: sa.Engine
) -> None:
    paused = api.post(f"/admin/api/portals/{PORTAL}/pause", json={"reason": "bulk import"})
    assert paused.status_code == 200
    body = paused.json()
    assert (body["portal_id"], body["paused"], body["reason"]) == (PORTAL, True, "bulk import")
    assert body["paused_at"].startswith("20")
    store([numbered_event(1), numbered_event(2, portalId=7)])
    worker = Worker(engine, handlers=Registry())

    assert worker.drain() == 1  # portal 7's event; PORTAL's waits
    listed = {p["portal_id"]: p for p in api.get("/admin/api/portals").json()["items"]}
    assert (listed[PORTAL]["paused"], listed[PORTAL]["pause_reason"]) == (True, "bulk import")
    assert listed[PORTAL]["due_events"] == 1
    assert 7 not in listed  # nothing waiting, no token, no calls: nothing to show

    resumed = api.post(f"/admin/api/portals/{PORTAL}/resume")
    assert resumed.json() == {"portal_id": PORTAL, "paused": False, "resumed": True}
    assert worker.drain() == 1
    assert api.get("/admin/api/portals").json()["items"] == []  # running, nothing waiting
    assert api.post(f"/admin/api/portals/{PORTAL}/resume").json()["resumed"] is False


def test_pause_and_resume_need_the_bearer_token_and_a_real_portal_id(
    api: TestClient, admin_client: TestClient
) -> None:
    del admin_client.headers["Authorization"]
    assert admin_client.post(f"/admin/api/portals/{PORTAL}/pause").status_code == 401
    assert admin_client.post(f"/admin/api/portals/{PORTAL}/resume").status_code == 401
    admin_client.headers.update({"Authorization": f"Bearer {ADMIN_TOKEN}"})
    for portal in (0, 2**63):
        refused = api.post(f"/admin/api/portals/{portal}/pause")
        assert refused.status_code == 400
        assert refused.json()["error"] == "bad_parameter"
    assert api.post(f"/admin/api/portals/{PORTAL}/pause", content=b"[1]").status_code == 400
    assert api.get("/admin/api/portals").json()["items"] == []


def test_a_mirrored_record_has_versions_and_associations(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    store(
        [
            numbered_event(1, objectId=501, propertyName="firstname", propertyValue="Ada"),
            hubspot_event(
                "contact.associationChange",
                eventId=5,
                occurredAt=1_700_000_000_500,
                fromObjectId=501,
                toObjectId=77,
                associationType="CONTACT_TO_COMPANY",
                associationRemoved=False,
                isPrimaryAssociation=True,
            ),
        ]
    )
    breakable_worker(engine).worker.drain()

    found = api.get(f"/admin/api/records/{PORTAL}/contacts/501").json()
    assert {"name": "firstname", "value": "Ada", "version": 1_700_000_000_001} in found[
        "properties"
    ]
    assert {(a["from_id"], a["to_type"], a["to_id"]) for a in found["associations"]} == {
        (501, "companies", 77),
        (77, "contacts", 501),
    }
    assert api.get(f"/admin/api/records/{PORTAL}/contacts/502").status_code == 404


def test_payloads_and_record_values_are_masked_as_the_pages_mask_them(
    api: TestClient, store: Store, engine: sa.Engine
) -> None:
    store(
        [
            numbered_event(1, objectId=501),
            numbered_event(2, objectId=501, propertyName="phone", propertyValue="+1 617 555 0134"),
        ]
    )
    breakable_worker(engine).worker.drain()
    dead_run_and_fetch(engine, inbox_id=1)

    event = api.get("/admin/api/events/1")
    assert event.json()["payload"]["propertyValue"] == "p***@example.com"
    phone = api.get("/admin/api/events/2").json()
    assert phone["payload"]["propertyValue"] == "***-**34"
    [listed] = api.get("/admin/api/actions").json()["items"]
    run = api.get(f"/admin/api/actions/{listed['id']}")
    assert run.json()["payload"] == {"email": "a***@example.com"}
    record = api.get(f"/admin/api/records/{PORTAL}/contacts/501")
    values = {p["name"]: p["value"] for p in record.json()["properties"]}
    assert (values["email"], values["phone"]) == ("p***@example.com", "***-**34")
    for response in (event, run, record):
        assert "@example.com" in response.text
        assert "person1@" not in response.text
        assert "ada@" not in response.text
        assert "555" not in response.text


def test_rules_show_how_often_each_fired(
    clean_db: str, store: Store, engine: sa.Engine, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rules]]\nname = "won"\n[rules.when]\nobject = "deals"\nkind = "property_change"\n'
        'property = "dealstage"\nto = "closedwon"\n[[rules.do]]\naction = "log"\n'
    )
    store([numbered_event(1)])
    dead_run_and_fetch(engine, inbox_id=1)
    app = create_app(
        make_settings(ADMIN_TOKEN=ADMIN_TOKEN, RULES_FILE=str(rules)), database_url=clean_db
    )
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        body = client.get("/admin/api/rules").json()
    [rule] = body["items"]
    assert (rule["name"], rule["fired"], rule["runs"], rule["actions"]) == (
        "won",
        1,
        {"dead": 1},
        ["log"],
    )
    assert body["problem"] is None
