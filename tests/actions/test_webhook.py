"""service.actions.webhook: Standard Webhooks deliveries to a local receiver.

Signatures are checked with the independent `standardwebhooks` package, never only with our own
`sign`.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.actions import ActionFailed, ActionRejected, Outcome, execute, webhook
from service.actions.webhook import sign
from tests.factories import WEBHOOK_SECRET, run_context
from tests.receivers import Receiver, refused_url

OTHER_SECRET = "whsec_" + base64.b64encode(b"another-key-used-while-rotating!").decode()


def webhook_payload(body: Any = None, url: str = "") -> dict[str, Any]:
    return {
        "action": "webhook",
        "url": url,
        "body": body if body is not None else {"type": "deals.property_change", "rule": "won"},
    }


def test_webhook_signature_verifies_with_the_standardwebhooks_package(
    http: httpx.Client, receiver: Receiver
) -> None:
    body = {"type": "deals.property_change", "rule": "won", "record": {"dealname": "Café €"}}

    outcome = execute(
        run_context(
            http,
            webhook_payload(body),
            {"url": receiver.url_for("/hook"), "secret": WEBHOOK_SECRET},
        )
    )

    assert outcome == Outcome("webhook 200")
    (request,) = receiver.requests
    assert request.headers["content-type"] == "application/json"
    assert request.body == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert Webhook(WEBHOOK_SECRET).verify(request.body, request.headers) == body
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER_SECRET).verify(request.body, request.headers)


def test_sign_matches_the_standardwebhooks_reference_implementation() -> None:
    body = b'{"type":"contact.created","data":{"id":"1f81eb52"}}'
    moment = datetime(2023, 1, 19, 0, 13, 51, tzinfo=UTC)

    ours = sign(WEBHOOK_SECRET, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", int(moment.timestamp()), body)

    assert ours == Webhook(WEBHOOK_SECRET).sign(
        "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", moment, body.decode()
    )


def test_webhook_id_is_the_same_on_every_retry_of_a_run_and_differs_between_runs(
    http: httpx.Client, receiver: Receiver
) -> None:
    options = {"url": receiver.url_for("/hook"), "secret": WEBHOOK_SECRET}
    receiver.fail_next(1, 503)
    with pytest.raises(ActionFailed):
        execute(run_context(http, webhook_payload(), options, run_id=41))

    execute(run_context(http, webhook_payload(), options, run_id=41))
    execute(run_context(http, webhook_payload(), options, run_id=42))

    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids == ["run_41", "run_41", "run_42"]
    for request in receiver.requests:
        Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)


def test_webhook_timestamp_is_taken_at_each_attempt(
    http: httpx.Client, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    moments = iter([now - 120, now])
    monkeypatch.setattr(webhook, "clock", lambda: next(moments))
    options = {"url": receiver.url_for("/hook"), "secret": WEBHOOK_SECRET}
    receiver.fail_next(1, 500)

    with pytest.raises(ActionFailed):
        execute(run_context(http, webhook_payload(), options, run_id=7))
    execute(run_context(http, webhook_payload(), options, run_id=7))

    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert stamps == [int(now - 120), int(now)]
    first, second = receiver.requests
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    Webhook(WEBHOOK_SECRET).verify(second.body, second.headers)


def test_webhook_timestamp_is_the_current_unix_time_in_seconds(
    http: httpx.Client, receiver: Receiver
) -> None:
    before = int(time.time())
    execute(
        run_context(
            http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": WEBHOOK_SECRET}
        )
    )
    after = int(time.time())

    assert before <= int(receiver.requests[0].headers["webhook-timestamp"]) <= after


def test_webhook_secret_and_url_can_come_from_the_environment(
    http: httpx.Client, receiver: Receiver
) -> None:
    environ = {"CRM_OPS_SECRET": WEBHOOK_SECRET, "CRM_OPS_URL": receiver.url_for("/ops")}

    execute(
        run_context(
            http,
            webhook_payload(),
            {"url": "env:CRM_OPS_URL", "secret": "env:CRM_OPS_SECRET"},
            environ=environ,
        )
    )

    (request,) = receiver.requests
    assert request.path == "/ops"
    Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)


def test_a_missing_environment_variable_is_rejected_naming_it(
    http: httpx.Client, receiver: Receiver
) -> None:
    with pytest.raises(ActionRejected, match="CRM_OPS_SECRET is not set"):
        execute(
            run_context(
                http,
                webhook_payload(),
                {"url": receiver.url_for("/h"), "secret": "env:CRM_OPS_SECRET"},
            )
        )

    assert receiver.count() == 0


def test_the_url_rendered_at_firing_is_used_when_the_options_have_none(
    http: httpx.Client, receiver: Receiver
) -> None:
    execute(
        run_context(
            http, webhook_payload(url=receiver.url_for("/fired")), {"secret": WEBHOOK_SECRET}
        )
    )

    assert [r.path for r in receiver.requests] == ["/fired"]


def test_two_secrets_during_a_rotation_give_two_signatures(
    http: httpx.Client, receiver: Receiver
) -> None:
    options = {"url": receiver.url_for("/h"), "secret": f"{WEBHOOK_SECRET} {OTHER_SECRET}"}

    execute(run_context(http, webhook_payload(), options))

    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    Webhook(OTHER_SECRET).verify(request.body, request.headers)


@pytest.mark.parametrize("secret", ["not-a-secret", "whsec_", "whsec_%%%notbase64"])
def test_a_malformed_secret_is_rejected_before_sending(
    http: httpx.Client, receiver: Receiver, secret: str
) -> None:
    with pytest.raises(ActionRejected, match="secret"):
        execute(
            run_context(http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": secret})
        )

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
        execute(
            run_context(
                http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": WEBHOOK_SECRET}
            )
        )

    assert isinstance(caught.value, ActionRejected) is rejected
    assert str(caught.value).startswith(f"webhook answered {status}")
    assert "receiver's own words" not in str(caught.value)


def test_gone_says_the_receiver_wants_no_more(http: httpx.Client, receiver: Receiver) -> None:
    receiver.fail_next(1, 410)

    with pytest.raises(ActionRejected, match="stop sending"):
        execute(
            run_context(
                http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": WEBHOOK_SECRET}
            )
        )


def test_a_503_with_retry_after_as_a_date_is_honoured(
    http: httpx.Client, receiver: Receiver
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    receiver.fail_next(1, 503, headers={"Retry-After": later})

    with pytest.raises(ActionFailed) as caught:
        execute(
            run_context(
                http, webhook_payload(), {"url": receiver.url_for("/h"), "secret": WEBHOOK_SECRET}
            )
        )

    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


def test_a_slow_receiver_fails_within_the_configured_timeout(
    http: httpx.Client, receiver: Receiver
) -> None:
    receiver.latency(20)
    options = {"url": receiver.url_for("/h"), "secret": WEBHOOK_SECRET, "timeout": 0.5}
    started = time.monotonic()

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, webhook_payload(), options))

    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, ActionRejected)
    assert 0.4 < elapsed < 3
    assert receiver.count() == 1


def test_a_refused_connection_is_retried(http: httpx.Client) -> None:
    with pytest.raises(ActionFailed) as caught:
        execute(
            run_context(http, webhook_payload(), {"url": refused_url(), "secret": WEBHOOK_SECRET})
        )

    assert not isinstance(caught.value, ActionRejected)
