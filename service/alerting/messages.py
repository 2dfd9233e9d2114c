"""What an alert says, and the outbox runs that deliver it to Slack and to a signed webhook.

Alert messages go through the outbox like any rule's action, so they are retried with backoff,
dead-lettered, listed and replayed the same way (`hubspot-webhooks actions`, the dashboard).
The convention that keeps them apart from runs fired by events:

    portal_id     0 (never a HubSpot portal)
    inbox_id      minus the message's number for its condition (alert_states.messages):
                  negative, so no view of an inbox event's runs ever shows an alert
    rule          alert:<condition key>, e.g. alert:dead_letters
    action_index  0 Slack (ALERT_SLACK_WEBHOOK_URL), 1 webhook (ALERT_WEBHOOK_URL)
    event_occurred_at  when the condition started firing (or resolved), epoch ms: the
                  partition; fixed per message, as an event's occurredAt is
    object_type   alert, object_id 0

The payload holds the text only: targets and secrets stay in the environment and are resolved
by the act stage when it sends (`options`). `no_worker` is the exception to the outbox: nothing
would deliver it when every worker is down, so its messages (the same payloads, from `runs`)
are held in alert_states and sent directly (service/alerting/direct.py). Messages carry
counts, ages, portal ids and error types, never record values or personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.alerts import Message
from service.settings import Settings

RULE_PREFIX = "alert:"
PORTAL = 0  # alert runs' portal_id: HubSpot portal ids start at 1
SLACK, WEBHOOK = 0, 1  # action_index of each target

TITLES = {
    "dead_letters": "Dead letters are waiting",
    "lag": "Events are waiting too long to be applied",
    "no_worker": "No worker is alive",
    "reinstall": "A portal needs the app installed again",
    "rate_limited": "HubSpot keeps answering 429 Too Many Requests",
    "reconcile": "The scheduled reconcile failed",
    "journal": "The Webhooks Journal reader needs attention",
}
EMOJI = {"firing": ":rotating_light:", "reminder": ":warning:", "resolved": ":white_check_mark:"}


def is_alert_run(portal_id: int, rule: str) -> bool:
    """Whether an action run delivers an alert (see the convention above)."""
    return portal_id == PORTAL and rule.startswith(RULE_PREFIX)


def detail(message: Message) -> str:
    """One line on the facts of the condition, from its value (counts, ages, ids)."""
    v = message.value
    key = message.key
    if key == "dead_letters":
        return (
            f"dead inbox events {v.get('inbox', 0)}, action runs {v.get('actions', 0)},"
            f" hydration requests {v.get('hydration', 0)}"
        )
    if key == "lag":
        return (
            f"the oldest due event has waited {v.get('oldest_due_seconds', 0)} s"
            f" (ALERT_LAG {v.get('threshold_seconds', 0):g} s)"
        )
    if key == "no_worker":
        return f"no worker heartbeat in the last {v.get('within_seconds', 0):g} s"
    if key == "reinstall":
        portals = ", ".join(str(p) for p in v.get("portals", [])) or "none"
        return f"portals needing re-install: {portals}"
    if key == "rate_limited":
        return f"{v.get('answers_429', 0)} answers 429 in the last {v.get('window_seconds', 0):g} s"
    if key == "reconcile":
        report = v.get("report") or {}
        return f"last run: {report.get('outcome', 'unknown')} {report.get('error', '')}".strip()
    if key == "journal":
        error = f"; reader failing: {v['last_error']}" if v.get("last_error") else ""
        return (
            f"journal gaps not reconciled {v.get('gaps_open', 0)}, failed entries"
            f" {v.get('failed_entries', 0)} (`hubspot-webhooks journal replay --failed`){error}"
        )
    return ""


def text(message: Message, settings: Settings) -> str:
    """The message as one plain text (Slack's notification text)."""
    title = TITLES.get(message.key, message.key)
    state = {"firing": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED"}
    lines = [
        f"{EMOJI[message.kind]} [{state[message.kind]}] {title}",
        f"{detail(message)} (since {message.since:%Y-%m-%d %H:%M:%S} UTC)",
    ]
    if settings.dashboard_url is not None:
        lines.append(f"Dashboard: {settings.dashboard_url}")
    return "\n".join(lines)


def body(message: Message, settings: Settings) -> dict[str, Any]:
    """The JSON body of the signed webhook."""
    return {
        "type": f"alert.{message.kind}",
        "alert": message.key,
        "status": "resolved" if message.kind == "resolved" else "firing",
        "title": TITLES.get(message.key, message.key),
        "summary": detail(message),
        "since": message.since.isoformat(),
        "number": message.number,
        "facts": message.value,
        "dashboard": settings.dashboard_url,
    }


def runs(message: Message, settings: Settings) -> list[dict[str, Any]]:
    """The outbox rows that deliver `message` to each configured target."""
    common = {
        "portal_id": PORTAL,
        "inbox_id": -message.number,
        "event_occurred_at": int(message.since.timestamp() * 1000),
        "rule": RULE_PREFIX + message.key,
        "object_type": "alert",
        "object_id": 0,
    }
    rows: list[dict[str, Any]] = []
    if settings.alert_slack_webhook_url is not None:
        payload: dict[str, Any] = {"action": "slack", "text": text(message, settings)}
        rows.append({**common, "action_index": SLACK, "action": "slack", "payload": payload})
    if settings.alert_webhook_url is not None:
        payload = {"action": "webhook", "body": body(message, settings)}
        rows.append({**common, "action_index": WEBHOOK, "action": "webhook", "payload": payload})
    return rows


def options(settings: Settings, action_index: int) -> Mapping[str, Any] | None:
    """The act stage's options for an alert run: its target as configured now (None: unset)."""
    if action_index == SLACK and settings.alert_slack_webhook_url is not None:
        return {"url": settings.alert_slack_webhook_url}
    if action_index == WEBHOOK and settings.alert_webhook_url is not None:
        return {"url": settings.alert_webhook_url, "secret": settings.alert_webhook_secret}
    return None
