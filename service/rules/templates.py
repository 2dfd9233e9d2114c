"""Action templates: `{event.<field>}` and `{record.<property>}` placeholders with an optional
filter (`|money`, `|number`, `|upper`, `|lower`, `|default:x`), filled by a small formatter and
never by code execution. A missing field renders empty; text that is not a placeholder stays
as written; `rules check` reports fields that cannot exist."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from service.events import Event

EVENT_FIELDS = frozenset(
    {
        "portal_id",
        "object_type",
        "object_id",
        "kind",
        "occurred_at",
        "subscription_type",
        "event_id",
        "property_name",
        "property_value",
        "previous_value",
        "change_source",
        "source_id",
    }
)
FILTERS = ("money", "upper", "lower", "default", "number")
_TEMPLATE = re.compile(r"\{([a-z_]+)\.([A-Za-z0-9_]+)(?:\|([a-z_]+)(?::([^}]*))?)?\}")


def render(template: str, event: Event, record: Mapping[str, Any], previous: str | None) -> str:
    """Fill `{event.x}` / `{record.y}` placeholders; unknown or missing fields render empty."""

    def replace(match: re.Match[str]) -> str:
        namespace, name, filt, arg = match.groups()
        value: Any = None
        if namespace == "event":
            if name == "previous_value":
                value = previous
            elif name == "kind":
                value = event.kind.value
            elif name in EVENT_FIELDS:
                value = getattr(event, name, None)
        elif namespace == "record":
            value = record.get(name)
        return _apply_filter(value, filt, arg)

    return _TEMPLATE.sub(replace, template)


def render_any(value: Any, event: Event, record: Mapping[str, Any], previous: str | None) -> Any:
    """Render every string inside a template value (Block Kit blocks are nested JSON)."""
    if isinstance(value, str):
        return render(value, event, record, previous)
    if isinstance(value, list):
        return [render_any(v, event, record, previous) for v in value]
    if isinstance(value, dict):
        return {k: render_any(v, event, record, previous) for k, v in value.items()}
    return value


def _apply_filter(value: Any, filt: str | None, arg: str | None) -> str:
    text = "" if value is None else str(value)
    if filt is None:
        return text
    if filt == "default":
        return text or (arg or "")
    if filt == "upper":
        return text.upper()
    if filt == "lower":
        return text.lower()
    if filt in ("money", "number"):
        try:
            amount = Decimal(text)
        except InvalidOperation:
            return text
        # Not a plain amount (inf, nan, 1e100000): shown as it came, never blown up.
        if not amount.is_finite() or abs(amount.adjusted()) > 18:
            return text
        if filt == "money":
            return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,.2f}"
        return f"{amount:,}"
    return text


def template_fields(value: Any) -> Iterable[tuple[str, str, str | None]]:
    """Every (namespace, name, filter) placeholder in a template value."""
    if isinstance(value, str):
        for match in _TEMPLATE.finditer(value):
            yield match.group(1), match.group(2), match.group(3)
    elif isinstance(value, list):
        for item in value:
            yield from template_fields(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from template_fields(item)
