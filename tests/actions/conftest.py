"""Fixtures of the action tests (the local receiver and the fake HubSpot are in
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The worker's HTTP client."""
    with httpx.Client() as client:
        yield client
