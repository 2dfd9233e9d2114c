"""Set-based SQL that applies a batch of events to the mirror.

Every mirrored field is a last-writer-wins register versioned by HubSpot's occurredAt (ms), with
a fixed tie-break, so any order, batching and repetition of the same events converges on the
same rows. Each step pre-aggregates the batch in Python (one row per key, as ON CONFLICT DO
UPDATE requires) and writes it with one statement. Functions take a connection and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service.events import Event, Kind, inverse_association_type, is_mirrored

ObjectKey = tuple[int, str, int]

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


def handles(event: Event) -> bool:
    """Whether the built-in mirror has something to do with `event`."""
    if not is_mirrored(event.object_type) or event.kind not in MIRROR_KINDS:
        return False
    if event.kind is Kind.PRIVACY_DELETION:
        return event.object_type == "contacts" and event.object_id is not None
    if event.kind is Kind.ASSOCIATION_CHANGE:
        return event.association is not None
    if event.kind is Kind.MERGE:
        return event.survivor_id is not None
    return event.object_id is not None


@dataclass(frozen=True, slots=True)
class Hydration:
    """A record whose current state must be fetched from HubSpot."""

    key: ObjectKey
    reason: str


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
    erase_contacts(connection, by_kind.get(Kind.PRIVACY_DELETION, []))
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
        Hydration(e.key, e.kind.value) for e in lifecycle if e.kind in (Kind.CREATION, Kind.RESTORE)
    ]
    wanted += [Hydration(e.key, "redacted") for e in changes if e.redacted]
    wanted += [
        Hydration((e.portal_id, e.object_type, e.survivor_id), "merge")
        for e in merges
        if e.survivor_id is not None
    ]
    request_hydration(connection, wanted)
    scrub_erased_events(connection, [e for e in changes if e.object_type == "contacts"])


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


# Lock every record the batch will write, in one statement and one global order, before any
# other write: the later statements each touch a different subset, and without this two workers
# could lock the same two records in opposite orders and deadlock. ON CONFLICT DO UPDATE .. WHERE
# false locks an existing row without writing it; a new row is inserted (and so locked).
_LOCK = sa.text(
    """
    INSERT INTO crm_objects AS o (portal_id, object_type, object_id)
    SELECT r.portal_id, r.object_type, r.object_id
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint)
    ORDER BY r.portal_id, r.object_type, r.object_id
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    SET updated_at = o.updated_at
    WHERE false
    """
)


def lock_objects(connection: sa.Connection, keys: Iterable[ObjectKey]) -> None:
    """Create-or-lock these mirror rows, in key order, until the transaction ends."""
    ordered = sorted(keys)
    if ordered:
        rows = _rows({"portal_id": p, "object_type": t, "object_id": o} for p, t, o in ordered)
        connection.execute(_LOCK, {"rows": rows})


def _rows(rows: Iterable[dict[str, Any]]) -> str:
    return json.dumps(list(rows), ensure_ascii=False)


# --- privacy ---------------------------------------------------------------------------------

_ERASE = sa.text(
    """
    INSERT INTO crm_objects AS o (portal_id, object_type, object_id, erased, erased_version)
    SELECT r.portal_id, 'contacts', r.object_id, true, r.version
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_id bigint, version bigint)
    ORDER BY r.portal_id, r.object_id
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    SET erased = true,
        erased_version = greatest(o.erased_version, EXCLUDED.erased_version),
        properties = '{}'::jsonb,
        versions = '{}'::jsonb,
        updated_at = now()
    """
)
_FORGET_HYDRATION = sa.text(
    """
    DELETE FROM hydration_requests h
    USING jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
    WHERE h.portal_id = r.portal_id AND h.object_type = 'contacts' AND h.object_id = r.object_id
    """
)
# The contact's values leave every stored raw event too; the event itself stays, marked.
# Rows another worker has claimed are skipped, not waited for (that could deadlock on the
# contact's lock): that worker scrubs them itself once it sees the tombstone.
_SCRUB = sa.text(
    """
    UPDATE inbox_events i
    SET payload = (i.payload - 'propertyValue')
                  || jsonb_build_object('propertyValue', NULL, 'erased', true)
    WHERE i.id IN (
        SELECT e.id
        FROM inbox_events e
        JOIN jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
          ON e.portal_id = r.portal_id AND e.object_id = r.object_id
        WHERE e.payload ? 'propertyValue'
          AND jsonb_typeof(e.payload->'propertyValue') <> 'null'
          AND (e.subscription_type LIKE 'contact.%' OR e.payload->>'objectTypeId' = '0-1')
        FOR UPDATE OF e SKIP LOCKED
    )
    """
)


def erase_contacts(connection: sa.Connection, events: Sequence[Event]) -> None:
    """contact.privacyDeletion: erase, forget pending fetches, scrub stored events; a tombstone."""
    if not events:
        return
    latest: dict[tuple[int, int], int] = {}
    for e in events:
        assert e.object_id is not None
        key = (e.portal_id, e.object_id)
        latest[key] = max(latest.get(key, 0), e.occurred_at)
    rows = _rows(
        {"portal_id": p, "object_id": o, "version": v} for (p, o), v in sorted(latest.items())
    )
    connection.execute(_ERASE, {"rows": rows})
    connection.execute(_FORGET_HYDRATION, {"rows": rows})
    connection.execute(_SCRUB, {"rows": rows})
    connection.execute(_SCRUB_ACTIONS, {"rows": rows})


# Action payloads rendered from the contact go too; one not yet run can no longer run.
_SCRUB_ACTIONS = sa.text(
    """
    UPDATE action_runs a
    SET payload = jsonb_build_object('action', a.action, 'erased', true),
        status = CASE WHEN a.status = 'done' THEN 'done' ELSE 'dead' END,
        last_error = CASE WHEN a.status = 'done' THEN a.last_error
                          ELSE 'contact erased by a privacy deletion' END
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
    WHERE a.portal_id = r.portal_id AND a.object_type = 'contacts' AND a.object_id = r.object_id
      AND NOT (a.payload ? 'erased')
    """
)

_ERASED_AMONG = sa.text(
    """
    SELECT o.portal_id, o.object_id
    FROM crm_objects o
    JOIN jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(portal_id bigint, object_id bigint)
      ON o.portal_id = r.portal_id AND o.object_type = 'contacts' AND o.object_id = r.object_id
    WHERE o.erased
    """
)


def scrub_erased_events(connection: sa.Connection, events: Sequence[Event]) -> None:
    """Scrub late-arriving events about contacts that are already erased."""
    keys = {(e.portal_id, e.object_id) for e in events if e.object_id is not None}
    if not keys:
        return
    rows = _rows({"portal_id": p, "object_id": o} for p, o in sorted(keys))
    erased = connection.execute(_ERASED_AMONG, {"rows": rows}).all()
    if erased:
        scrub = _rows({"portal_id": p, "object_id": o} for p, o in erased)
        connection.execute(_SCRUB, {"rows": scrub})


# --- creation, deletion, restore -------------------------------------------------------------

_LIFECYCLE = sa.text(
    """
    INSERT INTO crm_objects AS o (portal_id, object_type, object_id, archived, archived_version)
    SELECT r.portal_id, r.object_type, r.object_id, r.archived, r.version
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint, archived boolean,
              version bigint)
    ORDER BY r.portal_id, r.object_type, r.object_id
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    SET archived = EXCLUDED.archived,
        archived_version = EXCLUDED.archived_version,
        updated_at = now()
    WHERE EXCLUDED.archived_version > o.archived_version
       OR (EXCLUDED.archived_version = o.archived_version AND EXCLUDED.archived AND NOT o.archived)
    """
)


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
    rows = _rows(
        {"portal_id": p, "object_type": t, "object_id": o, "version": v, "archived": a}
        for (p, t, o), (v, a) in sorted(state.items())
    )
    connection.execute(_LIFECYCLE, {"rows": rows})


# --- property changes ------------------------------------------------------------------------

# A property's new value wins when its version is newer, or equal with a greater value (code
# point order, as Python compares, hence COLLATE "C"): the same winner from any order.
_WINS = """
    (o.versions->>{key}) IS NULL
    OR (EXCLUDED.versions->>{key})::bigint > (o.versions->>{key})::bigint
    OR ((EXCLUDED.versions->>{key})::bigint = (o.versions->>{key})::bigint
        AND (EXCLUDED.properties->>{key}) COLLATE "C" > (o.properties->>{key}) COLLATE "C")
