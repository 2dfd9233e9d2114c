"""service.web.webhook, POST /webhooks/hubspot: verify, store once, answer; against a real,
migrated Postgres."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from service import db, inbox
from service.settings import WEBHOOK_PATH
from service.signature import sign_v1, sign_v2
from service.web.app import create_app
from tests.factories import CLIENT_SECRET, WEBHOOK_URL, numbered_event, v3_headers
from tests.support import make_settings, post, post_events


def rows(engine: sa.Engine, columns: str = "*") -> list[sa.Row[Any]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(f"SELECT {columns} FROM inbox_events ORDER BY id")))


# --- storing ---------------------------------------------------------------------------------


def test_batch_is_stored_with_its_identity_and_answer_counts(
    client: TestClient, engine: sa.Engine
) -> None:
    response = post_events(client, [numbered_event(1), numbered_event(2)])

    assert response.status_code == 200
    assert response.json() == {"received": 2, "stored": 2, "duplicates": 0}
    stored = rows(engine)
    assert [r.event_id for r in stored] == [1, 2]
    first = stored[0]
    assert (first.portal_id, first.subscription_id, first.object_id) == (62515, 12345, 101)
    assert first.occurred_at == 1_700_000_000_001
    assert first.subscription_type == "contact.propertyChange"
    assert first.signature_version == "v3"
    assert first.status == "pending"
    assert first.received_at is not None
    assert first.payload == numbered_event(1)


def test_single_object_body_is_a_batch_of_one(client: TestClient, engine: sa.Engine) -> None:
    response = post_events(client, numbered_event(7))

    assert response.json() == {"received": 1, "stored": 1, "duplicates": 0}
    assert [r.event_id for r in rows(engine)] == [7]


def test_empty_array_is_acknowledged(client: TestClient, engine: sa.Engine) -> None:
    response = post_events(client, [])

    assert response.status_code == 200
    assert response.json() == {"received": 0, "stored": 0, "duplicates": 0}
    assert rows(engine) == []


def test_duplicates_within_one_body_are_stored_once(client: TestClient, engine: sa.Engine) -> None:
    response = post_events(
        client, [numbered_event(1), numbered_event(1), numbered_event(2), numbered_event(1)]
    )

    assert response.json() == {"received": 4, "stored": 2, "duplicates": 2}
    assert len(rows(engine)) == 2


def test_retry_with_higher_attempt_number_is_a_duplicate(
    client: TestClient, engine: sa.Engine
) -> None:
    post_events(client, [numbered_event(1)])
    response = post_events(client, [numbered_event(1, attemptNumber=3)])

    assert response.json() == {"received": 1, "stored": 0, "duplicates": 1}
    assert rows(engine, "payload->>'attemptNumber' AS attempt")[0].attempt == "0"


def test_batch_mixing_new_and_stored_events_stores_only_the_new(
    client: TestClient, engine: sa.Engine
) -> None:
    post_events(client, [numbered_event(1), numbered_event(2)])
    response = post_events(
        client, [numbered_event(2), numbered_event(3), numbered_event(1), numbered_event(4)]
    )

    assert response.json() == {"received": 4, "stored": 2, "duplicates": 2}
    assert [r.event_id for r in rows(engine)] == [1, 2, 3, 4]


def test_repeated_event_id_with_another_identity_is_a_distinct_event(
    client: TestClient, engine: sa.Engine
) -> None:
    # HubSpot: eventId is not guaranteed unique; the key scopes it by portal, subscription,
    # object and occurredAt.
    same = numbered_event(1)
    response = post_events(
        client,
        [
            same,
            {**same, "portalId": 99},
            {**same, "subscriptionId": 2002},
            {**same, "objectId": 555},
            {**same, "occurredAt": same["occurredAt"] + 1},
        ],
    )

    assert response.json() == {"received": 5, "stored": 5, "duplicates": 0}


def test_events_without_optional_identity_fields_are_deduplicated(
    client: TestClient, engine: sa.Engine
) -> None:
    bare = {"eventId": 9, "portalId": 1, "occurredAt": 5, "subscriptionType": "contact.creation"}
    post_events(client, [bare])
    response = post_events(client, [bare, bare])

    assert response.json() == {"received": 2, "stored": 0, "duplicates": 2}
    assert len(rows(engine)) == 1


def test_event_type_is_accepted_in_place_of_subscription_type(
    client: TestClient, engine: sa.Engine
) -> None:
    legacy = numbered_event(1)
    del legacy["subscriptionType"]
    legacy["eventType"] = "contact.creation"

    assert post_events(client, [legacy]).status_code == 200
    assert rows(engine)[0].subscription_type == "contact.creation"


def test_unknown_fields_and_event_types_are_kept(client: TestClient, engine: sa.Engine) -> None:
    odd = numbered_event(
        1, subscriptionType="conversation.newMessage", messageId="m-1", extra={"a": [1]}
    )

    assert post_events(client, [odd]).status_code == 200
    assert rows(engine)[0].payload == odd


def test_unicode_and_escaped_bodies_verify_and_store_the_same_text(
    client: TestClient, engine: sa.Engine
) -> None:
    # The signature covers the raw bytes, escapes and all (never a re-serialised body).
    escaped = json.dumps(
        [numbered_event(1, propertyValue="Jürgen 東京 😀")], ensure_ascii=True
    ).encode()
    raw = json.dumps(
        [numbered_event(2, propertyValue="Jürgen 東京 😀")], ensure_ascii=False
    ).encode()

    assert post(client, escaped).status_code == 200
    assert post(client, raw).status_code == 200
    values = [r.value for r in rows(engine, "payload->>'propertyValue' AS value")]
    assert values == ["Jürgen 東京 😀", "Jürgen 東京 😀"]


def test_nul_and_lone_surrogate_escapes_are_stored_replaced(
    client: TestClient, engine: sa.Engine
) -> None:
    body = b'[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":"contact.propertyChange",'
    body += b'"propertyValue":"a\\u0000b\\ud800c"}]'

    assert post(client, body).status_code == 200
    assert rows(engine, "payload->>'propertyValue' AS value")[0].value == "a\ufffdb\ufffdc"


def test_stored_batch_notifies_the_worker_channel(client: TestClient, clean_db: str) -> None:
    with psycopg.connect(db.libpq_url(clean_db), autocommit=True) as listener:
        listener.execute(f"LISTEN {inbox.INBOX_CHANNEL}")
        post_events(client, [numbered_event(1)])
        notices = list(listener.notifies(timeout=5, stop_after=1))

    assert [n.channel for n in notices] == [inbox.INBOX_CHANNEL]


# --- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe[]", "not UTF-8"),
        (b"42", "must be a JSON array"),
        (b'"text"', "must be a JSON array"),
        (b"[1]", "event [0] must be a JSON object"),
        (b'[{"eventId":1,"portalId":2,"occurredAt":3}]', "missing required field subscriptionType"),
        (
            b'[{"portalId":2,"occurredAt":3,"subscriptionType":"x"}]',
            "missing required field eventId",
        ),
        (
            b'[{"eventId":"1","portalId":2,"occurredAt":3,"subscriptionType":"x"}]',
            "eventId must be",
        ),
        (b'[{"eventId":1,"portalId":true,"occurredAt":3,"subscriptionType":"x"}]', "portalId"),
        (b'[{"eventId":1,"portalId":2,"occurredAt":3.5,"subscriptionType":"x"}]', "occurredAt"),
        (b'[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":7}]', "subscriptionType"),
        (b'[{"eventId":-1,"portalId":2,"occurredAt":3,"subscriptionType":"x"}]', "eventId"),
        (b'[{"eventId":1e30,"portalId":2,"occurredAt":3,"subscriptionType":"x"}]', "eventId"),
        (b'[{"eventId":1,"portalId":2,"occurredAt":NaN,"subscriptionType":"x"}]', "NaN"),
        (
            b'[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":"x","objectId":"7"}]',
            "objectId must be",
        ),
    ],
)
def test_signed_body_that_is_not_an_event_array_is_400_with_a_reason(
    client: TestClient, engine: sa.Engine, body: bytes, fragment: str
) -> None:
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert fragment in response.json()["reason"]
    assert rows(engine) == []


def test_400_names_the_first_offending_element_and_stores_nothing(
    client: TestClient, engine: sa.Engine
) -> None:
    bad = numbered_event(3)
    del bad["portalId"]

    response = post_events(client, [numbered_event(1), numbered_event(2), bad, {"nope": 1}])

    assert response.status_code == 400
    assert response.json()["reason"] == "event [2] (eventId 3): missing required field portalId"
    assert rows(engine) == []


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"X-HubSpot-Signature-v3": "AAAA"}, "bad_signature"),
        ({"X-HubSpot-Request-Timestamp": "1"}, "stale_timestamp"),
        ({"X-HubSpot-Request-Timestamp": "soon"}, "stale_timestamp"),
    ],
)
def test_bad_v3_headers_are_401(
    client: TestClient, engine: sa.Engine, change: dict[str, str], reason: str
) -> None:
    body = json.dumps([numbered_event(1)]).encode()
    headers = {**v3_headers(body), **change}

    response = client.post("/webhooks/hubspot", content=body, headers=headers)

    assert response.status_code == 401
    assert response.json()["reason"] == reason
    assert rows(engine) == []


def test_stale_and_future_timestamps_are_401(client: TestClient) -> None:
    body = json.dumps([numbered_event(1)]).encode()
    now = int(time.time() * 1000)
    for skew in (-301_000, 301_000):
        response = post(client, body, now_ms=now + skew)
        assert response.status_code == 401
        assert response.json()["reason"] == "stale_timestamp"


def test_tampered_body_wrong_secret_and_wrong_uri_are_401(client: TestClient) -> None:
    body = json.dumps([numbered_event(1)]).encode()
    headers = v3_headers(body)
    tampered = client.post("/webhooks/hubspot", content=body + b" ", headers=headers)
    wrong_secret = post(client, body, secret="not-the-secret")
    wrong_uri = post(client, body, uri="http://testserver/other")

    for response in (tampered, wrong_secret, wrong_uri):
        assert response.status_code == 401
        assert response.json()["reason"] == "bad_signature"


def test_unsigned_request_is_401_missing_signature(client: TestClient) -> None:
    response = client.post("/webhooks/hubspot", content=json.dumps([numbered_event(1)]).encode())

    assert response.status_code == 401
    assert response.json()["reason"] == "missing_signature"


def test_legacy_signatures_are_refused_unless_enabled(clean_db: str, engine: sa.Engine) -> None:
    body = json.dumps([numbered_event(1)]).encode()
    v1 = {"X-HubSpot-Signature": sign_v1(CLIENT_SECRET, body), "X-HubSpot-Signature-Version": "v1"}
    v2 = {
        "X-HubSpot-Signature": sign_v2(CLIENT_SECRET, "POST", WEBHOOK_URL, body),
        "X-HubSpot-Signature-Version": "v2",
    }
    with TestClient(create_app(make_settings(), database_url=clean_db)) as strict:
        refused = strict.post("/webhooks/hubspot", content=body, headers=v1)
    legacy = make_settings(ACCEPT_LEGACY_SIGNATURES="true")
    with TestClient(create_app(legacy, database_url=clean_db)) as lenient:
        by_v1 = lenient.post("/webhooks/hubspot", content=body, headers=v1)
        by_v2 = lenient.post("/webhooks/hubspot", content=body, headers=v2)
        forged = lenient.post(
            "/webhooks/hubspot", content=body, headers={**v1, "X-HubSpot-Signature": "0" * 64}
        )

    assert refused.status_code == 401
    assert refused.json()["reason"] == "legacy_signature_not_accepted"
    assert by_v1.json() == {"received": 1, "stored": 1, "duplicates": 0}
    assert by_v2.json() == {"received": 1, "stored": 0, "duplicates": 1}
    assert forged.status_code == 401
    assert forged.json()["reason"] == "bad_signature"
    assert [r.signature_version for r in rows(engine)] == ["v1"]


def test_any_secret_of_a_rotation_list_is_accepted(clean_db: str) -> None:
    rotating = make_settings(HUBSPOT_CLIENT_SECRET="old-secret, new-secret")
    with TestClient(create_app(rotating, database_url=clean_db)) as test_client:
        body = json.dumps([numbered_event(1)]).encode()
        by_old = post(test_client, body, secret="old-secret")
        by_new = post(test_client, json.dumps([numbered_event(2)]).encode(), secret="new-secret")
        by_other = post(test_client, body, secret=CLIENT_SECRET)

    assert (by_old.status_code, by_new.status_code, by_other.status_code) == (200, 200, 401)


def test_body_over_the_limit_is_413_and_not_stored(clean_db: str, engine: sa.Engine) -> None:
    small = make_settings(MAX_BODY_BYTES="1024")
    body = json.dumps([numbered_event(i) for i in range(20)]).encode()
    assert len(body) > 1024
    with TestClient(create_app(small, database_url=clean_db)) as test_client:
        declared = post(test_client, body)
        streamed = test_client.post(
            "/webhooks/hubspot", content=iter([body[:1000], body[1000:]]), headers=v3_headers(body)
        )

    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert declared.json()["error"] == "body_too_large"
    assert rows(engine) == []


def test_get_on_the_webhook_path_is_405(client: TestClient) -> None:
    response = client.get("/webhooks/hubspot")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


# --- the signed URI behind proxies -----------------------------------------------------------

PUBLIC = "https://hooks.example.com/webhooks/hubspot"


def test_public_url_setting_is_the_signed_uri_plus_raw_query(clean_db: str) -> None:
    settings = make_settings(WEBHOOK_PUBLIC_URL=PUBLIC)
    body = json.dumps([numbered_event(1)]).encode()
    with TestClient(create_app(settings, database_url=clean_db)) as test_client:
        plain = test_client.post(
            "/webhooks/hubspot", content=body, headers=v3_headers(body, uri=PUBLIC)
        )
        query_uri = f"{PUBLIC}?app=a%20b&x=%2F"
        with_query = test_client.post(
            "/webhooks/hubspot?app=a%20b&x=%2F",
            content=json.dumps([numbered_event(2)]).encode(),
            headers=v3_headers(json.dumps([numbered_event(2)]).encode(), uri=query_uri),
        )
        local_uri = test_client.post("/webhooks/hubspot", content=body, headers=v3_headers(body))

    assert plain.status_code == 200
    assert with_query.status_code == 200
    assert local_uri.status_code == 401


def forwarded(client: TestClient, body: bytes) -> httpx2.Response:
    headers = v3_headers(body, uri=PUBLIC)
    headers |= {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
    return client.post("/webhooks/hubspot", content=body, headers=headers)


def test_forwarded_headers_from_a_trusted_peer_build_the_signed_uri(clean_db: str) -> None:
    settings = make_settings(FORWARDED_ALLOW_IPS="10.0.0.0/8")
    app = create_app(settings, database_url=clean_db)
    with TestClient(app, client=("10.1.2.3", 40000)) as test_client:
        response = forwarded(test_client, json.dumps([numbered_event(1)]).encode())

    assert response.status_code == 200


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(clean_db: str) -> None:
    settings = make_settings(FORWARDED_ALLOW_IPS="10.0.0.0/8")
    app = create_app(settings, database_url=clean_db)
    with TestClient(app, client=("192.0.2.9", 40000)) as test_client:
        response = forwarded(test_client, json.dumps([numbered_event(1)]).encode())

    assert response.status_code == 401
    assert response.json()["reason"] == "bad_signature"


def test_raw_path_is_signed_as_received_not_decoded(client: TestClient) -> None:
    # %73 is "s", but it is not among HubSpot's 12 decoded encodings: HubSpot signs it as sent.
    body = json.dumps([numbered_event(1)]).encode()
    raw = "http://testserver/webhooks/hub%73pot"
    as_sent = client.post("/webhooks/hub%73pot", content=body, headers=v3_headers(body, uri=raw))
    decoded = client.post("/webhooks/hub%73pot", content=body, headers=v3_headers(body))

    assert as_sent.status_code == 200
    assert decoded.status_code == 401


@pytest.mark.parametrize(
    "path", ["/webhooks/hubspot/", "/webhooks/hubpsot", "/webhooks/", "/webhooks"]
)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_wrong_path_under_webhooks_is_a_404_naming_the_real_one(
    client: TestClient, engine: sa.Engine, path: str, method: str
) -> None:
    # Never a redirect to the right path: HubSpot signed the URL it was given, not ours.
    body = json.dumps([numbered_event(1)]).encode()
    headers = v3_headers(body, uri=f"http://testserver{path}")

    response = client.request(method, path, content=body, headers=headers, follow_redirects=False)

    assert response.status_code == 404
    assert "location" not in response.headers
    assert WEBHOOK_PATH in response.json()["reason"]
    assert rows(engine) == []


# --- storage failures ------------------------------------------------------------------------


def test_failed_transaction_is_503_with_retry_after_and_stores_nothing(
    client: TestClient, engine: sa.Engine
) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION fail_on_event_3() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.event_id = 3 THEN RAISE EXCEPTION 'disk on fire'; END IF;"
                " RETURN NEW; END $$"
            )
        )
        connection.execute(
            sa.text(
                "CREATE TRIGGER fail_on_event_3 BEFORE INSERT ON inbox_events"
                " FOR EACH ROW EXECUTE FUNCTION fail_on_event_3()"
            )
        )
    try:
        response = post_events(
            client, [numbered_event(1), numbered_event(2), numbered_event(3), numbered_event(4)]
        )
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER fail_on_event_3 ON inbox_events"))
            connection.execute(sa.text("DROP FUNCTION fail_on_event_3()"))

    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error"] == "storage_unavailable"
    assert rows(engine) == []
    assert (
        post_events(
            client, [numbered_event(1), numbered_event(2), numbered_event(3), numbered_event(4)]
        ).json()["stored"]
        == 4
    )


# --- concurrency, on a real server -----------------------------------------------------------


@pytest.fixture
def live_url(clean_db: str) -> Iterator[str]:
    """The webhook URL of the app served by uvicorn on a free port, in a thread."""
    app: Starlette = create_app(make_settings(), database_url=clean_db)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/webhooks/hubspot"
    server.should_exit = True
    thread.join(10)


def test_twenty_concurrent_deliveries_of_one_batch_store_it_once(
    live_url: str, engine: sa.Engine
) -> None:
    body = json.dumps([numbered_event(i) for i in range(100)]).encode()
    headers = v3_headers(body, uri=live_url)

    def deliver(_: int) -> dict[str, int]:
        response = httpx.post(live_url, content=body, headers=headers, timeout=10)
        assert response.status_code == 200
        result: dict[str, int] = response.json()
        return result

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(deliver, range(20)))

    assert sum(r["stored"] for r in results) == 100
    assert sum(r["duplicates"] for r in results) == 19 * 100
    assert len(rows(engine)) == 100
