"""GET /oauth/install and GET /oauth/callback: installing the app in a HubSpot account.

It owns the two routes' HTTP side: where HubSpot sends the user back (beside the public webhook
URL, else this host), the redirect to the consent page, the small HTML pages the installing user
sees, and the 404 when no HUBSPOT_CLIENT_ID is set. Everything HubSpot-related (the signed
state, the consent URL, trading the code for tokens and storing them) is service.hubspot.oauth.
"""

from __future__ import annotations

import logging
import time
from html import escape
from secrets import token_urlsafe
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.hubspot.oauth import (
    InvalidState,
    TokenStore,
    authorize_url,
    check_state,
    sign_state,
)
from service.hubspot.sdk import HubSpotError
from service.settings import Settings
from service.web.webhook import error_response

if TYPE_CHECKING:
    from service.web.app import Config

log = logging.getLogger(__name__)


def _redirect_uri(request: Request, settings: Settings) -> str:
    """Where HubSpot sends the user back: beside the public webhook URL, else this host."""
    if settings.webhook_public_url is not None:
        parts = urlsplit(settings.webhook_public_url)
        return f"{parts.scheme}://{parts.netloc}/oauth/callback"
    return str(request.url_for("oauth_callback"))


async def oauth_install(request: Request) -> Response:
    """GET /oauth/install: send the installing user to HubSpot's consent page."""
    config: Config = request.app.state.config
    if config.settings.client_id is None:
        return error_response(
            404, "oauth_not_configured", "set HUBSPOT_CLIENT_ID to install as a public app"
        )
    state = sign_state(config.secrets[0], now=time.time(), nonce=token_urlsafe(16))
    url = authorize_url(
        client_id=config.settings.client_id,
        redirect_uri=_redirect_uri(request, config.settings),
        scopes=config.settings.scopes,
        state=state,
    )
    return RedirectResponse(url, status_code=302)


async def oauth_callback(request: Request) -> Response:
    """GET /oauth/callback: check the state, trade the code for tokens, store them."""
    config: Config = request.app.state.config
    if config.settings.client_id is None:
        return error_response(
            404, "oauth_not_configured", "set HUBSPOT_CLIENT_ID to install as a public app"
        )
    code, state = request.query_params.get("code"), request.query_params.get("state")
    if not code or not state:
        error = request.query_params.get("error_description") or "missing code or state"
        return _page(400, "Install failed", error)
    try:
        check_state(config.secrets, state, now=time.time())
    except InvalidState as exc:
        log.warning("oauth_rejected", extra={"reason": str(exc)})
        return _page(400, "Install failed", f"{exc}.")
    engine: sa.Engine = request.app.state.engine
    store = TokenStore.from_settings(config.settings, engine)
    try:
        portal_id = await run_in_threadpool(
            store.install, code, _redirect_uri(request, config.settings)
        )
    except HubSpotError as exc:
        log.error("oauth_exchange_failed", extra={"error": type(exc).__name__})
        return _page(502, "Install failed", "HubSpot did not accept the authorization code.")
    log.info("oauth_installed", extra={"portal_id": portal_id})
    return _page(200, "Installed", f"The app is installed for HubSpot account {portal_id}.")


def _page(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
    )
    return HTMLResponse(body, status_code=status)
