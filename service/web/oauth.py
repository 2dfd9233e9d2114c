"""GET /oauth/install and GET /oauth/callback: installing the app in a HubSpot account.

It owns the two routes' HTTP side: the install cookie that binds a state to the browser that
asked for it (HttpOnly, SameSite=Lax because HubSpot's redirect back is a cross-site top-level
navigation, Secure and `__Host-` on https), the redirect to the consent page, the small HTML
pages the installing user sees, and the 404 when no HUBSPOT_CLIENT_ID or no redirect URL is
configured. Where HubSpot sends the user back comes from configuration only, never from the
Host header. The states themselves are service.hubspot.installs; trading the code for tokens
and storing them sealed is service.hubspot.oauth.
"""

from __future__ import annotations

import logging
from html import escape
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.hubspot import installs
from service.hubspot.installs import InvalidState
from service.hubspot.oauth import TokenKeyError, TokenStore, authorize_url
from service.hubspot.sdk import HubSpotError
from service.web.webhook import error_response

if TYPE_CHECKING:
    from service.web.app import Config

log = logging.getLogger(__name__)

COOKIE = "hubspot_oauth_install"
# Browsers accept a `__Host-` cookie only if Secure, Path=/ and without Domain: nothing on a
# sibling subdomain can set or shadow it.
SECURE_COOKIE = "__Host-" + COOKIE


def _not_configured(config: Config) -> Response | None:
    """The 404 of a service that cannot install: no client id, or nowhere to come back to."""
    if config.settings.client_id is None:
        return error_response(
            404, "oauth_not_configured", "set HUBSPOT_CLIENT_ID to install as a public app"
        )
    if installs.redirect_uri(config.settings) is None:
        return error_response(
            404,
            "oauth_not_configured",
            "set WEBHOOK_PUBLIC_URL (or OAUTH_REDIRECT_URL) so HubSpot knows where to send"
            " the installing user back",
        )
    return None


def _cookie_name(redirect: str) -> tuple[str, bool]:
    """The install cookie's name and Secure flag: `__Host-` and Secure on https."""
    secure = urlsplit(redirect).scheme == "https"
    return (SECURE_COOKIE if secure else COOKIE), secure


async def oauth_install(request: Request) -> Response:
    """GET /oauth/install: send the installing user to HubSpot's consent page."""
    config: Config = request.app.state.config
    refused = _not_configured(config)
    if refused is not None:
        return refused
    assert config.settings.client_id is not None  # checked above
    redirect = installs.redirect_uri(config.settings)
    assert redirect is not None  # checked above
    name, secure = _cookie_name(redirect)
    browser = installs.browser_key(request.cookies.get(name))
    engine: sa.Engine = request.app.state.engine
    state = await run_in_threadpool(_issue, engine, browser)
    url = authorize_url(
        client_id=config.settings.client_id,
        redirect_uri=redirect,
        scopes=config.settings.scopes,
        state=state,
    )
    response = RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        name,
        browser,
        max_age=installs.STATE_TTL_SECONDS,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )
    return response


async def oauth_callback(request: Request) -> Response:
    """GET /oauth/callback: use up the state, trade the code for tokens, store them sealed."""
    config: Config = request.app.state.config
    refused = _not_configured(config)
    if refused is not None:
        return refused
    redirect = installs.redirect_uri(config.settings)
    assert redirect is not None  # checked above
    code, state = request.query_params.get("code"), request.query_params.get("state")
    if not code or not state:
        error = request.query_params.get("error_description") or "missing code or state"
        return _page(400, "Install failed", error)
    name, _ = _cookie_name(redirect)
    engine: sa.Engine = request.app.state.engine
    try:
        await run_in_threadpool(_consume, engine, state, request.cookies.get(name))
    except InvalidState as exc:
        log.warning("oauth_rejected", extra={"reason": str(exc)})
        return _page(400, "Install failed", f"{exc}.")
    store = TokenStore.from_settings(config.settings, engine)
    try:
        portal_id = await run_in_threadpool(store.install, code, redirect)
    except TokenKeyError:
        log.error("oauth_not_stored", extra={"reason": "no TOKEN_ENCRYPTION_KEY"})
        return _page(500, "Install failed", "The service has no key to store tokens with.")
    except HubSpotError as exc:
        log.error("oauth_exchange_failed", extra={"error": type(exc).__name__})
        return _page(502, "Install failed", "HubSpot did not accept the authorization code.")
    log.info("oauth_installed", extra={"portal_id": portal_id})
    page = _page(200, "Installed", f"The app is installed for HubSpot account {portal_id}.")
    page.delete_cookie(name, path="/", secure=name == SECURE_COOKIE, httponly=True)
    return page


def _issue(engine: sa.Engine, browser: str) -> str:
    with engine.begin() as connection:
        return installs.issue_state(connection, browser)


def _consume(engine: sa.Engine, state: str, browser: str | None) -> None:
    # Autocommit: the state is spent even when it is refused (consume_state raises).
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        installs.consume_state(connection, state, browser)


def _page(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        f"<!doctype html><meta charset=utf-8><title>{escape(title)}</title>"
        f"<h1>{escape(title)}</h1><p>{escape(message)}</p>"
    )
    return HTMLResponse(body, status_code=status)
