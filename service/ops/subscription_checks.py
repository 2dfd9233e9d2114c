"""Coverage: does anything subscribe to the events the rules and the mirror need?

A rule's `when` needs one kind of event on one object type (and, for property changes, one
property). The mirror needs, for each object type it receives events for: deletions (else deleted
records stay), changes of its mirrored properties (MIRROR_PROPERTIES, else the defaults; HubSpot
refuses subscriptions on the last-modified dates, so those are not asked for) and, for contacts,
privacy deletions (else an erased contact's personal data stays). What is subscribed comes from a
subscriptions TOML file, a project app's `webhooks-hsmeta.json`, the journal subscriptions API or
a legacy app's v3 list. Each gap is a warning with its fix, never an error: `rules check` (offline,
from a file) and `doctor` (online when it can be) print them and keep their exit codes.

Assumption (HubSpot does not document it): a journal OBJECT subscription's `properties` are the
properties whose changes it reports, so an UPDATE with no properties reports none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.events import CLASSIC_TYPES, KINDS, Kind, is_mirrored, object_type_from_id
from service.hubspot import appauth
from service.hubspot import subscriptions as journal
from service.hubspot.sdk import HubSpotError
from service.hubspot.subscriptions import LegacySubscription, Subscription
from service.journal_format.convert import ACTION_KINDS
from service.ops.checks import Check
from service.ops.subscriptions_file import SubscriptionsFileError, load_file, object_type_id
from service.rules.language import Rule
from service.settings import DEFAULT_MIRROR_PROPERTIES, Settings

# (object type, kind, property): property only for property changes.
Event = tuple[str, Kind, str | None]
# Mirrored properties no subscription is asked for (HUBSPOT.md §2: HubSpot refuses the
# last-modified dates; createdate is set once and read when a creation is fetched).
UNSUBSCRIBABLE = frozenset(
    {"createdate", "lastmodifieddate", "hs_lastmodifieddate", "hs_object_id"}
)
# A journal subscription's action -> the kind of the events it delivers (a CREATE's property
# values aside; UPDATE is what delivers property changes), as service.journal_format reads them.
_JOURNAL_KINDS: Mapping[str, Kind] = {
    action: KINDS[push] for action, push in ACTION_KINDS.items()
} | {"UPDATE": Kind.PROPERTY_CHANGE}
_PUSH_NAMES = {kind: name for name, kind in KINDS.items()}
_JOURNAL_ACTIONS = {
    Kind.CREATION: "create",
    Kind.DELETION: "delete",
    Kind.MERGE: "merge",
    Kind.RESTORE: "restore",
}
_SINGULAR = {
    plural: singular for singular, plural in CLASSIC_TYPES.items() if singular != "lineitem"
}
_NOUNS = {
    Kind.CREATION: "creations",
    Kind.DELETION: "deletions",
    Kind.RESTORE: "restores",
    Kind.MERGE: "merges",
    Kind.PROPERTY_CHANGE: "property changes",
    Kind.ASSOCIATION_CHANGE: "association changes",
    Kind.PRIVACY_DELETION: "privacy deletions",
}


@dataclass
class Coverage:
    """The events subscribed to, and whether fixes are phrased for the journal or for push."""

    events: set[Event] = field(default_factory=set)
    journal: bool = True

    def has(self, object_type: str, kind: Kind, prop: str | None = None) -> bool:
        """Whether an event of `kind` on `object_type` ("*": any) with `prop` is subscribed."""
        return any(
            k is kind
            and object_type in ("*", t)
            and (prop is None or p == prop or (p is None and kind is not Kind.PROPERTY_CHANGE))
            for t, k, p in self.events
        )


def from_journal(subscriptions: Iterable[Subscription]) -> set[Event]:
    """The events journal subscriptions report."""
    events: set[Event] = set()
    for s in subscriptions:
        object_type = object_type_from_id(s.object_type_id or "")
        if not s.object_type_id:
            continue
        if s.type == "GDPR_PRIVACY_DELETION":
            events.add((object_type, Kind.PRIVACY_DELETION, None))
            continue
        for action in s.actions:
            kind = _JOURNAL_KINDS.get(action)
            if kind is Kind.PROPERTY_CHANGE:
                events |= {(object_type, kind, p) for p in s.properties}
            elif kind is not None:
                events.add((object_type, kind, None))
    return events


def _push(event_type: str, object_type: str | None, prop: str | None) -> Event | None:
    prefix, _, action = event_type.partition(".")
    kind = KINDS.get(action)
    if prefix == "object":
        type_id = object_type_id(object_type or "")
        name = object_type_from_id(type_id) if type_id else None
    else:
        name = CLASSIC_TYPES.get(prefix)
    if kind is None or name is None:
        return None
    return (name, kind, prop if kind is Kind.PROPERTY_CHANGE else None)


def from_legacy(subscriptions: Iterable[LegacySubscription]) -> set[Event]:
    """The events a legacy app's active v3 subscriptions deliver."""
    found = (
        _push(s.event_type, s.object_type_id, s.property_name) for s in subscriptions if s.active
    )
    return {e for e in found if e is not None}


