"""The peer in bench/peer.py: the HubSpot webhook handler people usually write.

Nothing of service/ is used: this is what an integrator writes with Starlette, the official
`hubspot-api-client` and psycopg, following HubSpot's docs. It verifies the v3 signature with
the SDK's `Signature.is_valid`, then for each event GETs the contact
(`crm.contacts.basic_api.get_by_id`, the SDK's default retries: urllib3's, which retry a 429 up
to three times after its Retry-After) and upserts it into a table, then answers 200; 500 if
anything failed, so HubSpot retries the delivery. The blocking work runs in Starlette's thread
pool (the kind reading: the same code on the event loop would serialise every delivery).

`PEER_COMMIT=delivery` (default, psycopg's `with connect()` idiom) commits once per delivery, so
a failure rolls back its earlier upserts; `PEER_COMMIT=event` commits each upsert.

    DATABASE_URL=... HUBSPOT_CLIENT_SECRET=... HUBSPOT_ACCESS_TOKEN=... HUBSPOT_HOST=http://...
    python -m uvicorn peer_handler:app --app-dir bench --port 8001
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import hubspot
import psycopg
from hubspot.utils.signature import Signature
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# The integrator's migration (bench/peer.py runs it before starting the app).
SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    hubspot_id bigint PRIMARY KEY,
    email text,
    firstname text,
    lastname text,
    hubspot_updated_at timestamptz,
    synced_at timestamptz NOT NULL DEFAULT now()
)
"""
UPSERT = """
INSERT INTO contacts (hubspot_id, email, firstname, lastname, hubspot_updated_at)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (hubspot_id) DO UPDATE SET email = excluded.email, firstname = excluded.firstname,
    lastname = excluded.lastname, hubspot_updated_at = excluded.hubspot_updated_at,
    synced_at = now()
"""

log = logging.getLogger("peer")

DATABASE_URL = os.environ.get("DATABASE_URL", "")
CLIENT_SECRET = os.environ.get("HUBSPOT_CLIENT_SECRET", "")
COMMIT_EACH_EVENT = os.environ.get("PEER_COMMIT", "delivery") == "event"
client = hubspot.Client.create(
    access_token=os.environ.get("HUBSPOT_ACCESS_TOKEN"),
    host=os.environ.get("HUBSPOT_HOST", "https://api.hubapi.com"),
)


def sync_contacts(events: list[dict[str, Any]]) -> None:
    """GET each event's contact from HubSpot and upsert it."""
    with psycopg.connect(DATABASE_URL, autocommit=COMMIT_EACH_EVENT) as connection:
        for event in events:
            if not str(event.get("subscriptionType", "")).startswith("contact."):
                continue
            contact = client.crm.contacts.basic_api.get_by_id(str(event["objectId"]))
            props = contact.properties
            connection.execute(
                UPSERT,
                (
                    int(contact.id),
                    props.get("email"),
                    props.get("firstname"),
                    props.get("lastname"),
                    contact.updated_at,
                ),
            )


async def hubspot_webhook(request: Request) -> Response:
    """Verify the v3 signature, sync every event's contact, answer 200 (500 on any failure)."""
    body = await request.body()
    try:
        valid = Signature.is_valid(
            signature=request.headers.get("X-HubSpot-Signature-v3", ""),
            client_secret=CLIENT_SECRET,
            request_body=body.decode("utf-8"),
            http_uri=str(request.url),
            signature_version="v3",
            timestamp=request.headers.get("X-HubSpot-Request-Timestamp"),
        )
    except Exception:  # noqa: BLE001 - the SDK raises on a stale or missing timestamp
        valid = False
    if not valid:
        return Response(status_code=401)
    try:
        await run_in_threadpool(sync_contacts, json.loads(body))
    except Exception as exc:  # noqa: BLE001 - any failure: 500, so HubSpot retries the delivery
        log.warning("hubspot_sync_failed", extra={"error": type(exc).__name__})
        return Response(status_code=500)
    return Response(status_code=200)


app = Starlette(routes=[Route("/webhooks/hubspot", hubspot_webhook, methods=["POST"])])
