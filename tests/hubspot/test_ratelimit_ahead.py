"""RateLimiter.reserve_ahead: a slot taken while the current call is in flight, used by the
next `acquire` without a transaction, counted by every limiter, handed back when unused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from service import db
from service.hubspot.ratelimit import HELD_MS, Budget, RateLimiter
from tests.factories import PORTAL
from tests.support import DbClock, statements_run


@pytest.fixture
def other_engine(clean_db: str) -> Iterator[sa.Engine]:
    """A second engine on the test database: another worker process's connections."""
    engine = db.create_engine(clean_db, pool_size=2)
    yield engine
    engine.dispose()


class Waited(Exception):
    """The limiter asked to sleep and the test stopped it there."""


def refuse_to_wait(seconds: float) -> None:
    raise Waited(seconds)


def limiter(engine: sa.Engine, budget: Budget) -> RateLimiter:
    return RateLimiter(engine, {"api": budget}, sleep=refuse_to_wait)


def calls_stored(engine: sa.Engine) -> list[int]:
    with engine.connect() as connection:
        calls = connection.execute(
            sa.text("SELECT calls FROM rate_limits WHERE portal_id = :p AND bucket = 'api'"),
            {"p": PORTAL},
        ).scalar_one()
    return [int(t) for t in calls]


def test_a_slot_reserved_ahead_starts_the_next_call_without_a_transaction(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, Budget(100, 10_000))
    assert calls.reserve_ahead(PORTAL, "api") is True
    [held] = calls_stored(engine)

    with statements_run(engine, "") as statements:
        assert calls.acquire(PORTAL, "api") == 0.0
    assert statements == []
    assert calls_stored(engine) == [held]  # counted once, when it was taken


def test_a_slot_held_ahead_counts_for_every_other_limiter(
    clean_db: str, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    budget = Budget(3, 10_000)  # room kept: 2, so one slot may be taken ahead
    ours, theirs = limiter(engine, budget), limiter(other_engine, budget)
    assert ours.reserve_ahead(PORTAL, "api") is True
    assert ours.reserve_ahead(PORTAL, "api") is False  # that would leave less than the room

    assert [theirs.acquire(PORTAL, "api") for _ in range(2)] == [0.0, 0.0]
    with pytest.raises(Waited):  # the third waits: the slot held ahead is one of the three
        theirs.acquire(PORTAL, "api")


def test_a_slot_held_too_long_is_handed_back_by_the_next_reservation(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, Budget(100, 10_000))
    calls.reserve_ahead(PORTAL, "api")
    [held] = calls_stored(engine)
    time.sleep(HELD_MS / 1000 + 0.05)

    assert calls.acquire(PORTAL, "api") == 0.0

    [now] = calls_stored(engine)  # the new call's slot only: the old one is gone
    assert now > held


def test_hand_back_returns_every_unused_slot(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, Budget(100, 10_000))
    calls.acquire(PORTAL, "api")
    [used] = calls_stored(engine)
    assert calls.reserve_ahead(PORTAL, "api") is True
    assert calls.reserve_ahead(PORTAL, "api") is True
    assert len(calls_stored(engine)) == 3

    calls.hand_back()

    assert calls_stored(engine) == [used]


def test_a_slot_taken_before_a_429_is_not_used(clean_db: str, engine: sa.Engine) -> None:
    clock = DbClock(engine)
    calls = RateLimiter(engine, {"api": Budget(100, 10_000)}, sleep=clock)
    assert calls.reserve_ahead(PORTAL, "api") is True
    calls.block(PORTAL, "api", 5)

    calls.acquire(PORTAL, "api")

    assert 4 < clock.pauses[0] <= 5  # the block is waited out, not skipped
    assert len(calls_stored(engine)) == 1  # and the slot taken before it was handed back
