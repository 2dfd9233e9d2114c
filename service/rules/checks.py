"""Validation of rules with a place and a fix for every problem. `Checker` finds the line of a
key, table header or template field and collects problems (`path:line: message (fix: hint)`)
and warnings, so that one run of `rules check` reports them all. The checks of action values
(templates, task priority and due days, webhook and Slack URLs and secrets) live here; the
field-by-field parser that calls them is `service.rules.language`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.events import TASK_PRIORITIES, Kind
from service.rules.templates import EVENT_FIELDS, FILTERS, template_fields
from service.settings import DEFAULT_MIRROR_PROPERTIES

_RULE_HEADER = re.compile(r"^\s*\[\[\s*rules\s*\]\]\s*(#.*)?$")


@dataclass
class Checker:
    """The problems and warnings found in one rules text (or code rule), with their lines."""

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
        """Record a problem at `line` (0: the whole file) with the fix it needs."""
        where = f"{self.path}:{line}" if line else self.path
        self.problems.append(f"{where}: {message} (fix: {hint})")

    def warn(self, line: int, message: str) -> None:
        """Record something that works but is probably not what was meant."""
        self.warnings.append(f"{self.path}:{line}: warning: {message}")


def rule_starts(text: str) -> list[int]:
    """The line of each `[[rules]]` header, in order."""
    return [n for n, line in enumerate(text.splitlines(), 1) if _RULE_HEADER.match(line)]


def line_from_message(message: str) -> int:
    """The line a TOML parser's message names, else 1."""
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else 1


def check_templates(
    checker: Checker,
    item: Mapping[str, Any],
    templated: frozenset[str],
    aline: int,
    subject: tuple[str, Kind],
) -> None:
    """Check the placeholders of an action's template options against the rule's subject."""
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


def check_action_values(
    checker: Checker, action_type: str, item: Mapping[str, Any], aline: int
) -> None:
    """Check the values of one action's options: task priority and due days, URLs, secrets."""
    if action_type == "hubspot_task":
        priority = item.get("priority", "MEDIUM")
        if priority not in TASK_PRIORITIES:
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
