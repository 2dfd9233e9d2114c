"""Postgres stopped and started again under load (issue 10), on a cluster of the test's own:
the real `serve` and `worker` run throughout, 8 senders post signed HubSpot-shaped batches and
retry whatever was not answered 200, as HubSpot does.

While Postgres is down every delivery is answered 503 inside HubSpot's 5 s (the request's
deadline, REQUEST_DEADLINE, is 3.5 s); once it is back, deliveries are acked again without
restarting either process, and every acked event is stored and applied. The figures (answer
times while down, time to recover) are logged (`postgres_restart_figures`) and recorded as the
test's properties (--junitxml).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from service import db
from service.devtools.delivery import HUBSPOT_RESPONSE_SECONDS
from service.settings import WEBHOOK_PATH
from tests.reliability.harness import (
    Cluster,
    Process,
    Senders,
    percentile,
    running,
    serve,
    service_env,
    start_ready,
)
from tests.support import free_port

log = logging.getLogger(__name__)

LOAD_SECONDS = 1.5  # of load before the stop, and after recovery
DOWN_SECONDS = 8.0  # two deadlines and more: most requests meanwhile wait theirs out
APPLY_SECONDS = 60


def unapplied(engine: sa.Engine, event_ids: set[int]) -> dict[str, int]:
    """How many of these events are missing from the inbox or not applied yet, by status."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT status, count(*) FROM inbox_events WHERE event_id = ANY(:ids)"
                " GROUP BY status"
            ),
            {"ids": list(event_ids)},
        ).all()
    by_status = {str(status): int(n) for status, n in rows}
    missing = len(event_ids) - sum(by_status.values())
    left = {s: n for s, n in by_status.items() if s not in ("done", "ignored")}
    return {"missing": missing, **left} if missing else left


def test_while_postgres_is_down_deliveries_get_503_in_time_and_nothing_acked_is_lost(
    cluster: Cluster, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(cluster.url, tmp_path / "data", base, WORKER_POLL_SECONDS="1")
    web = serve(port, env, tmp_path / "serve.log")
    worker = Process(["worker"], env, tmp_path / "worker.log")
    with running(web, worker):
        start_ready(web, base)
        worker.start()
        with Senders(base + WEBHOOK_PATH) as senders:
            senders.wait_for_oks(16, since=time.monotonic())
            time.sleep(LOAD_SECONDS)
            cluster.stop()
            down = time.monotonic()
            time.sleep(DOWN_SECONDS)
            restarting = time.monotonic()
            cluster.start()
            up = time.monotonic()
            recovered = senders.wait_for_oks(8, since=up)
            time.sleep(LOAD_SECONDS)
        assert web.running, web.output()
        assert worker.running, worker.output()
        engine = db.create_engine(cluster.url, pool_size=1)
        try:
            waited = time.monotonic() + APPLY_SECONDS
            while left := unapplied(engine, senders.acked):
                assert time.monotonic() < waited, f"not applied after {APPLY_SECONDS} s: {left}"
                time.sleep(0.5)
        finally:
            engine.dispose()
    assert web.starts == worker.starts == 1  # neither was restarted

    statuses = Counter(a.status for a in senders.answers)
    while_down = senders.answered_between(down, restarting)
    down_seconds = [a.seconds for a in while_down]
    figures = {
        "requests": len(senders.answers),
        "answered_200": statuses[200],
        "answered_503": statuses[503],
        "events_acked": len(senders.acked),
        "answered_while_down": len(while_down),
        "down_answer_max_s": round(max(down_seconds), 3),
        "down_answer_p99_s": round(percentile(down_seconds, 0.99), 3),
        "down_answer_p50_s": round(percentile(down_seconds, 0.5), 3),
        "first_200_after_restart_s": round(recovered - up, 3),
        "slowest_answer_s": round(max(a.seconds for a in senders.answers), 3),
    }
    for name, value in figures.items():
        record_property(name, value)
    log.info("postgres_restart_figures %s", " ".join(f"{k}={v}" for k, v in figures.items()))

    assert set(statuses) <= {200, 503}, statuses  # always an answer, never a 4xx or 500
    assert all(a.seconds < HUBSPOT_RESPONSE_SECONDS for a in senders.answers)
    assert len(while_down) >= 8
    assert {a.status for a in while_down} == {503}  # never a 200 while down
    assert "Traceback" not in web.output()
