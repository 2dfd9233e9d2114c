"""A HubSpot webhook body, validated: the Batch of events the inbox stores (HUBSPOT.md §2).

Pure (no I/O): service.inbox re-exports Batch, InvalidBatch and parse_batch, its ingest API.
Any body gives a Batch or InvalidBatch with a reason, never another exception: numbers beyond
a double, nesting deeper than MAX_DEPTH, ids outside HubSpot's 64-bit range are refused.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

INT64_MAX = 2**63 - 1  # HubSpot's ids are 64-bit
# HubSpot's JSON never carries these, but Postgres jsonb cannot store NUL or a lone surrogate:
# such a body takes the slow path that replaces them, instead of failing the insert forever.
_UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")

# How deep a body may nest, the batch array and the event objects included. HubSpot's events
# nest three levels (mergedObjectIds); a stored event nested near Python's recursion limit
# would make the worker's JSON decoder fail every claim of its batch.
MAX_DEPTH = 32
# Integer literals of up to 309 digits (a double's range, what orjson reads) are kept, longer
# ones refused: whatever is stored reads back through Python's int() (4,300 digits at most).
_MAX_INT_DIGITS = 309
# Postgres numeric (jsonb's numbers) refuses a literal whose scale, its fraction digits minus
# its exponent, passes 16,383: 1e-20000 or 0.<20,000 zeros>1, which a double reads as 0.0.
_MAX_NUMERIC_SCALE = 16383

# Integer fields of HubSpot's events (HUBSPOT.md §2), ids being 64-bit: when present, an integer
# must be in 0..2**63-1. Key fields (the dedupe key's columns, appId, attemptNumber) must be such
# integers, or absent/null where optional. A secondary field's number must be in range too, but
# any other value is left for the apply stage to judge (service.events), where it makes that
# one event ignored with a reason instead of the whole delivery refused.
_REQUIRED, _OPTIONAL, _SECONDARY = 0, 1, 2
_INT_FIELDS = {
    "eventId": _REQUIRED,
    "portalId": _REQUIRED,
    "occurredAt": _REQUIRED,
    "subscriptionId": _OPTIONAL,
    "objectId": _OPTIONAL,
    "fromObjectId": _OPTIONAL,
    "appId": _OPTIONAL,
    "attemptNumber": _OPTIONAL,
    "toObjectId": _SECONDARY,
    "primaryObjectId": _SECONDARY,
    "newObjectId": _SECONDARY,
    "associationTypeId": _SECONDARY,
    "numberOfPropertiesMoved": _SECONDARY,
}


class InvalidBatch(Exception):
    """The body is not a JSON array of HubSpot event objects; the message names the element."""


class _OutOfRange:
    """A number of the body too large for a double: kept as a marker so the field is named."""

    __slots__ = ()


_OUT_OF_RANGE = _OutOfRange()
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated delivery: the events, and the JSON array text to store."""

    events: list[dict[str, Any]]
    json_text: str


