"""Fixtures of the admin tests: the app with ADMIN_TOKEN set, under TestClient or served by
uvicorn on a free port for a real browser."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from service.web.app import create_app
from tests.factories import ADMIN_TOKEN
from tests.support import free_port, make_settings

CHROMIUM = "/usr/bin/chromium"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def admin_client(clean_db: str) -> Iterator[TestClient]:
    """The web app with ADMIN_TOKEN set."""
    app = create_app(make_settings(ADMIN_TOKEN=ADMIN_TOKEN), database_url=clean_db)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def api(admin_client: TestClient) -> TestClient:
    """The admin app's client, sending the admin token as a bearer on every request."""
    admin_client.headers.update(BEARER)
    return admin_client


@pytest.fixture
def live_server(clean_db: str) -> Iterator[str]:
    """The web app with ADMIN_TOKEN set, served by uvicorn in a thread; yields its base URL."""
    port = free_port()
    app = create_app(make_settings(ADMIN_TOKEN=ADMIN_TOKEN), database_url=clean_db)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="admin-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail("uvicorn did not become ready in 15 s")
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by playwright (skips when either is missing).

    Module-scoped: playwright's sync API keeps an event loop running in this thread while it
    is open, which would stop later tests' asyncio.run."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'"
    )
    executable = shutil.which("chromium") or CHROMIUM
    if not Path(executable).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium: Any, live_server: str) -> Iterator[Any]:
    """A fresh browser context (no cookies) with one page at desktop width."""
    context = chromium.new_context(viewport={"width": 1200, "height": 820}, base_url=live_server)
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()
