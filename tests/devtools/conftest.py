"""Fixtures of the devtools tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.receivers import WebhookEndpoint, webhook_endpoint


@pytest.fixture
def endpoint() -> Iterator[WebhookEndpoint]:
    """A stand-in for the service's webhook endpoint, running on a free port of 127.0.0.1."""
    with webhook_endpoint() as running:
        yield running
