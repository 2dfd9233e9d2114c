"""Rules: when an event matches, do actions. Declared in TOML (RULES_FILE) or in code.

    [[rules]]
    name = "deal-won"
    [rules.when]
    object = "deals"
    kind = "property_change"
    property = "dealstage"
    to = "Closed Won"                 # equals / in / from / to / above / below
    exclude_change_sources = ["IMPORT"]
    [[rules.do]]
    action = "slack"
    text = "Won: {record.dealname} ({record.amount|money})"

Templates are filled by a small formatter, never by code execution: `{event.<field>}` and
`{record.<property>}`, with an optional filter (`|money`, `|upper`, `|lower`, `|default:x`).
A missing field renders empty; `rules check` reports fields that cannot exist.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from service.events import CLASSIC_TYPES, TYPE_BY_ID, Event, Kind
from service.settings import DEFAULT_MIRROR_PROPERTIES

ACTION_TYPES = ("slack", "webhook", "hubspot_task", "hubspot_note", "log")
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
PRIORITIES = ("LOW", "MEDIUM", "HIGH")


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


# --- templates -------------------------------------------------------------------------------


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


# --- loading and checking --------------------------------------------------------------------

_KNOWN_OBJECTS = frozenset({"*", *CLASSIC_TYPES, *CLASSIC_TYPES.values(), *TYPE_BY_ID})
_CUSTOM = re.compile(r"^[02]-[0-9]+$")


@dataclass
class _Checker:
    path: str
    text: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line_of(self, needle: str, start: int = 1) -> int:
        """The first line at or after `start` where `needle` is a key being set (`key =`), a
        table header, or (for template fields) the text itself."""
        if needle.startswith(("[", "{")):
            pattern = re.compile(re.escape(needle))
        else:
            pattern = re.compile(rf"^\s*{re.escape(needle)}\s*=")
        lines = self.text.splitlines()
        for number in range(max(start, 1), len(lines) + 1):
            if pattern.search(lines[number - 1]):
                return number
        return start

    def error(self, line: int, message: str, hint: str) -> None:
        where = f"{self.path}:{line}" if line else self.path
        self.problems.append(f"{where}: {message} (fix: {hint})")

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(f"{self.path}:{line}: warning: {message}")


_RULE_HEADER = re.compile(r"^\s*\[\[\s*rules\s*\]\]\s*(#.*)?$")


def _rule_starts(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if _RULE_HEADER.match(line)]


def load_rules_text(
    text: str,
    path: str = "<rules>",
    *,
    stage_labels: Callable[[str], str | None] | None = None,
) -> tuple[list[Rule], list[str]]:
    """Parse and validate rules TOML; raise RuleError listing every problem. Returns warnings."""
    checker = _Checker(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
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
    starts = [*_rule_starts(text), 10**9]
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


def _line_from_message(message: str) -> int:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 1


def _parse_rule(  # noqa: PLR0912, PLR0915 - one check per field reads best as a flat list
    checker: _Checker,
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
    if not isinstance(object_type, str) or (
        object_type not in _KNOWN_OBJECTS and not _CUSTOM.match(object_type)
    ):
        checker.error(
            checker.line_of("object", wline),
            f"rule {name!r}: unknown object {object_type!r}",
            'use contacts, companies, deals, tickets, a type id like "2-12345", or "*"',
        )
        object_type = "*"
    object_type = TYPE_BY_ID.get(object_type, CLASSIC_TYPES.get(object_type, object_type))
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
    checker: _Checker, raw: Any, name: str, line: int, subject: tuple[str, Kind]
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
        _check_templates(checker, item, templated, aline, subject)
        _check_specifics(checker, action_type, item, aline)
        actions.append(Action(action_type, dict(item), aline))
    return actions


def _check_templates(
    checker: _Checker,
    item: Mapping[str, Any],
    templated: frozenset[str],
    aline: int,
    subject: tuple[str, Kind],
) -> None:
    object_type, kind = subject
    for key in templated & set(item):
        for namespace, field_name, filt in template_fields(item[key]):
            fline = checker.line_of("{" + namespace + "." + field_name, aline)
            if namespace not in ("event", "record"):
                checker.error(
                    fline,
                    f"unknown template namespace {namespace!r}",
                    "use {event.x} or {record.y}",
                )
            elif namespace == "event" and field_name not in EVENT_FIELDS:
                checker.error(
                    fline,
                    f"event has no field {field_name!r}",
                    f"use one of {', '.join(sorted(EVENT_FIELDS))}",
                )
            elif field_name == "previous_value" and kind is not Kind.PROPERTY_CHANGE:
                checker.error(fline, "only property changes have a previous_value", "drop it")
            elif namespace == "record" and not _may_be_mirrored(object_type, field_name):
                checker.warn(
                    fline,
                    f"record.{field_name} is not among the properties fetched for {object_type};"
                    " it renders empty unless a webhook carries it (add it to MIRROR_PROPERTIES)",
                )
            if filt is not None and filt not in FILTERS:
                checker.error(fline, f"unknown filter {filt!r}", f"use one of {', '.join(FILTERS)}")


def _may_be_mirrored(object_type: str, prop: str) -> bool:
    if object_type not in DEFAULT_MIRROR_PROPERTIES:
        return True  # custom and "*" rules: any property may exist
    return prop in DEFAULT_MIRROR_PROPERTIES[object_type] or prop == "hs_object_id"


def _check_specifics(
    checker: _Checker, action_type: str, item: Mapping[str, Any], aline: int
) -> None:
    if action_type == "hubspot_task":
        priority = item.get("priority", "MEDIUM")
        if priority not in PRIORITIES:
            checker.error(
                checker.line_of("priority", aline), f"priority {priority!r}", "LOW, MEDIUM or HIGH"
            )
        due = item.get("due_in_days", 1)
        if isinstance(due, bool) or not isinstance(due, int) or due < 0:
            checker.error(
                checker.line_of("due_in_days", aline),
                "due_in_days must be a whole number >= 0",
                "due_in_days = 1",
            )
    if action_type == "webhook":
        if not str(item.get("secret", "")).startswith(("whsec_", "env:")):
            checker.error(
                checker.line_of("secret", aline),
                "webhook secret must be whsec_... or env:VARIABLE",
                'secret = "env:CRM_OPS_WEBHOOK_SECRET"',
            )
        if not str(item.get("url", "")).startswith(("http://", "https://", "env:")):
            checker.error(
                checker.line_of("url", aline),
                "webhook url must be http(s) or env:VARIABLE",
                'url = "https://..."',
            )
    if action_type == "slack" and not str(item.get("url", "env:")).startswith(
        ("https://", "http://", "env:")
    ):
        checker.error(
            checker.line_of("url", aline),
            "slack url must be an http(s) URL or env:VARIABLE",
            "or leave it out to use SLACK_WEBHOOK_URL",
        )


def rule_from_mapping(data: Mapping[str, Any], where: str) -> Rule:
    """Validate one rule given as a mapping (name, when, do), as code rules are declared."""
    checker = _Checker(where, "")
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
