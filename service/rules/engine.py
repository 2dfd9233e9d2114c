"""Fire rules inside the apply transaction: one action_runs row per (event, rule, action),
enqueued through `service.outbox`. The rows are unique on (event, rule, action), so replaying an
event never fires twice, and written in the transaction that applies the event, so a crash
loses no firing and invents none. A property-change rule fires only for the change that is now
the record's value (an older change arriving late does not re-announce the past); `from`
conditions see the mirror's value before the event, worked out for the whole batch before the
mirror moves."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from service import outbox
from service.db import json_rows
from service.events import Event, Kind
from service.rules.language import Action, Rule, RuleError, load_rules_file
from service.rules.templates import render, render_any
from service.settings import Settings

PropertyKey = tuple[int, str, int, str]  # portal, object type, object id, property
DAY_MS = 86_400_000

# HubSpot's default deal pipeline: stage ids and labels, so rules that name a stage by label
# work before (or without) the pipelines API.
DEFAULT_DEAL_STAGES = {
    "appointmentscheduled": "Appointment Scheduled",
    "qualifiedtobuy": "Qualified To Buy",
    "presentationscheduled": "Presentation Scheduled",
    "decisionmakerboughtin": "Decision Maker Bought-In",
    "contractsent": "Contract Sent",
    "closedwon": "Closed Won",
    "closedlost": "Closed Lost",
}


@dataclass(frozen=True, slots=True)
class Before:
    """Per property change: the value before it, and whether it is now the record's value."""

    previous: str | None
    wins: bool


