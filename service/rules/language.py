"""The rule language: when an event matches a rule (object type, kind, property, a condition on
the value, change sources), its actions run. Rules are declared in TOML (RULES_FILE, as in
examples/rules.toml) or in code (`registry.rule`), and both are parsed here into the same
frozen `Rule`; an invalid rule raises `RuleError` listing every problem with its file, line
and fix. The checks are in `service.rules.checks`, the action templates in
`service.rules.templates`."""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from service.events import CLASSIC_TYPES, TYPE_BY_ID, Event, Kind
from service.rules.checks import (
    Checker,
    check_action_values,
    check_templates,
    line_from_message,
    rule_starts,
)

ACTION_TYPES = ("slack", "webhook", "hubspot_task", "hubspot_note", "log")
_WHEN_KEYS = frozenset(
    {
        "object",
        "kind",
        "property",
        "equals",
        "in",
        "from",
        "to",
        "above",
        "below",
        "exclude_change_sources",
        "include_own_writes",
    }
)
# Per action type: allowed keys, and which of them are templates.
_ACTION_KEYS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "slack": (frozenset({"action", "url", "text", "blocks"}), frozenset({"text", "blocks"})),
    "webhook": (
        frozenset({"action", "url", "secret", "timeout"}),
        frozenset(),
    ),
    "hubspot_task": (
        frozenset({"action", "subject", "body", "priority", "due_in_days", "owner"}),
        frozenset({"subject", "body"}),
    ),
    "hubspot_note": (frozenset({"action", "body"}), frozenset({"body"})),
    "log": (frozenset({"action", "message"}), frozenset({"message"})),
}
_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "slack": ("text",),
    "webhook": ("url", "secret"),
    "hubspot_task": ("subject",),
    "hubspot_note": ("body",),
    "log": (),
}


