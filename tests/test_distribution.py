"""The schema stays distributable by portal_id (Citus, docs/scaling.md): every table is keyed by
portal first or is a listed reference/local table, no UNIQUE index of a distributed table leaves
portal_id out, and no foreign key crosses portals. The schema is read from the migrated database
(pg_catalog), so what the migrations build is checked, not only service/models.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

DISTRIBUTION_COLUMN = "portal_id"
SCALING_DOC = Path(__file__).resolve().parent.parent / "docs" / "scaling.md"

# Tables that would not be distributed by portal_id on Citus, each with why: reference tables
# (copied to every node) or local ones (kept on the coordinator). docs/scaling.md lists the same.
REFERENCE_OR_LOCAL = {
    "alembic_version": "Alembic's revision marker: one row per database, not per portal",
    "worker_heartbeats": "one row per worker process of the deployment, not per portal",
    "alert_states": "one row per alert condition of the deployment, not per portal",
    "oauth_states": "an install in progress: its portal is unknown until HubSpot's callback",
    "journal_cursors": "one row per Webhooks Journal read; the global journal spans every portal",
    "journal_entries": "one row per journal entry: a file holds events of many portals",
    "journal_gaps": "a journal's missed window: the global journal spans every portal",
}


@dataclass(frozen=True)
class Unique:
    """A UNIQUE index (a UNIQUE constraint's or one of its own) of a table, primary keys aside."""

    table: str
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key: `table`(`columns`) references `referenced`(`referenced_columns`)."""

    table: str
    name: str
    columns: tuple[str, ...]
    referenced: str
    referenced_columns: tuple[str, ...]


@dataclass(frozen=True)
class Schema:
    """What distribution cares about in one schema: tables (partitions counted by their parent)
    and their primary key columns in order, UNIQUE indexes and foreign keys."""

    primary_keys: dict[str, tuple[str, ...]]
    uniques: list[Unique]
    foreign_keys: list[ForeignKey]


# Ordinary and partitioned tables; a partition is covered by its parent's keys and indexes.
_TABLES = sa.text(
    """
    SELECT c.oid, c.relname,
           coalesce(array(
               SELECT a.attname
               FROM pg_constraint p, unnest(p.conkey) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
               WHERE p.conrelid = c.oid AND p.contype = 'p'
               ORDER BY k.position
           ), '{}') AS primary_key
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition
    ORDER BY c.relname
    """
)
# Every unique index but the primary key's; an expression column reads as NULL.
_UNIQUES = sa.text(
    """
    SELECT t.relname AS table_name, i.relname AS index_name,
           array(
               SELECT a.attname
               FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, position)
               LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
               WHERE k.position <= x.indnkeyatts
               ORDER BY k.position
           ) AS columns
    FROM pg_index x
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_class i ON i.oid = x.indexrelid
    WHERE t.oid = ANY(:tables) AND x.indisunique AND NOT x.indisprimary
    ORDER BY t.relname, i.relname
    """
)
_FOREIGN_KEYS = sa.text(
    """
    SELECT t.relname AS table_name, f.conname,
           array(
               SELECT a.attname
               FROM unnest(f.conkey) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.attnum
               ORDER BY k.position
           ) AS columns,
           r.relname AS referenced,
           array(
               SELECT a.attname
               FROM unnest(f.confkey) WITH ORDINALITY AS k(attnum, position)
               JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.attnum
               ORDER BY k.position
           ) AS referenced_columns
    FROM pg_constraint f
    JOIN pg_class t ON t.oid = f.conrelid
    JOIN pg_class r ON r.oid = f.confrelid
    WHERE f.contype = 'f' AND f.conrelid = ANY(:tables) AND f.conparentid = 0
    ORDER BY t.relname, f.conname
    """
)


def read_schema(connection: sa.Connection, schema: str) -> Schema:
    """Read `schema`'s tables, primary keys, unique indexes and foreign keys from pg_catalog."""
    tables = connection.execute(_TABLES, {"schema": schema}).all()
    oids = [t.oid for t in tables]
    return Schema(
        primary_keys={t.relname: tuple(t.primary_key) for t in tables},
        uniques=[
            Unique(r.table_name, r.index_name, tuple(c or "(expression)" for c in r.columns))
            for r in connection.execute(_UNIQUES, {"tables": oids})
        ],
        foreign_keys=[
            ForeignKey(
                r.table_name,
                r.conname,
                tuple(r.columns),
                r.referenced,
                tuple(r.referenced_columns),
            )
            for r in connection.execute(_FOREIGN_KEYS, {"tables": oids})
        ],
    )


