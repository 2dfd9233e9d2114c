"""service.devtools.receiver: verifies Standard Webhooks signatures, prints each delivery.

Deliveries are signed with the `standardwebhooks` reference package, independently of the
service's own signer.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest
from standardwebhooks import Webhook
from starlette.testclient import TestClient

from service.devtools.receiver import create_receiver, new_secret

SECRET = "whsec_" + base64.b64encode(b"receiver-test-key-0123456789ab").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-key-0123456789abcd").decode()

ENVELOPE: dict[str, Any] = {
    "type": "deals.property_change",
    "rule": "deal won",
    "event": {
        "portal_id": 62515,
        "object_type": "deals",
        "object_id": 8,
        "kind": "property_change",
        "subscription_type": "deal.propertyChange",
        "event_id": 1001,
        "occurred_at": 1_700_000_000_000,
        "property_name": "dealstage",
        "property_value": "closedwon",
        "previous_value": "contractsent",
        "change_source": "CRM_UI",
    },
    "record": {"dealname": "Acme renewal"},
}


@dataclass
class ReceiverApp:
    """The receiver's app under Starlette's TestClient, and what it printed."""

    client: TestClient
    out: io.StringIO


@pytest.fixture
def receiver_app() -> Iterator[ReceiverApp]:
    """The receiver's app with SECRET (named apart from the `receiver` fixture of
    tests/conftest.py, the local target of actions)."""
    out = io.StringIO()
    with TestClient(create_receiver(SECRET, out=out)) as client:
        yield ReceiverApp(client, out)


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def signed_headers(
    body: bytes, *, msg_id: str = "run_1", secret: str = SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for `body`, signed by the reference implementation."""
    ts = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def post(
    receiver_app: ReceiverApp, body: bytes, headers: dict[str, Any], path: str = "/"
) -> httpx2.Response:
    return receiver_app.client.post(path, content=body, headers=headers)


