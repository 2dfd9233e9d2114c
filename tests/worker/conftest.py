"""Fixtures of the worker's tests: two workers' alert loops on the test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from service import db
from service.settings import Settings
from service.worker.act import ActionRunner
from service.worker.upkeep import Alerts
from tests.alerting import ALERT_HOOK_PATH, ALERT_SLACK_PATH, AlertFleet
from tests.factories import WEBHOOK_SECRET
from tests.receivers import Receiver


@pytest.fixture
def fleet(clean_db: str, engine: sa.Engine, receiver: Receiver) -> Iterator[AlertFleet]:
    """Two workers' alert loops (an engine each, as two processes would have) with Slack and
    a signed webhook configured on the local receiver, and one live worker heartbeat."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": clean_db,
            "ALERT_SLACK_WEBHOOK_URL": receiver.url_for(ALERT_SLACK_PATH),
            "ALERT_WEBHOOK_URL": receiver.url_for(ALERT_HOOK_PATH),
            "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "ALERT_LAG": "5m",
            "WEBHOOK_PUBLIC_URL": "https://hooks.example/webhooks/hubspot",
        }
    )
    engines = [db.create_engine(clean_db, pool_size=2) for _ in range(2)]
    runner = ActionRunner(engine, [], settings)
    fleet = AlertFleet(engine, settings, [Alerts(e, settings) for e in engines], runner, receiver)
    fleet.beat()
    yield fleet
    runner.close()
    for e in engines:
        e.dispose()
