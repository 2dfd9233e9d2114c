"""Snapshots: records fetched from HubSpot's API, applied with last-writer-wins by updatedAt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from service.mirror.registers import lock_objects, write_lifecycle, write_properties


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
        rows = (
            {
                "portal_id": portal_id,
                "object_type": object_type,
                "object_id": s.object_id,
                "properties": s.properties,
                "versions": dict.fromkeys(s.properties, s.updated_at_ms),
            }
            for s in sorted(snapshots, key=lambda s: s.object_id)
        )
        changed = write_properties(connection, rows)
        alive = (
            {
                "portal_id": portal_id,
                "object_type": object_type,
                "object_id": s.object_id,
                "version": s.updated_at_ms,
                "archived": False,
            }
            for s in sorted(snapshots, key=lambda s: s.object_id)
        )
        write_lifecycle(connection, alive)
    if missing:
        gone = (
            {
                "portal_id": portal_id,
                "object_type": object_type,
                "object_id": object_id,
                "version": fetched_at_ms,
                "archived": True,
            }
            for object_id in sorted(set(missing))
        )
        write_lifecycle(connection, gone)
    return changed
