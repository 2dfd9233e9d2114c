"""The subscriptions file (SUBSCRIPTIONS_FILE): the app's journal subscriptions as TOML.

    portals = [62515]                  # every subscription's portals, unless it names its own
    [[subscription]]                   # type = "object" unless it says otherwise
    object = "contacts"                # a name, or a type id like "0-1" or "2-123456"
    actions = ["create", "update", "delete", "merge", "restore"]
    properties = ["email", "lifecyclestage"]
    [[subscription.filter]]            # one condition; the conditions of a subscription are ANDed
    property = "lifecyclestage"
    operator = "EQ"
    value = "customer"

Other types: `association` (object, associated_objects, actions), `list_membership` (lists,
actions), `privacy_deletion` (object, actions) and `app_lifecycle` (event_type, properties).
Every subscription with portals becomes one HubSpot subscription per portal (the API's
subscriptions carry one `portalId`). Actions and operators are checked against the enums of
HubSpot's spec (service.hubspot.subscriptions); every problem is reported with its line and fix,
as `rules check` does, in one run.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.events import CLASSIC_TYPES, TYPE_BY_ID
from service.hubspot.subscriptions import ACTIONS, OPERATORS, Condition, Subscription
from service.rules.checks import Checker, line_from_message

TYPE_NAMES: Mapping[str, str] = {
    "object": "OBJECT",
    "association": "ASSOCIATION",
    "list_membership": "LIST_MEMBERSHIP",
    "privacy_deletion": "GDPR_PRIVACY_DELETION",
    "app_lifecycle": "APP_LIFECYCLE_EVENT",
}
_KEYS: Mapping[str, frozenset[str]] = {
    "object": frozenset(
        {"type", "portals", "object", "actions", "properties", "object_ids", "filter"}
    ),
    "association": frozenset(
        {"type", "portals", "object", "associated_objects", "actions", "object_ids"}
    ),
    "list_membership": frozenset({"type", "portals", "lists", "actions", "object_ids"}),
    "privacy_deletion": frozenset({"type", "portals", "object", "actions"}),
    "app_lifecycle": frozenset({"type", "event_type", "properties"}),
}
_FILTER_KEYS = frozenset({"property", "operator", "value", "values"})
_NO_OPERAND = frozenset({"IS_EMPTY", "IS_NOT_EMPTY"})
_MANY_OPERANDS = frozenset({"IN", "NOT_IN"})
_ID_BY_TYPE = {name: type_id for type_id, name in TYPE_BY_ID.items()}
_TYPE_ID = re.compile(r"^[0-9]{1,10}-[0-9]{1,20}$")
_PROPERTY = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_HEADER = re.compile(r"^\s*\[\[\s*subscription\s*\]\]\s*(#.*)?$")
_ACTION_NAMES = ", ".join(a.lower() for a in ACTIONS)


class SubscriptionsFileError(Exception):
    """The subscriptions file is invalid; each problem names its line and a fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Declared:
    """One subscription the file declares (for one portal), with the line it starts on."""

    subscription: Subscription
    line: int


def object_type_id(name: str) -> str | None:
    """`contacts`, `contact` and `0-1` name contacts (`0-1`); None: not an object type."""
    plural = CLASSIC_TYPES.get(name, name)
    if plural in _ID_BY_TYPE:
        return _ID_BY_TYPE[plural]
    return name if _TYPE_ID.match(name) else None


