"""The `slack` action: post a message to a Slack incoming webhook.

Slack answers 200 `ok`; a bad message or a dead webhook is a 4xx with a short code in the body
(400 `invalid_blocks`, 403 `action_prohibited`, 404 `no_service`, 410 `channel_is_archived`):
retrying cannot help. 429 carries Retry-After; 5xx, timeouts and connection errors are retried.
The webhook URL is a credential: it is never logged nor put in a summary or error.
"""

from __future__ import annotations

import json
from typing import Any

from service.actions import (
    ActionRejected,
    Outcome,
    RunContext,
    check_answer,
    error_code,
    option_timeout,
    post,
    require_http_url,
    resolve_secret,
)


def webhook_url(ctx: RunContext) -> str:
    """The action's `url` option (a URL or env:NAME), else SLACK_WEBHOOK_URL."""
    configured = ctx.options.get("url")
    if configured is not None and str(configured).strip():
        url = resolve_secret(str(configured).strip(), ctx.environ)
    elif ctx.slack_webhook_url:
        url = ctx.slack_webhook_url
    else:
        raise ActionRejected(
            "no Slack webhook URL: set SLACK_WEBHOOK_URL or the action's url option"
        )
    return require_http_url(url, "Slack webhook")


def message(payload: Any) -> dict[str, Any]:
    """The JSON Slack expects: `text` (the notification fallback) and optional Block Kit blocks."""
    text = payload.get("text")
    blocks = payload.get("blocks")
    if not isinstance(text, str):
        raise ActionRejected("slack payload has no text")
    if blocks is not None and not isinstance(blocks, list):
        raise ActionRejected("slack blocks must be a list of Block Kit blocks")
    body: dict[str, Any] = {"text": text}
    if blocks:
        body["blocks"] = blocks
    return body


def send(ctx: RunContext) -> Outcome:
    """Post the run's message; 'slack 200' when Slack accepted it."""
    url = webhook_url(ctx)
    content = json.dumps(message(ctx.payload), ensure_ascii=False).encode()
    answer = post(
        ctx.http,
        url,
        content=content,
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=option_timeout(ctx.options),
        target="slack",
    )
    check_answer(answer, "slack", error_code(answer.head))
    return Outcome(f"slack {answer.status}")