"""
_PROPERTIES = sa.text(
    f"""
    INSERT INTO crm_objects AS o (portal_id, object_type, object_id, properties, versions)
    SELECT r.portal_id, r.object_type, r.object_id, r.properties, r.versions
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint, properties jsonb,
              versions jsonb)
    ORDER BY r.portal_id, r.object_type, r.object_id
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    SET properties = o.properties || coalesce(
            (SELECT jsonb_object_agg(n.key, n.value) FROM jsonb_each(EXCLUDED.properties) n
             WHERE {_WINS.format(key="n.key")}),
            '{{}}'::jsonb),
        versions = o.versions || coalesce(
            (SELECT jsonb_object_agg(n.key, n.value) FROM jsonb_each(EXCLUDED.versions) n
             WHERE {_WINS.format(key="n.key")}),
            '{{}}'::jsonb),
        updated_at = now()
    -- Only rows where some property wins are written (and counted as changed).
    WHERE NOT o.erased
      AND EXISTS (SELECT 1 FROM jsonb_each(EXCLUDED.versions) n WHERE {_WINS.format(key="n.key")})
    """
)


_SEEN = sa.text(
    """
    INSERT INTO seen_properties (portal_id, object_type, property)
    SELECT r.portal_id, r.object_type, r.property
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, property text)
    ON CONFLICT DO NOTHING
    """
)


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
        rows = _rows(
            {
                "portal_id": p,
                "object_type": t,
                "object_id": o,
                "properties": {name: value for name, (_, value) in props.items()},
                "versions": {name: version for name, (version, _) in props.items()},
            }
            for (p, t, o), props in sorted(winners.items())
        )
        connection.execute(_PROPERTIES, {"rows": rows})
    # After crm_objects, as in every batch: a batch takes all its crm_objects row locks (in key
    # order) before it writes any other table, so two workers can never wait for each other.
    seen = {(e.portal_id, e.object_type, e.property_name) for e in events if e.property_name}
    if seen:
        rows = _rows({"portal_id": p, "object_type": t, "property": n} for p, t, n in sorted(seen))
        connection.execute(_SEEN, {"rows": rows})


# --- merges ----------------------------------------------------------------------------------

_MERGED = sa.text(
    """
    INSERT INTO crm_objects AS o (portal_id, object_type, object_id, merged_into, merged_version)
    SELECT r.portal_id, r.object_type, r.object_id, r.merged_into, r.version
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint, merged_into bigint,
              version bigint)
    ORDER BY r.portal_id, r.object_type, r.object_id
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    SET merged_into = EXCLUDED.merged_into,
        merged_version = EXCLUDED.merged_version,
        updated_at = now()
    WHERE EXCLUDED.merged_version > o.merged_version
       OR (EXCLUDED.merged_version = o.merged_version
           AND EXCLUDED.merged_into > coalesce(o.merged_into, -1))
    """
)
_ENSURE = sa.text(
    """
    INSERT INTO crm_objects (portal_id, object_type, object_id)
    SELECT r.portal_id, r.object_type, r.object_id
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint)
    ON CONFLICT DO NOTHING
    """
)


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
        rows = _rows(
            {"portal_id": p, "object_type": t, "object_id": o} for p, t, o in sorted(survivors)
        )
        connection.execute(_ENSURE, {"rows": rows})
    if losers:
        rows = _rows(
            {"portal_id": p, "object_type": t, "object_id": o, "version": v, "merged_into": s}
            for (p, t, o), (v, s) in sorted(losers.items())
        )
        connection.execute(_MERGED, {"rows": rows})


# --- associations ----------------------------------------------------------------------------

_ASSOCIATIONS = sa.text(
    """
    INSERT INTO crm_associations AS a
        (portal_id, from_type, from_id, to_type, to_id, association_type, present, is_primary,
         version)
    SELECT r.portal_id, r.from_type, r.from_id, r.to_type, r.to_id, r.association_type,
           r.present, r.is_primary, r.version
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, from_type text, from_id bigint, to_type text, to_id bigint,
              association_type text, present boolean, is_primary boolean, version bigint)
    ON CONFLICT (portal_id, from_type, from_id, to_type, to_id, association_type) DO UPDATE
    SET present = CASE WHEN EXCLUDED.version > a.version THEN EXCLUDED.present
                       ELSE a.present AND EXCLUDED.present END,
        is_primary = CASE WHEN EXCLUDED.version > a.version THEN EXCLUDED.is_primary
                          ELSE a.is_primary OR EXCLUDED.is_primary END,
        version = EXCLUDED.version,
        updated_at = now()
    WHERE EXCLUDED.version >= a.version
    """
)

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
    rows = _rows(
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
    connection.execute(_ASSOCIATIONS, {"rows": rows})


# --- snapshots fetched from HubSpot ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A record as HubSpot's API returned it; `updated_at_ms` versions every property in it."""

    object_id: int
    properties: dict[str, str | None]
    updated_at_ms: int


