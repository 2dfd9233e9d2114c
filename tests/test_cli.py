"""The hubspot-webhooks command as a user runs it: real subprocesses, real databases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import sqlalchemy as sa

from service import db
from tests.conftest import CLIENT_SECRET


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m service ARGS` with exactly `env` (plus PATH/HOME) and capture its output."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
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