def test_signed_delivery_is_accepted_and_printed(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    response = post(receiver_app, body, signed_headers(body, msg_id="run_41"))
    assert response.status_code == 204
    assert receiver_app.out.getvalue() == (
        "verified delivery run_41: rule 'deal won', deals.property_change deals:8"
        " dealstage=closedwon\n"
    )


def test_delivery_on_any_path_is_accepted(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    response = post(receiver_app, body, signed_headers(body), path="/hooks/deals?source=hubspot")
    assert response.status_code == 204


def test_unicode_body_is_verified_byte_for_byte(receiver_app: ReceiverApp) -> None:
    envelope = {**ENVELOPE, "rule": "Gew\u00e4hlt \u6771\u4eac \U0001f600"}
    body = encode(envelope)
    assert post(receiver_app, body, signed_headers(body)).status_code == 204
    assert "Gew\u00e4hlt \u6771\u4eac \U0001f600" in receiver_app.out.getvalue()


def test_retry_of_a_delivery_is_printed_as_a_retry(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    assert post(receiver_app, body, signed_headers(body, msg_id="run_7")).status_code == 204
    assert post(receiver_app, body, signed_headers(body, msg_id="run_7")).status_code == 204
    first, second = receiver_app.out.getvalue().splitlines()
    assert "retry" not in first
    assert second.startswith("verified delivery run_7 (a retry of a delivery already received)")


def test_any_one_matching_signature_of_several_is_enough(receiver_app: ReceiverApp) -> None:
    # During a secret rotation the sender signs with both secrets, space separated.
    body = encode(ENVELOPE)
    headers = signed_headers(body)
    old = signed_headers(body, secret=OTHER_SECRET, timestamp=int(headers["webhook-timestamp"]))
    headers["webhook-signature"] = f"{old['webhook-signature']} {headers['webhook-signature']}"
    assert post(receiver_app, body, headers).status_code == 204


def test_signed_body_that_is_not_json_is_still_accepted(receiver_app: ReceiverApp) -> None:
    body = b"plain text"
    assert post(receiver_app, body, signed_headers(body, msg_id="run_3")).status_code == 204
    assert receiver_app.out.getvalue().startswith("verified delivery run_3: rule None")


def test_signed_json_array_body_is_accepted(receiver_app: ReceiverApp) -> None:
    body = encode([ENVELOPE])
    assert post(receiver_app, body, signed_headers(body)).status_code == 204


@pytest.mark.parametrize(
    "tamper",
    ["other secret", "changed body", "changed id", "changed timestamp", "not base64"],
)
def test_bad_signature_is_refused_with_401(receiver_app: ReceiverApp, tamper: str) -> None:
    body = encode(ENVELOPE)
    headers = signed_headers(body, msg_id="run_9")
    if tamper == "other secret":
        headers = signed_headers(body, msg_id="run_9", secret=OTHER_SECRET)
    elif tamper == "changed body":
        body = encode({**ENVELOPE, "rule": "deal lost"})
    elif tamper == "changed id":
        headers["webhook-id"] = "run_10"
    elif tamper == "changed timestamp":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 1)
    else:
        headers["webhook-signature"] = "v1,!!!"
    response = post(receiver_app, body, headers)
    assert response.status_code == 401
    assert response.json() == {"error": "bad_signature"}
    assert receiver_app.out.getvalue().startswith("rejected run_")
    assert receiver_app.out.getvalue().endswith(": bad signature\n")


def test_non_ascii_signature_is_refused_with_401(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    headers: dict[str, Any] = signed_headers(body)
    headers["webhook-signature"] = "v1,\u00e9".encode("latin-1")
    assert post(receiver_app, body, headers).status_code == 401


def test_signature_of_another_version_is_refused(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    headers = signed_headers(body)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v1a,", 1)
    assert post(receiver_app, body, headers).status_code == 401


@pytest.mark.parametrize("offset", [-301, -3600, 301, 3600])
def test_timestamp_outside_five_minutes_is_refused_with_400(
    receiver_app: ReceiverApp, offset: int
) -> None:
    body = encode(ENVELOPE)
    headers = signed_headers(body, msg_id="run_5", timestamp=int(time.time()) + offset)
    response = post(receiver_app, body, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "stale_timestamp"}
    assert receiver_app.out.getvalue() == "rejected run_5: timestamp outside 5 minutes\n"


def test_timestamp_just_inside_five_minutes_is_accepted(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    headers = signed_headers(body, timestamp=int(time.time()) - 290)
    assert post(receiver_app, body, headers).status_code == 204


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused_with_400(receiver_app: ReceiverApp, header: str) -> None:
    body = encode(ENVELOPE)
    headers = signed_headers(body)
    del headers[header]
    response = post(receiver_app, body, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "missing_headers"}
    assert receiver_app.out.getvalue().startswith("rejected: missing")


@pytest.mark.parametrize("timestamp", ["", "soon", "1.7e9", "-5"])
def test_unreadable_timestamp_is_refused_with_400(
    receiver_app: ReceiverApp, timestamp: str
) -> None:
    body = encode(ENVELOPE)
    headers = signed_headers(body)
    headers["webhook-timestamp"] = timestamp
    response = post(receiver_app, body, headers)
    assert response.status_code == 400
    assert response.json() == {"error": "missing_headers"}


def test_only_post_is_answered(receiver_app: ReceiverApp) -> None:
    assert receiver_app.client.get("/").status_code == 405
    assert receiver_app.out.getvalue() == ""


def test_nothing_secret_is_printed(receiver_app: ReceiverApp) -> None:
    body = encode(ENVELOPE)
    good = signed_headers(body, msg_id="run_1")
    wrong = signed_headers(body, msg_id="run_2", secret=OTHER_SECRET)
    stale = signed_headers(body, msg_id="run_3", timestamp=int(time.time()) - 3600)
    for headers in (good, wrong, stale):
        post(receiver_app, body, headers)
    post(receiver_app, body, {k: v for k, v in good.items() if k != "webhook-id"})
    printed = receiver_app.out.getvalue()
    assert len(printed.splitlines()) == 4
    for secret in (SECRET, OTHER_SECRET):
        assert secret not in printed
        assert secret.removeprefix("whsec_") not in printed
    for headers in (good, wrong, stale):
        signature = headers["webhook-signature"]
        assert signature.split(",", 1)[1] not in printed


def test_new_secret_is_a_fresh_whsec_secret_the_reference_package_accepts() -> None:
    secrets = {new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 24
    secret = secrets.pop()
    body = encode(ENVELOPE)
    headers = signed_headers(body, secret=secret)
    assert Webhook(secret).verify(body, headers) == ENVELOPE


def test_receiver_accepts_what_the_reference_package_signs_with_a_fresh_secret() -> None:
    secret = new_secret()
    out = io.StringIO()
    body = encode(ENVELOPE)
    with TestClient(create_receiver(secret, out=out)) as client:
        response = client.post("/", content=body, headers=signed_headers(body, secret=secret))
    assert response.status_code == 204
    assert out.getvalue().startswith("verified delivery run_1:")
