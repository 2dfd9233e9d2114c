"""A no-op webhook endpoint for bench/ingest.py: the HTTP ceiling of one uvicorn process.

It reads the whole body and answers 200 with a small JSON document, like the real endpoint's
reply, but checks no signature, parses nothing and stores nothing. Run it as
`python -m uvicorn noop_app:app --app-dir bench --loop uvloop --http httptools`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def receive_webhook(request: Request) -> Response:
    """POST /webhooks/hubspot: read the body, store nothing, answer 200."""
    body = await request.body()
    return JSONResponse({"received": 0, "stored": 0, "duplicates": 0, "bytes": len(body)})


async def healthz(request: Request) -> Response:
    """GET /healthz: the process is up."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/webhooks/hubspot", receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
)
