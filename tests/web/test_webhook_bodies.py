"""POST /webhooks/hubspot with hostile bodies: whatever the body, signed or not, the answer is 400
with a reason, 401 or 413, never a 5xx (issue 10, finding 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service.batches import MAX_DEPTH
from service.web.app import create_app
from tests.factories import numbered_event
from tests.support import make_settings, post

INT64_MAX = 2**63 - 1
HUGE = "1" + "0" * 4999  # 5,000 digits: more than Python's int() reads (4,300)


def stored(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT count(*) FROM inbox_events")) or 0)


def event_text(**fields: str) -> bytes:
    """One numbered event as JSON with `fields` spliced in as raw JSON text (any number)."""
    text = json.dumps(numbered_event(1))[:-1]
    for name, raw in fields.items():
        text += f', "{name}": {raw}'
    return f"[{text}}}]".encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- the reproducers from the issue ------------------------------------------------------------


def test_signed_event_id_of_5000_digits_is_400_naming_the_field(
    client: TestClient, engine: sa.Engine
) -> None:
    response = post(client, event_text(eventId=HUGE))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert (
        "eventId must be a non-negative integer, got out-of-range number"
        in (response.json()["reason"])
    )
    assert stored(engine) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 1000,
        nested(1000).encode(),
        b"[" * 100_000,
        b'[{"a":' * 1000,
        b"{" * 1000,
    ],
    ids=["open-1000", "closed-1000", "open-100000", "objects-1000", "braces-1000"],
)
def test_signed_deep_nesting_is_400(client: TestClient, engine: sa.Engine, body: bytes) -> None:
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert stored(engine) == 0


@pytest.mark.parametrize("body", [event_text(eventId=HUGE), b"[" * 1000, nested(1000).encode()])
def test_the_same_bodies_unsigned_are_401(
    client: TestClient, engine: sa.Engine, body: bytes
) -> None:
    response = client.post("/webhooks/hubspot", content=body)

    assert response.status_code == 401
    assert stored(engine) == 0


def test_an_oversized_body_is_413_before_its_signature_is_looked_at(clean_db: str) -> None:
    app = create_app(make_settings(MAX_BODY_BYTES="4096"), database_url=clean_db)
    with TestClient(app) as small:
        response = small.post("/webhooks/hubspot", content=b"[" * 5000)

    assert response.status_code == 413


# --- nesting a stored event could carry ----------------------------------------------------


def test_an_event_nested_deeper_than_the_limit_is_400(
    client: TestClient, engine: sa.Engine
) -> None:
    # Stored, such an event would be read back by the worker's JSON decoder, whose recursion
    # limit it could reach: every claim of the batch would fail.
    response = post(client, event_text(extra=nested(MAX_DEPTH)))

    assert response.status_code == 400
    assert f"nests deeper than {MAX_DEPTH} levels" in response.json()["reason"]
    assert stored(engine) == 0


def test_an_event_nested_within_the_limit_is_stored(client: TestClient, engine: sa.Engine) -> None:
    # The batch array and the event object are two levels.
    response = post(client, event_text(extra=nested(MAX_DEPTH - 2)))

    assert response.status_code == 200
    assert stored(engine) == 1


# --- numbers HubSpot cannot have sent -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "got"),
    [
        ("appId", str(2**64), "out-of-range number"),
        ("appId", str(INT64_MAX + 1), "out-of-range number"),
        ("attemptNumber", "true", "boolean"),
        ("attemptNumber", "-1", "out-of-range number"),
        ("attemptNumber", "0.5", "number"),
        ("subscriptionId", HUGE, "out-of-range number"),
        ("objectId", "1e30", "out-of-range number"),
        ("portalId", "-" + HUGE, "out-of-range number"),
        ("occurredAt", "1e400", "out-of-range number"),
        ("toObjectId", str(2**64), "out-of-range number"),
        ("primaryObjectId", "false", "boolean"),
        ("newObjectId", "2.5", "number"),
        ("associationTypeId", HUGE, "out-of-range number"),
    ],
)
def test_an_id_outside_hubspots_range_is_400_naming_the_field(
    client: TestClient, engine: sa.Engine, name: str, raw: str, got: str
) -> None:
    response = post(client, event_text(**{name: raw}))

    assert response.status_code == 400
    assert response.json()["reason"].endswith(f"{name} must be a non-negative integer, got {got}")
    assert stored(engine) == 0


def test_a_merged_id_outside_the_range_is_400_naming_its_position(
    client: TestClient, engine: sa.Engine
) -> None:
    response = post(client, event_text(mergedObjectIds=f"[7, {2**64}]"))

    assert response.status_code == 400
    assert response.json()["reason"].endswith(
        "mergedObjectIds[1] must be a non-negative integer, got out-of-range number"
    )


@pytest.mark.parametrize("raw", [HUGE, "-" + HUGE, "1e400", "-1e400", f"[{HUGE}]"])
def test_a_number_too_large_anywhere_is_400(
    client: TestClient, engine: sa.Engine, raw: str
) -> None:
    response = post(client, event_text(extra=raw))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert stored(engine) == 0


@pytest.mark.parametrize("raw", ["1e-20000", "0." + "0" * 20000 + "1", "0e-99999"])
def test_a_fraction_jsonb_cannot_hold_is_400_not_a_503_on_every_retry(
    client: TestClient, engine: sa.Engine, raw: str
) -> None:
    # A double reads these as 0.0; Postgres' numeric refuses them ("value overflows numeric
    # format"), which the store path would answer 503, and HubSpot retry, forever.
    response = post(client, event_text(extra=raw))

    assert response.status_code == 400
    assert "extra holds a number too large to store, or too precise" in response.json()["reason"]
    assert stored(engine) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"\xef\xbb\xbf[]",
        b"[1,]",
        b'[{"eventId": 1,',
        b"[NaN]",
        b'"\\ud800"',
        b"nul\x00l",
        b"[" + b"1," * 5000 + b"1]",
        b'[{"eventId": 1, "eventId": "x"}]',
    ],
)
def test_other_malformed_signed_bodies_are_400(
    client: TestClient, engine: sa.Engine, body: bytes
) -> None:
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert response.json()["reason"]
    assert stored(engine) == 0


def test_lone_surrogates_in_a_signed_body_are_stored_replaced(
    client: TestClient, engine: sa.Engine
) -> None:
    body = event_text(note='"a\\ud800b"', extra=f"[{INT64_MAX}]")

    response = post(client, body)

    assert response.status_code == 200
    with engine.connect() as connection:
        payload: dict[str, Any] = connection.scalar(sa.text("SELECT payload FROM inbox_events"))
    assert payload["note"] == "a\ufffdb"
    assert payload["extra"] == [INT64_MAX]
