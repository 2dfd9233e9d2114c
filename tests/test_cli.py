"""The hubspot-webhooks command as a user runs it: real subprocesses, real databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from service import cli, db, heartbeats
from tests.factories import CLIENT_SECRET, TOKEN_KEY, hs
from tests.support import (
    EXAMPLE_RULES,
    INVALID_RULES,
    ROOT,
    empty_database,
    free_port,
    invalid_rule_lines,
    run_cli,
    store_events,
    wait_until_answering,
)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty", "DATABASE_URL": "postgres://x@h/d"}, "PORT"),
        ({"DATABASE_URL": "mysql://root@localhost/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://x@h/d"}, "HUBSPOT_CLIENT_SECRET"),
        ({"HUBSPOT_CLIENT_SECRET": CLIENT_SECRET}, "DATABASE_URL"),
        (
            {
                "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
                "DATABASE_URL": "postgres://x@h/d",
                "WEBHOOK_PUBLIC_URL": "not a url",
            },
            "WEBHOOK_PUBLIC_URL",
        ),
        # Neither says which host this is: the Host header alone would decide what is signed.
        (
            {"HUBSPOT_CLIENT_SECRET": CLIENT_SECRET, "DATABASE_URL": "postgres://x@h/d"},
            "ALLOWED_HOSTS",
        ),
        (
            {
                "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
                "DATABASE_URL": "postgres://x@h/d",
                "WEBHOOK_PUBLIC_URL": "https://hooks.example/webhooks/hubspot",
                "HUBSPOT_CLIENT_ID": "client-id",
            },
            "TOKEN_ENCRYPTION_KEY",
        ),
        (
            {
                "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
                "DATABASE_URL": "postgres://x@h/d",
                "ALLOWED_HOSTS": "hooks.example",
                "HUBSPOT_CLIENT_ID": "client-id",
                "TOKEN_ENCRYPTION_KEY": TOKEN_KEY,
            },
            "OAUTH_REDIRECT_URL",
        ),
        (
            {"DATABASE_URL": "postgres://x@h/d", "TOKEN_ENCRYPTION_KEY": "not-a-key"},
            "TOKEN_ENCRYPTION_KEY",
        ),
        ({"DATABASE_URL": "postgres://x@h/d", "INBOX_RETENTION": "24h"}, "INBOX_RETENTION"),
    ],
)
def test_bad_configuration_stops_serve_with_one_line_and_exit_2(
    env: dict[str, str], variable: str
) -> None:
    result = run_cli("serve", "--port", "1", env=env)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]


def test_a_public_app_worker_refuses_to_start_without_a_token_key(tmp_path: Path) -> None:
    env = {"DATABASE_URL": "postgres://x@h/d", "HUBSPOT_CLIENT_ID": "client-id"}

    result = run_cli("worker", env={**env, "DATA_DIR": str(tmp_path)})

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "TOKEN_ENCRYPTION_KEY" in line
    assert "rotate-token-key --generate" in line


def test_migrate_command_upgrades_a_database_to_head(database_url: str, tmp_path: Path) -> None:
    name = "hubspot_webhooks_cli_migrate"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    plain = url.replace("postgresql+psycopg://", "postgres://")
    try:
        # Two deploys releasing at once: the advisory lock serialises them; both succeed.
        env = {"DATABASE_URL": plain, "DATA_DIR": str(tmp_path)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "service", "migrate"],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outcomes = [proc.communicate(timeout=60) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outcomes
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            version = connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
        engine.dispose()
        assert version == db.migration_head()
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_dev_runs_on_an_embedded_database_and_stops_it_cleanly(tmp_path: Path) -> None:
    # The README's first command: no DATABASE_URL, no secret; dev does the rest.
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "HUBSPOT_CLIENT_SECRET", "RULES_FILE")
    }
    env |= {"DATA_DIR": str(tmp_path / "data"), "PORT": str(port), "LOG_FORMAT": "json"}
    dev = subprocess.Popen(
        [sys.executable, "-m", "service", "dev"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_answering(dev, f"http://127.0.0.1:{port}/readyz", seconds=60, what="dev (ready)")
        sent = run_cli("send", "contact.creation", "--save", str(tmp_path / "b.json"), env=env)
        again = run_cli("send", "--file", str(tmp_path / "b.json"), env=env)
        shown = run_cli("events", "--json", env=env)
        deadline = time.monotonic() + 20
        while '"done"' not in shown.stdout and time.monotonic() < deadline:
            time.sleep(0.3)
            shown = run_cli("events", "--json", env=env)
    finally:
        dev.send_signal(signal.SIGTERM)
        _, err = dev.communicate(timeout=60)

    assert sent.returncode == 0, sent.stderr
    assert "stored 1, duplicates 0" in sent.stdout
    assert again.returncode == 0
    assert "stored 0, duplicates 1" in again.stdout
    assert '"status": "done"' in shown.stdout
    assert dev.returncode == 0, err
    assert "embedded_postgres_stopped" in err
    assert (tmp_path / "data" / "dev-client-secret").stat().st_mode & 0o077 == 0


# --- start-up with a rules file --------------------------------------------------------------


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_the_service_refuses_to_start_with_an_invalid_rules_file(
    database_url: str, tmp_path: Path, command: list[str]
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "ALLOWED_HOSTS": "127.0.0.1",
        "RULES_FILE": str(INVALID_RULES),
        "DATA_DIR": str(tmp_path),
    }

    result = run_cli(*command, env=env)

    assert result.returncode == 2, result.stderr
    assert "invalid rules" in result.stderr
    assert f"{INVALID_RULES}:{invalid_rule_lines()[1]}: " in result.stderr
    assert "unknown object 'leads'" in result.stderr


def test_the_worker_starts_with_a_valid_rules_file(clean_db: str, tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": clean_db,
        "RULES_FILE": str(EXAMPLE_RULES),
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "WARNING",
    }

    result = run_cli("worker", "--drain", env=env)

    assert result.returncode == 0, result.stderr
    assert "ran 0 actions" in result.stderr


def test_a_rules_file_that_does_not_exist_stops_start_up_naming_rules_file(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("RULES_FILE", str(tmp_path / "nope.toml"))

    assert cli.main(["worker"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "RULES_FILE" in line
    assert "nope.toml" in line


# --- rough edges an operator meets first -----------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "dev", "receiver"])
@pytest.mark.parametrize("port", ["0", "70001"])
def test_a_port_outside_1_to_65535_is_refused_as_port_is(
    command: str, port: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": "postgres://x@h/d", "DATA_DIR": str(tmp_path)}

    result = run_cli(command, "--port", port, env=env, timeout=30)

    assert result.returncode == 2, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error" in line]
    assert "--port" in error
    assert f"expected an integer from 1 to 65535, got {port}" in error
    assert "Traceback" not in result.stderr


def test_a_listing_piped_into_head_ends_quietly(clean_db: str) -> None:
    # `hubspot-webhooks events --json | head -1`: head closes the pipe after one line.
    events = [hs("contact.creation", object_id, 1000) for object_id in range(1, 1001)]
    assert sum(store_events(clean_db, events[i : i + 100]) for i in range(0, 1000, 100)) == 1000
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    listing = subprocess.Popen(
        [sys.executable, "-m", "service", "events", "--json", "--limit", "1000"],
        env={**base, "DATABASE_URL": clean_db},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert listing.stdout is not None
    assert listing.stderr is not None
    first = listing.stdout.readline()
    listing.stdout.close()
    err = listing.stderr.read()
    listing.stderr.close()
    listing.wait(60)

    assert first.startswith("{")
    assert listing.returncode == 1  # what Python's documented EPIPE handling exits with
    assert err == "", err


def test_worker_drain_uses_the_embedded_database_when_database_url_is_unset(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "LOG_LEVEL": "WARNING"}
    with db.database_url_for(None, data) as url:  # the embedded server `dev` runs
        db.migrate(url)
        store_events(url, [hs("contact.creation", 101, 1000)])

        drained = run_cli("worker", "--drain", env=env)

        assert drained.returncode == 0, drained.stderr
        assert "applied 1 events" in drained.stderr
        engine = db.create_engine(url)
        with engine.connect() as connection:
            status = connection.scalar(sa.text("SELECT status FROM inbox_events"))
        engine.dispose()
    assert status == "done"


def test_a_long_running_worker_still_needs_database_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Started by a platform without DATABASE_URL, it must not wait on an empty embedded database.
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))

    assert cli.main(["worker"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "DATABASE_URL is not set" in line
    assert not (tmp_path / "postgres").exists()


def test_worker_drain_on_an_unmigrated_database_says_to_migrate(
    database_url: str, tmp_path: Path
) -> None:
    with empty_database(database_url, "hubspot_webhooks_cli_unmigrated") as url:
        result = run_cli("worker", "--drain", env={"DATABASE_URL": url, "DATA_DIR": str(tmp_path)})

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "hubspot-webhooks: database error: schema not migrated: run `hubspot-webhooks migrate`"
    )
    assert "Traceback" not in result.stderr


def test_a_worker_on_an_unmigrated_database_says_so_once_and_starts_once_migrated(
    database_url: str, tmp_path: Path
) -> None:
    with empty_database(database_url, "hubspot_webhooks_cli_migrate_later") as url:
        base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
        env = {"DATABASE_URL": url, "DATA_DIR": str(tmp_path), "WORKER_POLL_SECONDS": "0.2"}
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            env={**base, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(3)  # several polls of every stage on the missing tables
            db.migrate(url)
            store_events(url, [hs("contact.creation", 101, 1000)])
            engine = db.create_engine(url)
            deadline = time.monotonic() + 30
            status = None
            while status != "done" and time.monotonic() < deadline:
                time.sleep(0.2)
                with engine.connect() as connection:
                    status = connection.scalar(sa.text("SELECT status FROM inbox_events"))
            engine.dispose()
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)

    assert status == "done", err
    assert worker.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events.count("schema_not_migrated") == 1, err
    assert "loop_error" not in events, err


def test_the_worker_says_how_many_rules_it_loaded_from_where(clean_db: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": clean_db, "RULES_FILE": str(EXAMPLE_RULES), "DATA_DIR": str(tmp_path)}

    result = run_cli("worker", "--drain", env=env)

    assert result.returncode == 0, result.stderr
    (loaded,) = [
        json.loads(line)
        for line in result.stderr.splitlines()
        if line.startswith("{") and json.loads(line)["event"] == "rules_loaded"
    ]
    assert loaded["summary"] == f"4 rules, 5 actions from {EXAMPLE_RULES}; 0 code rules"
    assert (loaded["rules"], loaded["actions"], loaded["code_rules"]) == (4, 5, 0)
    assert loaded["file"] == str(EXAMPLE_RULES)


def test_serve_says_how_many_rules_it_loaded_too(clean_db: str, tmp_path: Path) -> None:
    port = free_port()
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env = {
        "DATABASE_URL": clean_db,
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "ALLOWED_HOSTS": "127.0.0.1",
        "RULES_FILE": str(EXAMPLE_RULES),
        "DATA_DIR": str(tmp_path),
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**base, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_answering(serve, f"http://127.0.0.1:{port}/healthz", seconds=30, what="serve")
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=60)

    loaded = [json.loads(line) for line in err.splitlines() if '"rules_loaded"' in line]
    assert [entry["summary"] for entry in loaded] == [
        f"4 rules, 5 actions from {EXAMPLE_RULES}; 0 code rules"
    ]


def test_doctor_self_test_reaches_a_running_server_and_its_event_fires_nothing(
    clean_db: str, engine: sa.Engine, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "DATABASE_URL": clean_db,
        "DATA_DIR": str(tmp_path / "data"),
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "WEBHOOK_PUBLIC_URL": f"http://127.0.0.1:{port}/webhooks/hubspot",
        "RULES_FILE": str(EXAMPLE_RULES),
        "LOG_LEVEL": "WARNING",
    }
    with engine.begin() as connection:
        heartbeats.beat(connection, "cli-test", host="test-host", pid=1, stages=["apply"])
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**base, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        result = run_cli("doctor", "--self-test", env=env)
    finally:
        server.terminate()
        server.wait(timeout=15)

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("✓ self-test: signed test event stored as inbox id")
    assert "! public URL: http://127.0.0.1" in result.stdout  # local: a warning, not a failure
    assert CLIENT_SECRET not in result.stdout
    drained = run_cli("worker", "--drain", env=env)
    assert drained.returncode == 0, drained.stderr
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT subscription_type, portal_id, status FROM inbox_events")
        ).all()
        runs = connection.scalar(sa.text("SELECT count(*) FROM action_runs"))
    assert [tuple(r) for r in rows] == [("doctor.selfTest", 0, "ignored")]
    assert runs == 0


def test_doctor_prints_json_and_exits_1_when_a_check_fails(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/postgres",
        "DATA_DIR": str(tmp_path),
    }
    result = run_cli("doctor", "--json", env=env)

    assert result.returncode == 1
    report = json.loads(result.stdout)
    failed = {c["name"]: c["fix"] for c in report["checks"] if c["status"] == "fail"}
    assert set(failed) == {"database", "client secret"}
    assert "DATABASE_URL" in failed["database"]

    plain = run_cli("doctor", env={"PORT": "eighty"})
    assert plain.returncode == 1
    assert plain.stdout.startswith("✗ configuration: PORT is invalid")
