"""The `webhook` action: POST a signed JSON body to any HTTP receiver (Standard Webhooks 1.0).

Headers (https://www.standardwebhooks.com, spec "Webhook headers"):

    webhook-id: run_<run id>          the same on every retry of a run: the receiver's dedupe key
    webhook-timestamp: <unix seconds>  fresh on every attempt (receivers reject stale ones)
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

The key is the base64 part of the `whsec_...` secret, decoded. Several secrets separated by
spaces (a rotation) give several signatures, space separated, as the spec allows. The body is
sent byte for byte as signed: compact JSON, UTF-8. 2xx is done; 408, 429 and 5xx are retried
(Retry-After honoured); 3xx, 410 Gone and other 4xx are rejected for good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from service.actions import (
    ActionRejected,
    Outcome,
    RunContext,
    check_answer,
    option_timeout,
    post,
    require_http_url,
    resolve_secret,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
USER_AGENT = "hubspot-webhooks"

clock: Callable[[], float] = time.time  # tests replace it to see each attempt's timestamp


def message_id(run_id: int) -> str:
    """The webhook-id of a run: stable across retries, and free of '.' as the spec requires."""
    return f"run_{run_id}"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ActionRejected("webhook secret must look like whsec_<base64>")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ActionRejected("webhook secret is not valid base64 after whsec_") from None
    if not key:
        raise ActionRejected("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks v1 signature: `v1,<base64 HMAC-SHA256(id.timestamp.body)>`."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def encode_body(body: Any) -> bytes:
    """Compact JSON, UTF-8: exactly the bytes that are signed and sent."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def target_url(ctx: RunContext) -> str:
    """The action's current `url` option (a URL or env:NAME), else the URL rendered at firing."""
    configured = ctx.options.get("url") or ctx.payload.get("url")
    if not isinstance(configured, str) or not configured.strip():
        raise ActionRejected("webhook has no url")
    return require_http_url(resolve_secret(configured.strip(), ctx.environ), "webhook")


def deliver(ctx: RunContext) -> Outcome:
    """Sign and POST the run's body; 'webhook <status>' when the receiver took it."""
    url = target_url(ctx)
    raw_secret = ctx.options.get("secret")
    if not isinstance(raw_secret, str) or not raw_secret.strip():
        raise ActionRejected("webhook has no secret: set secret = whsec_... or env:NAME")
    keys = resolve_secret(raw_secret.strip(), ctx.environ).split()
    body = ctx.payload.get("body", {})
    content = encode_body(body)
    msg_id = message_id(ctx.run_id)
    timestamp = int(clock())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, content) for s in keys),
    }
    answer = post(
        ctx.http,
        url,
        content=content,
        headers=headers,
        timeout=option_timeout(ctx.options),
        target="webhook",
    )
    check_answer(answer, "webhook")
    return Outcome(f"webhook {answer.status}")
