"""service.hubspot.ratelimit: one sliding-window budget per portal and bucket, kept in Postgres.

Waits go through the limiter's injectable `sleep`: most tests record the pause it asks for and
stop there; the few that let time pass use windows of a few hundred milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from service import db
from service.hubspot.ratelimit import SAFETY_MARGIN_MS, Budget, RateLimiter
from tests.factories import PORTAL
from tests.support import DbClock

OTHER_PORTAL = 99
# HubSpot's lowest tier (HUBSPOT.md §4): 100 calls per 10 s; search 5 per second, kept at 4.
BUDGETS = {"api": Budget(100, 10_000), "search": Budget(4, 1_000)}


class Waited(Exception):
    """The limiter asked to sleep and the test stopped it there."""


class Sleeps:
    """A `sleep` that records each pause; it sleeps for real only when asked to."""

    def __init__(self, *, real: bool = False) -> None:
        self.pauses: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if not self.real:
            raise Waited
        time.sleep(seconds)


def wait_asked(limiter: RateLimiter, portal_id: int, bucket: str) -> float:
    """The pause the limiter asks for before the next call may start (0 when none)."""
    assert isinstance(limiter.sleep, Sleeps)
    try:
        limiter.acquire(portal_id, bucket)
    except Waited:
        return limiter.sleep.pauses[-1]
    return 0.0


@pytest.fixture
def other_engine(clean_db: str) -> Iterator[sa.Engine]:
    """A second engine on the test database: another worker process's connections."""
    engine = db.create_engine(clean_db, pool_size=2, statement_timeout_ms=5000)
    yield engine
    engine.dispose()


def limiter(engine: sa.Engine, budgets: dict[str, Budget], *, real: bool = False) -> RateLimiter:
    return RateLimiter(engine, budgets, sleep=Sleeps(real=real))