def parse_batch(body: bytes) -> Batch:
    """Validate a webhook body: a JSON array of event objects (a lone object is a batch of one).

    Any body gives a Batch or InvalidBatch, never another exception: numbers beyond a double,
    nesting deeper than MAX_DEPTH and ids outside HubSpot's 64-bit range are refused.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBatch("body is not UTF-8") from None
    try:
        # orjson: ~3x faster than json on a 100-event batch; it refuses NaN, Infinity, numbers
        # beyond a double and nesting deeper than 1024 with an error instead of an exception
        # of another kind (json: ValueError past 4,300 digits, RecursionError when deep).
        events, json_text = _as_batch(orjson.loads(body), text)
        slow = False
    except orjson.JSONDecodeError:
        events, json_text = _as_batch(_loads_slowly(text), text)
        slow = True
    if _check_events(events) and not slow:
        # A fraction: HubSpot sends none, and orjson reads some literals Postgres refuses as
        # floats (1e-20000 is 0.0); the slow parse sees each literal as written.
        events, json_text = _as_batch(_loads_slowly(text), text)
        _check_events(events)
        slow = True
    if slow:
        _check_numbers(events)
    # `in` finds no "\u" in a HubSpot body at memchr speed; the pattern scan costs ~10 µs.
    if b"\\u" in body and _UNSTORABLE_ESCAPE.search(body):
        events = _storable(events)
        json_text = json.dumps(events, ensure_ascii=False)
    return Batch(events=events, json_text=json_text)


def _as_batch(data: Any, text: str) -> tuple[list[Any], str]:
    """The events and the text of their array: a lone object is a batch of one."""
    if isinstance(data, dict):
        return [data], f"[{text}]"
    if not isinstance(data, list):
        raise InvalidBatch(f"body must be a JSON array of events, got {json_type(data)}")
    return data, text


def _check_events(events: list[Any]) -> bool:
    """Check each event; whether some value is a fraction."""
    fractions = False
    for index, event in enumerate(events):
        fractions |= _check_event(index, event)
    return fractions


def _loads_slowly(text: str) -> Any:
    """Parse what orjson refused: lone surrogates (stored replaced), numbers beyond a double
    (kept as markers so the check can name their field); anything else is the error it was."""
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=_bounded_float,
        )
    except json.JSONDecodeError as exc:
        raise InvalidBatch(f"body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvalidBatch(f"body nests deeper than {MAX_DEPTH} levels") from None


def _reject_constant(name: str) -> Any:
    raise InvalidBatch(f"body is not valid JSON: {name} is not a JSON number")


def _bounded_int(digits: str) -> int | _OutOfRange:
    # int() of more than 4,300 digits raises ValueError; nothing that long is stored anyway.
    return _OUT_OF_RANGE if len(digits.lstrip("-")) > _MAX_INT_DIGITS else int(digits)


def _bounded_float(literal: str) -> float | _OutOfRange:
    mantissa, _, exponent = literal.lower().partition("e")
    magnitude = exponent.lstrip("+-").lstrip("0")
    if len(magnitude) > 6:  # |exponent| of a million or more: int() need not read it
        return _OUT_OF_RANGE
    scale = len(mantissa.partition(".")[2]) - int(exponent or "0")
    value = float(literal)
    return _OUT_OF_RANGE if scale > _MAX_NUMERIC_SCALE or math.isinf(value) else value


def _check_event(index: int, event: object) -> bool:
    """Refuse an event HubSpot cannot have sent; whether some value of it is a fraction."""
    # Runs for every event of every delivery: one pass over the fields with plain type() tests;
    # messages are only built on the way out (`_refuse`).
    if type(event) is not dict:
        raise InvalidBatch(f"event [{index}] must be a JSON object, got {json_type(event)}")
    for name in ("eventId", "portalId", "occurredAt"):
        if name not in event:
            _refuse(index, event, name, _MISSING)
    kind = event.get("subscriptionType")
    if kind is None:
        kind = event.get("eventType")  # the name in HubSpot's older docs
    if type(kind) is not str or not kind:
        _refuse(index, event, "subscriptionType", _MISSING if kind is None else kind)
    return _check_values(index, event)


def _check_values(index: int, event: dict[str, Any]) -> bool:
    fractions = False
    for name, value in event.items():
        kind_of_int = _INT_FIELDS.get(name)
        value_type = type(value)
        if value_type is str:
            if kind_of_int is not None and kind_of_int != _SECONDARY:
                _refuse(index, event, name, value)
        elif value_type is int:
            if not 0 <= value <= INT64_MAX and kind_of_int is not None:
                _refuse(index, event, name, value)
        elif value_type is list or value_type is dict:
            if kind_of_int is not None and kind_of_int != _SECONDARY:
                _refuse(index, event, name, value)
            fractions |= _check_container(index, event, name, value)
        elif value is None:
            if kind_of_int == _REQUIRED:
                _refuse(index, event, name, value)
        elif kind_of_int is not None:  # a boolean, a fraction, a number beyond a double
            _refuse(index, event, name, value)
        else:
            fractions |= value_type is float
    return fractions


def _check_container(
    index: int, event: dict[str, Any], name: str, value: dict[str, Any] | list[Any]
) -> bool:
    if name == "mergedObjectIds" and isinstance(value, list):
        for position, merged in enumerate(value):
            if _is_number(merged) and not _is_int64(merged):
                _refuse(index, event, f"mergedObjectIds[{position}]", merged)
    too_deep, fractions = _shape(value, MAX_DEPTH - 2)
    if too_deep:
        raise InvalidBatch(f"{_where(index, event)}: {name} nests deeper than {MAX_DEPTH} levels")
    return fractions


def _refuse(index: int, event: dict[str, Any], name: str, value: object) -> NoReturn:
    where = _where(index, event)
    if value is _MISSING:
        raise InvalidBatch(f"{where}: missing required field {name}")
    if name == "subscriptionType":
        raise InvalidBatch(f"{where}: subscriptionType must be a non-empty string")
    raise InvalidBatch(f"{where}: {name} must be a non-negative integer, got {json_type(value)}")


def _where(index: int, event: dict[str, Any]) -> str:
    event_id = event.get("eventId")
    return f"event [{index}] (eventId {event_id})" if _is_int64(event_id) else f"event [{index}]"


def _check_numbers(events: list[Any]) -> None:
    """After the slow parse: refuse a number jsonb or a double cannot hold, naming its field."""
    for index, event in enumerate(events):
        for name, value in event.items():
            if _holds_out_of_range(value):
                raise InvalidBatch(
                    f"event [{index}]: {name} holds a number too large to store, or too precise"
                )


def _is_int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | _OutOfRange)


def _shape(value: dict[str, Any] | list[Any], limit: int) -> tuple[bool, bool]:
    """Whether `value` nests more than `limit` levels (itself the first), and whether it holds a
    fraction; without recursion."""
    fractions = False
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True, fractions
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif type(child) is float:
                fractions = True
    return False, fractions


def _holds_out_of_range(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if item is _OUT_OF_RANGE:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def json_type(value: object) -> str:
    """The JSON type of a parsed value for an error message (`out-of-range number` included)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, _OutOfRange):
        return "out-of-range number"
    if isinstance(value, int):
        return "number" if _is_int64(value) else "out-of-range number"
    if isinstance(value, float):
        return "number" if -INT64_MAX <= value <= INT64_MAX else "out-of-range number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE_CHAR.sub("\ufffd", value)
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    return value
