"""`doctor --self-test`: a signed, marked test event through the public URL into this database.

Through ngrok or Render this proves the whole path HubSpot's deliveries take: DNS, TLS, the
proxy, the signature check against WEBHOOK_PUBLIC_URL and the client secret, and storage. The
event's subscription type is `doctor.selfTest` (events.SELF_TEST_TYPE) on portal 0: a namespace
HubSpot never sends, kind OTHER for the mirror (which ignores it), skipped by rules and
handlers, so it ends `ignored` and fires nothing; its row stays as a record of the test.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

import httpx
import sqlalchemy as sa

from service import inbox
from service.events import SELF_TEST_TYPE
from service.ops.checks import Check
from service.settings import WEBHOOK_PATH, Settings, dev_client_secret
from service.signature import sign_v3

SELF_TEST_SECONDS = 5.0


def check_self_test(
    settings: Settings,
    engine: sa.Engine,
    wait_seconds: float = SELF_TEST_SECONDS,
    post: Callable[..., httpx.Response] = httpx.post,
) -> Check:
    """Sign a marked test event, POST it to WEBHOOK_PUBLIC_URL, find it in this database."""
    name, url = "self-test", settings.webhook_public_url
    secret = (settings.client_secrets or (None,))[0] or dev_client_secret(
        settings.data_dir, create=False
    )
    if url is None or secret is None:
        fix = "set WEBHOOK_PUBLIC_URL and HUBSPOT_CLIENT_SECRET as the server has them"
        return Check(name, "fail", "needs WEBHOOK_PUBLIC_URL and a client secret", fix)
    marker = secrets.randbelow(2**53)
    now_ms = int(time.time() * 1000)
    body = json.dumps(
        [
            {
                "eventId": marker,
                "subscriptionId": 0,
                "portalId": 0,
                "appId": 0,
                "occurredAt": now_ms,
                "subscriptionType": SELF_TEST_TYPE,
                "attemptNumber": 0,
                "objectId": marker,
                "changeSource": "DOCTOR",
            }
        ],
        separators=(",", ":"),
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "hubspot-webhooks-doctor",
        "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, str(now_ms)),
        "X-HubSpot-Request-Timestamp": str(now_ms),
    }
    started = time.monotonic()
    try:
        response = post(url, content=body, headers=headers, timeout=10.0)
    except httpx.HTTPError as exc:
        fix = "start the service and check that this URL (DNS, tunnel, platform) routes to it"
        return Check(name, "fail", f"could not POST to {url}: {type(exc).__name__}", fix)
    if not 200 <= response.status_code < 300:
        return Check(name, "fail", f"{url} answered {response.status_code}", _post_fix(response))
    wanted = inbox.Filters(subscription_type=SELF_TEST_TYPE, object_id=marker)
    while True:
        with engine.connect() as connection:
            rows = inbox.list_events(connection, wanted, limit=1)
        elapsed = time.monotonic() - started
        if rows:
            detail = f"signed test event stored as inbox id {rows[0].id} in {elapsed * 1000:.0f} ms"
            return Check(name, "ok", detail)
        if elapsed > wait_seconds:
            fix = "WEBHOOK_PUBLIC_URL reaches a service on another database: compare DATABASE_URL"
            detail = f"{url} answered {response.status_code} but the event is not in this database"
            return Check(name, "fail", detail, fix)
        time.sleep(0.1)


def _post_fix(response: httpx.Response) -> str:
    if response.status_code == 401:
        return (
            "the server refused the signature: run it with the same HUBSPOT_CLIENT_SECRET and"
            " WEBHOOK_PUBLIC_URL as this command"
        )
    if response.status_code == 404:
        return f"nothing listens there: the path must be {WEBHOOK_PATH} on this service"
    if response.status_code == 503:
        return "the server cannot store events: check its database"
    return "see the server's log for this request"
