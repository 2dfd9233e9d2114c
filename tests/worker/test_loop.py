"""service.worker.loop: stages wake on their NOTIFY channel, outlive errors and stop promptly.

The poll interval in these tests is an hour, so anything that happens within the test's wait
happened because of a NOTIFY, not a poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from service import outbox
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.loop import Wakeup, run_loop

AN_HOUR = 3600.0


@contextmanager
def running(
    step: Callable[[], int],
    *,
    wakeup: Wakeup | None,
    idle_seconds: float = AN_HOUR,
    error_seconds: float | None = None,
) -> Iterator[threading.Event]:
    """`run_loop` in a thread for the duration of the block; stopped and joined after it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_loop,
        args=("test", step, stop),
        kwargs={"idle_seconds": idle_seconds, "wakeup": wakeup, "error_seconds": error_seconds},
        daemon=True,
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive(), "the loop did not stop"


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def log_run(inbox_id: int) -> dict[str, object]:
    return {
        "portal_id": 62515,
        "inbox_id": inbox_id,
        "rule": "log it",
        "action_index": 0,
        "event_occurred_at": 1_700_000_000_000,
        "action": "log",
        "object_type": "contacts",
        "object_id": 101,
        "payload": {"action": "log", "message": "hello"},
    }


def run_status(engine: sa.Engine, inbox_id: int) -> str | None:
    with engine.connect() as connection:
        status: str | None = connection.execute(
            sa.text("SELECT status FROM action_runs WHERE inbox_id = :i"), {"i": inbox_id}
        ).scalar()
    return status


@pytest.fixture
def runner(clean_db: str, engine: sa.Engine, tmp_path: Path) -> Iterator[ActionRunner]:
    settings = Settings.from_env({"DATABASE_URL": clean_db, "DATA_DIR": str(tmp_path)})
    act = ActionRunner(engine, [], settings)
    yield act
    act.close()


def test_act_stage_runs_an_enqueued_action_at_once_not_at_the_next_poll(
    engine: sa.Engine, runner: ActionRunner
) -> None:
    steps: list[int] = []

    def step() -> int:
        done = runner.run_once()
        steps.append(done)
        return done

    with running(step, wakeup=Wakeup(engine, outbox.ACTIONS_CHANNEL)):
        assert wait_for(lambda: steps == [0]), "the loop never went idle"
        with engine.begin() as connection:
            assert outbox.enqueue(connection, [log_run(1)]) == 1
        assert wait_for(lambda: run_status(engine, 1) == "done")
    assert steps[:2] == [0, 1]


def test_a_run_already_due_when_the_loop_starts_is_run_first(
    engine: sa.Engine, runner: ActionRunner
) -> None:
    with engine.begin() as connection:
        outbox.enqueue(connection, [log_run(2)])
    with running(runner.run_once, wakeup=Wakeup(engine, outbox.ACTIONS_CHANNEL)):
        assert wait_for(lambda: run_status(engine, 2) == "done")


def test_an_enqueue_that_adds_nothing_sends_no_wakeup(
    engine: sa.Engine, runner: ActionRunner
) -> None:
    with engine.begin() as connection:
        outbox.enqueue(connection, [log_run(3)])
    runner.drain()
    steps: list[int] = []

    def step() -> int:
        steps.append(runner.run_once())
        return steps[-1]

    with running(step, wakeup=Wakeup(engine, outbox.ACTIONS_CHANNEL)):
        assert wait_for(lambda: steps == [0])
        with engine.begin() as connection:
            assert outbox.enqueue(connection, [log_run(3)]) == 0  # the same run: a duplicate
        time.sleep(0.5)
    assert steps == [0]


def test_a_failing_step_is_logged_and_the_loop_goes_on(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def step() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database blip")
        return 0

    with running(step, wakeup=Wakeup(engine, outbox.ACTIONS_CHANNEL), error_seconds=0.05):
        assert wait_for(lambda: len(calls) >= 2)
    errors = [r for r in caplog.records if r.getMessage() == "loop_error"]
    assert len(errors) == 1
    assert getattr(errors[0], "error", None) == "RuntimeError"


def test_a_loop_waiting_for_a_notify_stops_within_seconds(engine: sa.Engine) -> None:
    with running(lambda: 0, wakeup=Wakeup(engine, outbox.ACTIONS_CHANNEL)) as stop:
        time.sleep(0.2)
        started = time.monotonic()
        stop.set()
    assert time.monotonic() - started < 5


def test_without_a_wakeup_the_loop_waits_out_its_interval(engine: sa.Engine) -> None:
    steps: list[int] = []

    def step() -> int:
        steps.append(0)
        return 0

    with running(step, wakeup=None, idle_seconds=0.05):
        assert wait_for(lambda: len(steps) >= 3)


def missing_table_step(engine: sa.Engine, calls: list[int], *, failures: int) -> Callable[[], int]:
    """A step that reads a table which does not exist (an unmigrated database) `failures`
    times, then finds nothing to do."""

    def step() -> int:
        calls.append(1)
        if len(calls) <= failures:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1 FROM inbox_events_not_migrated"))
        return 0

    return step


def test_an_unmigrated_schema_is_said_once_and_the_loop_waits_for_the_migration(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    step = missing_table_step(engine, calls, failures=5)

    with running(step, wakeup=None, idle_seconds=0.02, error_seconds=0.02):
        assert wait_for(lambda: len(calls) >= 8)

    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("schema_not_migrated") == 1
    assert "loop_error" not in messages
    (said,) = [r for r in caplog.records if r.getMessage() == "schema_not_migrated"]
    assert getattr(said, "hint", None) == "schema not migrated: run `hubspot-webhooks migrate`"


def test_several_loops_on_an_unmigrated_schema_say_it_once_between_them(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    first: list[int] = []
    second: list[int] = []

    with (
        running(missing_table_step(engine, first, failures=1000), wakeup=None, error_seconds=0.02),
        running(missing_table_step(engine, second, failures=1000), wakeup=None, error_seconds=0.02),
    ):
        assert wait_for(lambda: len(first) >= 5 and len(second) >= 5)

    assert [r.getMessage() for r in caplog.records].count("schema_not_migrated") == 1


def test_other_programming_errors_are_still_logged_each_time(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def step() -> int:
        calls.append(1)
        with engine.connect() as connection:
            connection.execute(sa.text("SELEC 1"))  # a syntax error, not a missing table
        return 0

    with running(step, wakeup=None, error_seconds=0.02):
        assert wait_for(lambda: len(calls) >= 3)

    messages = [r.getMessage() for r in caplog.records]
    assert "schema_not_migrated" not in messages
    assert messages.count("loop_error") >= 2
