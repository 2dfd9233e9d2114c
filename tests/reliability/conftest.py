"""Fixtures of the reliability tests: a PostgreSQL cluster of the test's own, migrated; the web
app answering as a real server would (fuzzing)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from service import db
from service.web.app import create_app
from tests.reliability.harness import Cluster
from tests.support import make_settings


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A temporary PostgreSQL cluster on a free port, running and migrated; removed after.

    Its files are not under pytest's tmp_path: when the server runs under a user of its own
    (tests as root), the next pytest session to start resets the pytest-of-<user> directory to
    mode 0700, and a restart of this server could no longer reach its data directory.
    """
    directory = Path(tempfile.mkdtemp(prefix="hubspot-webhooks-cluster-"))
    own = Cluster(directory)
    try:
        own.start()
        db.migrate(own.url)
        yield own
    finally:
        own.remove()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def answering_client(clean_db: str) -> Iterator[TestClient]:
    """The web app (default settings, the tests' client secret) under a TestClient that hands
    back what a real server would answer: an unhandled exception becomes the 500 HubSpot would
    see, instead of being raised into the test (tests/web's `client` raises it)."""
    app = create_app(make_settings(), database_url=clean_db)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