def from_hsmeta(data: Mapping[str, Any]) -> set[Event]:
    """The events a project app's webhooks-hsmeta.json subscribes to (its active entries of
    crmObjects, legacyCrmObjects and hubEvents)."""
    groups = ((data.get("config") or {}).get("subscriptions")) or {}
    found = (
        _push(
            str(item.get("subscriptionType") or ""),
            item.get("objectType"),
            item.get("propertyName"),
        )
        for group in groups.values()
        if isinstance(group, list)
        for item in group
        if isinstance(item, dict) and item.get("active", True) is not False
    )
    return {e for e in found if e is not None}


def from_file(path: Path) -> Coverage:
    """A subscriptions TOML file or a project app's webhooks-hsmeta.json (by its suffix);
    SubscriptionsFileError (or ValueError for bad JSON) when it cannot be read."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SubscriptionsFileError([f"{path}: cannot read: {exc.strerror}"]) from None
        return Coverage(from_hsmeta(data if isinstance(data, dict) else {}), journal=False)
    declared, _ = load_file(path)
    return Coverage(from_journal(d.subscription for d in declared))


def _singular(object_type: str) -> str:
    return _SINGULAR.get(object_type, f"{object_type} object")


def _fix(coverage: Coverage, object_type: str, kind: Kind, props: Sequence[str] = ()) -> str:
    if not coverage.journal:
        prefix = _SINGULAR.get(object_type, "object")
        event = f"{prefix}.{_PUSH_NAMES[kind]}"
        return (
            f"subscribe to {event} for " + ", ".join(f'"{p}"' for p in props)
            if props
            else f"subscribe to {event}"
        )
    if props:
        names = ", ".join(f'"{p}"' for p in props)
        return f"add {names} to the {object_type} subscription's properties"
    if kind in _JOURNAL_ACTIONS:
        return f'add "{_JOURNAL_ACTIONS[kind]}" to the {object_type} subscription\'s actions'
    if kind is Kind.ASSOCIATION_CHANGE:
        return f'add an association subscription for {object_type} with "association_added"'
    return f"add a privacy_deletion subscription for {object_type}"


def rule_warnings(rules: Iterable[Rule], coverage: Coverage) -> list[tuple[Rule, str]]:
    """Each rule whose event nothing subscribes to, with the warning."""
    found: list[tuple[Rule, str]] = []
    for rule in rules:
        if rule.kind not in _NOUNS or coverage.has(rule.object_type, rule.kind, rule.prop):
            continue
        subject = "any object's" if rule.object_type == "*" else _singular(rule.object_type)
        needs = f"{subject} {_NOUNS[rule.kind]}" + (f" of {rule.prop}" if rule.prop else "")
        fix = _fix(coverage, rule.object_type, rule.kind, (rule.prop,) if rule.prop else ())
        found.append(
            (rule, f"rule {rule.name!r} needs {needs}; nothing subscribes to them ({fix})")
        )
    return found


def mirror_warnings(
    coverage: Coverage, configured: Mapping[str, tuple[str, ...]] | None = None
) -> list[str]:
    """What the mirror keeps of each object type it receives events for, and misses."""
    configured = configured or {}
    found: list[str] = []
    for object_type in sorted({t for t, _, _ in coverage.events if is_mirrored(t)}):
        one = _singular(object_type)
        if not coverage.has(object_type, Kind.DELETION):
            fix = _fix(coverage, object_type, Kind.DELETION)
            found.append(
                f"the mirror keeps {object_type} but nothing subscribes to {one} deletions:"
                f" deleted {object_type} will stay in the mirror ({fix})"
            )
        kept = configured.get(object_type) or DEFAULT_MIRROR_PROPERTIES.get(object_type, ())
        missing = [
            p
            for p in kept
            if p not in UNSUBSCRIBABLE and not coverage.has(object_type, Kind.PROPERTY_CHANGE, p)
        ]
        if missing:
            fix = _fix(coverage, object_type, Kind.PROPERTY_CHANGE, missing)
            found.append(
                f"the mirror keeps {object_type}' {', '.join(missing)} but nothing subscribes to"
                f" their changes: they go stale until a reconcile ({fix})"
            )
        if object_type == "contacts" and not coverage.has(object_type, Kind.PRIVACY_DELETION):
            fix = _fix(coverage, object_type, Kind.PRIVACY_DELETION)
            found.append(
                "the mirror keeps contacts but nothing subscribes to contact privacy deletions:"
                f" an erased contact's personal data stays in the mirror ({fix})"
            )
    return found


def file_warnings(
    path: Path, rules: Sequence[Rule], configured: Mapping[str, tuple[str, ...]] | None = None
) -> list[str]:
    """`rules check --subscriptions FILE`: the coverage warnings, `where: warning: ...`."""
    try:
        coverage = from_file(path)
    except (SubscriptionsFileError, ValueError) as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        return [
            f"{path}: warning: cannot check subscription coverage: {problems[0]}"
            " (fix: run `hubspot-webhooks subscriptions plan`)"
        ]
    return [f"{rule.source}: warning: {text}" for rule, text in rule_warnings(rules, coverage)] + [
        f"{path}: warning: {text}" for text in mirror_warnings(coverage, configured)
    ]


def check(settings: Settings, rules: Sequence[Rule]) -> list[Check]:
    """`doctor`'s subscriptions check: the journal subscriptions (HUBSPOT_EVENT_SOURCE journal or
    both), a legacy app's v3 list (push or both, with HUBSPOT_APP_ID and
    HUBSPOT_DEVELOPER_API_KEY), else SUBSCRIPTIONS_FILE; no line when none is there to read."""
    name = "subscriptions"
    coverage, sources = Coverage(journal=False), []
    try:
        if settings.event_source in ("journal", "both"):
            api = appauth.from_settings(settings, journal.SCOPES[:1])
            if api is not None:
                coverage.events |= from_journal(journal.list_subscriptions(api))
                coverage.journal = True
                sources.append("the journal subscriptions")
        if (
            settings.event_source in ("push", "both")
            and settings.app_id
            and settings.developer_api_key
        ):
            listed = journal.legacy_list(
                settings.api_base_url, settings.app_id, settings.developer_api_key
            )
            coverage.events |= from_legacy(listed)
            sources.append(f"the v3 subscriptions of app {settings.app_id}")
    except HubSpotError as exc:
        fix = "check HUBSPOT_CLIENT_ID/SECRET, HUBSPOT_APP_ID and HUBSPOT_DEVELOPER_API_KEY"
        return [Check(name, "warn", f"cannot tell: {exc}", fix)]
    if not sources and settings.subscriptions_file is not None:
        try:
            coverage = from_file(settings.subscriptions_file)
        except (SubscriptionsFileError, ValueError):
            fix = f"run `hubspot-webhooks subscriptions plan {settings.subscriptions_file}`"
            return [Check(name, "warn", "SUBSCRIPTIONS_FILE is invalid", fix)]
        sources.append(str(settings.subscriptions_file))
    if not sources:
        return []
    where = " and ".join(sources)
    gaps = [t for _, t in rule_warnings(rules, coverage)]
    gaps += mirror_warnings(coverage, settings.mirror_properties)
    if not gaps:
        return [Check(name, "ok", f"{where} cover the rules and the mirror")]
    fix = "subscribe to what is named, then run this again"
    return [Check(name, "warn", f"{len(gaps)} gap(s) in {where}: " + "; ".join(gaps), fix)]
