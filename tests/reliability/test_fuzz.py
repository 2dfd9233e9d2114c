"""Fuzzed requests against the real ASGI app (issue 10, the reliability suite): Hypothesis builds
bodies and headers, signed and unsigned, and whatever they hold the answer is 200, 400 with a
reason, 401 or 413, never a 5xx; nothing unsigned is stored; what is stored never stalls the
worker; memory stays bounded. The issue's reproducers are explicit examples."""

from __future__ import annotations

import base64
import json
import time
import tracemalloc
from collections import Counter
from typing import Any

import httpx2
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service.devtools.samples import SAMPLE_TYPES
from service.settings import WEBHOOK_PATH
from service.signature import sign_v1
from service.worker.apply import Worker
from tests.factories import CLIENT_SECRET, WEBHOOK_URL, numbered_event, sample, v3_headers
from tests.support import make_settings, post

HUGE = "1" + "0" * 4999  # 5,000 digits: the eventId
# The two reproducers, as HubSpot-signed bodies.
HUGE_EVENT_ID = json.dumps(numbered_event(1)).replace('"eventId": 1,', f'"eventId": {HUGE},')
DEEP = "[" * 1000
LIMIT = make_settings().max_body_bytes
SAMPLES = [sample(subscription_type) for subscription_type in SAMPLE_TYPES]

# JSON text for one value, including what json.dumps never writes (numbers beyond a double or
# int(), NaN, lone surrogates, NUL) and the junk property names of finding 7.
LITERALS = [
    HUGE,
    "-" + HUGE,
    "1e400",
    "-1e400",
    "1e-400",
    "1e-20000",
    "0e-99999",
    "0." + "0" * 17000 + "1",
    "NaN",
    "-Infinity",
    "-0",
    "0.0",
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    "-1",
    "0.5",
    "1e19",
    "true",
    "false",
    "null",
    '""',
    '"\\u0000"',
    '"\\ud800"',
    '"\\udc00\\ud800x"',
    '"REDACTED"',
    "[]",
    "{}",
    '"-1"',
    '"[]"',
    '"Email"',
    '"hs_lead_status"',
    '"0-1"',
    '"2-123"',
    '"CONTACT_TO_COMPANY"',
]
FIELDS = [
    "eventId",
    "portalId",
    "occurredAt",
    "subscriptionId",
    "objectId",
    "appId",
    "attemptNumber",
    "subscriptionType",
    "eventType",
    "propertyName",
    "propertyValue",
    "changeSource",
    "sourceId",
    "objectTypeId",
    "fromObjectId",
    "toObjectId",
    "fromObjectTypeId",
    "toObjectTypeId",
    "associationType",
    "associationTypeId",
    "associationCategory",
    "associationRemoved",
    "isPrimaryAssociation",
    "primaryObjectId",
    "mergedObjectIds",
    "newObjectId",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
).map(lambda value: json.dumps(value, allow_nan=True))
value_texts = st.one_of(
    st.sampled_from(LITERALS),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    # Any number literal JSON allows, exponents and fractions far past a double's.
    st.from_regex(r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,4})?([eE][+-]?[0-9]{1,7})?", fullmatch=True),
    st.text(max_size=12).map(json.dumps),
    st.integers(min_value=1, max_value=1200).map(lambda n: "[" * n + "]" * n),
    json_values,
)


# Fields whose odd values a delivery may carry and still be stored: the apply stage judges them
# (service.events), ignoring the event with a reason when HubSpot cannot have sent it.
SOFT_FIELDS = [
    "subscriptionType",
    "propertyName",
    "propertyValue",
    "changeSource",
    "sourceId",
    "objectTypeId",
    "fromObjectTypeId",
    "toObjectTypeId",
    "toObjectId",
    "associationType",
    "associationTypeId",
    "associationCategory",
    "associationRemoved",
    "isPrimaryAssociation",
    "primaryObjectId",
    "mergedObjectIds",
    "newObjectId",
]
soft_values = st.one_of(
    st.sampled_from(
        [
            '"-1"',
            '"[]"',
            '"true"',
            '"Email"',
            '"hs_lead_status"',
            '"assignedTo"',
            '"0-1"',
            '"2-123"',
            '"0-1x"',
            '"CONTACT_TO_COMPANY"',
            '"USER_DEFINED"',
            '"REDACTED"',
            '""',
            '"\\ud800"',
            '"\\u0000"',
            "[]",
            "{}",
            "null",
            "[1, 2]",
            '["1", null]',
            str(2**63 - 1),
            "0",
        ]
    ),
    st.sampled_from(SAMPLE_TYPES).map(json.dumps),
    st.text(max_size=12).map(json.dumps),
    st.integers(min_value=0, max_value=2**63 - 1).map(str),
)


