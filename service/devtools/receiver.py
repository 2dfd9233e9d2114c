"""A local receiver for the `webhook` action: verifies Standard Webhooks signatures and prints.

For trying rules out (`hubspot-webhooks receiver`), not for production: it keeps the ids it
has seen in memory to show that retries of one run arrive with the same `webhook-id`.
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

TOLERANCE_SECONDS = 300


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
        expected = sign(secret, msg_id, int(timestamp), body)
        if not any(hmac.compare_digest(expected, g) for g in given):
            print(f"rejected {msg_id}: bad signature", file=out)
            return JSONResponse({"error": "bad_signature"}, status_code=401)
        repeat = " (a retry of a delivery already received)" if msg_id in seen else ""
        seen.add(msg_id)
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = {}
        event = envelope.get("event") or {}
        print(
            f"verified delivery {msg_id}{repeat}: rule {envelope.get('rule')!r},"
            f" {envelope.get('type')} {event.get('object_type')}:{event.get('object_id')}"
            f" {event.get('property_name') or ''}={event.get('property_value') or ''}",
            file=out,
            flush=True,
        )
        return Response(status_code=204)

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])
