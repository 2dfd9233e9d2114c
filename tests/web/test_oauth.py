"""service.web.oauth, the install: /oauth/install, /oauth/callback, and /readyz naming the portals
that must install again; with the fake HubSpot's OAuth.

The app runs under Starlette's TestClient on a real, migrated Postgres; HubSpot's consent page
is skipped (the fake issues the authorization code the user's browser would bring back).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service import db
from service.hubspot.client import NeedsReinstall, from_settings
from service.hubspot.hydration import Hydrator
from service.hubspot.oauth import AUTHORIZE_URL, STATE_TTL_SECONDS, check_state, sign_state
from service.settings import Settings
from service.web.app import create_app
from service.worker.apply import Worker
from tests.factories import OTHER_PORTAL, PORTAL, hs
from tests.fake_hubspot import FakeHubSpot
from tests.support import post_events

CALLBACK = "http://testserver/oauth/callback"


def two_portals_without_tokens(fake: FakeHubSpot) -> None:
    """Seed the fake: contact 501 in both portals, and no private app tokens, so only OAuth
    tokens can read."""
    fake.seed(PORTAL, "contacts", [{"id": "501", "properties": {"email": "ada@example.com"}}])
    fake.seed(OTHER_PORTAL, "contacts", [{"id": "501", "properties": {"email": "bob@example.com"}}])


pytestmark = pytest.mark.fake_hubspot(seed=two_portals_without_tokens)


def oauth_settings(fake: FakeHubSpot, tmp_path: Path, **env: str) -> Settings:
    """A public app's settings: the fake's client id and secret, its URL as the API base."""
    return Settings.from_env(
        {
            "HUBSPOT_CLIENT_ID": fake.client_id,
            "HUBSPOT_CLIENT_SECRET": fake.client_secret,
            "HUBSPOT_API_BASE_URL": fake.url,
            "DATA_DIR": str(tmp_path / "data"),
            **env,
        }
    )


@pytest.fixture
def settings_for_oauth(fake: FakeHubSpot, tmp_path: Path) -> Settings:
    return oauth_settings(fake, tmp_path)


@pytest.fixture
def oauth_client(clean_db: str, settings_for_oauth: Settings) -> Iterator[TestClient]:
    app = create_app(settings_for_oauth, database_url=clean_db)
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def tokens(engine: sa.Engine) -> dict[int, Any]:
    with engine.connect() as connection:
        return {
            r.portal_id: r
            for r in connection.execute(sa.text("SELECT * FROM hubspot_tokens ORDER BY 1"))
        }


def authorize_query(response: Any) -> dict[str, str]:
    """The query of the consent page URL /oauth/install redirected to."""
    location = response.headers["location"]
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE_URL
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def install(oauth_client: TestClient, fake: FakeHubSpot, portal_id: int) -> Any:
    """A user installs the app in `portal_id`: consent page, then HubSpot's redirect back."""
    query = authorize_query(oauth_client.get("/oauth/install"))
    code = fake.issue_code(portal_id, redirect_uri=query["redirect_uri"])
    return oauth_client.get("/oauth/callback", params={"code": code, "state": query["state"]})


# --- install ---------------------------------------------------------------------------------


def test_install_redirects_to_hubspots_consent_page(
    oauth_client: TestClient, fake: FakeHubSpot, settings_for_oauth: Settings
) -> None:
    first = oauth_client.get("/oauth/install")
    second = oauth_client.get("/oauth/install")

    assert first.status_code == 302
    query = authorize_query(first)
    assert query["client_id"] == fake.client_id
    assert query["redirect_uri"] == CALLBACK
    assert query["scope"] == " ".join(settings_for_oauth.scopes)
    assert query["scope"] == (
        "crm.objects.contacts.read crm.objects.companies.read crm.objects.deals.read"
    )
    check_state([fake.client_secret], query["state"], now=time.time())
    assert authorize_query(second)["state"] != query["state"]  # a fresh nonce each time


