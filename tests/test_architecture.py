"""The layout holds: import contracts kept (and able to fail), modules small, cli thin."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 450
MAX_CLI_LINES = 300

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
