"""Fixtures of the HubSpot tests (the fake HubSpot and API clients are in tests/conftest.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from service import db
from service.hubspot.oauth import Tokens, save_tokens
from service.hubspot.sealing import TokenCipher
from tests.factories import TOKEN_KEY
from tests.fake_hubspot import FakeHubSpot
from tests.support import InstallTokens


@pytest.fixture
def install_tokens(clean_db: str, engine: sa.Engine, fake: FakeHubSpot) -> InstallTokens:
    """Install the app in a portal of the clean database: OAuth tokens the fake issued, stored
    as the install would (sealed with TOKEN_KEY), expiring in `expires_in`."""

    def install(portal_id: int, *, expires_in: timedelta) -> Tokens:
        access_token, refresh_token = fake.issue_tokens(portal_id)
        tokens = Tokens(access_token, refresh_token, db.utcnow() + expires_in)
        scopes = "oauth crm.objects.contacts.read"
        save_tokens(engine, portal_id, tokens, scopes, cipher=TokenCipher((TOKEN_KEY,)))
        return tokens

    return install
