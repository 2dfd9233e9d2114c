"""service.heartbeats: beat, live workers, a clean stop and pruning, on a real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from service import heartbeats


def beat(
    engine: sa.Engine,
    worker_id: str,
    *,
    host: str = "host-a",
    pid: int = 101,
    stages: tuple[str, ...] = ("apply", "act"),
    last_batch_at: datetime | None = None,
) -> None:
    with engine.begin() as connection:
        heartbeats.beat(
            connection, worker_id, host=host, pid=pid, stages=stages, last_batch_at=last_batch_at
        )


def live(engine: sa.Engine, within: float = heartbeats.LIVE_SECONDS) -> list[heartbeats.Heartbeat]:
    with engine.connect() as connection:
        return heartbeats.live_workers(connection, within)


def last_seen_ago(engine: sa.Engine, worker_id: str, seconds: float) -> None:
    """Pretend `worker_id` was last seen `seconds` ago (as a worker that stopped beating)."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE worker_heartbeats"
                " SET last_seen_at = now() - make_interval(secs => :s) WHERE worker_id = :w"
            ),
            {"s": seconds, "w": worker_id},
        )


def test_a_first_beat_records_the_worker(clean_db: str, engine: sa.Engine) -> None:
    beat(engine, "w1", host="host-a", pid=4242, stages=("apply", "act", "hydrate"))

    [worker] = live(engine)
    assert (worker.worker_id, worker.host, worker.pid) == ("w1", "host-a", 4242)
    assert worker.stages == ("apply", "act", "hydrate")
    assert worker.last_batch_at is None
    assert worker.started_at <= worker.last_seen_at


def test_a_later_beat_moves_last_seen_and_keeps_the_latest_batch(
    clean_db: str, engine: sa.Engine
) -> None:
    batch = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    beat(engine, "w1", last_batch_at=batch)
    last_seen_ago(engine, "w1", 20)
    [before] = live(engine)

    beat(engine, "w1", last_batch_at=None)

    [after] = live(engine)
    assert after.started_at == before.started_at
    assert after.last_seen_at > before.last_seen_at
    assert after.last_batch_at == batch, "a beat without a new batch keeps the last one"
    beat(engine, "w1", last_batch_at=batch - timedelta(minutes=1))
    assert live(engine)[0].last_batch_at == batch, "an older batch time never wins"
    beat(engine, "w1", last_batch_at=batch + timedelta(minutes=1))
    assert live(engine)[0].last_batch_at == batch + timedelta(minutes=1)


def test_a_worker_not_seen_within_the_window_is_not_live(clean_db: str, engine: sa.Engine) -> None:
    beat(engine, "alive")
    beat(engine, "silent")
    last_seen_ago(engine, "silent", heartbeats.LIVE_SECONDS + 1)

    assert [w.worker_id for w in live(engine)] == ["alive"]
    assert sorted(w.worker_id for w in live(engine, within=3600)) == ["alive", "silent"]


def test_stopped_deletes_only_its_own_row(clean_db: str, engine: sa.Engine) -> None:
    beat(engine, "w1")
    beat(engine, "w2")

    with engine.begin() as connection:
        heartbeats.stopped(connection, "w1")

    assert [w.worker_id for w in live(engine)] == ["w2"]


def test_prune_deletes_workers_gone_for_long_and_keeps_the_rest(
    clean_db: str, engine: sa.Engine
) -> None:
    beat(engine, "current")
    beat(engine, "crashed-recently")
    beat(engine, "crashed-long-ago")
    last_seen_ago(engine, "crashed-recently", 600)
    last_seen_ago(engine, "crashed-long-ago", heartbeats.PRUNE_SECONDS + 60)

    with engine.begin() as connection:
        pruned = heartbeats.prune(connection)

    assert pruned == 1
    remaining = sorted(w.worker_id for w in live(engine, within=heartbeats.PRUNE_SECONDS))
    assert remaining == ["crashed-recently", "current"]