def key_violations(schema: Schema, reference: dict[str, str]) -> list[str]:
    """Tables neither keyed by portal_id first nor listed as reference/local tables."""
    return [
        f"{table}: primary key ({', '.join(key) or 'none'}) does not start with portal_id"
        f" and the table is not a listed reference/local table"
        for table, key in schema.primary_keys.items()
        if table not in reference and key[:1] != (DISTRIBUTION_COLUMN,)
    ]


def unique_violations(schema: Schema, reference: dict[str, str]) -> list[str]:
    """UNIQUE indexes of distributed tables that leave portal_id out (Citus cannot enforce them)."""
    return [
        f"{u.table}: unique index {u.name} ({', '.join(u.columns)}) does not include portal_id"
        for u in schema.uniques
        if u.table not in reference and DISTRIBUTION_COLUMN not in u.columns
    ]


def foreign_key_violations(schema: Schema, reference: dict[str, str]) -> list[str]:
    """Foreign keys that could cross portals: between distributed tables without portal_id
    matched to portal_id, or from a reference/local table to a distributed one."""
    found = []
    for fk in schema.foreign_keys:
        described = (
            f"{fk.table}: foreign key {fk.name} ({', '.join(fk.columns)}) -> "
            f"{fk.referenced} ({', '.join(fk.referenced_columns)})"
        )
        if fk.referenced in reference:
            continue  # to a reference table: every node holds all of it
        if fk.table in reference:
            found.append(f"{described}: a reference/local table references a distributed one")
        elif (DISTRIBUTION_COLUMN, DISTRIBUTION_COLUMN) not in zip(
            fk.columns, fk.referenced_columns, strict=True
        ):
            found.append(f"{described}: does not match portal_id to portal_id")
    return found


def all_violations(schema: Schema, reference: dict[str, str]) -> list[str]:
    """Every rule's violations, one line each."""
    return (
        key_violations(schema, reference)
        + unique_violations(schema, reference)
        + foreign_key_violations(schema, reference)
    )


@pytest.fixture(scope="module")
def migrated(engine: sa.Engine) -> Schema:
    """The schema every migration built, as the test database holds it."""
    with engine.connect() as connection:
        return read_schema(connection, "public")


