"""End to end with HUBSPOT_EVENT_SOURCE=both: the real `serve` and `worker` processes, each change
delivered twice (a signed webhook to `serve`, and an entry of the fake Webhooks Journal the
worker reads), a rule with an HTTP action to a local receiver: each rule fires once per change."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import sqlalchemy as sa

from service.devtools import delivery
from service.settings import WEBHOOK_PATH
from tests.factories import HOOK_PATH, PORTAL, TOKEN, TOKEN_KEY, WEBHOOK_SECRET, hs
from tests.fake_hubspot import FakeHubSpot
from tests.fake_journal import FakeJournal
from tests.receivers import Receiver
from tests.reliability.harness import Process
from tests.servers import serve_process

WAIT_SECONDS = 60
AT = int(time.time() * 1000) - 60_000  # a minute ago: inside today's partitions
RULES = """
[[rules]]
name = "created"
[rules.when]
object = "contacts"
kind = "creation"
[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"

[[rules]]
name = "email"
[rules.when]
object = "contacts"
kind = "property_change"
property = "email"
[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"

[[rules]]
name = "deleted"
[rules.when]
object = "contacts"
kind = "deletion"
[[rules.do]]
action = "webhook"
url = "env:HOOK_URL"
secret = "env:HOOK_SECRET"
"""


def pushed() -> list[dict[str, Any]]:
    """Contact 801 created with an email, 802 deleted, 803's email changed: as webhooks."""
    return [
        hs("contact.creation", 801, AT),
        hs("contact.propertyChange", 801, AT, propertyName="email", propertyValue="a@x.com"),
        hs("contact.deletion", 802, AT + 1000),
        hs("contact.propertyChange", 803, AT + 2000, propertyName="email", propertyValue="c@x.com"),
    ]


def journaled(fake: FakeHubSpot) -> None:
    """The same changes as the journal holds them: two entries."""
    event = FakeJournal.event
    fake.journal.append(
        PORTAL,
        [
            event("CREATE", PORTAL, "0-1", 801, occurred_at=AT, properties={"email": "a@x.com"}),
            event("DELETE", PORTAL, "0-1", 802, occurred_at=AT + 1000),
        ],
    )
    fake.journal.append(
        PORTAL,
        [
            event(
                "UPDATE", PORTAL, "0-1", 803, occurred_at=AT + 2000, properties={"email": "c@x.com"}
            )
        ],
    )


def wait_for(what: str, done: Callable[[], bool], worker: Process) -> None:
    """Until `done()`, failing with the worker's output after WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not done():
        assert worker.running, f"the worker exited:\n{worker.output()}"
        assert time.monotonic() < deadline, f"not {what} in time:\n{worker.output()}"
        time.sleep(0.1)


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    """(inbox rows, inbox rows still to apply, action runs not done)."""
    with engine.connect() as connection:
        return tuple(
            connection.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM inbox_events),"
                    " (SELECT count(*) FROM inbox_events WHERE status IN ('pending', 'failed')),"
                    " (SELECT count(*) FROM action_runs WHERE status <> 'done')"
                )
            ).one()
        )


def test_changes_pushed_and_journaled_fire_each_rule_once(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, receiver: Receiver, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    env = {
        "DATABASE_URL": clean_db,
        "DATA_DIR": str(tmp_path / "data"),
        "HUBSPOT_EVENT_SOURCE": "both",
        "HUBSPOT_CLIENT_ID": fake.client_id,
        "HUBSPOT_CLIENT_SECRET": fake.client_secret,
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_API_BASE_URL": fake.url,
        "TOKEN_ENCRYPTION_KEY": TOKEN_KEY,
        "RULES_FILE": str(rules),
        "HOOK_URL": receiver.url_for(HOOK_PATH),
        "HOOK_SECRET": WEBHOOK_SECRET,
        "WORKER_POLL_SECONDS": "0.2",
        "JOURNAL_POLL_INTERVAL": "0.2",
        "LOG_LEVEL": "INFO",
    }
    worker = Process(["worker"], env, tmp_path / "worker.log")
    with serve_process(env, tmp_path / "serve.log") as serving:
        worker.start()
        try:
            url = serving.url + WEBHOOK_PATH
            body = delivery.encode_batch(pushed())
            headers = delivery.signed_headers(
                secret=fake.client_secret, url=url, body=body, timestamp_ms=int(time.time() * 1000)
            )
            assert httpx2.post(url, content=body, headers=headers, timeout=10).status_code == 200
            journaled(fake)
            # 4 webhook events, 4 journal events (the creation carries its email).
            wait_for("applied and acted on", lambda: counts(engine) == (8, 0, 0), worker)
        finally:
            worker.stop()

    with engine.connect() as connection:
        runs = Counter(
            (r.rule, r.object_id)
            for r in connection.execute(sa.text("SELECT rule, object_id FROM action_runs"))
        )
        statuses = Counter(connection.scalars(sa.text("SELECT status FROM inbox_events")))
    once = [("created", 801), ("email", 801), ("deleted", 802), ("email", 803)]
    assert runs == Counter(once)
    assert statuses == Counter({"done": 8})
    assert receiver.count(HOOK_PATH, status=200) == 4
    assert "Traceback" not in worker.output()