def test_install_uses_the_public_url_and_the_configured_scopes(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    settings = oauth_settings(
        fake,
        tmp_path,
        WEBHOOK_PUBLIC_URL="https://receiver.example.com/webhooks/hubspot",
        HUBSPOT_SCOPES="oauth crm.objects.contacts.read",
    )
    with TestClient(create_app(settings, database_url=clean_db), follow_redirects=False) as c:
        query = authorize_query(c.get("/oauth/install"))

    assert query["redirect_uri"] == "https://receiver.example.com/oauth/callback"
    assert query["scope"] == "oauth crm.objects.contacts.read"


def test_callback_stores_the_portals_tokens_and_its_webhooks_hydrate_with_them(
    oauth_client: TestClient,
    fake: FakeHubSpot,
    engine: sa.Engine,
    settings_for_oauth: Settings,
    worker: Worker,
) -> None:
    before = db.utcnow()

    installed = install(oauth_client, fake, PORTAL)

    assert installed.status_code == 200
    assert installed.headers["content-type"].startswith("text/html")
    assert "Installed" in installed.text
    assert str(PORTAL) in installed.text
    row = tokens(engine)[PORTAL]
    assert row.access_token
    assert row.refresh_token
    assert row.needs_reinstall is False
    assert row.scopes == "oauth crm.objects.contacts.read"
    expected = before + timedelta(seconds=fake.access_token_ttl)
    assert abs((row.expires_at - expected).total_seconds()) < 5

    # A webhook from that portal, then the worker and hydrator as `worker` runs them.
    delivered = post_events(
        oauth_client, [hs("contact.creation", 501, 1_700_000_000_000)], secret=fake.client_secret
    )
    assert delivered.status_code == 200
    worker.drain()
    api = from_settings(settings_for_oauth, engine)
    assert api is not None
    assert api.private_token is None
    assert Hydrator(engine, api, {}).drain() == 1

    with engine.connect() as connection:
        email = connection.execute(
            sa.text("SELECT email FROM hubspot_contacts WHERE portal_id = :p AND object_id = 501"),
            {"p": PORTAL},
        ).scalar_one()
    assert email == "ada@example.com"
    assert fake.count("/crm/v3/objects/contacts/batch/read", portal_id=PORTAL, status=200) == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged", "not issued by this service"),
        ("expired", "expired"),
        ("tampered", "not issued by this service"),
        ("malformed", "malformed"),
        ("no code", "missing code or state"),
        ("no state", "missing code or state"),
        ("denied", "The user declined"),
    ],
)
def test_bad_callbacks_are_refused_and_store_nothing(
    oauth_client: TestClient, fake: FakeHubSpot, engine: sa.Engine, case: str, reason: str
) -> None:
    code = fake.issue_code(PORTAL, redirect_uri=CALLBACK)
    good = authorize_query(oauth_client.get("/oauth/install"))["state"]
    expires, nonce, mac = good.split(".")
    params = {
        "forged": {"code": code, "state": sign_state("not-our-secret", now=time.time(), nonce="n")},
        "expired": {
            "code": code,
            "state": sign_state(
                fake.client_secret, now=time.time() - STATE_TTL_SECONDS - 5, nonce="n"
            ),
        },
        "tampered": {"code": code, "state": f"{expires}.{nonce}x.{mac}"},
        "malformed": {"code": code, "state": "garbage"},
        "no code": {"state": good},
        "no state": {"code": code},
        "denied": {"error": "access_denied", "error_description": "The user declined"},
    }[case]

    refused = oauth_client.get("/oauth/callback", params=params)

    assert refused.status_code == 400
    assert "Install failed" in refused.text
    assert reason in refused.text
    assert tokens(engine) == {}
    assert fake.count("/oauth/v1/token") == 0


def test_hubspots_error_description_is_shown_escaped(oauth_client: TestClient) -> None:
    refused = oauth_client.get(
        "/oauth/callback", params={"error": "x", "error_description": "<script>alert(1)</script>"}
    )

    assert refused.status_code == 400
    assert "<script>" not in refused.text
    assert "&lt;script&gt;" in refused.text


def test_a_code_hubspot_does_not_accept_is_a_502(
    oauth_client: TestClient, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    state = authorize_query(oauth_client.get("/oauth/install"))["state"]

    refused = oauth_client.get("/oauth/callback", params={"code": "never-issued", "state": state})

    assert refused.status_code == 502
    assert "did not accept" in refused.text
    assert tokens(engine) == {}
    assert fake.count("/oauth/v1/token", status=400) == 1


def test_without_a_client_id_oauth_is_not_served(clean_db: str, fake: FakeHubSpot) -> None:
    settings = Settings.from_env(
        {"HUBSPOT_CLIENT_SECRET": fake.client_secret, "HUBSPOT_API_BASE_URL": fake.url}
    )
    with TestClient(create_app(settings, database_url=clean_db), follow_redirects=False) as c:
        install_page = c.get("/oauth/install")
        callback = c.get("/oauth/callback", params={"code": "x", "state": "y"})

    assert install_page.status_code == 404
    assert install_page.json()["error"] == "oauth_not_configured"
    assert callback.status_code == 404


# --- re-install ------------------------------------------------------------------------------


def test_readyz_lists_portals_needing_reinstall_until_they_install_again(
    oauth_client: TestClient, fake: FakeHubSpot, engine: sa.Engine, settings_for_oauth: Settings
) -> None:
    assert install(oauth_client, fake, PORTAL).status_code == 200
    assert install(oauth_client, fake, OTHER_PORTAL).status_code == 200
    assert oauth_client.get("/readyz").json() == {"status": "ready", "schema": db.migration_head()}
    # The user uninstalls the app in one portal: its refresh token stops working.
    fake.revoke_refresh_token(tokens(engine)[PORTAL].refresh_token)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE hubspot_tokens SET expires_at = now() + interval '1 minute'")
        )
    api = from_settings(settings_for_oauth, engine)
    assert api is not None

    with pytest.raises(NeedsReinstall):
        api.batch_read(PORTAL, "contacts", [501], ["email"])
    records, _ = api.batch_read(OTHER_PORTAL, "contacts", [501], ["email"])

    assert records[0].properties["email"] == "bob@example.com"
    ready = oauth_client.get("/readyz")
    assert ready.status_code == 200  # the other portals go on
    assert ready.json() == {
        "status": "ready",
        "schema": db.migration_head(),
        "portals_needing_reinstall": [PORTAL],
    }

    assert install(oauth_client, fake, PORTAL).status_code == 200

    assert "portals_needing_reinstall" not in oauth_client.get("/readyz").json()
    assert tokens(engine)[PORTAL].needs_reinstall is False
    records, _ = api.batch_read(PORTAL, "contacts", [501], ["email"])
    assert records[0].properties["email"] == "ada@example.com"