@st.composite
def event_texts(draw: st.DrawFn) -> str:
    """One event as JSON text: a realistic sample of any kind with some fields given odd values
    and, now and then, hostile ones (refused at ingest); some dropped, some added."""
    event = dict(draw(st.sampled_from(SAMPLES)))
    event["eventId"] = draw(st.integers(min_value=0, max_value=2**63 - 1))
    fields = {name: json.dumps(value) for name, value in event.items()}
    for name in draw(st.lists(st.sampled_from(SOFT_FIELDS), max_size=3)):
        fields[name] = draw(soft_values)
    if draw(sometimes(4)):
        for name in draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=8), max_size=3)):
            fields[name] = draw(value_texts)
        for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=2)):
            fields.pop(name, None)
    return "{" + ", ".join(f"{json.dumps(name)}: {value}" for name, value in fields.items()) + "}"


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request body: mostly a batch, else a lone event, any value, an unclosed nesting or
    raw bytes; sometimes cut short."""
    shape = draw(st.sampled_from(["batch", "batch", "batch", "event", "value", "unclosed"]))
    if shape == "batch":
        text = "[" + ", ".join(draw(st.lists(event_texts(), max_size=5))) + "]"
    elif shape == "event":
        text = draw(event_texts())
    elif shape == "value":
        text = draw(value_texts)
    else:
        text = "[" * draw(st.integers(min_value=1, max_value=5000))
    body = text.encode()
    if draw(sometimes(8)):
        body = draw(st.binary(max_size=200))
    if body and draw(sometimes(8)):
        body = body[: draw(st.integers(min_value=0, max_value=len(body) - 1))]
    return body


def sometimes(one_in: int) -> st.SearchStrategy[bool]:
    """True about once in `one_in` draws (st.integers would favour its bounds)."""
    return st.sampled_from([False] * (one_in - 1) + [True])


latin1 = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
)
timestamps = st.one_of(
    latin1,
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=-600_000, max_value=600_000).map(lambda d: str(now_ms() + d)),
    st.just(HUGE),
)
base64_digests = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())


@st.composite
def unsigned_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, bytes]]:
    """A body with headers HubSpot did not sign it with: none, malformed, forged (another
    secret, body or URL, a stale timestamp) or legacy (refused by default)."""
    body = draw(bodies())
    forgery = draw(st.sampled_from(["none", "wrong_secret", "other_body", "other_uri", "stale"]))
    headers = {} if forgery == "none" else forged_headers(body, forgery)
    optional = {
        "X-HubSpot-Signature-v3": latin1 | base64_digests,
        "X-HubSpot-Request-Timestamp": timestamps,
        "X-HubSpot-Signature": latin1 | st.just(sign_v1(CLIENT_SECRET, body)),
        "X-HubSpot-Signature-Version": st.sampled_from(["v1", "v2", "v3", " V2 ", ""]) | latin1,
        "Content-Type": st.sampled_from(["application/json", "text/plain", ""]) | latin1,
        "X-Forwarded-Proto": latin1,
        "X-Forwarded-Host": latin1,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=5, unique=True)):
        if forgery != "none" and name == "X-HubSpot-Signature-v3":
            continue  # a forgery keeps its wrong v3 signature (v3 wins over a legacy one)
        headers[name] = draw(optional[name])
    return body, {name: value.encode("latin-1") for name, value in headers.items()}


def forged_headers(body: bytes, forgery: str) -> dict[str, str]:
    """v3 headers that are right but for one thing: the secret, the body, the URL or the time."""
    return v3_headers(
        body + b" " if forgery == "other_body" else body,
        secret="not-the-secret" if forgery == "wrong_secret" else CLIENT_SECRET,
        uri=WEBHOOK_URL + "x" if forgery == "other_uri" else WEBHOOK_URL,
        now_ms=now_ms() - (400_000 if forgery == "stale" else 0),
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def stored(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT count(*) FROM inbox_events")) or 0)


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_signed_fuzzed_bodies_are_200_or_400_and_what_is_stored_never_stalls_the_worker(
    answering_client: TestClient, engine: sa.Engine, worker: Worker
) -> None:
    answers: Counter[int] = Counter()

    @FUZZ
    @example(HUGE_EVENT_ID.encode())
    @example(f"[{HUGE_EVENT_ID}]".encode())
    @example(DEEP.encode())
    @example((DEEP + "]" * 1000).encode())
    @given(bodies())
    def deliver(body: bytes) -> None:
        response = post(answering_client, body)
        assert response.status_code in (200, 400), (response.status_code, response.text)
        answer = response.json()
        if response.status_code == 400:
            assert answer["error"] == "invalid_body"
            assert answer["reason"]
        else:
            assert answer["received"] == answer["stored"] + answer["duplicates"]
        answers[response.status_code] += 1

    deliver()

    assert answers[400] > 0
    assert answers[200] > 0
    # The worker reads every stored row back through psycopg's JSON decoder: a row it could
    # not decode would fail every claim of its batch. Each one ends done or ignored.
    worker.drain()
    with engine.connect() as connection:
        statuses: dict[str, int] = dict(
            connection.execute(
                sa.text("SELECT status, count(*) FROM inbox_events GROUP BY status")
            ).all()
        )
    assert set(statuses) <= {"done", "ignored"}, statuses


def test_unsigned_and_forged_requests_are_401_and_store_nothing(
    answering_client: TestClient, engine: sa.Engine
) -> None:
    @FUZZ
    @example((HUGE_EVENT_ID.encode(), {}))
    @example((DEEP.encode(), {}))
    @example((HUGE_EVENT_ID.encode(), forged_headers(HUGE_EVENT_ID.encode(), "wrong_secret")))
    @example((DEEP.encode(), forged_headers(DEEP.encode(), "stale")))
    @given(unsigned_requests())
    def deliver(request: tuple[bytes, dict[str, Any]]) -> None:
        body, headers = request
        response = answering_client.post(WEBHOOK_PATH, content=body, headers=headers)
        assert response.status_code == 401, (response.status_code, response.text)
        assert response.json()["error"] == "unauthorized"
        assert stored(engine) == 0

    deliver()


# --- memory --------------------------------------------------------------------------------

# tracemalloc's peak over the whole run, client and server together, above where it started.
# Each body is at most LIMIT (1 MiB): parsing one costs a small multiple of that, and nothing
# may accumulate from one request to the next.
PEAK_BOUND = 48 * 1024 * 1024
GROWTH_BOUND = 4 * 1024 * 1024


def hostile_bodies() -> list[bytes]:
    """Bodies at the size limit that cost a parser the most, and one just over it."""
    event = json.dumps(numbered_event(1))
    many = "[" + ", ".join(event.replace(": 1,", f": {n},", 1) for n in range(7000)) + "]"
    return [
        b"[" * LIMIT,
        (DEEP + "]" * 1000).encode(),
        ("[" + ",".join([HUGE] * (LIMIT // 5002)) + "]").encode(),
        ("[" + ",".join(["1e400"] * (LIMIT // 6)) + "]").encode(),
        b"[" + b"1," * (LIMIT // 2 - 2) + b"1]",
        ("[" + ",".join(['"\\ud800"'] * (LIMIT // 9)) + "]").encode(),
        many.encode()[:LIMIT],
        many.encode()[: many.encode().rindex(b", {", 0, LIMIT)] + b"]",
        b"[" * (LIMIT + 1),
    ]


def test_memory_stays_bounded_across_hostile_deliveries(
    answering_client: TestClient, engine: sa.Engine
) -> None:
    bodies = hostile_bodies()

    def deliver_all() -> Counter[tuple[str, int]]:
        seen: Counter[tuple[str, int]] = Counter()
        for body in bodies:
            unsigned = answering_client.post(WEBHOOK_PATH, content=body)
            signed: httpx2.Response = post(answering_client, body)
            seen["unsigned", unsigned.status_code] += 1
            seen["signed", signed.status_code] += 1
        return seen

    deliver_all()  # warm: connection pools, caches, the first rows stored
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        seen: Counter[tuple[str, int]] = Counter()
        for _ in range(2):
            seen += deliver_all()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen == {
        ("unsigned", 401): 2 * (len(bodies) - 1),
        ("unsigned", 413): 2,
        ("signed", 400): 2 * (len(bodies) - 2),
        ("signed", 200): 2,
        ("signed", 413): 2,
    }
    assert peak - start < PEAK_BOUND, f"peak {(peak - start) / 2**20:.1f} MiB"
    assert current - start < GROWTH_BOUND, f"grew {(current - start) / 2**20:.1f} MiB"
