"""The act stage's wake-up latency: from an action run's commit to the run being done.

The apply stage enqueues action runs in its transaction and NOTIFYs the outbox channel on
commit. This measures how long a run then waits before the act stage executes it, in one run,
for two loops over the same database:

- `poll`: the act loop as it was before it listened (wake every second, `idle_seconds=1.0`);
- `listen`: the loop the worker runs now (LISTEN on `outbox.ACTIONS_CHANNEL`, 1 s poll fallback).

Each of `--runs` runs is enqueued alone (a `log` action, so no network is involved), at a random
moment (0-1 s after the previous one finished, so arrivals are not in step with the poll), and
its latency is `done_at` (set by the act stage's settle transaction) minus the wall time right
after the enqueuing commit. Prints p50, p90 and max per loop, and the ratio.

    .venv/bin/python bench/act_wakeup.py [--runs 40] [--database-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from scratch import postgres_server, progress, scratch_database

from service import db, outbox
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.loop import Wakeup, run_loop

DATABASE = "hubspot_webhooks_bench_act_wakeup"


def measure(engine: sa.Engine, settings: Settings, *, listen: bool, runs: int) -> list[float]:
    """Latencies in ms of `runs` log actions, each enqueued alone, with the act loop running."""
    runner = ActionRunner(engine, [], settings)
    stop = threading.Event()
    wakeup = Wakeup(engine, outbox.ACTIONS_CHANNEL) if listen else None
    loop = threading.Thread(
        target=run_loop,
        args=("act", runner.run_once, stop),
        kwargs={"idle_seconds": 1.0, "wakeup": wakeup},
        daemon=True,
    )
    loop.start()
    time.sleep(0.2)  # the loop has started (and LISTENs) before the first run
    latencies: list[float] = []
    rng = random.Random(7)
    try:
        for index in range(runs):
            time.sleep(rng.uniform(0.0, 1.0))
            with engine.begin() as connection:
                outbox.enqueue(connection, [_run(index, listen)])
            committed = time.time()
            latencies.append(_wait_done(engine, index, listen) - committed)
    finally:
        stop.set()
        loop.join(10)
        runner.close()
    return [seconds * 1000 for seconds in latencies]


def _run(index: int, listen: bool) -> dict[str, Any]:
    return {
        "portal_id": 1,
        "inbox_id": index + (1_000_000 if listen else 0),
        "rule": "bench",
        "action_index": 0,
        "event_occurred_at": int(time.time() * 1000),
        "action": "log",
        "object_type": "contacts",
        "object_id": index,
        "payload": {"action": "log", "message": "bench"},
    }


def _wait_done(engine: sa.Engine, index: int, listen: bool) -> float:
    """The run's done_at as epoch seconds, once it is done (checked every 20 ms)."""
    inbox_id = index + (1_000_000 if listen else 0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            done = connection.execute(
                sa.text(
                    "SELECT extract(epoch FROM done_at) FROM action_runs"
                    " WHERE inbox_id = :i AND status = 'done'"
                ),
                {"i": inbox_id},
            ).scalar()
        if done is not None:
            return float(done)
        time.sleep(0.02)
    raise RuntimeError(f"run {index} was not done within 30 s")


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": statistics.median(ordered),
        "p90_ms": ordered[int(len(ordered) * 0.9) - 1],
        "max_ms": ordered[-1],
    }


def main() -> None:
    """Measure both loops and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per loop (default 40)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with postgres_server(args.database_url, "act") as (server, where):
        progress(f"database: {where}")
        with scratch_database(server, DATABASE) as url:
            engine = db.create_engine(url, pool_size=3)
            settings = Settings.from_env({"DATABASE_URL": url})
            results = {}
            for name, listen in (("poll", False), ("listen", True)):
                progress(f"{name}: {args.runs} runs")
                results[name] = _summary(measure(engine, settings, listen=listen, runs=args.runs))
            engine.dispose()
    print(f"act stage wake-up latency, {args.runs} runs each (commit -> done)")
    print(f"{'loop':<8} {'p50 ms':>9} {'p90 ms':>9} {'max ms':>9}")
    for name, figures in results.items():
        print(
            f"{name:<8} {figures['p50_ms']:>9.1f} {figures['p90_ms']:>9.1f}"
            f" {figures['max_ms']:>9.1f}"
        )
    ratio = results["poll"]["p50_ms"] / max(results["listen"]["p50_ms"], 0.001)
    print(f"listen p50 is {ratio:.0f}x faster than the 1 s poll it replaced")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
