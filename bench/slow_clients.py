"""Slow clients: what stalled connections cost the real `serve` process, and how long they last.

Issue 10, finding 3: connections that send part of a request and then trickle a byte at a time
used to stay open for ever, until the open-files limit was reached and legitimate deliveries
were reset. For each `--stalled` count this starts `python -m service serve` on a scratch
database with HTTP_HEADER_TIMEOUT and HTTP_BODY_TIMEOUT set to `--timeout`, opens that many
connections (half stopping mid-headers, half mid-body), trickles a byte into each every second,
sends one signed delivery while they are all open, and waits for the server to close them. It
prints how many were held, the delivery's status and answer time (goal: 200 within 1 s), the
time from the last stall opened to the last one closed (goal: about the timeout), how many were
answered 408, and the server's resident memory before and with them (per connection). The
scenario is tests/servers.py's `hold_stalled`, the one tests/reliability/test_slow_clients.py
asserts on.

    .venv/bin/python bench/slow_clients.py [--stalled 2000 10000] [--timeout 3]
                                           [--database-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
from scratch import postgres_server, progress, scratch_database

from service.settings import WEBHOOK_PATH
from tests.factories import numbered_event, v3_headers
from tests.servers import allow_open_files, hold_stalled, serve_env, serve_process

DATABASE = "hubspot_webhooks_bench_slow_clients"
ANSWER_GOAL_SECONDS = 1.0


def resident_kib(pid: int) -> int:
    """The process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


def measure(url: str, stalled: int, timeout: float, pid: int) -> dict[str, Any]:
    """One run of `hold_stalled` against the server at `url`, with its memory."""
    body = json.dumps([numbered_event(stalled)]).encode()
    headers = v3_headers(body, uri=url + WEBHOOK_PATH)
    before = resident_kib(pid)
    peak = [before]

    def deliver() -> httpx2.Response:
        peak[0] = resident_kib(pid)  # every stalled connection is open now
        return httpx2.post(url + WEBHOOK_PATH, content=body, headers=headers, timeout=10)

    seen = hold_stalled(url, count=stalled, timeout=timeout, deliver=deliver)
    return {
        "stalled": stalled,
        "held": seen.held,
        "status": seen.status,
        "answered_in_s": round(seen.answered_in, 4),
        "closed_in_s": None if seen.closed_in is None else round(seen.closed_in, 2),
        "still_open": seen.still_open,
        "answered_408": seen.answered_408,
        "rss_before_kib": before,
        "rss_held_kib": peak[0],
        "kib_per_connection": round((peak[0] - before) / stalled, 2),
    }


def main() -> None:
    """Start `serve` once per count, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--timeout", type=float, default=3.0, help="read timeouts, seconds (3)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    allow_open_files(max(args.stalled) + 500)
    runs: list[dict[str, Any]] = []
    with (
        postgres_server(args.database_url, "slow-clients") as (server, where),
        scratch_database(server, DATABASE) as url,
        tempfile.TemporaryDirectory(prefix="bench-slow-clients-") as tmp,
    ):
        progress(f"database: {where}")
        for stalled in args.stalled:
            env = serve_env(
                url,
                Path(tmp) / "data",
                HTTP_HEADER_TIMEOUT=str(args.timeout),
                HTTP_BODY_TIMEOUT=str(args.timeout),
            )
            with serve_process(env, Path(tmp) / f"serve-{stalled}.log") as serving:
                progress(f"{stalled} stalled connections")
                time.sleep(0.5)  # let the process settle before reading its memory
                runs.append(measure(serving.url, stalled, args.timeout, serving.process.pid))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(f"slow clients, read timeouts {args.timeout:g} s, this process's ulimit -n {soft}")
    for run in runs:
        verdict = (
            "PASS"
            if run["status"] == 200 and run["answered_in_s"] < ANSWER_GOAL_SECONDS
            else "MISS"
        )
        print(
            f"{run['stalled']:>6} stalled: held {run['held']}, delivery {run['status']} in"
            f" {run['answered_in_s'] * 1000:.1f} ms ({verdict}, goal 200 < 1 s); all closed"
            f" {run['closed_in_s']} s after the last opened ({run['answered_408']} answered 408,"
            f" {run['still_open']} left open); server RSS {run['rss_before_kib'] / 1024:.1f} ->"
            f" {run['rss_held_kib'] / 1024:.1f} MiB, {run['kib_per_connection']} KiB each"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
