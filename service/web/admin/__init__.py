"""The admin tree: /admin/api/... (JSON, bearer token) and /admin pages (session cookie).

All of it answers 404 while ADMIN_TOKEN is unset, as if it were not there. `mount()` gives what
the app mounts; api.py, pages.py and forms.py hold the endpoints, auth.py the keys.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service.web.admin.api import routes as api_routes
from service.web.admin.forms import routes as form_routes
from service.web.admin.pages import routes as page_routes


class _WhenEnabled:
    """Pass requests on while ADMIN_TOKEN is set; 404 otherwise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["app"].state.config.settings.admin_token is None:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def mount() -> list[BaseRoute]:
    """The /admin routes, to add to the app's route table."""
    tree = Router(
        routes=[Mount("/api", routes=api_routes), *page_routes, *form_routes],
    )
    return [
        Route("/admin", _WhenEnabled(RedirectResponse("/admin/", status_code=307))),
        Mount("/admin", app=_WhenEnabled(tree)),
    ]
