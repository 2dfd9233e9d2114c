"""service.actions.slack: posting to Slack's incoming webhooks, against a local receiver."""

from __future__ import annotations

import time

import httpx
import pytest

from service.actions import ActionFailed, ActionRejected, Outcome, execute
from tests.factories import SLACK_PATH, run_context, slack_payload
from tests.receivers import Receiver, refused_url


def test_slack_posts_text_and_blocks_to_the_configured_url(
    http: httpx.Client, receiver: Receiver
) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Won*"}}]

    outcome = execute(
        run_context(http, slack_payload(blocks=blocks), {"url": receiver.url_for(SLACK_PATH)})
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
        run_context(http, slack_payload("hello"), slack_webhook_url=receiver.url_for(SLACK_PATH))
    )

    assert outcome.summary == "slack 200"
    assert outcome.created is None
    assert receiver.requests[0].json() == {"text": "hello"}


def test_slack_url_option_can_name_an_environment_variable(
    http: httpx.Client, receiver: Receiver
) -> None:
    execute(
        run_context(
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
        execute(run_context(http, slack_payload()))


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
        execute(run_context(http, slack_payload(), {"url": url}))

    assert f"slack answered {status} {code}" in str(caught.value)
    assert SLACK_PATH not in str(caught.value)
    assert receiver.count() == 1


def test_slack_rate_limit_is_retried_after_retry_after(
    http: httpx.Client, receiver: Receiver
) -> None:
    receiver.fail_next(1, 429, body=b"rate_limited", headers={"Retry-After": "30"})

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)}))

    assert not isinstance(caught.value, ActionRejected)
    assert caught.value.retry_after == 30
    assert "retry after 30 s" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_slack_server_errors_are_retried(
    http: httpx.Client, receiver: Receiver, status: int
) -> None:
    receiver.fail_next(1, status, body=b"rollup_error")
    ctx = run_context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)})

    with pytest.raises(ActionFailed) as caught:
        execute(ctx)

    assert not isinstance(caught.value, ActionRejected)
    assert execute(ctx).summary == "slack 200"  # the next attempt goes through
    assert receiver.count() == 2


def test_slack_timeout_is_retried(http: httpx.Client, receiver: Receiver) -> None:
    receiver.latency(20)
    started = time.monotonic()

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, slack_payload(), {"url": receiver.url_for(), "timeout": 0.3}))

    assert not isinstance(caught.value, ActionRejected)
    assert "Timeout" in str(caught.value)
    assert time.monotonic() - started < 5
    assert receiver.count() == 1


def test_slack_connection_refused_is_retried(http: httpx.Client) -> None:
    url = refused_url()

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, slack_payload(), {"url": url}))

    assert not isinstance(caught.value, ActionRejected)
    assert url not in str(caught.value)


def test_slack_dropped_connection_is_retried(http: httpx.Client, receiver: Receiver) -> None:
    receiver.drop_next(1)

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)}))

    assert not isinstance(caught.value, ActionRejected)
    assert receiver.count(status=0) == 1


def test_a_redirect_is_not_followed_and_is_rejected(http: httpx.Client, receiver: Receiver) -> None:
    receiver.fail_next(1, 301, headers={"Location": receiver.url_for("/elsewhere")})

    with pytest.raises(ActionRejected, match="redirect"):
        execute(run_context(http, slack_payload(), {"url": receiver.url_for(SLACK_PATH)}))

    assert receiver.count() == 1
