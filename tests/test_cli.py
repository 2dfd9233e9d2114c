"""The hubspot-webhooks command as a user runs it: real subprocesses, real databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from service import cli, db
from tests.factories import CLIENT_SECRET
from tests.support import EXAMPLE_RULES, INVALID_RULES, free_port, invalid_rule_lines, run_cli


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
        deadline = time.monotonic() + 60
        while True:
            assert dev.poll() is None, dev.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dev did not become ready"
            time.sleep(0.2)
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
