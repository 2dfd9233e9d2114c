"""The rules this deployment loads (RULES_FILE), as the admin tree shows them.

Only what a rule matches and the types of its actions: action options can hold URLs with
secrets in them (a Slack webhook URL is one), so they are never shown. Rules declared in code
(HANDLER_MODULES) load in the worker only; they appear by name once they have fired.
"""

from __future__ import annotations

from typing import Any

from service.rules.language import RuleError, load_rules_file
from service.settings import Settings


def loaded_rules(
    settings: Settings, fired: dict[str, dict[str, int]]
) -> tuple[list[dict[str, Any]], str | None]:
    """Each rule with its action runs by status, and the rules file's problem if it has one."""
    shown: list[dict[str, Any]] = []
    problem: str | None = None
    if settings.rules_file is not None:
        try:
            rules, _warnings = load_rules_file(settings.rules_file)
        except RuleError as exc:
            rules, problem = [], str(exc)
        for rule in rules:
            runs = fired.get(rule.name, {})
            shown.append(
                {
                    "name": rule.name,
                    "source": rule.source,
                    "object_type": rule.object_type,
                    "kind": str(rule.kind),
                    "property": rule.prop,
                    "to": list(rule.equals) if rule.equals is not None else None,
                    "from": list(rule.from_values) if rule.from_values is not None else None,
                    "above": rule.above,
                    "below": rule.below,
                    "actions": [action.type for action in rule.actions],
                    "fired": sum(runs.values()),
                    "runs": runs,
                    "loaded": True,
                }
            )
    named = {rule["name"] for rule in shown}
    for name in sorted(set(fired) - named):
        runs = fired[name]
        shown.append(
            {
                "name": name,
                "source": "code rule, or no longer in the rules file",
                "actions": [],
                "fired": sum(runs.values()),
                "runs": runs,
                "loaded": False,
            }
        )
    return shown, problem