@pytest.fixture
def probe(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection inside a transaction, with an empty schema `probe` first on its search
    path; everything created in it is rolled back."""
    with engine.connect() as connection, connection.begin() as transaction:
        connection.execute(sa.text("CREATE SCHEMA probe"))
        connection.execute(sa.text("SET LOCAL search_path TO probe"))
        yield connection
        transaction.rollback()


def create(connection: sa.Connection, ddl: str) -> None:
    """Run each `;`-separated statement of `ddl`."""
    for statement in filter(None, (s.strip() for s in ddl.split(";"))):
        connection.execute(sa.text(statement))


# --- the schema as migrated -------------------------------------------------------------------


def test_every_table_is_keyed_by_portal_first_or_a_listed_reference_table(
    migrated: Schema,
) -> None:
    found = key_violations(migrated, REFERENCE_OR_LOCAL)

    assert found == [], "\n".join(found)


def test_every_unique_index_of_a_distributed_table_includes_portal_id(migrated: Schema) -> None:
    found = unique_violations(migrated, REFERENCE_OR_LOCAL)

    assert found == [], "\n".join(found)


def test_no_foreign_key_crosses_portals(migrated: Schema) -> None:
    found = foreign_key_violations(migrated, REFERENCE_OR_LOCAL)

    assert found == [], "\n".join(found)


def test_every_listed_reference_table_exists(migrated: Schema) -> None:
    assert set(REFERENCE_OR_LOCAL) - set(migrated.primary_keys) == set()


def test_docs_scaling_lists_the_same_reference_tables() -> None:
    text = SCALING_DOC.read_text(encoding="utf-8")
    section = text.split("### Reference and local tables", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))

    assert listed == set(REFERENCE_OR_LOCAL)


# --- the rules catch what they are for ----------------------------------------------------------


def test_a_table_keyed_without_portal_first_is_reported(probe: sa.Connection) -> None:
    create(
        probe,
        """
        CREATE TABLE by_object (object_id bigint, portal_id bigint,
                                PRIMARY KEY (object_id, portal_id));
        CREATE TABLE keyless (portal_id bigint);
        CREATE TABLE settings (key text PRIMARY KEY);
        CREATE TABLE by_portal (portal_id bigint, object_id bigint,
                                PRIMARY KEY (portal_id, object_id))
        """,
    )

    assert key_violations(read_schema(probe, "probe"), {"settings": "deployment-wide"}) == [
        "by_object: primary key (object_id, portal_id) does not start with portal_id"
        " and the table is not a listed reference/local table",
        "keyless: primary key (none) does not start with portal_id"
        " and the table is not a listed reference/local table",
    ]


def test_a_unique_constraint_or_index_without_portal_id_is_reported(
    probe: sa.Connection,
) -> None:
    create(
        probe,
        """
        CREATE TABLE runs (
            portal_id bigint, run_key text, id bigint UNIQUE, code text,
            PRIMARY KEY (portal_id, run_key), UNIQUE (portal_id, code));
        CREATE UNIQUE INDEX runs_lower_code ON runs (lower(code));
        CREATE TABLE settings (key text PRIMARY KEY, label text UNIQUE)
        """,
    )

    assert unique_violations(read_schema(probe, "probe"), {"settings": "deployment-wide"}) == [
        "runs: unique index runs_id_key (id) does not include portal_id",
        "runs: unique index runs_lower_code ((expression)) does not include portal_id",
    ]


def test_a_foreign_key_that_can_cross_portals_is_reported(probe: sa.Connection) -> None:
    create(
        probe,
        """
        CREATE TABLE settings (key text PRIMARY KEY);
        CREATE TABLE objects (portal_id bigint, object_id bigint,
                              PRIMARY KEY (portal_id, object_id));
        CREATE TABLE notes (
            portal_id bigint, note_id bigint, object_id bigint, other_portal bigint,
            setting text REFERENCES settings,
            PRIMARY KEY (portal_id, note_id),
            CONSTRAINT same_portal FOREIGN KEY (portal_id, object_id) REFERENCES objects,
            CONSTRAINT swapped FOREIGN KEY (object_id, portal_id)
                REFERENCES objects (portal_id, object_id),
            CONSTRAINT other FOREIGN KEY (other_portal, object_id) REFERENCES objects);
        ALTER TABLE settings ADD COLUMN portal_id bigint, ADD COLUMN object_id bigint,
            ADD CONSTRAINT to_objects FOREIGN KEY (portal_id, object_id) REFERENCES objects
        """,
    )

    assert foreign_key_violations(read_schema(probe, "probe"), {"settings": "deployment-wide"}) == [
        "notes: foreign key other (other_portal, object_id) -> objects (portal_id, object_id):"
        " does not match portal_id to portal_id",
        "notes: foreign key swapped (object_id, portal_id) -> objects (portal_id, object_id):"
        " does not match portal_id to portal_id",
        "settings: foreign key to_objects (portal_id, object_id) -> objects (portal_id, object_id):"
        " a reference/local table references a distributed one",
    ]


def test_partitions_are_checked_through_their_parent(probe: sa.Connection) -> None:
    create(
        probe,
        """
        CREATE TABLE events (portal_id bigint, event_id bigint, occurred_at bigint,
                             PRIMARY KEY (portal_id, event_id, occurred_at))
            PARTITION BY RANGE (occurred_at);
        CREATE TABLE events_p0 PARTITION OF events FOR VALUES FROM (0) TO (1000);
        CREATE TABLE events_old PARTITION OF events DEFAULT;
        CREATE UNIQUE INDEX events_by_event ON events (event_id, occurred_at)
        """,
    )
    schema = read_schema(probe, "probe")

    assert schema.primary_keys == {"events": ("portal_id", "event_id", "occurred_at")}
    assert all_violations(schema, {}) == [
        "events: unique index events_by_event (event_id, occurred_at) does not include portal_id"
    ]
