"""service.batches: what a valid webhook body is, and that any other body is refused with a
reason (InvalidBatch), never another exception (issue 10, finding 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import batches
from tests.factories import numbered_event

INT64_MAX = 2**63 - 1


def body(events: Any) -> bytes:
    return json.dumps(events).encode()


# --- parse_batch: what a valid delivery is ------------------------------------------------------


def test_array_of_events_is_a_batch_and_its_text_is_kept() -> None:
    raw = body([numbered_event(1), numbered_event(2)])
    batch = batches.parse_batch(raw)
    assert [e["eventId"] for e in batch.events] == [1, 2]
    assert batch.json_text == raw.decode()


def test_single_object_is_a_batch_of_one() -> None:
    batch = batches.parse_batch(body(numbered_event(7)))
    assert [e["eventId"] for e in batch.events] == [7]
    assert json.loads(batch.json_text) == [numbered_event(7)]


def test_empty_array_is_an_empty_batch() -> None:
    assert batches.parse_batch(b"[]").events == []


def test_old_event_type_field_is_accepted_instead_of_subscription_type() -> None:
    event = numbered_event()
    event["eventType"] = event.pop("subscriptionType")
    assert batches.parse_batch(body([event])).events == [event]


def test_optional_ids_may_be_absent_or_null() -> None:
    event = numbered_event(subscriptionId=None)
    del event["objectId"]
    assert batches.parse_batch(body([event])).events == [event]


@pytest.mark.parametrize(
    ("raw", "got"),
    [(b'"events"', "string"), (b"42", "number"), (b"null", "null"), (b"true", "boolean")],
)
def test_body_that_is_not_an_array_is_rejected(raw: bytes, got: str) -> None:
    with pytest.raises(batches.InvalidBatch, match=f"must be a JSON array of events, got {got}"):
        batches.parse_batch(raw)


def test_body_that_is_not_json_is_rejected() -> None:
    with pytest.raises(batches.InvalidBatch, match="body is not valid JSON"):
        batches.parse_batch(b'[{"eventId": 1,')


def test_body_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(batches.InvalidBatch, match="not UTF-8"):
        batches.parse_batch(b'[{"propertyValue": "\xff"}]')


@pytest.mark.parametrize(
    ("element", "got"),
    [("5", "number"), ('"x"', "string"), ("[]", "array"), ("null", "null")],
)
def test_element_that_is_not_an_object_is_rejected_by_index(element: str, got: str) -> None:
    raw = f"[{json.dumps(numbered_event())}, {element}]".encode()
    with pytest.raises(
        batches.InvalidBatch, match=rf"^event \[1\] must be a JSON object, got {got}$"
    ):
        batches.parse_batch(raw)


@pytest.mark.parametrize("name", ["eventId", "portalId", "occurredAt"])
def test_missing_required_field_is_named_with_the_element_index(name: str) -> None:
    broken = numbered_event(3)
    del broken[name]
    events = [numbered_event(1), numbered_event(2), broken]
    with pytest.raises(batches.InvalidBatch, match=rf"event \[2\].*missing required field {name}$"):
        batches.parse_batch(body(events))


def test_message_names_the_event_id_when_it_is_readable() -> None:
    broken = numbered_event(41)
    del broken["portalId"]
    with pytest.raises(
        batches.InvalidBatch, match=r"^event \[0\] \(eventId 41\): missing required field portalId$"
    ):
        batches.parse_batch(body([broken]))


def test_missing_subscription_type_is_rejected() -> None:
    broken = numbered_event()
    del broken["subscriptionType"]
    with pytest.raises(batches.InvalidBatch, match="missing required field subscriptionType"):
        batches.parse_batch(body([broken]))


@pytest.mark.parametrize("value", ["", 5, None])
def test_subscription_type_must_be_a_non_empty_string(value: object) -> None:
    broken = numbered_event(subscriptionType=value)
    if value is None:
        broken["eventType"] = ""
    with pytest.raises(batches.InvalidBatch, match="subscriptionType must be a non-empty string"):
        batches.parse_batch(body([broken]))


@pytest.mark.parametrize(
    ("name", "value", "got"),
    [
        ("eventId", "1", "string"),
        ("portalId", "62515", "string"),
        ("occurredAt", 1.7e12, "number"),
        ("occurredAt", None, "null"),
        ("portalId", True, "boolean"),
        ("eventId", -1, "out-of-range number"),
        ("subscriptionId", "12345", "string"),
        ("objectId", [1], "array"),
        ("fromObjectId", {"id": 1}, "object"),
    ],
)
def test_ill_typed_id_is_rejected_with_its_json_type(name: str, value: object, got: str) -> None:
    events = [numbered_event(1), numbered_event(2, **{name: value})]
    with pytest.raises(
        batches.InvalidBatch,
        match=rf"^event \[1\].*: {name} must be a non-negative integer, got {got}$",
    ):
        batches.parse_batch(body(events))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(constant: str) -> None:
    raw = body([numbered_event()]).replace(b'"CRM_UI"', constant.encode())
    with pytest.raises(batches.InvalidBatch, match=f"{constant} is not a JSON number"):
        batches.parse_batch(raw)


def test_largest_int64_is_accepted() -> None:
    event = numbered_event(INT64_MAX, portalId=INT64_MAX, occurredAt=INT64_MAX, objectId=INT64_MAX)
    assert batches.parse_batch(body([event])).events == [event]


@pytest.mark.parametrize("name", ["eventId", "portalId", "occurredAt", "objectId"])
def test_integer_outside_int64_is_rejected(name: str) -> None:
    with pytest.raises(
        batches.InvalidBatch,
        match=f"{name} must be a non-negative integer, got out-of-range number",
    ):
        batches.parse_batch(body([numbered_event(**{name: INT64_MAX + 1})]))


def test_unicode_and_escapes_are_decoded_and_the_raw_text_is_kept() -> None:
    raw = '[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":"contact.propertyChange",'
    raw += '"propertyValue":"J\\u00fcrgen M\u00fcller \u6771\u4eac \U0001f600 \\"q\\" \\n"}]'
    batch = batches.parse_batch(raw.encode())
    assert (
        batch.events[0]["propertyValue"] == 'J\u00fcrgen M\u00fcller \u6771\u4eac \U0001f600 "q" \n'
    )
    assert batch.json_text == raw


def test_escaped_surrogate_pair_is_decoded_to_its_character() -> None:
    raw = body([numbered_event(propertyValue="smile \U0001f600")])
    assert b"\\ud83d\\ude00" in raw
    batch = batches.parse_batch(raw)
    assert batch.events[0]["propertyValue"] == "smile \U0001f600"
    assert json.loads(batch.json_text) == batch.events


def test_nul_and_lone_surrogates_become_replacement_characters() -> None:
    raw = (
        b'[{"eventId":1,"portalId":2,"occurredAt":3,"subscriptionType":"contact.propertyChange",'
        b'"propertyName":"notes","propertyValue":"a\\u0000b\\ud800c\\uDFFFd \\ud83d\\ude00",'
        b'"x\\u0000":1}]'
    )
    batch = batches.parse_batch(raw)
    event = batch.events[0]
    assert event["propertyValue"] == "a\ufffdb\ufffdc\ufffdd \U0001f600"
    assert event["x\ufffd"] == 1
    assert json.loads(batch.json_text) == batch.events


def test_escaped_backslash_before_u0000_text_is_left_as_text() -> None:
    raw = body([numbered_event(propertyValue="C:\\u0000dir")])
    batch = batches.parse_batch(raw)
    assert batch.events[0]["propertyValue"] == "C:\\u0000dir"


# --- parse_batch: bodies no HubSpot delivery looks like (issue 10, finding 1) ---------------

HUGE = "9" * 5000  # more digits than Python's int() reads


def spliced(**fields: str) -> bytes:
    """One numbered event with `fields` added as raw JSON text."""
    text = json.dumps(numbered_event(1))[:-1]
    text += "".join(f', "{name}": {raw}' for name, raw in fields.items())
    return f"[{text}}}]".encode()


@pytest.mark.parametrize("name", ["eventId", "portalId", "occurredAt", "objectId", "appId"])
def test_an_id_of_5000_digits_is_refused_naming_the_field(name: str) -> None:
    with pytest.raises(
        batches.InvalidBatch,
        match=f"^event \\[0\\].*: {name} must be a non-negative integer, got out-of-range number$",
    ):
        batches.parse_batch(spliced(**{name: HUGE}))


@pytest.mark.parametrize(
    ("name", "raw", "got"),
    [
        ("appId", "true", "boolean"),
        ("appId", str(2**64), "out-of-range number"),
        ("attemptNumber", "1.5", "number"),
        ("attemptNumber", '"0"', "string"),
        ("toObjectId", "-1", "out-of-range number"),
        ("newObjectId", "1e19", "out-of-range number"),
        ("associationTypeId", "true", "boolean"),
        ("numberOfPropertiesMoved", "0.5", "number"),
    ],
)
def test_other_hubspot_ids_are_checked_too(name: str, raw: str, got: str) -> None:
    with pytest.raises(
        batches.InvalidBatch, match=f": {name} must be a non-negative integer, got {got}$"
    ):
        batches.parse_batch(spliced(**{name: raw}))


def test_a_secondary_id_that_is_not_a_number_is_left_for_the_apply_stage() -> None:
    # One odd field refuses no batch: the worker ignores that event with the reason.
    batch = batches.parse_batch(spliced(toObjectId='"x"', mergedObjectIds='["1", null]'))
    assert batch.events[0]["toObjectId"] == "x"


def test_a_merged_id_beyond_int64_is_refused_with_its_position() -> None:
    with pytest.raises(batches.InvalidBatch, match=r"mergedObjectIds\[2\] must be a non-negative"):
        batches.parse_batch(spliced(mergedObjectIds=f"[1, 2, {2**63}]"))


@pytest.mark.parametrize("raw", [HUGE, "-" + HUGE, "1e400", f'{{"a": [{HUGE}]}}'])
def test_a_number_beyond_a_double_anywhere_is_refused(raw: str) -> None:
    with pytest.raises(batches.InvalidBatch, match=r"^event \[0\].*: extra holds a number too"):
        batches.parse_batch(spliced(extra=raw))


@pytest.mark.parametrize(
    "raw",
    ["1e-20000", "-1e-16384", "0e-99999", "0." + "0" * 16383 + "1", "1e-9999999999", "1e" + HUGE],
)
def test_a_number_postgres_cannot_store_is_refused(raw: str) -> None:
    # orjson reads these as 0.0 (or refuses them); jsonb's numeric would refuse the insert, a
    # 503 on every retry.
    with pytest.raises(
        batches.InvalidBatch, match=r"extra holds a number too large to store, or too precise$"
    ):
        batches.parse_batch(spliced(extra=f"[1.5, {raw}]"))


@pytest.mark.parametrize("raw", ["1.5", "1e-400", "0.0", "-2.5e300", "1e-16383", "0e99999"])
def test_fractions_postgres_stores_are_kept_as_sent(raw: str) -> None:
    body = spliced(extra=raw)
    assert batches.parse_batch(body).json_text == body.decode()


def test_large_numbers_a_double_holds_are_kept_as_sent() -> None:
    raw = spliced(extra=f"[{2**64}, 1e300, {'9' * 300}]")
    batch = batches.parse_batch(raw)
    assert batch.json_text == raw.decode()


@pytest.mark.parametrize("depth", [batches.MAX_DEPTH - 1, 1000, 5000])
def test_a_body_nested_beyond_the_limit_is_refused(depth: int) -> None:
    nested = "[" * depth + "]" * depth
    with pytest.raises(batches.InvalidBatch, match=f"nests deeper than {batches.MAX_DEPTH} levels"):
        batches.parse_batch(spliced(extra=nested))


@pytest.mark.parametrize("body", [b"[" * 1000, b"[" * 200_000, b'{"a":' * 5000])
def test_an_unclosed_deep_body_is_invalid_json(body: bytes) -> None:
    with pytest.raises(batches.InvalidBatch):
        batches.parse_batch(body)


def test_a_body_nested_to_the_limit_is_accepted() -> None:
    depth = batches.MAX_DEPTH - 2  # the batch array and the event object are the first two
    batch = batches.parse_batch(spliced(extra="[" * depth + "]" * depth))
    assert len(batch.events) == 1


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from([*numbered_event(1), "x"]), children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_any_body_gives_a_batch_or_invalid_batch(raw: bytes) -> None:
    outcome: batches.Batch | str
    try:
        outcome = batches.parse_batch(raw)
    except batches.InvalidBatch as exc:
        outcome = str(exc)
    if isinstance(outcome, str):
        assert outcome, "a refusal always says why"
    else:
        assert len(json.loads(outcome.json_text)) == len(outcome.events)