def load_file(path: Path) -> tuple[list[Declared], list[str]]:
    """Read and validate a subscriptions file: its subscriptions and warnings."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SubscriptionsFileError(
            [f"{path}: cannot read: {exc.strerror} (fix: check SUBSCRIPTIONS_FILE)"]
        ) from None
    return load_text(text, str(path))


def load_text(text: str, path: str = "<subscriptions>") -> tuple[list[Declared], list[str]]:
    """Parse and validate subscriptions TOML; SubscriptionsFileError lists every problem."""
    checker = Checker(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or line_from_message(str(exc))
        raise SubscriptionsFileError(
            [f"{path}:{line}: not valid TOML: {exc} (fix: check quoting and brackets)"]
        ) from None
    for key in sorted(set(data) - {"portals", "subscription"}):
        checker.error(
            checker.line_of(key),
            f"unknown top-level key {key!r}",
            "the file holds `portals = [...]` and [[subscription]] tables",
        )
    default_portals = _portals(checker, data, 1) if "portals" in data else ()
    raw = data.get("subscription", [])
    if not isinstance(raw, list):
        checker.error(1, "`subscription` must be an array of tables", "write [[subscription]]")
        raise SubscriptionsFileError(checker.problems)
    starts = [n for n, line in enumerate(text.splitlines(), 1) if _HEADER.match(line)]
    declared: list[Declared] = []
    seen: dict[tuple[Any, ...], int] = {}
    for index, item in enumerate(raw):
        line = starts[index] if index < len(starts) else 1
        for subscription in _parse(checker, item, line, default_portals):
            first = seen.setdefault(subscription.identity(), line)
            if first != line:
                checker.error(
                    line,
                    f"the same subscription is declared twice (first at line {first})",
                    "remove one of them",
                )
                continue
            declared.append(Declared(subscription, line))
    if checker.problems:
        raise SubscriptionsFileError(checker.problems)
    return declared, checker.warnings


def _parse(
    checker: Checker, item: Any, line: int, default_portals: tuple[int, ...]
) -> list[Subscription]:
    before = len(checker.problems)
    if not isinstance(item, dict):
        checker.error(line, "a subscription must be a table", "start it with [[subscription]]")
        return []
    name = item.get("type", "object")
    if name not in TYPE_NAMES:
        checker.error(
            checker.line_of("type", line),
            f"unknown subscription type {name!r}",
            f"use one of {', '.join(TYPE_NAMES)}",
        )
        return []
    allowed = _KEYS[name]
    for key in sorted(set(item) - allowed):
        checker.error(
            checker.line_of(key, line) if key != "filter" else line,
            f"unknown key {key!r} in {_a(name)} subscription",
            f"{_a(name)} subscription takes {', '.join(sorted(allowed - {'type'}))}",
        )
    portals: tuple[int, ...] = ()
    if "portals" in item:
        portals = _portals(checker, item, line)
    elif name != "app_lifecycle":
        portals = default_portals
        if not portals:
            checker.error(
                line,
                f"this {name} subscription names no portal",
                "add portals = [12345678] (HubSpot account ids) at the top of the file or here",
            )
    object_type = _object(checker, item, "object", line) if "object" in allowed else None
    actions: tuple[str, ...] = ()
    if "actions" in allowed:
        actions = _actions(checker, item, line)
    properties = _properties(checker, item, line) if "properties" in allowed else ()
    object_ids = _integers(checker, item, "object_ids", line) if "object_ids" in allowed else ()
    associated: tuple[str, ...] = ()
    if name == "association":
        associated = _associated(checker, item, line)
    lists = _integers(checker, item, "lists", line) if name == "list_membership" else ()
    if name == "list_membership" and not lists:
        checker.error(
            checker.line_of("lists", line),
            "a list_membership subscription needs lists",
            "lists = [123] (the ids of HubSpot lists)",
        )
    event_type = item.get("event_type") if name == "app_lifecycle" else None
    if name == "app_lifecycle" and (not isinstance(event_type, str) or not event_type.strip()):
        checker.error(
            checker.line_of("event_type", line),
            "an app_lifecycle subscription needs event_type",
            'event_type = "..." (the app event type id)',
        )
    filters = _filters(checker, item.get("filter"), line) if "filter" in item else ()
    if "UPDATE" in actions and not properties:
        checker.warn(line, "subscribes to updates of no property (add properties = [...])")
    if len(checker.problems) > before:
        return []

    def build(portal: int | None) -> Subscription:
        return Subscription(
            type=TYPE_NAMES[name],
            portal_id=portal,
            object_type_id=object_type,
            actions=actions,
            properties=properties,
            associated_object_type_ids=associated,
            object_ids=object_ids,
            list_ids=lists,
            event_type_id=event_type,
            filters=(filters,) if filters else (),
        )

    return [build(None)] if name == "app_lifecycle" else [build(p) for p in portals]


def _portals(checker: Checker, data: Mapping[str, Any], line: int) -> tuple[int, ...]:
    value = data.get("portals")
    good = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
    if not good or not value:
        checker.error(
            checker.line_of("portals", line),
            "portals must be a list of HubSpot account ids",
            "portals = [12345678]",
        )
        return ()
    return tuple(dict.fromkeys(value))


def _object(checker: Checker, item: Mapping[str, Any], key: str, line: int) -> str | None:
    value = item.get(key)
    type_id = object_type_id(value) if isinstance(value, str) else None
    if type_id is None:
        checker.error(
            checker.line_of(key, line),
            f"unknown {key} {value!r}" if value is not None else f"this subscription needs {key}",
            f'{key} = "contacts" (or companies, deals, tickets, products, line_items, "2-123")',
        )
    return type_id


def _actions(checker: Checker, item: Mapping[str, Any], line: int) -> tuple[str, ...]:
    value = item.get("actions")
    where = checker.line_of("actions", line)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        checker.error(where, "actions must be a non-empty list", f"use some of {_ACTION_NAMES}")
        return ()
    for action in value:
        if action.upper() not in ACTIONS:
            checker.error(where, f"unknown action {action!r}", f"use some of {_ACTION_NAMES}")
    return tuple(dict.fromkeys(a.upper() for a in value))


def _properties(checker: Checker, item: Mapping[str, Any], line: int) -> tuple[str, ...]:
    value = item.get("properties", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        checker.error(
            checker.line_of("properties", line),
            "properties must be a list of property names",
            'properties = ["email"]',
        )
        return ()
    for prop in value:
        if not _PROPERTY.match(prop):
            checker.error(
                checker.line_of("properties", line),
                f"{prop!r} is not a HubSpot property name",
                "internal names are lowercase letters, digits and underscores",
            )
    return tuple(dict.fromkeys(value))


def _integers(checker: Checker, item: Mapping[str, Any], key: str, line: int) -> tuple[int, ...]:
    value = item.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        checker.error(checker.line_of(key, line), f"{key} must be a list of ids", f"{key} = [123]")
        return ()
    return tuple(dict.fromkeys(value))


def _associated(checker: Checker, item: Mapping[str, Any], line: int) -> tuple[str, ...]:
    value = item.get("associated_objects")
    where = checker.line_of("associated_objects", line)
    if not isinstance(value, list) or not value:
        checker.error(
            where,
            "an association subscription needs associated_objects",
            'associated_objects = ["companies"]',
        )
        return ()
    ids = [object_type_id(v) if isinstance(v, str) else None for v in value]
    for name, type_id in zip(value, ids, strict=True):
        if type_id is None:
            checker.error(
                where, f"unknown object {name!r}", "use contacts, companies, ... or 2-123"
            )
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def _filters(checker: Checker, raw: Any, line: int) -> tuple[Condition, ...]:
    if not isinstance(raw, list):
        checker.error(line, "filter must be [[subscription.filter]] tables", "see the example")
        return ()
    conditions: list[Condition] = []
    search = line
    for table in raw:
        fline = checker.line_of("[[subscription.filter]]", search)
        search = fline + 1
        if not isinstance(table, dict):
            checker.error(fline, "a filter must be a table", "write [[subscription.filter]]")
            continue
        for key in sorted(set(table) - _FILTER_KEYS):
            checker.error(
                checker.line_of(key, fline),
                f"unknown filter key {key!r}",
                "a filter takes property, operator and value or values",
            )
        condition = _condition(checker, table, fline)
        if condition is not None:
            conditions.append(condition)
    return tuple(conditions)


def _condition(checker: Checker, table: Mapping[str, Any], fline: int) -> Condition | None:
    prop, operator = table.get("property"), table.get("operator")
    if not isinstance(prop, str) or not _PROPERTY.match(prop):
        checker.error(
            checker.line_of("property", fline), "a filter needs a property", 'property = "email"'
        )
        return None
    if not isinstance(operator, str) or operator.upper() not in OPERATORS:
        checker.error(
            checker.line_of("operator", fline) if "operator" in table else fline,
            f"unknown operator {operator!r}",
            f"use one of {', '.join(OPERATORS)}",
        )
        return None
    operator = operator.upper()
    value, values = table.get("value"), table.get("values")
    if operator in _NO_OPERAND:
        if value is not None or values is not None:
            checker.error(fline, f"{operator} takes no value", "remove value/values")
        return Condition(prop, operator)
    if operator in _MANY_OPERANDS:
        if not isinstance(values, list) or not values or value is not None:
            checker.error(fline, f"{operator} takes values", 'values = ["a", "b"]')
            return None
        return Condition(prop, operator, values=tuple(_scalar(v) for v in values))
    if value is None or isinstance(value, list | dict) or values is not None:
        checker.error(fline, f"{operator} takes one value", 'value = "customer"')
        return None
    return Condition(prop, operator, value=_scalar(value))


def _a(name: str) -> str:
    """`an object`, `a list_membership`."""
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _scalar(value: Any) -> str:
    """A TOML scalar as HubSpot's filters compare it: a string (true/false for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
