"""Argument types of the `hubspot-webhooks` command: each turns one flag's text into a value or
refuses it with one line saying what was expected (argparse prints it and exits 2)."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta

from service import db
from service.settings import port_number

_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def port(value: str) -> int:
    """`--port`: the rule of the PORT variable (1 to 65535), so 0 never means "any port"."""
    try:
        return port_number(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def when(value: str) -> datetime:
    """`--since`/`--until`: an ISO time (UTC when it has no offset) or an age like 30m."""
    match = _RELATIVE.match(value)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return db.utcnow() - timedelta(**{unit: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO time (2026-11-25T10:00Z) or an age (30m, 2h, 1d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=db.utcnow().tzinfo)
