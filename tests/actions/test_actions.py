"""service.actions: Slack and webhooks against local receivers, HubSpot against the fake.

Webhook signatures are checked with the independent `standardwebhooks` package, never only
with our own `sign`.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.actions import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    ActionFailed,
    ActionRejected,
    Outcome,
    RunContext,
    execute,
    option_timeout,
    resolve_secret,
    retry_after_seconds,
    webhook,
)
from service.actions.webhook import sign
from service.hubspot.client import HubSpotApi, default_budgets
from service.hubspot.ratelimit import RateLimiter
from tests.fake_hubspot import FakeHubSpot, epoch_ms
from tests.receivers import Receiver, refused_url

SECRET = "whsec_" + base64.b64encode(b"a-32-byte-test-key-for-hmac-256!").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-key-used-while-rotating!").decode()
SLACK_PATH = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
PORTAL = 62515
TOKEN = "pat-na1-00000000-0000-4000-8000-000000062515"
TASKS = "/crm/v3/objects/tasks"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The worker's HTTP client."""
    with httpx.Client() as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local stand-in for Slack or a webhook receiver."""
    with Receiver() as server:
        yield server


def context(
    http: httpx.Client,
    payload: Mapping[str, Any],
    options: Mapping[str, Any] | None = None,
    *,
    run_id: int = 1,
    environ: Mapping[str, str] | None = None,
    slack_webhook_url: str | None = None,
    api: HubSpotApi | None = None,
) -> RunContext:
    return RunContext(
        run_id=run_id,
        portal_id=PORTAL,
        payload=payload,
        options=options or {},
        environ=environ or {},
        slack_webhook_url=slack_webhook_url,
        api=api,
        http=http,
    )


def slack_payload(text: str = "Won: Big deal ($1,000.00)", blocks: Any = None) -> dict[str, Any]:
    return {"action": "slack", "text": text, "blocks": blocks}


def webhook_payload(body: Any = None, url: str = "") -> dict[str, Any]:
    return {
        "action": "webhook",
        "url": url,
        "body": body if body is not None else {"type": "deals.property_change", "rule": "won"},
    }


# --- slack -----------------------------------------------------------------------------------


def test_slack_posts_text_and_blocks_to_the_configured_url(
    http: httpx.Client, receiver: Receiver
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Won*"}}]

    outcome = execute(
        context(http, slack_payload(blocks=blocks), {"url": receiver.url_for(SLACK_PATH)})
    )

    assert outcome == Outcome("slack 200")
    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", SLACK_PATH)
    assert request.headers["content-type"].startswith("application/json")
    assert request.json() == {"text": "Won: Big deal ($1,000.00)", "blocks": blocks}


def test_slack_falls_back_to_slack_webhook_url_and_leaves_out_empty_blocks(
    http: httpx.Client, receiver: Receiver
) -> None:
    outcome = execute(
        context(http, slack_payload("hello"), slack_webhook_url=receiver.url_for(SLACK_PATH))
    )

    assert outcome.summary == "slack 200"
    assert outcome.created is None
    assert receiver.requests[0].json() == {"text": "hello"}


def test_slack_url_option_can_name_an_environment_variable(
    http: httpx.Client, receiver: Receiver
) -> None:
    execute(
        context(
            http,
            slack_payload(),
            {"url": "env:DEALS_SLACK_URL"},
            environ={"DEALS_SLACK_URL": receiver.url_for("/deals")},
            slack_webhook_url=receiver.url_for("/default"),
        )
    )

    assert [r.path for r in receiver.requests] == ["/deals"]


def test_slack_without_any_url_is_rejected(http: httpx.Client) -> None:
    with pytest.raises(ActionRejected, match="SLACK_WEBHOOK_URL"):
        execute(context(http, slack_payload()))


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_blocks"),
        (403, "action_prohibited"),
        (404, "no_service"),
        (410, "channel_is_archived"),
    ],
)
def test_slack_refusals_are_rejected_with_slacks_error_code(
    http: httpx.Client, receiver: Receiver, status: int, code: str
) -> None:
    receiver.fail_next(1, status, body=code.encode())
    url = receiver.url_for(SLACK_PATH)

    with pytest.raises(ActionRejected) as caught:
        execute(context(http, slack_payload(), {"url": url}))

    assert f"slack answered {status} {code}" in str(caught.value)
    assert SLACK_PATH not in str(caught.value)
    assert receiver.count() == 1


def test_slack_rate_limit_is_retried_after_retry_after(
    http: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_next(1, 429, body=b"rate_limited", headers={"Retry-After": "30"})

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)}))

    assert not isinstance(caught.value, ActionRejected)
    assert caught.value.retry_after == 30
    assert "retry after 30 s" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_slack_server_errors_are_retried(
    http: httpx.Client, receiver: Receiver, status: int
) -> None:
    receiver.fail_next(1, status, body=b"rollup_error")
    ctx = context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)})

    with pytest.raises(ActionFailed) as caught:
        execute(ctx)

    assert not isinstance(caught.value, ActionRejected)
    assert execute(ctx).summary == "slack 200"  # the next attempt goes through
    assert receiver.count() == 2


def test_slack_timeout_is_retried(http: httpx.Client, receiver: Receiver) -> None:
    receiver.latency(20)
    started = time.monotonic()

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, slack_payload(), {"url": receiver.url_for(), "timeout": 0.3}))

    assert not isinstance(caught.value, ActionRejected)
    assert "Timeout" in str(caught.value)
    assert time.monotonic() - started < 5
    assert receiver.count() == 1


def test_slack_connection_refused_is_retried(http: httpx.Client) -> None:
    url = refused_url()

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, slack_payload(), {"url": url}))

    assert not isinstance(caught.value, ActionRejected)
    assert url not in str(caught.value)


def test_slack_dropped_connection_is_retried(http: httpx.Client, receiver: Receiver) -> None:
    receiver.drop_next(1)

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)}))

    assert not isinstance(caught.value, ActionRejected)
    assert receiver.count(status=0) == 1


def test_a_redirect_is_not_followed_and_is_rejected(http: httpx.Client, receiver: Receiver) -> None:
    receiver.fail_next(1, 301, headers={"Location": receiver.url_for("/elsewhere")})

    with pytest.raises(ActionRejected, match="redirect"):
        execute(context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)}))

    assert receiver.count() == 1


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_signature_verifies_with_the_standardwebhooks_package(
    http: httpx.Client, receiver: Receiver
) -> None:
    body = {"type": "deals.property_change", "rule": "won", "record": {"dealname": "Café €"}}

    outcome = execute(
        context(http, webhook_payload(body), {"url": receiver.url_for("/hook"), "secret": SECRET})
    )

    assert outcome == Outcome("webhook 200")
    (request,) = receiver.requests
    assert request.headers["content-type"] == "application/json"
    assert request.body == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert Webhook(SECRET).verify(request.body, request.headers) == body
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(request.body, request.headers)


def test_sign_matches_the_standardwebhooks_reference_implementation() -> None:
    body = b'{"type":"contact.created","data":{"id":"1f81eb52"}}'
    moment = datetime(2023, 1, 19, 0, 13, 51, tzinfo=UTC)

    ours = sign(SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", int(moment.timestamp()), body)

    assert ours == Webhook(SECRET).sign("msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", moment, body.decode())


def test_webhook_id_is_the_same_on_every_retry_of_a_run_and_differs_between_runs(
    http: httpx.Client, receiver: Receiver
) -> None:
    options = {"url": receiver.url_for("/hook"), "secret": SECRET}
    receiver.fail_next(1, 503)
    with pytest.raises(ActionFailed):
        execute(context(http, webhook_payload(), options, run_id=41))

    execute(context(http, webhook_payload(), options, run_id=41))
    execute(context(http, webhook_payload(), options, run_id=42))

    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids == ["run_41", "run_41", "run_42"]
    for request in receiver.requests:
        Webhook(SECRET).verify(request.body, request.headers)


def test_webhook_timestamp_is_taken_at_each_attempt(
    http: httpx.Client, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    moments = iter([now - 120, now])
    monkeypatch.setattr(webhook, "clock", lambda: next(moments))
    options = {"url": receiver.url_for("/hook"), "secret": SECRET}
    receiver.fail_next(1, 500)

    with pytest.raises(ActionFailed):
        execute(context(http, webhook_payload(), options, run_id=7))
    execute(context(http, webhook_payload(), options, run_id=7))

    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert stamps == [int(now - 120), int(now)]
    first, second = receiver.requests
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    Webhook(SECRET).verify(second.body, second.headers)


def test_webhook_timestamp_is_the_current_unix_time_in_seconds(
    http: httpx.Client, receiver: Receiver
) -> None:
    before = int(time.time())
    execute(context(http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": SECRET}))
    after = int(time.time())

    assert before <= int(receiver.requests[0].headers["webhook-timestamp"]) <= after


def test_webhook_secret_and_url_can_come_from_the_environment(
    http: httpx.Client, receiver: Receiver
) -> None:
    environ = {"CRM_OPS_SECRET": SECRET, "CRM_OPS_URL": receiver.url_for("/ops")}

    execute(
        context(
            http,
            webhook_payload(),
            {"url": "env:CRM_OPS_URL", "secret": "env:CRM_OPS_SECRET"},
            environ=environ,
        )
    )

    (request,) = receiver.requests
    assert request.path == "/ops"
    Webhook(SECRET).verify(request.body, request.headers)


def test_a_missing_environment_variable_is_rejected_naming_it(
    http: httpx.Client, receiver: Receiver
) -> None:
    with pytest.raises(ActionRejected, match="CRM_OPS_SECRET is not set"):
        execute(
            context(
                http,
                webhook_payload(),
                {"url": receiver.url_for("/h"), "secret": "env:CRM_OPS_SECRET"},
            )
        )

    assert receiver.count() == 0


def test_the_url_rendered_at_firing_is_used_when_the_options_have_none(
    http: httpx.Client, receiver: Receiver
) -> None:
    execute(context(http, webhook_payload(url=receiver.url_for("/fired")), {"secret": SECRET}))

    assert [r.path for r in receiver.requests] == ["/fired"]


def test_two_secrets_during_a_rotation_give_two_signatures(
    http: httpx.Client, receiver: Receiver
) -> None:
    options = {"url": receiver.url_for("/h"), "secret": f"{SECRET} {OTHER_SECRET}"}

    execute(context(http, webhook_payload(), options))

    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(request.body, request.headers)
    Webhook(OTHER_SECRET).verify(request.body, request.headers)


@pytest.mark.parametrize("secret", ["not-a-secret", "whsec_", "whsec_%%%notbase64"])
def test_a_malformed_secret_is_rejected_before_sending(
    http: httpx.Client, receiver: Receiver, secret: str
) -> None:
    with pytest.raises(ActionRejected, match="secret"):
        execute(context(http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": secret}))

    assert receiver.count() == 0


@pytest.mark.parametrize(
    ("status", "rejected"),
    [
        (400, True),
        (401, True),
        (404, True),
        (410, True),
        (301, True),
        (408, False),
        (429, False),
        (500, False),
        (502, False),
        (504, False),
    ],
)
def test_webhook_answers_decide_between_retry_and_rejection(
    http: httpx.Client, receiver: Receiver, status: int, rejected: bool
) -> None:
    receiver.fail_next(1, status, body=b"<html>a receiver's own words</html>")

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": SECRET}))

    assert isinstance(caught.value, ActionRejected) is rejected
    assert str(caught.value).startswith(f"webhook answered {status}")
    assert "receiver's own words" not in str(caught.value)


def test_gone_says_the_receiver_wants_no_more(http: httpx.Client, receiver: Receiver) -> None:
    receiver.fail_next(1, 410)

    with pytest.raises(ActionRejected, match="stop sending"):
        execute(context(http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": SECRET}))


def test_a_503_with_retry_after_as_a_date_is_honoured(
    http: httpx.Client, receiver: Receiver
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    receiver.fail_next(1, 503, headers={"Retry-After": later})

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": SECRET}))

    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


def test_a_slow_receiver_fails_within_the_configured_timeout(
    http: httpx.Client, receiver: Receiver
) -> None:
    receiver.latency(20)
    options = {"url": receiver.url_for("/h"), "secret": SECRET, "timeout": 0.5}
    started = time.monotonic()

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, webhook_payload(), options))

    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, ActionRejected)
    assert 0.4 < elapsed < 3
    assert receiver.count() == 1


def test_a_refused_connection_is_retried(http: httpx.Client) -> None:
    with pytest.raises(ActionFailed) as caught:
        execute(context(http, webhook_payload(), {"url": refused_url(), "secret": SECRET}))

    assert not isinstance(caught.value, ActionRejected)


def test_timeouts_default_to_15_seconds_and_are_capped_at_30() -> None:
    assert option_timeout({}) == DEFAULT_TIMEOUT == 15
    assert option_timeout({"timeout": 5}) == 5
    assert option_timeout({"timeout": 600}) == MAX_TIMEOUT == 30
    for bad in (0, -1, True, "10"):
        with pytest.raises(ActionRejected, match="timeout"):
            option_timeout({"timeout": bad})


# --- shared helpers --------------------------------------------------------------------------


def test_resolve_secret_reads_env_references_and_keeps_literals() -> None:
    assert resolve_secret("whsec_abc", {}) == "whsec_abc"
    assert resolve_secret("env:HOOK_SECRET", {"HOOK_SECRET": " whsec_abc\n"}) == "whsec_abc"
    with pytest.raises(ActionRejected, match="HOOK_SECRET is not set"):
        resolve_secret("env:HOOK_SECRET", {"OTHER": "x"})
    with pytest.raises(ActionRejected, match="HOOK_SECRET is not set"):
        resolve_secret("env:HOOK_SECRET", {"HOOK_SECRET": ""})
    with pytest.raises(ActionRejected, match="names no environment variable"):
        resolve_secret("env:", {})


def test_retry_after_accepts_seconds_and_dates() -> None:
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past


def test_an_unknown_action_is_rejected(http: httpx.Client) -> None:
    with pytest.raises(ActionRejected, match="unknown action 'fax'"):
        execute(context(http, {"action": "fax"}))


def test_log_action_logs_the_run_but_not_the_message(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.actions")
    message = "Deal won by ada@example.com"

    outcome = execute(context(http, {"action": "log", "message": message}, run_id=9))

    assert outcome == Outcome("logged")
    (record,) = [r for r in caplog.records if r.getMessage() == "action_logged"]
    assert record.levelno == logging.INFO
    assert vars(record)["run_id"] == 9
    assert vars(record)["message_length"] == len(message)
    assert "ada@example.com" not in json.dumps(vars(record), default=str)


def test_a_dry_run_logs_which_action_would_have_run(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.actions")
    payload = {
        "action": "log",
        "message": "dry run: would run slack",
        "would": slack_payload("secret plans"),
    }

    execute(context(http, payload))

    (record,) = [r for r in caplog.records if r.getMessage() == "action_logged"]
    assert vars(record)["would"] == "slack"
    assert "secret plans" not in json.dumps(vars(record), default=str)


# --- hubspot tasks and notes -----------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    """A running fake HubSpot with the seed portals and their private app tokens."""
    with FakeHubSpot() as server:
        server.load_seed_file()
        yield server


@pytest.fixture
def api(clean_db: str, engine: sa.Engine, fake: FakeHubSpot) -> HubSpotApi:
    """The private app client for portal 62515 on a clean database; backoff does not sleep."""
    return HubSpotApi(
        engine=engine,
        base_url=fake.url,
        limiter=RateLimiter(engine, default_budgets()),
        private_token=TOKEN,
        sleep=lambda seconds: None,
    )


def task_payload(
    object_type: str = "deals", object_id: Any = 301, **changes: Any
) -> dict[str, Any]:
    payload = {
        "action": "hubspot_task",
        "object_type": object_type,
        "object_id": object_id,
        "subject": "Send the contract",
        "body": "Big deal is closed won",
        "priority": "HIGH",
        "due_at_ms": epoch_ms("2026-06-01T09:00:00.000Z"),
        "owner_id": None,
    }
    payload.update(changes)
    return payload


def note_payload(object_type: str = "deals", object_id: Any = 301) -> dict[str, Any]:
    return {
        "action": "hubspot_note",
        "object_type": object_type,
        "object_id": object_id,
        "body": "Moved to Closed Won",
        "timestamp_ms": epoch_ms("2026-05-01T12:30:00.250Z"),
    }


def association(object_id: str, type_id: int) -> list[dict[str, Any]]:
    return [
        {
            "to": {"id": object_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
        }
    ]


def test_a_task_is_created_on_the_record_with_its_properties(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    outcome = execute(context(http, task_payload(owner_id="77001"), api=api))

    (task,) = fake.created("tasks")
    assert task.portal_id == PORTAL
    assert task.properties == {
        "hs_task_subject": "Send the contract",
        "hs_task_body": "Big deal is closed won",
        "hs_timestamp": "2026-06-01T09:00:00.000Z",
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": "HIGH",
        "hubspot_owner_id": "77001",
    }
    assert task.associations == association("301", 216)
    assert outcome == Outcome(f"created task {task.id}", ("tasks", int(task.id)))


def test_a_task_without_an_owner_sends_no_owner(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    execute(context(http, task_payload(owner_id=None), api=api))

    assert "hubspot_owner_id" not in fake.created("tasks")[0].properties


@pytest.mark.parametrize(
    ("record", "type_ids"),
    [
        (("contacts", 101), (204, 202)),
        (("companies", 201), (192, 190)),
        (("deals", 301), (216, 214)),
        (("tickets", 401), (230, 228)),
        (("0-3", 302), (216, 214)),  # the generic form's object type id
    ],
)
def test_engagements_use_hubspots_association_type_ids(
    http: httpx.Client,
    api: HubSpotApi,
    fake: FakeHubSpot,
    record: tuple[str, int],
    type_ids: tuple[int, int],
) -> None:
    object_type, object_id = record
    execute(context(http, task_payload(object_type, object_id), api=api))
    execute(context(http, note_payload(object_type, object_id), api=api))

    (task,) = fake.created("tasks")
    (note,) = fake.created("notes")
    assert task.associations == association(str(object_id), type_ids[0])
    assert note.associations == association(str(object_id), type_ids[1])


def test_a_note_is_created_on_the_record_timeline(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    outcome = execute(context(http, note_payload("contacts", 101), api=api))

    (note,) = fake.created("notes")
    assert note.properties == {
        "hs_note_body": "Moved to Closed Won",
        "hs_timestamp": "2026-05-01T12:30:00.250Z",
    }
    assert note.associations == association("101", 202)
    assert outcome.summary == f"created note {note.id}"
    assert outcome.created == ("notes", int(note.id))


def test_hubspot_refusing_the_task_is_rejected(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    fake.fail_next(1, 400, path_prefix=TASKS)

    with pytest.raises(ActionRejected, match="400 VALIDATION_ERROR"):
        execute(context(http, task_payload(), api=api))

    assert fake.created("tasks") == []


def test_a_task_on_a_record_hubspot_does_not_have_is_rejected(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    with pytest.raises(ActionRejected, match="400"):
        execute(context(http, task_payload("deals", 999_999), api=api))

    assert fake.created("tasks") == []


@pytest.mark.parametrize("status", [500, 503])
def test_a_hubspot_server_error_fails_the_attempt_and_the_retry_creates_the_task(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot, status: int
) -> None:
    fake.fail_next(1, status, path_prefix=TASKS)
    ctx = context(http, task_payload(), api=api, run_id=5)

    with pytest.raises(ActionFailed) as caught:
        execute(ctx)

    assert not isinstance(caught.value, ActionRejected)
    assert f"HubSpot answered {status}" in str(caught.value)
    assert fake.created("tasks") == []
    # A create may have landed when the answer is lost: the client does not repeat the POST,
    # the outbox retries the run.
    assert fake.count(TASKS, method="POST") == 1

    outcome = execute(ctx)

    assert outcome.created is not None
    assert len(fake.created("tasks")) == 1


def test_a_dropped_connection_to_hubspot_fails_the_attempt(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    fake.drop_next(1, path_prefix=TASKS)

    with pytest.raises(ActionFailed) as caught:
        execute(context(http, task_payload(), api=api))

    assert not isinstance(caught.value, ActionRejected)


def test_hubspot_actions_without_credentials_are_rejected(http: httpx.Client) -> None:
    with pytest.raises(ActionRejected, match="no HubSpot credentials"):
        execute(context(http, task_payload()))
    with pytest.raises(ActionRejected, match="no HubSpot credentials"):
        execute(context(http, note_payload()))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (task_payload("products", 1), "not products"),
        (task_payload("2-123456", 1), "not 2-123456"),
        (task_payload("deals", None), "no deals record"),
        (task_payload(priority="URGENT"), "priority"),
        (task_payload(due_at_ms="tomorrow"), "milliseconds"),
    ],
)
def test_tasks_hubspot_could_never_accept_are_rejected_without_a_call(
    http: httpx.Client,
    api: HubSpotApi,
    fake: FakeHubSpot,
    payload: dict[str, Any],
    reason: str,
) -> None:
    with pytest.raises(ActionRejected, match=reason):
        execute(context(http, payload, api=api))

    assert fake.count(TASKS) == 0
