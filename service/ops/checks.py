"""What one `doctor` check found: ok, fail or warn, a detail and the fix, on one line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "fail", "warn"]
SYMBOLS: Mapping[Status, str] = {"ok": "✓", "fail": "✗", "warn": "!"}


@dataclass(frozen=True, slots=True)
class Check:
    """One check's outcome: ok, fail (exit 1) or warn (cannot tell, or worth a look)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """`✓ name: detail`, with `(fix: ...)` when there is something to do."""
        fix = f" (fix: {self.fix})" if self.fix and self.status != "ok" else ""
        return f"{SYMBOLS[self.status]} {self.name}: {self.detail}{fix}"
