"""The layout holds: import contracts kept (and able to fail), modules small, cli thin."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service import models

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 450
MAX_CLI_LINES = 300

# One owner per table: the only module with statements that write it (ARCHITECTURE.md).
OWNERS = {
    "inbox_events": "service/inbox/",  # a package: any of its modules
    "action_runs": "service/outbox.py",
    "own_writes": "service/outbox.py",
    "hydration_requests": "service/fetches.py",
    "crm_objects": "service/mirror/registers.py",
    "crm_associations": "service/mirror/registers.py",
    "seen_properties": "service/mirror/registers.py",
    "hubspot_tokens": "service/hubspot/oauth.py",
    "oauth_states": "service/hubspot/installs.py",
    "rate_limits": "service/hubspot/ratelimit.py",
    "hubspot_api_calls": "service/hubspot/client.py",
    "hubspot_api_call_minutes": "service/hubspot/client.py",
    "reconcile_checkpoints": "service/hubspot/reconcile.py",
    "pipeline_stages": "service/hubspot/pipelines.py",
    "worker_heartbeats": "service/heartbeats.py",
    "alert_states": "service/alerts.py",
    "portal_controls": "service/portals.py",
    "applied_changes": "service/changes.py",
    "journal_cursors": "service/journal.py",
    "journal_entries": "service/journal.py",
    "journal_gaps": "service/journal.py",
}
# A write statement and its table; `ON CONFLICT .. DO UPDATE` is part of an INSERT.
WRITE = re.compile(r"\b(?:INSERT\s+INTO|(?<!DO )UPDATE|DELETE\s+FROM|TRUNCATE)\s+([a-z_]+)")

needs_import_linter = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is in the dev extra"
)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(root / ".importlinter"), "--no-cache", "--no-logo"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_import_linter
def test_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@needs_import_linter
def test_a_back_edge_from_a_wire_format_to_the_cli_breaks_the_contracts(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT / "service", copy / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    events = copy / "service" / "events.py"
    events.write_text(events.read_text() + "\nfrom service import cli  # noqa: E402\n")

    result = _lint_imports(copy)

    assert result.returncode != 0
    assert "service.events -> service.cli" in result.stdout


@needs_import_linter
def test_a_queue_reaching_into_a_stage_breaks_the_layers(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT / "service", copy / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    outbox = copy / "service" / "outbox.py"
    outbox.write_text(outbox.read_text() + "\nfrom service.rules import engine  # noqa: E402\n")

    result = _lint_imports(copy)

    assert result.returncode != 0
    assert "service.outbox -> service.rules.engine" in result.stdout


def test_every_table_has_an_owner() -> None:
    assert set(OWNERS) == set(models.metadata.tables)


def _owns(owner: str, module: str) -> bool:
    """Whether `module` is the owner: the owner's file, or a module of the owner's package."""
    return module.startswith(owner) if owner.endswith("/") else module == owner


def test_each_table_is_written_only_by_its_owner() -> None:
    writers: dict[str, set[str]] = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        for table in WRITE.findall(path.read_text()):
            if table in OWNERS:
                writers.setdefault(table, set()).add(str(path.relative_to(ROOT)))
    strays = {t: {m for m in w if not _owns(OWNERS[t], m)} for t, w in writers.items()}
    strays = {t: w for t, w in strays.items() if w}
    assert not strays, f"write these tables through their owner's functions: {strays}"
    assert set(writers) == set(OWNERS), "a table nobody writes: is the pattern still right?"


def test_no_service_module_is_over_450_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in (ROOT / "service").rglob("*.py")
    }
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"split these modules: {too_long}"


def test_cli_stays_thin() -> None:
    lines = len((ROOT / "service" / "cli.py").read_text().splitlines())
    assert lines < MAX_CLI_LINES, f"service/cli.py has {lines} lines; move command bodies out"
