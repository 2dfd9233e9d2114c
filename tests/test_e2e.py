"""End to end: the real `serve` process on a free port, driven by the real `send` command.

Both run as subprocesses, as a user runs them; the rows are read back from Postgres.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
import sqlalchemy as sa

from tests.factories import CLIENT_SECRET
from tests.support import free_port, run_cli

STARTUP_SECONDS = 30


def base_env(tmp_path: Path) -> dict[str, str]:
    """A minimal environment: nothing from the developer's shell but PATH, HOME and TMPDIR."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env["DATA_DIR"] = str(tmp_path / "data")
    return env


@dataclass
class Server:
    """A running `hubspot-webhooks serve` subprocess."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path
    log_file: IO[bytes]

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        self.log_file.flush()
        return self.log.read_text(errors="replace")

    def stop_cleanly(self) -> None:
        """SIGTERM, as a platform stops a service; fail unless it shuts down gracefully."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=15)
        output = self.output()
        # uvicorn (>= 0.29) re-raises the captured SIGTERM after its graceful shutdown, so the
        # process ends "killed by SIGTERM", the status platforms expect after asking it to stop.
        assert code in (0, -signal.SIGTERM), output
        assert "Application shutdown complete." in output
        assert "Traceback" not in output


@pytest.fixture
def server(clean_db: str, tmp_path: Path) -> Iterator[Server]:
    """`python -m service serve` on a free port of 127.0.0.1, ready (GET /readyz is 200)."""
    port = free_port()
    env = {
        **base_env(tmp_path),
        "DATABASE_URL": clean_db,
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "ALLOWED_HOSTS": "127.0.0.1",  # the URL is rebuilt from the Host header it sends
        "LOG_LEVEL": "INFO",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        running = Server(process, f"http://127.0.0.1:{port}", log, log_file)
        try:
            _wait_until_ready(running)
            yield running
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=15)


def _wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"serve exited with {server.process.returncode} before it was ready:\n"
                f"{server.output()}"
            )
        try:
            response = httpx.get(f"{server.url}/readyz", timeout=1)
        except httpx.TransportError as exc:
            last = type(exc).__name__
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        time.sleep(0.1)
    pytest.fail(f"serve not ready after {STARTUP_SECONDS} s ({last}):\n{server.output()}")


def send(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service send ARGS` with no secret in its environment (only --secret)."""
    return run_cli("send", *args, env={"DATA_DIR": str(tmp_path / "data")}, timeout=120)


def stored_rows(engine: sa.Engine) -> list[sa.RowMapping]:
    """Every inbox row, oldest first."""
    with engine.connect() as connection:
        result = connection.execute(
            sa.text(
                "SELECT portal_id, event_id, object_id, occurred_at, subscription_type,"
                " signature_version, payload FROM inbox_events ORDER BY id"
            )
        )
        return [row._mapping for row in result]


def test_one_event_is_stored_and_the_same_batch_again_stores_nothing(
    server: Server, engine: sa.Engine, tmp_path: Path
) -> None:
    url = f"{server.url}/webhooks/hubspot"
    saved = tmp_path / "one.json"
    first = send(
        tmp_path, "contact.creation", "--url", url, "--secret", CLIENT_SECRET, "--save", str(saved)
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "sent 1 events in 1 requests: stored 1, duplicates 0" in first.stdout
    assert CLIENT_SECRET not in first.stdout + first.stderr

    [event] = json.loads(saved.read_text())
    [row] = stored_rows(engine)
    assert row["payload"] == event
    assert row["signature_version"] == "v3"
    assert row["subscription_type"] == "contact.creation"
    assert (row["portal_id"], row["event_id"], row["object_id"], row["occurred_at"]) == (
        event["portalId"],
        event["eventId"],
        event["objectId"],
        event["occurredAt"],
    )

    again = send(tmp_path, "--file", str(saved), "--url", url, "--secret", CLIENT_SECRET)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sent 1 events in 1 requests: stored 0, duplicates 1 (already stored)" in again.stdout
    assert "nothing new stored" in again.stdout
    assert len(stored_rows(engine)) == 1

    # A new run draws new eventIds: stored again, as a new event.
    fresh = send(tmp_path, "contact.creation", "--url", url, "--secret", CLIENT_SECRET)
    assert "stored 1, duplicates 0" in fresh.stdout
    assert len(stored_rows(engine)) == 2

    server.stop_cleanly()


def test_a_large_concurrent_batch_with_duplicates_is_stored_exactly_once(
    server: Server, engine: sa.Engine, tmp_path: Path
) -> None:
    url = f"{server.url}/webhooks/hubspot?source=e2e"
    saved = tmp_path / "batch.json"
    result = send(
        tmp_path,
        "deal.propertyChange",
        "--property",
        "dealstage",
        "--value",
        "closedwon",
        "--count",
        "250",
        "--batch",
        "100",
        "--duplicate-rate",
        "0.2",
        "--concurrency",
        "4",
        "--save",
        str(saved),
        "--url",
        url,
        "--secret",
        CLIENT_SECRET,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 250 events in 3 requests: stored 200, duplicates 50 (already stored)" in (
        result.stdout
    )
    assert result.stdout.count(" 200 in ") == 3

    saved_events = json.loads(saved.read_text())
    rows = stored_rows(engine)
    assert len(rows) == 200
    assert {r["event_id"] for r in rows} == {e["eventId"] for e in saved_events}
    assert {r["signature_version"] for r in rows} == {"v3"}
    assert {r["subscription_type"] for r in rows} == {"deal.propertyChange"}
    by_id = {e["eventId"]: e for e in saved_events}
    for row in rows:
        assert row["payload"] == by_id[row["event_id"]]
        assert row["payload"]["propertyName"] == "dealstage"
        assert row["payload"]["propertyValue"] == "closedwon"

    again = send(
        tmp_path, "--file", str(saved), "--url", url, "--secret", CLIENT_SECRET, "--batch", "100"
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sent 200 events in 2 requests: stored 0, duplicates 200 (already stored)" in (
        again.stdout
    )
    assert len(stored_rows(engine)) == 200

    server.stop_cleanly()


def test_a_wrong_secret_is_rejected_and_stores_nothing(
    server: Server, engine: sa.Engine, tmp_path: Path
) -> None:
    url = f"{server.url}/webhooks/hubspot"
    result = send(tmp_path, "contact.creation", "--url", url, "--secret", "not-the-secret")
    assert result.returncode == 1
    assert "[1/1] 401 in " in result.stdout
    assert "bad_signature" in result.stdout
    assert stored_rows(engine) == []
    server.stop_cleanly()
