"""service.actions: running one attempt of one action, the dry run and log actions, and the
helpers every action shares (secrets, timeouts, Retry-After)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from service.actions import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    ActionRejected,
    Outcome,
    execute,
    option_timeout,
    resolve_secret,
    retry_after_seconds,
)
from tests.factories import run_context, slack_payload


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
        execute(run_context(http, {"action": "fax"}))


def test_log_action_logs_the_run_but_not_the_message(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.actions")
    message = "Deal won by ada@example.com"

    outcome = execute(run_context(http, {"action": "log", "message": message}, run_id=9))

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

    execute(run_context(http, payload))

    (record,) = [r for r in caplog.records if r.getMessage() == "action_logged"]
    assert vars(record)["would"] == "slack"
    assert "secret plans" not in json.dumps(vars(record), default=str)


def test_timeouts_default_to_15_seconds_and_are_capped_at_30() -> None:
    assert option_timeout({}) == DEFAULT_TIMEOUT == 15
    assert option_timeout({"timeout": 5}) == 5
    assert option_timeout({"timeout": 600}) == MAX_TIMEOUT == 30
    for bad in (0, -1, True, "10"):
        with pytest.raises(ActionRejected, match="timeout"):
            option_timeout({"timeout": bad})
