"""service.ops.purge as a user runs it: `purge --dead --older-than 30d` deletes the dead inbox
events received before then and nothing else; `--failed` adds the failed ones."""

from __future__ import annotations

import sqlalchemy as sa

from service import outbox
from tests.factories import action_run, numbered_event
from tests.support import run_cli, store_events

# event id -> (status, days since it was received)
FATES = {
    1: ("dead", 40),
    2: ("dead", 31),
    3: ("dead", 5),
    4: ("failed", 40),
    5: ("pending", 40),
    6: ("done", 40),
    7: ("ignored", 40),
}


def setup_inbox(url: str, engine: sa.Engine) -> None:
    store_events(url, [numbered_event(n) for n in FATES])
    with engine.begin() as connection:
        for event_id, (status, days) in FATES.items():
            connection.execute(
                sa.text(
                    "UPDATE inbox_events SET status = :s,"
                    " received_at = now() - make_interval(days => :d) WHERE event_id = :e"
                ),
                {"s": status, "d": days, "e": event_id},
            )


def left(engine: sa.Engine) -> set[int]:
    with engine.connect() as connection:
        return set(connection.scalars(sa.text("SELECT event_id FROM inbox_events")))


def test_purge_dead_deletes_only_dead_events_older_than_the_age(
    clean_db: str, engine: sa.Engine
) -> None:
    setup_inbox(clean_db, engine)

    result = run_cli("purge", "--dead", "--older-than", "30d", env={"DATABASE_URL": clean_db})

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("purged 2 dead events received before ")
    assert left(engine) == {3, 4, 5, 6, 7}


def test_purge_failed_too_and_nothing_pending(clean_db: str, engine: sa.Engine) -> None:
    setup_inbox(clean_db, engine)

    result = run_cli(
        "purge", "--dead", "--failed", "--older-than", "1d", env={"DATABASE_URL": clean_db}
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("purged 4 dead and failed events received before ")
    assert left(engine) == {5, 6, 7}


def test_purge_says_what_it_needs(clean_db: str, engine: sa.Engine) -> None:
    setup_inbox(clean_db, engine)
    env = {"DATABASE_URL": clean_db}

    without_status = run_cli("purge", "--older-than", "30d", env=env)
    without_age = run_cli("purge", "--dead", env=env)

    assert without_status.returncode == 2
    assert "--dead, --failed or both" in without_status.stderr
    assert without_age.returncode == 2
    assert "--older-than" in without_age.stderr
    assert left(engine) == set(FATES)


def test_purge_actions_deletes_only_dead_runs_older_than_the_age(
    clean_db: str, engine: sa.Engine
) -> None:
    # rule -> (status, days since the run was created)
    runs = {"a": ("dead", 40), "b": ("dead", 5), "c": ("failed", 40), "d": ("pending", 40)}
    runs |= {"e": ("done", 40)}
    with engine.begin() as connection:
        outbox.enqueue(connection, [action_run(1, rule=rule) for rule in runs])
        for rule, (status, days) in runs.items():
            connection.execute(
                sa.text(
                    "UPDATE action_runs SET status = :s,"
                    " created_at = now() - make_interval(days => :d) WHERE rule = :r"
                ),
                {"s": status, "d": days, "r": rule},
            )
    setup_inbox(clean_db, engine)

    result = run_cli(
        "purge", "--actions", "--dead", "--older-than", "30d", env={"DATABASE_URL": clean_db}
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("purged 1 dead action runs created before ")
    with engine.connect() as connection:
        kept = set(connection.scalars(sa.text("SELECT rule FROM action_runs")))
    assert kept == {"b", "c", "d", "e"}
    assert left(engine) == set(FATES)  # the inbox is left alone


def test_purge_actions_needs_a_status(clean_db: str) -> None:
    result = run_cli("purge", "--actions", "--older-than", "1d", env={"DATABASE_URL": clean_db})

    assert result.returncode == 2
    assert "say which action runs: --dead, --failed or both" in result.stderr
