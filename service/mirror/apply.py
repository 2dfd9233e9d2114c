"""The apply stage's mirror writes: a batch of normalised events in a handful of statements.

Every mirrored field is a last-writer-wins register versioned by HubSpot's occurredAt (ms), with
a fixed tie-break, so any order, batching and repetition of the same events converges on the
same rows. Each step pre-aggregates the batch in Python (one row per key, as ON CONFLICT DO
UPDATE requires) and writes it with one statement. Functions take a connection and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from service import fetches
from service.events import Event, Kind, inverse_association_type, is_mirrored
from service.mirror import privacy
from service.mirror.registers import (
    ObjectKey,
    ensure_objects,
    lock_objects,
    write_associations,
    write_lifecycle,
    write_merges,
    write_properties,
    write_seen_properties,
)

# Kinds the built-in mirror applies, for every mirrored object type.
MIRROR_KINDS = frozenset(
    {
        Kind.CREATION,
        Kind.DELETION,
        Kind.RESTORE,
        Kind.PROPERTY_CHANGE,
        Kind.MERGE,
        Kind.ASSOCIATION_CHANGE,
        Kind.PRIVACY_DELETION,
    }
)


# Member lookups on an enum class are slow, and handles() runs twice per event.
_PRIVACY_DELETION, _ASSOCIATION_CHANGE, _MERGE = (
    Kind.PRIVACY_DELETION,
    Kind.ASSOCIATION_CHANGE,
    Kind.MERGE,
)


def handles(event: Event) -> bool:
    """Whether the built-in mirror has something to do with `event`."""
    kind = event.kind
    if kind not in MIRROR_KINDS or not is_mirrored(event.object_type):
        return False
    if kind is _PRIVACY_DELETION:
        return event.object_type == "contacts" and event.object_id is not None
    if kind is _ASSOCIATION_CHANGE:
        return event.association is not None
    if kind is _MERGE:
        return event.survivor_id is not None
    return event.object_id is not None


def apply_events(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Apply every mirror-relevant event of `events` with a handful of statements."""
    mine = [e for e in events if handles(e)]
    if not mine:
        return
    by_kind: dict[Kind, list[Event]] = {}
    for event in mine:
        by_kind.setdefault(event.kind, []).append(event)
    # Several statements will write crm_objects: lock their rows first, in one order. A batch
    # that writes them with one statement (only property changes, only creations/deletions/
    # restores, or only erasures) locks in key order by itself and skips this pass.
    lifecycle_kinds = {Kind.CREATION, Kind.DELETION, Kind.RESTORE}
    groups = {
        "lifecycle" if k in lifecycle_kinds else k
        for k in by_kind
        if k is not Kind.ASSOCIATION_CHANGE
    }
    if len(groups) > 1 or Kind.MERGE in groups:
        lock_objects(connection, _touched(mine))
    # Erasure first: later steps then see the tombstone, whatever order the batch came in.
    privacy.erase_contacts(connection, by_kind.get(Kind.PRIVACY_DELETION, []))
    lifecycle = [
        *by_kind.get(Kind.CREATION, []),
        *by_kind.get(Kind.DELETION, []),
        *by_kind.get(Kind.RESTORE, []),
    ]
    apply_lifecycle(connection, lifecycle)
    changes = by_kind.get(Kind.PROPERTY_CHANGE, [])
    apply_property_changes(connection, changes)
    merges = by_kind.get(Kind.MERGE, [])
    apply_merges(connection, merges)
    apply_associations(connection, by_kind.get(Kind.ASSOCIATION_CHANGE, []))
    wanted = [
        fetches.Wanted(e.key, e.kind.value)
        for e in lifecycle
        if e.kind in (Kind.CREATION, Kind.RESTORE)
    ]
    wanted += [fetches.Wanted(e.key, "redacted") for e in changes if e.redacted]
    wanted += [
        fetches.Wanted((e.portal_id, e.object_type, e.survivor_id), "merge")
        for e in merges
        if e.survivor_id is not None
    ]
    fetches.request(connection, wanted)
    privacy.scrub_erased_events(connection, [e for e in changes if e.object_type == "contacts"])


def _touched(events: Sequence[Event]) -> set[ObjectKey]:
    keys: set[ObjectKey] = set()
    for e in events:
        if e.kind is Kind.ASSOCIATION_CHANGE:
            continue
        if e.kind is Kind.MERGE and e.survivor_id is not None:
            keys.add((e.portal_id, e.object_type, e.survivor_id))
            keys.update((e.portal_id, e.object_type, loser) for loser in e.merge_losers)
        else:
            keys.add(e.key)
    return keys


# --- creation, deletion, restore -------------------------------------------------------------


