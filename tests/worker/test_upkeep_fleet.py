"""Upkeep's alerts with the real commands: two `hubspot-webhooks worker` processes evaluate every
condition at once, every ALERT_INTERVAL, and each condition's start and end go out once, through
the act stage of whichever worker gets the run; with no worker at all, two `hubspot-webhooks
serve` processes evaluate `no_worker` and send it once.

The conditions are driven as they happen: a user handler that fails (dead letter) or hangs
(lag; the handler module is written for the test and loaded by HANDLER_MODULES, its switches are
files), a portal whose tokens stop working, HubSpot answering 429 to real API calls. Time is
moved in the database only where the alert's own window is minutes long (the 429s age out).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from service import heartbeats, inbox
from service.hubspot.client import MAX_TRIES, HubSpotUnavailable
from service.hubspot.oauth import Tokens, save_tokens
from service.hubspot.sealing import TokenCipher
from tests.alerting import (
    ALERT_HOOK_PATH,
    ALERT_SLACK_PATH,
    received,
    wait_until,
    worker_process,
)
from tests.factories import PORTAL, TOKEN_KEY, WEBHOOK_SECRET, numbered_event
from tests.fake_hubspot import FakeHubSpot
from tests.receivers import Receiver
from tests.servers import serve_env, serve_process
from tests.support import DbClock, MakeApi, Store

INTERVAL = "0.3"  # ALERT_INTERVAL: every worker and web process evaluates this often
# Quiet time after the last message, so a second copy of any of them would have arrived.
SETTLE_SECONDS = 10 * float(INTERVAL)
# Each change must arrive within this many seconds: generous for a 0.3 s interval on a loaded
# machine, and well short of the 30 s default it would take without ALERT_INTERVAL.
CHANGE_SECONDS = 15.0
FAILS, HANGS = 901, 902  # the objects whose events the test handler fails or holds up

HANDLERS = '''
"""Contact changes of object {fails} fail until the file `fixed` exists; those of object
{hangs} wait until the file `go` exists (at most a minute)."""

import time
from pathlib import Path

from service import Kind, registry

SWITCHES = Path({switches!r})


@registry.on("contacts", Kind.PROPERTY_CHANGE)
def changed(event, session):
    if event.object_id == {fails} and not (SWITCHES / "fixed").exists():
        raise RuntimeError("the CRM sync of this contact is switched off")
    deadline = time.monotonic() + 60
    while event.object_id == {hangs} and not (SWITCHES / "go").exists():
        assert time.monotonic() < deadline, "the test never let the handler go"
        time.sleep(0.05)
'''


def alert_env(database_url: str, receiver: Receiver, data_dir: Path) -> dict[str, str]:
    """Slack and the signed webhook on the receiver, a short interval and ALERT_LAG."""
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(data_dir),
        "ALERT_SLACK_WEBHOOK_URL": receiver.url_for(ALERT_SLACK_PATH),
        "ALERT_WEBHOOK_URL": receiver.url_for(ALERT_HOOK_PATH),
        "ALERT_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "ALERT_INTERVAL": INTERVAL,
        "ALERT_LAG": "2s",
        "LOG_LEVEL": "WARNING",
    }


def slack_texts(receiver: Receiver) -> list[str]:
    return [r.json()["text"] for r in receiver.requests if r.path == ALERT_SLACK_PATH]


def live_alerting_workers(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        live = heartbeats.live_workers(connection, heartbeats.LIVE_SECONDS)
    return sum("alerts" in worker.stages for worker in live)


def test_two_worker_processes_send_each_condition_once(  # noqa: PLR0917 - one parameter per fixture
    clean_db: str,
    engine: sa.Engine,
    store: Store,
    receiver: Receiver,
    fake: FakeHubSpot,
    make_api: MakeApi,
    tmp_path: Path,
) -> None:
    switches = tmp_path / "switches"
    switches.mkdir()
    (tmp_path / "fleet_handlers.py").write_text(
        HANDLERS.format(switches=str(switches), fails=FAILS, hangs=HANGS)
    )
    env = alert_env(clean_db, receiver, tmp_path / "data") | {
        "HANDLER_MODULES": "fleet_handlers",
        "PYTHONPATH": str(tmp_path),
        "MAX_ATTEMPTS": "1",
        "WORKER_POLL_SECONDS": "0.2",
    }
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    cipher = TokenCipher((TOKEN_KEY,))

    def until(messages: list[tuple[str, str]], what: str) -> None:
        wait_until(lambda: received(receiver) == messages, what, logs, CHANGE_SECONDS)

    def tokens() -> Tokens:
        return Tokens("access", "refresh", datetime.now(UTC) + timedelta(hours=1))

    with ExitStack() as workers:
        for log in logs:
            workers.enter_context(worker_process(env, log))
        wait_until(lambda: live_alerting_workers(engine) == 2, "two live workers", logs)

        # A dead letter: the handler fails and MAX_ATTEMPTS is 1; fixed and replayed, it is done.
        store([numbered_event(1, objectId=FAILS)])
        expected = [("dead_letters", "firing")]
        until(expected, "dead_letters firing")
        (switches / "fixed").touch()
        with engine.begin() as connection:
            assert inbox.replay(connection, inbox.Filters(statuses=("dead",))) == 1
        expected.append(("dead_letters", "resolved"))
        until(expected, "dead_letters resolved")

        # Lag: a handler holds its event up for longer than ALERT_LAG, then lets it go.
        store([numbered_event(2, objectId=HANGS)])
        expected.append(("lag", "firing"))
        until(expected, "lag firing")
        (switches / "go").touch()
        expected.append(("lag", "resolved"))
        until(expected, "lag resolved")

        # A portal needs the app installed again; then it is installed again.
        save_tokens(engine, PORTAL, tokens(), cipher=cipher)
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE hubspot_tokens SET needs_reinstall = true"))
        expected.append(("reinstall", "firing"))
        until(expected, "reinstall firing")
        save_tokens(engine, PORTAL, tokens(), cipher=cipher)
        expected.append(("reinstall", "resolved"))
        until(expected, "reinstall resolved")

        # HubSpot answers 429 to every try of two calls; five minutes later the window is clear.
        api = make_api(limiter_sleep=DbClock(engine))
        fake.fail_next(2 * MAX_TRIES, status=429)
        for _ in range(2):
            with pytest.raises(HubSpotUnavailable):
                api.batch_read(PORTAL, "contacts", [101], ["email"])
        expected.append(("rate_limited", "firing"))
        until(expected, "rate_limited firing")
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE hubspot_api_call_minutes SET minute = minute - interval '6 min'")
            )
        expected.append(("rate_limited", "resolved"))
        until(expected, "rate_limited resolved")

        time.sleep(SETTLE_SECONDS)  # both workers evaluate many more rounds: nothing new
        # Read before the workers stop: once none is left, `no_worker` rightly fires.
        delivered = received(receiver)
        texts = slack_texts(receiver)
        assert live_alerting_workers(engine) == 2

    assert delivered == expected
    assert len(texts) == len(expected)
    assert [t.split("]")[0].split("[")[1] for t in texts] == ["FIRING", "RESOLVED"] * 4
    first = next(r for r in receiver.requests if r.path == ALERT_HOOK_PATH)
    assert Webhook(WEBHOOK_SECRET).verify(first.body, first.headers)["alert"] == "dead_letters"


def test_with_no_worker_two_serve_processes_send_no_worker_once(
    clean_db: str, engine: sa.Engine, receiver: Receiver, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = serve_env(clean_db, data, **alert_env(clean_db, receiver, data))
    logs = [tmp_path / "serve-1.log", tmp_path / "serve-2.log", tmp_path / "worker.log"]

    with ExitStack() as servers:
        for log in logs[:2]:
            servers.enter_context(serve_process(env, log))
        firing = [("no_worker", "firing")]
        wait_until(lambda: received(receiver) == firing, "firing", logs, CHANGE_SECONDS)
        # A worker starts (with no alert target of its own: only the web processes send).
        with worker_process({"DATABASE_URL": clean_db, "DATA_DIR": str(data)}, logs[2]):
            expected = [("no_worker", "firing"), ("no_worker", "resolved")]
            wait_until(lambda: received(receiver) == expected, "resolved", logs, CHANGE_SECONDS)
            time.sleep(SETTLE_SECONDS)
            # The web processes stop first: the worker's clean exit removes its heartbeat.
            servers.close()

    assert received(receiver) == expected
    texts = slack_texts(receiver)
    assert len(texts) == 2
    assert "[FIRING] No worker is alive" in texts[0]
    assert "[RESOLVED] No worker is alive" in texts[1]