@dataclass
class RuleEngine:
    """Evaluates rules for applied batches and writes the action runs they fire."""

    rules: Sequence[Rule]
    dry_run: bool = False
    app_id: str | None = None
    _watched: set[tuple[str, str | None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._watched = {(r.object_type, r.prop) for r in self.rules}

    @property
    def uses_stage_labels(self) -> bool:
        """Whether some rule names deal stages (labels are fetched only then)."""
        return any(r.prop == "dealstage" for r in self.rules)

    def _relevant(self, event: Event) -> bool:
        return not event.is_self_test and any(
            rule.kind is event.kind and rule.object_type in ("*", event.object_type)
            for rule in self.rules
        )

    def before(self, connection: sa.Connection, events: Sequence[Event]) -> dict[int, Before]:
        """Before the mirror applies: each property change's previous value and whether it wins.

        Changes of one property are replayed in (occurredAt, value) order over the stored
        version, exactly the order in which the mirror's last-writer-wins settles them.
        """
        changes = [
            e
            for e in events
            if e.kind is Kind.PROPERTY_CHANGE
            and e.property_name is not None
            and e.object_id is not None
            and self._relevant(e)
        ]
        if not changes:
            return {}
        stored: dict[tuple[int, str, int], Any] = {
            (r.portal_id, r.object_type, r.object_id): r
            for r in _by_keys(
                connection, "crm_objects", "properties, versions, erased", {e.key for e in changes}
            )
        }
        by_property: dict[PropertyKey, list[Event]] = {}
        for e in changes:
            assert e.property_name is not None
            by_property.setdefault((*e.key, e.property_name), []).append(e)
        result: dict[int, Before] = {}
        for (portal, object_type, object_id, prop), group in by_property.items():
            row = stored.get((portal, object_type, object_id))
            erased = bool(row is not None and row.erased)
            value = row.properties.get(prop) if row is not None else None
            version = int(row.versions[prop]) if row is not None and prop in row.versions else None
            held: tuple[int, str] | None = None if version is None else (version, value or "")
            last: int | None = None
            for e in sorted(group, key=_order):
                candidate = _order(e)
                applies = not erased and not e.redacted and (held is None or candidate > held)
                result[e.inbox_id] = Before(previous=value, wins=False)
                if applies:
                    held, value, last = candidate, e.property_value, e.inbox_id
            # Only the last change that applies is the record's value after the batch.
            if last is not None:
                result[last] = Before(previous=result[last].previous, wins=True)
        return result

    def fire(
        self, connection: sa.Connection, events: Sequence[Event], before: Mapping[int, Before]
    ) -> set[int]:
        """Write the action runs the applied `events` fire; returns the ids of events that fired."""
        candidates = [e for e in events if self._relevant(e)]
        if not candidates:
            return set()
        own = self._own_objects(connection, candidates)
        labels = self._stage_labels(connection, candidates)
        matched: list[tuple[Event, Rule, str | None]] = []
        for e in candidates:
            info = before.get(e.inbox_id)
            if e.kind is Kind.PROPERTY_CHANGE and (info is None or not info.wins):
                continue
            previous = info.previous if info is not None else None
            for rule in self.rules:
                if not rule.include_own_writes and self._is_own(e, own):
                    continue
                if _matches(rule, e, previous, labels):
                    matched.append((e, rule, previous))
        if not matched:
            return set()
        records = self._records(connection, [e for e, _, _ in matched])
        rows: list[dict[str, Any]] = []
        fired: set[int] = set()
        for e, rule, previous in matched:
            record, erased = records.get(e.key, ({}, False))
            # An erased contact's events carry personal data that must go nowhere (the
            # privacy deletion may have come in this very batch); only its own event fires.
            if erased and e.kind is not Kind.PRIVACY_DELETION:
                continue
            fired.add(e.inbox_id)
            for index, action in enumerate(rule.actions):
                rows.append(
                    {
                        "portal_id": e.portal_id,
                        "inbox_id": e.inbox_id,
                        "rule": rule.name,
                        "action_index": index,
                        # Its partition: the day of the event, as the inbox row's.
                        "event_occurred_at": e.occurred_at,
                        "action": "log" if self.dry_run else action.type,
                        "object_type": e.object_type,
                        "object_id": e.object_id or 0,
                        "payload": self._payload(action, rule, e, record, previous),
                    }
                )
        if not rows:
            return fired
        outbox.enqueue(connection, rows)
        return fired

    def _payload(
        self,
        action: Action,
        rule: Rule,
        event: Event,
        record: Mapping[str, Any],
        previous: str | None,
    ) -> dict[str, Any]:
        options = action.options

        def text(key: str, default: str = "") -> str:
            return render(str(options.get(key, default)), event, record, previous)

        payload: dict[str, Any]
        if action.type == "slack":
            blocks = options.get("blocks")
            payload = {
                "action": "slack",
                "text": text("text"),
                "blocks": render_any(blocks, event, record, previous) if blocks else None,
            }
        elif action.type == "webhook":
            payload = {
                "action": "webhook",
                "url": str(options["url"]),
                "body": {
                    "type": f"{event.object_type}.{event.kind.value}",
                    "rule": rule.name,
                    "event": {
                        "portal_id": event.portal_id,
                        "object_type": event.object_type,
                        "object_id": event.object_id,
                        "kind": event.kind.value,
                        "subscription_type": event.subscription_type,
                        "event_id": event.event_id,
                        "occurred_at": event.occurred_at,
                        "property_name": event.property_name,
                        "property_value": event.property_value,
                        "previous_value": previous,
                        "change_source": event.change_source,
                    },
                    "record": dict(record),
                },
            }
        elif action.type == "hubspot_task":
            owner = options.get("owner", "record")
            payload = {
                "action": "hubspot_task",
                "object_type": event.object_type,
                "object_id": event.object_id,
                "subject": text("subject"),
                "body": text("body"),
                "priority": str(options.get("priority", "MEDIUM")),
                "due_at_ms": int(time.time() * 1000) + int(options.get("due_in_days", 1)) * DAY_MS,
                "owner_id": record.get("hubspot_owner_id") if owner == "record" else str(owner),
            }
        elif action.type == "hubspot_note":
            payload = {
                "action": "hubspot_note",
                "object_type": event.object_type,
                "object_id": event.object_id,
                "body": text("body"),
                "timestamp_ms": int(time.time() * 1000),
            }
        else:
            payload = {"action": "log", "message": text("message", f"rule {rule.name} fired")}
        if self.dry_run and action.type != "log":
            return {
                "action": "log",
                "message": f"dry run: would run {action.type}",
                "would": payload,
            }
        return payload

    def _is_own(self, event: Event, own: set[tuple[int, str, int]]) -> bool:
        if self.app_id is not None and event.source_id is not None:
            source = event.source_id
            if source == self.app_id or source.endswith((f":{self.app_id}", f"-{self.app_id}")):
                return True
        if event.key in own:
            return True
        a = event.association
        return a is not None and (
            (event.portal_id, a.from_type, a.from_id) in own
            or (event.portal_id, a.to_type, a.to_id) in own
        )

    def _own_objects(
        self, connection: sa.Connection, events: Sequence[Event]
    ) -> set[tuple[int, str, int]]:
        keys = {e.key for e in events}
        for e in events:
            if e.association is not None:
                keys.add((e.portal_id, e.association.from_type, e.association.from_id))
                keys.add((e.portal_id, e.association.to_type, e.association.to_id))
        return {
            (r.portal_id, r.object_type, r.object_id)
            for r in _by_keys(connection, "own_writes", "created_at", keys)
        }

    def _stage_labels(
        self, connection: sa.Connection, events: Sequence[Event]
    ) -> dict[tuple[int, str], str]:
        portals = sorted({e.portal_id for e in events if e.property_name == "dealstage"})
        if not portals or not any(r.prop == "dealstage" for r in self.rules):
            return {}
        labels = {
            (portal, stage): label
            for portal in portals
            for stage, label in DEFAULT_DEAL_STAGES.items()
        }
        for row in connection.execute(
            sa.text(
                "SELECT portal_id, stage_id, label FROM pipeline_stages"
                " WHERE object_type = 'deals' AND portal_id = ANY(:p)"
            ),
            {"p": portals},
        ):
            labels[(row.portal_id, row.stage_id)] = row.label
        return labels

    def _records(
        self, connection: sa.Connection, events: Sequence[Event]
    ) -> dict[tuple[int, str, int], tuple[dict[str, Any], bool]]:
        """The mirrored record of each event, and whether it is erased."""
        return {
            (r.portal_id, r.object_type, r.object_id): (dict(r.properties), bool(r.erased))
            for r in _by_keys(
                connection, "crm_objects", "properties, erased", {e.key for e in events}
            )
        }


def _by_keys(
    connection: sa.Connection, table: str, columns: str, keys: set[tuple[int, str, int]]
) -> Sequence[Any]:
    """Rows of a table keyed (portal_id, object_type, object_id), for these keys, in one query."""
    rows = json_rows({"p": p, "t": t, "o": o} for p, t, o in sorted(keys))
    return connection.execute(
        sa.text(
            f"SELECT x.portal_id, x.object_type, x.object_id, {columns} FROM {table} x"
            " JOIN jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(p bigint, t text, o bigint)"
            " ON x.portal_id = r.p AND x.object_type = r.t AND x.object_id = r.o"
        ),
        {"rows": rows},
    ).all()


def _order(event: Event) -> tuple[int, str]:
    return (event.occurred_at, event.property_value or "")


def _matches(
    rule: Rule, event: Event, previous: str | None, labels: Mapping[tuple[int, str], str]
) -> bool:
    """Rule.matches, with deal stages also known by their pipeline labels."""
    if rule.prop != "dealstage" or not labels:
        return rule.matches(event, previous)
    return rule.matches(event, previous, lambda stage: labels.get((event.portal_id, stage)))


def load_engine(settings: Settings, code_rules: Sequence[Rule]) -> RuleEngine | None:
    """The rules of RULES_FILE and of code, validated together; None when there are none.

    Raises RuleError (file, line, fix) for an invalid file or a name used in both places.
    """
    rules: list[Rule] = []
    if settings.rules_file is not None:
        rules, _warnings = load_rules_file(settings.rules_file)
    names = {rule.name: rule.source for rule in rules}
    for rule in code_rules:
        if rule.name in names:
            raise RuleError(
                [f"rule {rule.name!r} is declared twice: at {names[rule.name]} and {rule.source}"]
            )
        names[rule.name] = rule.source
        rules.append(rule)
    if not rules:
        return None
    return RuleEngine(rules, dry_run=settings.rules_dry_run, app_id=settings.app_id)
