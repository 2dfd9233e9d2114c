"""How rows leave the admin tree: as JSON-safe dicts, with personal data masked.

Pages and the JSON API alike show raw events, action payloads and mirrored values with email
addresses and phone numbers masked (`j***@example.com`, `***-**67`): an operator debugging a
delivery needs its shape, not the contact's details (the unmasked event stays in the database,
for `hubspot-webhooks events show` on a machine that can reach it). Both go through `masked`
here, so they cannot drift apart. Tokens never reach this module: the queries select no token
column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Seven or more digits with the separators phone numbers are written with.
_PHONE = re.compile(r"\+?\(?\d[\d\s().-]{5,}\d")
_PHONE_SEPARATORS = set("+-() .")
_PHONE_NAMES = ("phone", "mobile", "fax")


def jsonable(value: Any) -> Any:
    """A row (or any value) as plain JSON types: times as ISO 8601, decimals as numbers."""
    if hasattr(value, "_mapping"):
        value = dict(value._mapping)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _mask_phone(match: re.Match[str]) -> str:
    digits = [c for c in match[0] if c.isdigit()]
    return "***-**" + "".join(digits[-2:])


def mask_text(text: str, *, phone_field: bool = False) -> str:
    """Email addresses and phone numbers in `text` masked; with `phone_field`, any number."""
    text = _EMAIL.sub(lambda m: f"{m[1]}***@{m[2]}", text)

    def phone(match: re.Match[str]) -> str:
        digits = sum(c.isdigit() for c in match[0])
        written_as_phone = bool(_PHONE_SEPARATORS & set(match[0]))
        if digits >= 7 and (phone_field or written_as_phone):
            return _mask_phone(match)
        return match[0]

    return _PHONE.sub(phone, text)


def masked(value: Any, *, phone_field: bool = False) -> Any:
    """A JSON value with every string's emails and phone numbers masked.

    A string under a key naming a phone (or the value of a `propertyName` such as `phone`,
    `mobilephone`) is masked whenever it holds seven digits or more.
    """
    if isinstance(value, str):
        return mask_text(value, phone_field=phone_field)
    if isinstance(value, list):
        return [masked(v, phone_field=phone_field) for v in value]
    if isinstance(value, dict):
        about_phone = _is_phone_name(str(value.get("propertyName", "")))
        return {
            k: masked(v, phone_field=_is_phone_name(k) or (about_phone and k == "propertyValue"))
            for k, v in value.items()
        }
    return value


def masked_properties(properties: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A mirrored record's properties ({name, value, version}) with each value masked; a
    property named like a phone is masked whenever it holds seven digits or more."""
    return [
        {**prop, "value": masked(prop["value"], phone_field=_is_phone_name(prop["name"]))}
        for prop in properties
    ]


def _is_phone_name(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _PHONE_NAMES)


def pretty(value: Any) -> str:
    """Indented JSON for a page."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=True)
