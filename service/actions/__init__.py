"""Executors of action runs: one attempt at the side effect an outbox row describes.

The worker claims a due `action_runs` row, builds a `RunContext` and calls `execute`, outside any
database transaction. `execute` either returns an `Outcome` (the run is done) or raises:

- `ActionFailed`: it did not happen (or may not have): retry later, after `retry_after` seconds
  when the target said so (HTTP 429 or 503 with Retry-After);
- `ActionRejected` (a subclass): the target refused it for good, or the configuration can never
  work (an unset env var, a malformed secret, a 4xx other than 408/429): dead-letter it.

Delivery is at least once. A webhook carries the same `webhook-id` on every retry of a run, so
receivers can drop repeats (Standard Webhooks); a HubSpot task or note carries its run's marker,
and a retry looks for it before creating again (actions/hubspot.py); Slack has no idempotency
key, so a timeout after Slack posted can repeat the message.

Nothing here logs or returns secrets, URLs (Slack webhook URLs are credentials), bodies or
property values: summaries and error messages carry action names, statuses and ids only.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from service.hubspot.client import HubSpotApi

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0  # seconds to open a connection
DEFAULT_TIMEOUT = 15.0  # seconds per read/write unless the action's `timeout` option says less
MAX_TIMEOUT = 30.0  # Standard Webhooks recommends 15-30 s; longer would stall the act loop
ANSWER_BYTES = 256  # how much of a response body we read (Slack's error code fits)


class ActionFailed(Exception):
    """The action did not happen; retry later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds the target asked us to wait, when it did


class ActionRejected(ActionFailed):
    """The target refused it for good (a 4xx other than 408/429): retrying will not help."""


@dataclass(frozen=True, slots=True)
class RunContext:
    """Everything one attempt of one action run needs."""

    run_id: int  # stable across retries
    portal_id: int
    payload: Mapping[str, Any]  # rendered when the rule fired
    options: Mapping[str, Any]  # the action's current options (may hold secrets: url, secret)
    environ: Mapping[str, str]  # to resolve "env:NAME" option values
    slack_webhook_url: str | None
    api: HubSpotApi | None
    http: httpx.Client
    attempt: int = 1  # 1 on the first attempt (and after a replay); more on a retry
    # Whether an earlier attempt may have reached the target: a retry, or the replay of a run
    # that had failed. Side effects that cannot be repeated safely check before acting again.
    tried_before: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """A run that is done: a short summary for the row, and what it created in HubSpot.

    `created` is (object type, id), e.g. ("tasks", 1001), for HubSpot writes: record it in
    `own_writes` so the echo of our own write does not trigger rules.
    """

    summary: str
    created: tuple[str, int] | None = None

    def __str__(self) -> str:
        return self.summary


def execute(ctx: RunContext) -> Outcome:
    """Run one attempt of the action `ctx.payload["action"]` names."""
    # Imported here: the executors import this module's exceptions and helpers.
    from service.actions import hubspot, slack, webhook

    action = ctx.payload.get("action")
    if action == "slack":
        return slack.send(ctx)
    if action == "webhook":
        return webhook.deliver(ctx)
    if action == "hubspot_task":
        return hubspot.create_task(ctx)
    if action == "hubspot_note":
        return hubspot.create_note(ctx)
    if action == "log":
        return log_message(ctx)
    raise ActionRejected(f"unknown action {str(action)[:40]!r}")


def log_message(ctx: RunContext) -> Outcome:
    """The `log` action: an `action_logged` line (its length, not its text: it may be personal)."""
    message = ctx.payload.get("message")
    would = ctx.payload.get("would")
    extra: dict[str, Any] = {
        "run_id": ctx.run_id,
        "portal_id": ctx.portal_id,
        "message_length": len(message) if isinstance(message, str) else 0,
    }
    if isinstance(ctx.payload.get("rule"), str):
        extra["rule"] = ctx.payload["rule"]
    if isinstance(would, Mapping) and isinstance(would.get("action"), str):
        extra["would"] = would["action"]  # a dry run: the action that would have run
    log.info("action_logged", extra=extra)
    return Outcome("logged")


def resolve_secret(value: str, environ: Mapping[str, str]) -> str:
    """`env:NAME` -> the value of NAME (ActionRejected naming NAME if unset); else the literal."""
    if not value.startswith("env:"):
        return value
    name = value[len("env:") :].strip()
    if not name:
        raise ActionRejected("'env:' names no environment variable")
    resolved = environ.get(name, "").strip()
    if not resolved:
        raise ActionRejected(f"environment variable {name} is not set")
    return resolved


def option_timeout(options: Mapping[str, Any]) -> float:
    """The action's `timeout` option in seconds (default 15, at most 30)."""
    value = options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ActionRejected("timeout must be a number of seconds above 0")
    return min(float(value), MAX_TIMEOUT)


def require_http_url(url: str, what: str) -> str:
    """`url` if it is an absolute http(s) URL; else ActionRejected (without echoing it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ActionRejected(f"{what} URL is not an absolute http(s) URL")
    return url


@dataclass(frozen=True, slots=True)
class Answer:
    """What the target answered: status, the start of the body, and Retry-After in seconds."""

    status: int
    head: bytes
    retry_after: float | None


def post(
    http: httpx.Client,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float,
    target: str,
) -> Answer:
    """POST once, never following redirects; network trouble raises ActionFailed.

    Connecting may take 5 s (or `timeout` if less), each read or write `timeout`, and reading
    the answer stops at the deadline, so one attempt is bounded by about connect + timeout.
    """
    limits = httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout))
    deadline = time.monotonic() + min(CONNECT_TIMEOUT, timeout) + timeout
    try:
        with http.stream(
            "POST",
            url,
            content=content,
            headers=dict(headers),
            timeout=limits,
            follow_redirects=False,
        ) as response:
            head = b""
            for chunk in response.iter_bytes():
                head += chunk
                if len(head) >= ANSWER_BYTES or time.monotonic() > deadline:
                    break
            return Answer(
                response.status_code,
                head[:ANSWER_BYTES],
                retry_after_seconds(response.headers.get("Retry-After")),
            )
    except httpx.TimeoutException as exc:
        raise ActionFailed(f"{target}: {type(exc).__name__} after {timeout:g} s") from None
    except httpx.InvalidURL:
        raise ActionRejected(f"{target}: invalid URL") from None
    except httpx.HTTPError as exc:
        # The message of a transport error can carry the URL: report the kind only.
        raise ActionFailed(f"{target}: {type(exc).__name__}") from None


def check_answer(answer: Answer, target: str, detail: str = "") -> None:
    """Raise unless `answer` is a 2xx: 408/429/5xx fail (retry), anything else is rejected."""
    status = answer.status
    if 200 <= status < 300:
        return
    message = f"{target} answered {status}" + (f" {detail}" if detail else "")
    if status in (408, 429) or status >= 500:
        if answer.retry_after is not None:
            message += f"; retry after {answer.retry_after:g} s"
        raise ActionFailed(message, retry_after=answer.retry_after)
    if 300 <= status < 400:
        raise ActionRejected(f"{message} (a redirect: configure the final URL)")
    if status == 410:
        raise ActionRejected(f"{message} (Gone: the receiver asked us to stop sending)")
    raise ActionRejected(message)


_ERROR_CODE = re.compile(rb"^[A-Za-z0-9_.\- ]{1,64}$")


def error_code(head: bytes) -> str:
    """A short machine error code from a response body (Slack's `invalid_blocks`), else ''."""
    text = head.strip()
    return text.decode() if _ERROR_CODE.match(text) else ""


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
