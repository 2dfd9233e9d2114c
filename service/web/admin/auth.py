"""Who may use /admin: a bearer token for the JSON API, a signed session cookie for the pages.

Every key is derived from ADMIN_TOKEN (HMAC-SHA256 of a fixed label, keyed by the token), so
nothing is stored and changing the token ends every session. The session cookie is
`nonce.issued.mac`, HttpOnly, SameSite=Strict, Secure when the request came over https, valid
for 12 hours; logging out deletes it from the browser. Each form that changes something carries
a CSRF token, the HMAC of the session's nonce, checked in constant time on the POST.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "hubspot_webhooks_admin"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in browser: its session's nonce and the CSRF token its forms carry."""

    nonce: str
    csrf: str


def admin_token(request: Request) -> str | None:
    """ADMIN_TOKEN, or None when the admin tree is switched off."""
    token: str | None = request.app.state.config.settings.admin_token
    return token


def _mac(token: str, label: str, message: str) -> str:
    key = hmac.new(token.encode(), f"hubspot-webhooks admin {label}".encode(), hashlib.sha256)
    return hmac.new(key.digest(), message.encode(), hashlib.sha256).hexdigest()


def token_matches(given: str, token: str) -> bool:
    """Whether `given` is the admin token, compared in constant time."""
    return hmac.compare_digest(given.encode(), token.encode())


def bearer_matches(request: Request, token: str) -> bool:
    """Whether the request's `Authorization: Bearer ...` header carries the admin token."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(given.strip(), token)


def new_session_cookie(token: str, *, now: float | None = None) -> str:
    """The value of a fresh session cookie."""
    nonce = secrets.token_urlsafe(18)
    issued = str(int(time.time() if now is None else now))
    return f"{nonce}.{issued}.{_mac(token, 'session', f'{nonce}.{issued}')}"


def session(request: Request, token: str, *, now: float | None = None) -> Session | None:
    """The request's valid, unexpired session, or None."""
    nonce, _, rest = request.cookies.get(COOKIE, "").partition(".")
    issued, _, mac = rest.partition(".")
    if not nonce or not issued.isdigit():
        return None
    expected = _mac(token, "session", f"{nonce}.{issued}")
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        return None
    age = (time.time() if now is None else now) - int(issued)
    if not 0 <= age <= SESSION_SECONDS:
        return None
    return Session(nonce=nonce, csrf=_mac(token, "csrf", nonce))


def csrf_matches(current: Session, given: str) -> bool:
    """Whether a form's CSRF token is the session's, compared in constant time."""
    return hmac.compare_digest(current.csrf.encode(), given.encode())


def set_session_cookie(response: Response, request: Request, value: str) -> None:
    """Give the browser its session: HttpOnly, SameSite=Strict, Secure over https."""
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    """Log the browser out."""
    response.delete_cookie(
        COOKIE,
        path="/admin",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