def apply_lifecycle(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Deletion archives, creation and restore un-archive: the latest by occurredAt wins.

    An older event never overturns a newer one; at the same instant deletion wins.
    """
    if not events:
        return
    state: dict[ObjectKey, tuple[int, bool]] = {}
    for e in events:
        candidate = (e.occurred_at, e.kind is Kind.DELETION)
        state[e.key] = max(state.get(e.key, candidate), candidate)
    write_lifecycle(
        connection,
        (
            {"portal_id": p, "object_type": t, "object_id": o, "version": v, "archived": a}
            for (p, t, o), (v, a) in sorted(state.items())
        ),
    )


# --- property changes ------------------------------------------------------------------------


def apply_property_changes(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Per-property last-writer-wins; `REDACTED` values are never stored (they are fetched).

    Every property name seen is remembered, so hydration asks HubSpot for all of them.
    """
    winners: dict[ObjectKey, dict[str, tuple[int, str]]] = {}
    for e in events:
        # Every record a change names gets its row (and its row lock, which keeps erasure and
        # fetch requests for it in order), even when the value itself is not stored.
        props = winners.setdefault(e.key, {})
        if e.property_name is None or e.property_value is None or e.redacted:
            continue
        candidate = (e.occurred_at, e.property_value)
        current = props.get(e.property_name)
        if current is None or candidate > current:
            props[e.property_name] = candidate
    if winners:
        rows = (
            {
                "portal_id": p,
                "object_type": t,
                "object_id": o,
                "properties": {name: value for name, (_, value) in props.items()},
                "versions": {name: version for name, (version, _) in props.items()},
            }
            for (p, t, o), props in sorted(winners.items())
        )
        write_properties(connection, rows)
    # After crm_objects, as in every batch: a batch takes all its crm_objects row locks (in key
    # order) before it writes any other table, so two workers can never wait for each other.
    seen = {(e.portal_id, e.object_type, e.property_name) for e in events if e.property_name}
    if seen:
        seen_rows = ({"portal_id": p, "object_type": t, "property": n} for p, t, n in sorted(seen))
        write_seen_properties(connection, seen_rows)


# --- merges ----------------------------------------------------------------------------------


def apply_merges(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Mark the merged-away records as merged into the survivor; make sure the survivor exists.

    Associations of the losers follow them to the survivor in the `hubspot_associations` view,
    which resolves `merged_into` at read time, so a late association event lands right too.
    """
    losers: dict[ObjectKey, tuple[int, int]] = {}
    survivors: set[ObjectKey] = set()
    for e in events:
        assert e.survivor_id is not None
        survivors.add((e.portal_id, e.object_type, e.survivor_id))
        for loser in e.merge_losers:
            key = (e.portal_id, e.object_type, loser)
            candidate = (e.occurred_at, e.survivor_id)
            losers[key] = max(losers.get(key, candidate), candidate)
    if survivors:
        rows = ({"portal_id": p, "object_type": t, "object_id": o} for p, t, o in sorted(survivors))
        ensure_objects(connection, rows)
    if losers:
        rows = (
            {"portal_id": p, "object_type": t, "object_id": o, "version": v, "merged_into": s}
            for (p, t, o), (v, s) in sorted(losers.items())
        )
        write_merges(connection, rows)


# --- associations ----------------------------------------------------------------------------

AssociationKey = tuple[int, str, int, str, int, str]


def apply_associations(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Add or remove associations, on both sides; a primary twin is stored once.

    Per association the latest event wins; at the same instant removal wins and primary is kept.
    """
    state: dict[AssociationKey, tuple[int, bool, bool]] = {}

    def join(key: AssociationKey, version: int, present: bool, primary: bool) -> None:
        current = state.get(key)
        if current is None or version > current[0]:
            state[key] = (version, present, primary)
        elif version == current[0]:
            state[key] = (version, current[1] and present, current[2] or primary)

    for e in events:
        a = e.association
        assert a is not None
        present = not a.removed
        join(
            (e.portal_id, a.from_type, a.from_id, a.to_type, a.to_id, a.association_type),
            e.occurred_at,
            present,
            a.primary,
        )
        inverse = inverse_association_type(a.association_type)
        if inverse is not None:
            key = (e.portal_id, a.to_type, a.to_id, a.from_type, a.from_id, inverse)
            join(key, e.occurred_at, present, a.primary)
    if not state:
        return
    rows = (
        {
            "portal_id": k[0],
            "from_type": k[1],
            "from_id": k[2],
            "to_type": k[3],
            "to_id": k[4],
            "association_type": k[5],
            "version": v,
            "present": present,
            "is_primary": primary,
        }
        for k, (v, present, primary) in sorted(state.items())
    )
    write_associations(connection, rows)