def stored(engine: sa.Engine, portal_id: int, bucket: str) -> tuple[int, int, int]:
    """(max_calls, window_ms, calls in the window) as the database holds them."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT max_calls, window_ms, cardinality(calls) AS n FROM rate_limits"
                " WHERE portal_id = :p AND bucket = :b"
            ),
            {"p": portal_id, "b": bucket},
        ).one()
    return row.max_calls, row.window_ms, row.n


def test_calls_within_the_budget_start_without_waiting(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, {"api": Budget(3, 10_000)})
    assert [calls.acquire(PORTAL, "api") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert stored(engine, PORTAL, "api") == (3, 10_000, 3)


def test_call_past_the_budget_waits_until_the_oldest_call_leaves_the_window(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, {"api": Budget(2, 10_000)})
    calls.acquire(PORTAL, "api")
    calls.acquire(PORTAL, "api")
    pause = wait_asked(calls, PORTAL, "api")
    window = (10_000 + SAFETY_MARGIN_MS) / 1000
    assert window - 2 < pause <= window + 0.001
    # The refused call was not counted.
    assert stored(engine, PORTAL, "api")[2] == 2


def test_two_limiters_on_one_database_share_the_budget(
    clean_db: str, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    first = limiter(engine, {"api": Budget(3, 10_000)})
    second = limiter(other_engine, {"api": Budget(3, 10_000)})
    first.acquire(PORTAL, "api")
    second.acquire(PORTAL, "api")
    first.acquire(PORTAL, "api")
    assert wait_asked(second, PORTAL, "api") > 5
    assert wait_asked(first, PORTAL, "api") > 5


def test_the_budget_is_shared_per_portal_and_bucket_through_postgres(
    clean_db: str, engine: sa.Engine
) -> None:
    budgets = {"api": Budget(3, 10_000), "search": Budget(2, 1_000)}
    one, two = DbClock(engine), DbClock(engine)
    first, second = RateLimiter(engine, budgets, sleep=one), RateLimiter(engine, budgets, sleep=two)

    waited = [
        first.acquire(PORTAL, "api"),
        second.acquire(PORTAL, "api"),
        first.acquire(PORTAL, "api"),
        second.acquire(OTHER_PORTAL, "api"),
        first.acquire(PORTAL, "search"),
        second.acquire(PORTAL, "search"),
    ]
    assert waited == [0.0] * 6
    assert one.pauses == two.pauses == []

    # The third search call waits about a second (the search window); the clock moves on.
    assert second.acquire(PORTAL, "search") > 0
    [search_pause] = two.pauses
    assert 0.5 <= search_pause <= 1 + SAFETY_MARGIN_MS / 1000 + 0.01
    # Three API calls were made in the same (fake) second: the fourth waits out the window.
    assert first.acquire(PORTAL, "api") > 0
    [api_pause] = one.pauses
    assert 7.5 <= api_pause <= 10 + SAFETY_MARGIN_MS / 1000 + 0.01


def test_concurrent_limiters_never_start_more_than_the_budget_in_a_window(
    clean_db: str, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    budget = Budget(3, 100)
    window = (budget.window_ms + SAFETY_MARGIN_MS) / 1000
    started: list[float] = []
    lock = threading.Lock()

    def worker(calls: RateLimiter) -> None:
        for _ in range(3):
            calls.acquire(PORTAL, "api")
            with lock:
                started.append(time.monotonic())

    threads = [
        threading.Thread(target=worker, args=(limiter(e, {"api": budget}, real=True),))
        for e in (engine, other_engine)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(started) == 6
    started.sort()
    # The 4th call can only start once the 1st has left the window (less our clock's jitter).
    assert started[3] - started[0] >= window - 0.1


def test_portals_have_separate_budgets(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, {"api": Budget(1, 10_000)})
    calls.acquire(PORTAL, "api")
    assert wait_asked(calls, PORTAL, "api") > 5
    assert wait_asked(calls, OTHER_PORTAL, "api") == 0.0


def test_search_has_its_own_per_second_bucket(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, BUDGETS)
    for _ in range(4):
        assert calls.acquire(PORTAL, "search") == 0.0
    pause = wait_asked(calls, PORTAL, "search")
    assert 0.5 < pause <= (1_000 + SAFETY_MARGIN_MS) / 1000 + 0.001
    # The search bucket being full leaves the general API budget alone.
    assert wait_asked(calls, PORTAL, "api") == 0.0
    assert stored(engine, PORTAL, "search") == (4, 1_000, 4)
    assert stored(engine, PORTAL, "api") == (100, 10_000, 1)


def test_waiting_caller_starts_once_the_window_has_passed(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, {"api": Budget(1, 50)}, real=True)
    assert calls.acquire(PORTAL, "api") == 0.0
    began = time.monotonic()
    waited = calls.acquire(PORTAL, "api")
    elapsed = time.monotonic() - began
    window = (50 + SAFETY_MARGIN_MS) / 1000
    assert isinstance(calls.sleep, Sleeps)
    assert calls.sleep.pauses
    assert waited == pytest.approx(sum(calls.sleep.pauses))
    assert window - 0.05 <= waited <= window + 0.1
    assert elapsed >= waited
    assert stored(engine, PORTAL, "api")[2] == 1


def test_stricter_advertised_limit_is_adopted(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, {"api": Budget(10, 10_000)})
    calls.acquire(PORTAL, "api")
    # X-HubSpot-RateLimit-Max: 2, X-HubSpot-RateLimit-Interval-Milliseconds: 10000
    calls.observe(PORTAL, "api", 2, 10_000)
    assert stored(engine, PORTAL, "api")[:2] == (2, 10_000)
    assert calls.acquire(PORTAL, "api") == 0.0
    assert wait_asked(calls, PORTAL, "api") > 5


def test_longer_advertised_window_is_adopted(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, {"api": Budget(1, 1_000)})
    calls.acquire(PORTAL, "api")
    calls.observe(PORTAL, "api", 1, 20_000)
    assert stored(engine, PORTAL, "api")[:2] == (1, 20_000)
    assert wait_asked(calls, PORTAL, "api") > 19


def test_looser_advertised_limit_never_raises_the_configured_budget(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, {"api": Budget(2, 10_000)})
    calls.acquire(PORTAL, "api")
    # A higher tier's headers: 190 calls per 10 s, or the same calls over a shorter window.
    calls.observe(PORTAL, "api", 190, 1_000)
    assert stored(engine, PORTAL, "api")[:2] == (2, 10_000)
    calls.acquire(PORTAL, "api")
    assert wait_asked(calls, PORTAL, "api") > 5


def test_advertised_limit_is_shared_with_other_limiters(
    clean_db: str, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    first = limiter(engine, {"api": Budget(10, 10_000)})
    second = limiter(other_engine, {"api": Budget(10, 10_000)})
    first.acquire(PORTAL, "api")
    first.observe(PORTAL, "api", 1, 10_000)
    assert wait_asked(second, PORTAL, "api") > 5


def test_429_blocks_the_portal_for_retry_after(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, BUDGETS)
    calls.acquire(PORTAL, "api")
    calls.acquire(OTHER_PORTAL, "api")
    calls.block(PORTAL, "api", 30)
    assert 29 < wait_asked(calls, PORTAL, "api") <= 30
    assert wait_asked(calls, OTHER_PORTAL, "api") == 0.0
    assert wait_asked(calls, PORTAL, "search") == 0.0


def test_block_is_seen_by_every_limiter(
    clean_db: str, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    first = limiter(engine, BUDGETS)
    second = limiter(other_engine, BUDGETS)
    first.acquire(PORTAL, "search")
    first.block(PORTAL, "search", 10)
    assert 9 < wait_asked(second, PORTAL, "search") <= 10


def test_shorter_retry_after_does_not_shorten_a_longer_block(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, BUDGETS)
    calls.acquire(PORTAL, "api")
    calls.block(PORTAL, "api", 60)
    calls.block(PORTAL, "api", 1)
    assert wait_asked(calls, PORTAL, "api") > 59


def test_blocked_caller_starts_when_the_block_ends(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, BUDGETS, real=True)
    calls.acquire(PORTAL, "api")
    calls.block(PORTAL, "api", 0.2)
    waited = calls.acquire(PORTAL, "api")
    assert 0.1 < waited <= 0.3
    assert stored(engine, PORTAL, "api")[2] == 2


def test_an_advertised_max_of_zero_is_ignored(clean_db: str, engine: sa.Engine) -> None:
    calls = limiter(engine, {"api": Budget(3, 10_000)})
    calls.acquire(PORTAL, "api")
    # X-HubSpot-RateLimit-Max: 0 (or a window of 0) is no limit anyone could keep.
    calls.observe(PORTAL, "api", 0, 10_000)
    assert stored(engine, PORTAL, "api")[:2] == (3, 10_000)
    assert [calls.acquire(PORTAL, "api") for _ in range(2)] == [0.0, 0.0]
    assert wait_asked(calls, PORTAL, "api") > 5
    calls.observe(PORTAL, "api", 3, 0)
    assert stored(engine, PORTAL, "api")[:2] == (3, 10_000)


def test_a_stored_max_of_zero_still_lets_one_call_through_per_window(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, {"api": Budget(3, 10_000)})
    calls.acquire(PORTAL, "api")
    # A row written before zero was refused: the limiter neither crashes nor stops for good.
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE rate_limits SET max_calls = 0, calls = '{}'"))
    assert calls.acquire(PORTAL, "api") == 0.0
    assert wait_asked(calls, PORTAL, "api") > 5


def test_a_429_before_any_call_of_the_bucket_still_blocks_it(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, BUDGETS)
    calls.block(PORTAL, "search", 30)
    assert 29 < wait_asked(calls, PORTAL, "search") <= 30
    assert wait_asked(calls, PORTAL, "api") == 0.0


def test_an_advertised_limit_before_any_call_of_the_bucket_is_kept(
    clean_db: str, engine: sa.Engine
) -> None:
    calls = limiter(engine, {"api": Budget(10, 10_000)})
    calls.observe(PORTAL, "api", 1, 10_000)
    assert stored(engine, PORTAL, "api")[:2] == (1, 10_000)
    assert calls.acquire(PORTAL, "api") == 0.0
    assert wait_asked(calls, PORTAL, "api") > 5


def test_an_advertised_limit_over_another_window_is_enforced_beside_the_budget(
    clean_db: str, engine: sa.Engine
) -> None:
    # Configured 15 per 10 s; HubSpot advertises 10 per second. Each alone allows 10 calls
    # now; both together must not be squeezed into "10 per 10 s".
    clock = DbClock(engine)
    calls = RateLimiter(engine, {"api": Budget(15, 10_000)}, sleep=clock)
    calls.acquire(PORTAL, "api")
    calls.observe(PORTAL, "api", 10, 1_000)
    assert [calls.acquire(PORTAL, "api") for _ in range(9)] == [0.0] * 9
    # The 11th waits for HubSpot's one-second window, not for ten seconds.
    assert 0.5 < calls.acquire(PORTAL, "api") <= (1_000 + SAFETY_MARGIN_MS) / 1000 + 0.01
    # Four more fit the configured 15 per 10 s; the 16th waits for it.
    assert [calls.acquire(PORTAL, "api") for _ in range(4)] == [0.0] * 4
    assert 7.5 < calls.acquire(PORTAL, "api") <= (10_000 + SAFETY_MARGIN_MS) / 1000
