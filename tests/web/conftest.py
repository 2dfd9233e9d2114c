"""Fixtures of the web tests: the app on the clean test database, under Starlette's TestClient."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from service.web.app import create_app
from tests.factories import METRICS_TOKEN
from tests.support import make_settings


@pytest.fixture
def client(clean_db: str) -> Iterator[TestClient]:
    """The web app with the default settings (and the tests' client secret)."""
    with TestClient(create_app(make_settings(), database_url=clean_db)) as test_client:
        yield test_client


@pytest.fixture
def metrics_client(clean_db: str) -> Iterator[TestClient]:
    """The web app with METRICS_TOKEN set: /metrics only for its bearer."""
    app = create_app(make_settings(METRICS_TOKEN=METRICS_TOKEN), database_url=clean_db)
    with TestClient(app) as test_client:
        yield test_client