def apply_snapshots(
    connection: sa.Connection,
    portal_id: int,
    object_type: str,
    snapshots: Sequence[Snapshot],
    *,
    missing: Sequence[int] = (),
    fetched_at_ms: int = 0,
) -> int:
    """Write fetched records with last-writer-wins, each property versioned by `updatedAt`.

    A property a webhook changed after the snapshot keeps the webhook's value; ids HubSpot
    reports missing are archived (as of the fetch); erased contacts stay erased. Returns how
    many records changed.
    """
    changed = 0
    lock_objects(
        connection,
        [(portal_id, object_type, i) for i in [*(s.object_id for s in snapshots), *missing]],
    )
    if snapshots:
        rows = _rows(
            {
                "portal_id": portal_id,
                "object_type": object_type,
                "object_id": s.object_id,
                "properties": s.properties,
                "versions": dict.fromkeys(s.properties, s.updated_at_ms),
            }
            for s in sorted(snapshots, key=lambda s: s.object_id)
        )
        changed = connection.execute(_PROPERTIES, {"rows": rows}).rowcount
        alive = _rows(
            {
                "portal_id": portal_id,
                "object_type": object_type,
                "object_id": s.object_id,
                "version": s.updated_at_ms,
                "archived": False,
            }
            for s in sorted(snapshots, key=lambda s: s.object_id)
        )
        connection.execute(_LIFECYCLE, {"rows": alive})
    if missing:
        gone = _rows(
            {
                "portal_id": portal_id,
                "object_type": object_type,
                "object_id": object_id,
                "version": fetched_at_ms,
                "archived": True,
            }
            for object_id in sorted(set(missing))
        )
        connection.execute(_LIFECYCLE, {"rows": gone})
    return changed


