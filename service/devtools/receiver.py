"""`hubspot-webhooks receiver`: a local endpoint for the `webhook` action.

It verifies Standard Webhooks signatures and prints each delivery. For trying rules out, not for
production: it keeps the ids it has seen in memory to show that retries of one run arrive with
the same `webhook-id`.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import sys
import time
from typing import TextIO

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.actions.webhook import sign
from service.logs import configure_logging
from service.settings import Settings

TOLERANCE_SECONDS = 300
RECEIVER_SECRET_FILE = "receiver-secret"  # noqa: S105 - a file name, not a secret


def new_secret() -> str:
    """A fresh `whsec_` secret (24 random bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def create_receiver(secret: str, out: TextIO = sys.stdout) -> Starlette:
    """An app that accepts POSTs signed with `secret` on any path and prints each delivery."""
    seen: set[str] = set()

    async def receive(request: Request) -> Response:
        body = await request.body()
        msg_id = request.headers.get("webhook-id", "")
        timestamp = request.headers.get("webhook-timestamp", "")
        given = request.headers.get("webhook-signature", "").split()
        if not msg_id or not timestamp.isdigit() or not given:
            print("rejected: missing webhook-id, webhook-timestamp or webhook-signature", file=out)
            return JSONResponse({"error": "missing_headers"}, status_code=400)
        if abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
            print(f"rejected {msg_id}: timestamp outside 5 minutes", file=out)
            return JSONResponse({"error": "stale_timestamp"}, status_code=400)
        expected = sign(secret, msg_id, int(timestamp), body).encode()
        # As bytes: compare_digest refuses non-ASCII text, and a header may carry any.
        if not any(hmac.compare_digest(expected, g.encode()) for g in given):
            print(f"rejected {msg_id}: bad signature", file=out)
            return JSONResponse({"error": "bad_signature"}, status_code=401)
        repeat = " (a retry of a delivery already received)" if msg_id in seen else ""
        seen.add(msg_id)
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = {}
        if not isinstance(envelope, dict):
            envelope = {}  # signed, so delivered; just not shaped like the webhook action's body
        event = envelope.get("event")
        if not isinstance(event, dict):
            event = {}
        print(
            f"verified delivery {msg_id}{repeat}: rule {envelope.get('rule')!r},"
            f" {envelope.get('type')} {event.get('object_type')}:{event.get('object_id')}"
            f" {event.get('property_name') or ''}={event.get('property_value') or ''}",
            file=out,
            flush=True,
        )
        return Response(status_code=204)

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])


def serve(port: int, secret: str | None, settings: Settings) -> int:
    """Receive deliveries on 127.0.0.1:`port` until interrupted; exit code 0.

    Without `secret`, uses the one in DATA_DIR/receiver-secret, created once (mode 0600) and
    never printed.
    """
    import uvicorn

    configure_logging("WARNING", "console")
    if secret is None:
        path = settings.data_dir / RECEIVER_SECRET_FILE
        if not path.is_file():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(new_secret())
        secret = path.read_text().strip()
        sys.stderr.write(f"secret: in {path} (never printed)\n")
    sys.stderr.write(f"receiving signed deliveries on http://127.0.0.1:{port}/\n")
    uvicorn.run(create_receiver(secret), host="127.0.0.1", port=port, log_config=None)
    return 0