class RuleError(Exception):
    """A rules file (or code rule) is invalid; the message names file, line and a fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Action:
    """One thing a rule does."""

    type: str
    options: Mapping[str, Any]
    line: int = 0


@dataclass(frozen=True, slots=True)
class Rule:
    """When (object type, kind, property, condition, sources) -> do (actions)."""

    name: str
    object_type: str
    kind: Kind
    actions: tuple[Action, ...]
    prop: str | None = None
    equals: tuple[str, ...] | None = None  # `equals` / `to` / `in`: the new value is one of
    from_values: tuple[str, ...] | None = None
    above: float | None = None
    below: float | None = None
    exclude_change_sources: frozenset[str] = frozenset()
    include_own_writes: bool = False
    source: str = "code"
    predicate: Callable[[Event], bool] | None = None  # a code rule's extra condition

    def matches(
        self,
        event: Event,
        previous: str | None,
        label: Callable[[str], str | None] | None = None,
    ) -> bool:
        """Whether `event` (with the mirror's value before it, `previous`) fires this rule.

        `label` gives a value's other name (a deal stage's label), so `to = "Closed Won"`
        matches the stage id `closedwon`.
        """
        if event.kind is not self.kind:
            return False
        if self.object_type not in ("*", event.object_type):
            return False
        if self.prop is not None and event.property_name != self.prop:
            return False
        if event.change_source is not None and event.change_source in self.exclude_change_sources:
            return False
        value = event.property_value
        if self.equals is not None and not _one_of(value, self.equals, label):
            return False
        if self.from_values is not None and (
            not _one_of(previous, self.from_values, label) or previous == value
        ):
            return False
        number = _number(value)
        if self.above is not None and (number is None or not number > self.above):
            return False
        if self.below is not None and (number is None or not number < self.below):
            return False
        return self.predicate is None or self.predicate(event)

    @property
    def watches_previous(self) -> bool:
        """Whether the rule needs the value before the event (a `from` condition)."""
        return self.from_values is not None


def _one_of(
    value: str | None, values: tuple[str, ...], label: Callable[[str], str | None] | None
) -> bool:
    if value is None:
        return False
    if value in values:
        return True
    other = label(value) if label is not None else None
    return other is not None and other.casefold() in {v.casefold() for v in values}


def _number(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_KNOWN_OBJECTS = frozenset({"*", *CLASSIC_TYPES, *CLASSIC_TYPES.values(), *TYPE_BY_ID})
_TYPE_ID = re.compile(r"^[02]-[0-9]+$")


def is_object_type(name: str) -> bool:
    """Whether rules and handlers may name this object type: a classic name in the singular or
    plural, a type id (`0-3`, `2-12345`) or `*` for any."""
    return name in _KNOWN_OBJECTS or _TYPE_ID.match(name) is not None


def normalise_object_type(object_type: str) -> str:
    """`contact`, `contacts` and `0-1` all name contacts; `2-NNN` and `*` are kept."""
    if object_type in TYPE_BY_ID:
        return TYPE_BY_ID[object_type]
    return CLASSIC_TYPES.get(object_type, object_type)


def load_rules_text(
    text: str,
    path: str = "<rules>",
    *,
    stage_labels: Callable[[str], str | None] | None = None,
) -> tuple[list[Rule], list[str]]:
    """Parse and validate rules TOML; raise RuleError listing every problem. Returns warnings."""
    checker = Checker(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or line_from_message(str(exc))
        raise RuleError(
            [f"{path}:{line}: not valid TOML: {exc} (fix: check quoting and brackets)"]
        ) from None
    unknown_top = set(data) - {"rules"}
    for key in sorted(unknown_top):
        checker.error(
            checker.line_of(key), f"unknown top-level key {key!r}", "only [[rules]] tables"
        )
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        checker.error(1, "`rules` must be an array of tables", "write each rule as [[rules]]")
        raise RuleError(checker.problems)
    starts = [*rule_starts(text), 10**9]
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        line = starts[index] if index < len(starts) - 1 else 1
        rule = _parse_rule(checker, raw, line, stage_labels)
        if rule is None:
            continue
        if rule.name in names:
            checker.error(
                line,
                f"rule name {rule.name!r} is used twice (first at line {names[rule.name]})",
                "give every rule its own name: replays rely on it",
            )
            continue
        names[rule.name] = line
        rules.append(rule)
    if checker.problems:
        raise RuleError(checker.problems)
    return rules, checker.warnings


def _parse_rule(  # noqa: PLR0912, PLR0915 - one check per field reads best as a flat list
    checker: Checker,
    raw: Any,
    line: int,
    stage_labels: Callable[[str], str | None] | None,
) -> Rule | None:
    before = len(checker.problems)
    if not isinstance(raw, dict):
        checker.error(line, "a rule must be a table", "start it with [[rules]]")
        return None
    for key in sorted(set(raw) - {"name", "when", "do"}):
        checker.error(
            checker.line_of(key, line), f"unknown rule field {key!r}", "rules have name, when, do"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        checker.error(line, "rule without a name", 'add name = "deal-won-slack"')
        name = f"rule at line {line}"
    when = raw.get("when")
    if not isinstance(when, dict):
        checker.error(line, f"rule {name!r} has no [rules.when] table", "add [rules.when]")
        return None
    wline = checker.line_of("[rules.when]", line)
    for key in sorted(set(when) - _WHEN_KEYS):
        checker.error(
            checker.line_of(key, wline),
            f"unknown condition {key!r} in rule {name!r}",
            f"use one of {', '.join(sorted(_WHEN_KEYS))}",
        )
    object_type = when.get("object")
    if not isinstance(object_type, str) or not is_object_type(object_type):
        checker.error(
            checker.line_of("object", wline),
            f"rule {name!r}: unknown object {object_type!r}",
            'use contacts, companies, deals, tickets, a type id like "2-12345", or "*"',
        )
        object_type = "*"
    object_type = normalise_object_type(object_type)
    kind_raw = when.get("kind")
    try:
        kind = Kind(str(kind_raw))
    except ValueError:
        checker.error(
            checker.line_of("kind", wline),
            f"rule {name!r}: unknown kind {kind_raw!r}",
            f"use one of {', '.join(k.value for k in Kind)}",
        )
        kind = Kind.OTHER
    prop = when.get("property")
    if prop is not None and not isinstance(prop, str):
        checker.error(
            checker.line_of("property", wline), "property must be a string", 'e.g. "dealstage"'
        )
        prop = None
    value_conditions = [k for k in ("equals", "in", "from", "to", "above", "below") if k in when]
    if value_conditions and kind is not Kind.PROPERTY_CHANGE:
        checker.error(
            checker.line_of(value_conditions[0], wline),
            f'rule {name!r}: {value_conditions[0]} needs kind = "property_change"',
            "only property changes carry a value",
        )
    if value_conditions and prop is None:
        checker.error(
            checker.line_of(value_conditions[0], wline),
            f"rule {name!r}: a value condition needs a property",
            'add property = "..."',
        )

    def strings(key: str) -> tuple[str, ...] | None:
        if key not in when:
            return None
        value = when[key]
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            checker.error(
                checker.line_of(key, wline),
                f"rule {name!r}: {key} must be a string or a list of strings",
                f'{key} = "closedwon"',
            )
            return None
        out = tuple(str(v) for v in values)
        if prop == "dealstage" and stage_labels is not None:
            out = tuple(stage_labels(v) or v for v in out)
        return out

    equals = strings("equals")
    to_values = strings("to")
    in_values = strings("in")
    if "in" in when and not isinstance(when["in"], list):
        checker.error(checker.line_of("in", wline), "`in` must be a list", 'in = ["a", "b"]')
    targets = [v for v in (equals, to_values, in_values) if v is not None]
    if len(targets) > 1:
        checker.error(
            checker.line_of(value_conditions[0], wline),
            f"rule {name!r}: use only one of equals, to, in",
            "they all name the new value",
        )
    numbers: dict[str, float | None] = {}
    for key in ("above", "below"):
        value = when.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            checker.error(
                checker.line_of(key, wline),
                f"rule {name!r}: {key} must be a number",
                f"{key} = 1000",
            )
            value = None
        numbers[key] = None if value is None else float(value)
    sources = when.get("exclude_change_sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        checker.error(
            checker.line_of("exclude_change_sources", wline),
            "exclude_change_sources must be a list of strings",
            'exclude_change_sources = ["IMPORT"]',
        )
        sources = []
    own = when.get("include_own_writes", False)
    if not isinstance(own, bool):
        checker.error(
            checker.line_of("include_own_writes", wline),
            "must be true or false",
            "include_own_writes = false",
        )
        own = False
    actions = _parse_actions(checker, raw.get("do"), name, line, (object_type, kind))
    if len(checker.problems) > before:
        return None
    return Rule(
        name=name,
        object_type=object_type,
        kind=kind,
        actions=tuple(actions),
        prop=prop,
        equals=targets[0] if targets else None,
        from_values=strings("from"),
        above=numbers["above"],
        below=numbers["below"],
        exclude_change_sources=frozenset(sources),
        include_own_writes=own,
        source=f"{checker.path}:{line}",
    )


def _parse_actions(
    checker: Checker, raw: Any, name: str, line: int, subject: tuple[str, Kind]
) -> list[Action]:
    if not isinstance(raw, list) or not raw:
        checker.error(line, f"rule {name!r} does nothing", 'add [[rules.do]] with action = "log"')
        return []
    actions: list[Action] = []
    search_from = line
    for item in raw:
        aline = checker.line_of("[[rules.do]]", search_from)
        search_from = aline + 1
        if not isinstance(item, dict):
            checker.error(aline, "an action must be a table", "write it as [[rules.do]]")
            continue
        action_type = item.get("action")
        if action_type not in ACTION_TYPES:
            checker.error(
                checker.line_of("action", aline),
                f"rule {name!r}: unknown action {action_type!r}",
                f"use one of {', '.join(ACTION_TYPES)}",
            )
            continue
        allowed, templated = _ACTION_KEYS[action_type]
        for key in sorted(set(item) - allowed):
            checker.error(
                checker.line_of(key, aline),
                f"rule {name!r}: unknown {action_type} option {key!r}",
                f"{action_type} takes {', '.join(sorted(allowed - {'action'}))}",
            )
        for key in _REQUIRED[action_type]:
            if key not in item:
                checker.error(
                    aline, f"rule {name!r}: {action_type} needs {key!r}", f"add {key} = ..."
                )
        check_templates(checker, item, templated, aline, subject)
        check_action_values(checker, action_type, item, aline)
        actions.append(Action(action_type, dict(item), aline))
    return actions


def rule_from_mapping(data: Mapping[str, Any], where: str) -> Rule:
    """Validate one rule given as a mapping (name, when, do), as code rules are declared."""
    checker = Checker(where, "")
    rule = _parse_rule(checker, dict(data), 0, None)
    if checker.problems or rule is None:
        raise RuleError(checker.problems or [f"{where}: invalid rule"])
    return replace(rule, source=where)


def load_rules_file(
    path: Path, *, stage_labels: Callable[[str], str | None] | None = None
) -> tuple[list[Rule], list[str]]:
    """Read and validate a rules file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleError([f"{path}: cannot read: {exc.strerror} (fix: check RULES_FILE)"]) from None
    return load_rules_text(text, str(path), stage_labels=stage_labels)
