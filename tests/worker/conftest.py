"""Fixtures of the worker's tests: two workers' alert loops on the test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.alerting import AlertFleet, alert_fleet
from tests.receivers import Receiver


@pytest.fixture
def fleet(clean_db: str, engine: sa.Engine, receiver: Receiver) -> Iterator[AlertFleet]:
    """Two workers' alert loops (an engine each, as two processes would have) with Slack and
    a signed webhook configured on the local receiver, and one live worker heartbeat."""
    public_url = "https://hooks.example/webhooks/hubspot"
    with alert_fleet(clean_db, engine, receiver, WEBHOOK_PUBLIC_URL=public_url) as built:
        yield built