# --- hydration requests ----------------------------------------------------------------------

_HYDRATE = sa.text(
    """
    INSERT INTO hydration_requests (portal_id, object_type, object_id, reason)
    SELECT r.portal_id, r.object_type, r.object_id, r.reason
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, object_id bigint, reason text)
    WHERE NOT EXISTS (
        SELECT 1 FROM crm_objects o
        WHERE o.portal_id = r.portal_id AND o.object_type = r.object_type
          AND o.object_id = r.object_id AND o.erased
    )
    ON CONFLICT (portal_id, object_type, object_id) DO UPDATE
    -- Asked again: fetch again, even if a fetch is under way or had given up.
    SET requested_at = now(),
        status = 'pending',
        attempts = CASE WHEN hydration_requests.status = 'dead' THEN 0
                        ELSE hydration_requests.attempts END,
        next_attempt_at = CASE WHEN hydration_requests.status = 'dead' THEN now()
                               ELSE hydration_requests.next_attempt_at END
    """
)


def request_hydration(connection: sa.Connection, wanted: Sequence[Hydration]) -> None:
    """Record that these records must be fetched; one row per record however often asked."""
    first: dict[ObjectKey, str] = {}
    for item in wanted:
        first.setdefault(item.key, item.reason)
    if not first:
        return
    rows = _rows(
        {"portal_id": p, "object_type": t, "object_id": o, "reason": r}
        for (p, t, o), r in sorted(first.items())
    )
    connection.execute(_HYDRATE, {"rows": rows})
