"""The mirror's tables and every statement that writes them: crm_objects, crm_associations and
seen_properties, as last-writer-wins registers, and the row lock order.

Every mirrored field is a register versioned by HubSpot's occurredAt (ms) with a fixed
tie-break, so any order, batching and repetition of the same writes converges on the same rows.
Both the apply stage (webhook events) and snapshots (records fetched from the API) write
through these statements; rows are given as a JSON array, one statement per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from service import db

ObjectKey = tuple[int, str, int]

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
        rows = db.json_rows(
            {"portal_id": p, "object_type": t, "object_id": o} for p, t, o in ordered
        )
        connection.execute(_LOCK, {"rows": rows})


# Deletion archives, creation and restore un-archive: the newest wins, deletion at a tie.
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
    -- One pass over the new versions finds the winners for both documents (rows name the same
    -- properties in both).
    SET (properties, versions) = (
            SELECT o.properties || coalesce(
                       jsonb_object_agg(n.key, EXCLUDED.properties->n.key), '{{}}'::jsonb),
                   o.versions || coalesce(jsonb_object_agg(n.key, n.value), '{{}}'::jsonb)
            FROM jsonb_each(EXCLUDED.versions) n WHERE {_WINS.format(key="n.key")}),
        updated_at = now()
    -- Only rows where some property wins are written (and counted as changed).
    WHERE NOT o.erased
      AND EXISTS (SELECT 1 FROM jsonb_each(EXCLUDED.versions) n WHERE {_WINS.format(key="n.key")})
    """
)


def write_lifecycle(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Archive or un-archive records: rows of portal_id, object_type, object_id, archived and
    version, one per record, sorted by key (the order rows are locked in)."""
    connection.execute(_LIFECYCLE, {"rows": db.json_rows(rows)})


def write_properties(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Merge properties per property by version: rows of portal_id, object_type, object_id,
    properties and versions (the same names in both), one per record, sorted by key. Returns how
    many records changed."""
    return int(connection.execute(_PROPERTIES, {"rows": db.json_rows(rows)}).rowcount)


# --- erasure, merges, associations, seen properties ---------------------------------------

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

_SEEN = sa.text(
    """
    INSERT INTO seen_properties (portal_id, object_type, property)
    SELECT r.portal_id, r.object_type, r.property
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
         AS r(portal_id bigint, object_type text, property text)
    ON CONFLICT DO NOTHING
    """
)


def erase(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Tombstone contacts (rows of portal_id, object_id, version): properties emptied, erased."""
    connection.execute(_ERASE, {"rows": db.json_rows(rows)})


def ensure_objects(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Make sure these records (portal_id, object_type, object_id) have a row."""
    connection.execute(_ENSURE, {"rows": db.json_rows(rows)})


def write_merges(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Mark records merged into a survivor (portal_id, object_type, object_id, merged_into,
    version): the newest merge wins, the greater survivor at a tie."""
    connection.execute(_MERGED, {"rows": db.json_rows(rows)})


def write_associations(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add or remove associations, one row per (portal, from, to, type), newest version wins."""
    connection.execute(_ASSOCIATIONS, {"rows": db.json_rows(rows)})


def write_seen_properties(connection: sa.Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """Remember property names webhooks carried (portal_id, object_type, property)."""
    connection.execute(_SEEN, {"rows": db.json_rows(rows)})
