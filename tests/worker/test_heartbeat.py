"""service.worker.heartbeat: the beat thread records its worker, the apply stage's last batch
(read from memory, not the database), survives a database that does not answer, and deletes its
row when stopped."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from service import db
from service.worker.apply import Worker
from service.worker.heartbeat import Heartbeat
from tests.factories import change
from tests.support import Store, free_port

WAIT_SECONDS = 10.0


def rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT * FROM worker_heartbeats")))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT_SECONDS} s")
        time.sleep(0.02)


def test_the_thread_records_the_worker_and_deletes_its_row_when_stopped(
    clean_db: str, engine: sa.Engine
) -> None:
    with Heartbeat(engine, ("apply", "act"), interval=0.05) as heartbeat:
        wait_until(lambda: len(rows(engine)) == 1, "heartbeat row")
        [row] = rows(engine)
        assert row.worker_id == heartbeat.worker_id
        assert (row.host, row.pid) == (socket.gethostname(), os.getpid())
        assert row.stages == ["apply", "act"]
        first_seen = row.last_seen_at
        wait_until(lambda: rows(engine)[0].last_seen_at > first_seen, "second beat")

    assert rows(engine) == []


def test_the_apply_stages_last_batch_reaches_the_row_without_a_query_per_batch(
    store: Store, worker: Worker, engine: sa.Engine
) -> None:
    before_any_batch = worker.last_batch_at
    store([change("contact", i, 1000, "email", f"c{i}@example.com") for i in (1, 2)])
    worker.drain()
    claimed_at = worker.last_batch_at
    assert claimed_at is not None
    assert before_any_batch is None

    with Heartbeat(engine, ("apply",), last_batch=lambda: worker.last_batch_at, interval=0.05):
        wait_until(
            lambda: [r.last_batch_at for r in rows(engine)] == [claimed_at], "last batch time"
        )

    worker.drain()  # nothing due: an empty claim is not a batch
    assert worker.last_batch_at == claimed_at


def test_a_database_that_does_not_answer_is_logged_by_type_and_beating_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nowhere = db.create_engine(
        f"postgresql+psycopg://nobody:secret-password@127.0.0.1:{free_port()}/none"
    )
    caplog.set_level(logging.WARNING, logger="service.worker.heartbeat")
    try:
        heartbeat = Heartbeat(nowhere, ("apply",), interval=0.05)
        heartbeat.start()
        wait_until(
            lambda: sum(r.getMessage() == "heartbeat_failed" for r in caplog.records) >= 2,
            "second failed beat",
        )
        heartbeat.stop()
    finally:
        nowhere.dispose()

    failed = [r for r in caplog.records if r.getMessage() == "heartbeat_failed"]
    assert {r.__dict__["error"] for r in failed} == {"OperationalError"}
    assert [r.getMessage() for r in caplog.records][-1] == "heartbeat_stop_failed"
    assert "secret-password" not in caplog.text
