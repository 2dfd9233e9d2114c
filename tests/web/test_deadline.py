"""service.web.deadline: one deadline per delivery across the pool wait, the statement and the
one retry, so every answer (200, or 503 with Retry-After) leaves inside HubSpot's 5 s, and
requests beyond the waiting bound are turned away at once instead of piling up.

The deliveries go over HTTP to the app on uvicorn, concurrently, as HubSpot sends them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from starlette.testclient import TestClient

from service import db
from service.settings import WEBHOOK_PATH
from service.web.app import create_app
from tests.factories import numbered_event, v3_headers
from tests.servers import in_thread
from tests.support import free_port, make_settings, post_events

DEADLINE = 1.0  # REQUEST_DEADLINE of these tests, short to keep them fast
MARGIN = 0.5  # what an answer may take beyond the deadline (scheduling on a busy machine)


@dataclass(frozen=True)
class Answer:
    """One delivery's answer and how long it took."""

    status: int
    seconds: float
    retry_after: str | None
    body: dict[str, Any]


def serve(database_url: str, **env: str) -> AbstractContextManager[str]:
    """The app on uvicorn in a thread, with `env` (REQUEST_DEADLINE, DATABASE_POOL_SIZE)."""
    app = create_app(make_settings(**env), database_url=database_url)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on")
    return in_thread(config)


def deliver(url: str, batches: list[list[dict[str, Any]]]) -> list[Answer]:
    """POST each batch, signed, all at once (a thread and a connection each); the answers in
    batch order."""
    limits = httpx2.Limits(max_connections=len(batches))
    with httpx2.Client(timeout=30, limits=limits) as client:

        def post(batch: list[dict[str, Any]]) -> Answer:
            body = json.dumps(batch).encode()
            headers = v3_headers(body, uri=url)
            started = time.perf_counter()
            response = client.post(url, content=body, headers=headers)
            return Answer(
                response.status_code,
                time.perf_counter() - started,
                response.headers.get("retry-after"),
                response.json(),
            )

        with ThreadPoolExecutor(len(batches)) as pool:
            return list(pool.map(post, batches))


@contextmanager
def locked_inbox(database_url: str) -> Iterator[None]:
    """inbox_events locked by another connection (ACCESS EXCLUSIVE, as a long migration takes it)
    until the block ends."""
    with psycopg.connect(db.libpq_url(database_url)) as connection:
        connection.execute("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            connection.rollback()


def stored_ids(engine: sa.Engine) -> list[int]:
    """The eventId of every inbox row, in id order."""
    with engine.connect() as connection:
        return list(connection.scalars(sa.text("SELECT event_id FROM inbox_events ORDER BY id")))


def batches_of(count: int, size: int = 10) -> list[list[dict[str, Any]]]:
    """`count` batches of `size` distinct events."""
    return [[numbered_event(size * b + i + 1) for i in range(size)] for b in range(count)]


def test_twelve_deliveries_behind_a_locked_inbox_are_503_inside_the_deadline_then_stored_once(
    clean_db: str, engine: sa.Engine
) -> None:
    batches = batches_of(12)
    with serve(clean_db, REQUEST_DEADLINE=str(DEADLINE)) as base:
        url = base + WEBHOOK_PATH
        with locked_inbox(clean_db):
            refused = deliver(url, batches)
        assert stored_ids(engine) == []
        retried = deliver(url, batches)  # HubSpot retries each one

    for answer in refused:
        assert answer.status == 503, answer
        assert answer.retry_after is not None
        assert answer.retry_after.isdigit()
        assert answer.body["error"] == "storage_unavailable"
        assert answer.seconds < DEADLINE + MARGIN, answer
    assert [a.status for a in retried] == [200] * 12
    assert sum(a.body["stored"] for a in retried) == 120
    assert sorted(stored_ids(engine)) == list(range(1, 121))


def test_deliveries_beyond_the_waiting_bound_are_503_at_once(
    clean_db: str, engine: sa.Engine
) -> None:
    # One pooled connection (held by the first delivery, stuck on the lock) and room for eight
    # waiting: of twelve deliveries at least three find no room and are answered at once.
    deadline = 2.0
    with (
        serve(clean_db, REQUEST_DEADLINE=str(deadline), DATABASE_POOL_SIZE="1") as base,
        locked_inbox(clean_db),
    ):
        answers = deliver(base + WEBHOOK_PATH, batches_of(12))

    assert [a.status for a in answers] == [503] * 12
    assert all(a.seconds < deadline + MARGIN for a in answers), answers
    turned_away = [a for a in answers if a.seconds < deadline / 2]
    assert len(turned_away) >= 3, answers
    assert all("too many deliveries" in a.body["detail"] for a in turned_away)
    assert stored_ids(engine) == []


def test_a_delivery_is_503_inside_the_deadline_when_the_database_is_unreachable() -> None:
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    app = create_app(make_settings(REQUEST_DEADLINE=str(DEADLINE)), database_url=unreachable)
    with TestClient(app) as client:
        for event_id in (1, 2):  # the first, and one while the pool is retrying to connect
            started = time.perf_counter()
            response = post_events(client, [numbered_event(event_id)])
            seconds = time.perf_counter() - started

            assert response.status_code == 503
            assert response.headers["Retry-After"].isdigit()
            assert seconds < DEADLINE + MARGIN


def test_pooled_connections_closed_by_the_server_are_replaced_without_a_503(
    clean_db: str, engine: sa.Engine
) -> None:
    # Three deliveries behind a short lock make the pool open three connections; the server
    # then closes them all (as a restart or failover does) while they sit idle in the pool.
    with serve(clean_db) as base, ThreadPoolExecutor(1) as pool:
        url = base + WEBHOOK_PATH
        with locked_inbox(clean_db):
            warming = pool.submit(deliver, url, batches_of(3))
            time.sleep(0.5)
        assert [a.status for a in warming.result()] == [200] * 3
        with engine.begin() as connection:
            closed = connection.scalar(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND application_name = 'hubspot-webhooks-web' AND state = 'idle'"
                )
            )
        assert closed is not None
        assert closed >= 3

        answer = deliver(url, [[numbered_event(99)]])[0]

    assert answer.status == 200, answer
    assert answer.body["stored"] == 1


@pytest.mark.parametrize("code", ["57014", "55P03"])
def test_a_timed_out_statement_is_not_retried(clean_db: str, engine: sa.Engine, code: str) -> None:
    # A trigger that fails as statement_timeout (57014) or lock_timeout (55P03) does, counting
    # its calls in a sequence (nextval survives the rollback): one attempt, then 503.
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SEQUENCE attempts"))
        connection.execute(
            sa.text(
                "CREATE FUNCTION time_out() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN PERFORM nextval('attempts');"
                f" RAISE EXCEPTION 'timed out' USING ERRCODE = '{code}'; END $$"
            )
        )
        connection.execute(
            sa.text(
                "CREATE TRIGGER time_out BEFORE INSERT ON inbox_events"
                " FOR EACH ROW EXECUTE FUNCTION time_out()"
            )
        )
    try:
        with serve(clean_db) as base:
            [answer] = deliver(base + WEBHOOK_PATH, [[numbered_event(1)]])
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER time_out ON inbox_events"))
            connection.execute(sa.text("DROP FUNCTION time_out()"))
            attempts = connection.scalar(sa.text("SELECT last_value FROM attempts"))
            connection.execute(sa.text("DROP SEQUENCE attempts"))

    assert answer.status == 503
    assert answer.retry_after is not None
    assert attempts == 1
