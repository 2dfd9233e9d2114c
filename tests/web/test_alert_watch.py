"""The `no_worker` alert with no worker running: the web processes evaluate it (a thread started
by the lifespan) and deliver it directly, one "firing" and one "resolved" however many web
processes watch; a failed send is retried on a later round."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient

from service import heartbeats
from service.web.app import create_app
from tests.factories import WEBHOOK_SECRET
from tests.receivers import Receiver
from tests.support import make_settings

SLACK, HOOK = "/alerts/slack", "/alerts/hook"


@contextmanager
def web_apps(clean_db: str, receiver: Receiver, n: int) -> Iterator[None]:
    """`n` web apps running their lifespans at once, evaluating every 0.05 s."""
    settings = make_settings(
        ALERT_SLACK_WEBHOOK_URL=receiver.url_for(SLACK),
        ALERT_WEBHOOK_URL=receiver.url_for(HOOK),
        ALERT_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    with ExitStack() as stack:
        for _ in range(n):
            app = create_app(settings, database_url=clean_db, alert_seconds=0.05)
            stack.enter_context(TestClient(app))
        yield


def received(receiver: Receiver) -> list[str]:
    return [r.json()["type"] for r in receiver.requests if r.path == HOOK and r.status == 200]


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def stale_heartbeat(engine: sa.Engine) -> None:
    """A worker that stopped beating 3 minutes ago (killed: its row stays)."""
    with engine.begin() as connection:
        heartbeats.beat(connection, "gone", host="test", pid=1, stages=["apply"])
        connection.execute(
            sa.text("UPDATE worker_heartbeats SET last_seen_at = now() - interval '3 minutes'")
        )


def beat(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        heartbeats.beat(connection, "back", host="test", pid=2, stages=["apply"])


def test_two_web_apps_send_one_firing_and_one_resolved_with_no_worker(
    clean_db: str, engine: sa.Engine, receiver: Receiver
) -> None:
    stale_heartbeat(engine)
    with web_apps(clean_db, receiver, 2):
        wait_for(lambda: received(receiver) == ["alert.firing"])
        time.sleep(0.3)  # more rounds of both apps: nothing more
        assert received(receiver) == ["alert.firing"]
        assert receiver.count(SLACK) == 1

        beat(engine)
        wait_for(lambda: received(receiver) == ["alert.firing", "alert.resolved"])
        time.sleep(0.3)
    assert received(receiver) == ["alert.firing", "alert.resolved"]
    slack = [r.json()["text"] for r in receiver.requests if r.path == SLACK]
    assert len(slack) == 2
    assert "[FIRING] No worker is alive" in slack[0]
    assert "[RESOLVED]" in slack[1]
    hook = [r for r in receiver.requests if r.path == HOOK]
    body = Webhook(WEBHOOK_SECRET).verify(hook[0].body, hook[0].headers)
    assert body["alert"] == "no_worker"
    assert body["facts"] == {"live": 0, "within_seconds": 120.0}


def test_a_failed_send_is_retried_on_the_next_round(
    clean_db: str, engine: sa.Engine, receiver: Receiver
) -> None:
    receiver.fail_next(2, 503)  # the first round's Slack and webhook sends
    with web_apps(clean_db, receiver, 1):
        wait_for(lambda: received(receiver) == ["alert.firing"])
        time.sleep(0.3)
    assert received(receiver) == ["alert.firing"]
    assert receiver.count(SLACK, status=200) == 1
    with engine.connect() as connection:
        pending = connection.scalar(
            sa.text("SELECT pending FROM alert_states WHERE key = 'no_worker'")
        )
    assert pending == []


def test_without_an_alert_target_the_web_app_does_not_evaluate(
    clean_db: str, engine: sa.Engine
) -> None:
    with TestClient(create_app(make_settings(), database_url=clean_db, alert_seconds=0.05)):
        time.sleep(0.3)
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM alert_states")) == 0
