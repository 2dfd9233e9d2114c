"""service.web.oauth, the install: /oauth/install, /oauth/callback, and /readyz naming the portals
that must install again; with the fake HubSpot's OAuth.

The app runs under Starlette's TestClient on a real, migrated Postgres; HubSpot's consent page
is skipped (the fake issues the authorization code the user's browser would bring back). The
TestClient's cookie jar is the installing user's browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from starlette.testclient import TestClient

from service import db
from service.hubspot.client import NeedsReinstall, from_settings
from service.hubspot.hydration import Hydrator
from service.hubspot.oauth import AUTHORIZE_URL
from service.ops import tokenkeys
from service.settings import Settings
from service.web.app import create_app
from service.worker.apply import Worker
from tests.factories import NEW_TOKEN_KEY, OTHER_PORTAL, PORTAL, TOKEN_KEY, hs
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
    """A public app's settings: the fake's client id and secret, its URL as the API base, the
    redirect URL as the TestClient reaches it, and the tests' token encryption key."""
    return Settings.from_env(
        {
            "HUBSPOT_CLIENT_ID": fake.client_id,
            "HUBSPOT_CLIENT_SECRET": fake.client_secret,
            "HUBSPOT_API_BASE_URL": fake.url,
            "DATA_DIR": str(tmp_path / "data"),
            "OAUTH_REDIRECT_URL": CALLBACK,
            "TOKEN_ENCRYPTION_KEY": TOKEN_KEY,
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
    """The hubspot_tokens rows as stored (raw)."""
    with engine.connect() as connection:
        return {
            r.portal_id: r
            for r in connection.execute(sa.text("SELECT * FROM hubspot_tokens ORDER BY 1"))
        }


def opened(stored: str, key: str = TOKEN_KEY) -> str:
    """A stored token decrypted with cryptography's Fernet alone: `fernet:<Fernet token>`."""
    prefix, _, sealed = stored.partition(":")
    assert prefix == "fernet"
    return Fernet(key).decrypt(sealed.encode()).decode()


def authorize_query(response: Any) -> dict[str, str]:
    """The query of the consent page URL /oauth/install redirected to."""
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE_URL
    return {k: v[0] for k, v in parse_qs(parts.query).items()}


def install_cookie(response: Any) -> Morsel[str]:
    """The one cookie /oauth/install set: the browser's half of the state."""
    [header] = response.headers.get_list("set-cookie")
    [morsel] = SimpleCookie(header).values()
    return morsel


def install(oauth_client: TestClient, fake: FakeHubSpot, portal_id: int) -> Any:
    """A user installs the app in `portal_id`: consent page, then HubSpot's redirect back."""
    query = authorize_query(oauth_client.get("/oauth/install"))
    code = fake.issue_code(portal_id, redirect_uri=query["redirect_uri"])
    return oauth_client.get("/oauth/callback", params={"code": code, "state": query["state"]})


def state_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text("SELECT * FROM oauth_states")))


# --- install ---------------------------------------------------------------------------------


def test_install_redirects_to_hubspots_consent_page_with_a_state_bound_to_the_browser(
    oauth_client: TestClient, fake: FakeHubSpot, settings_for_oauth: Settings, engine: sa.Engine
) -> None:
    first = oauth_client.get("/oauth/install")
    second = oauth_client.get("/oauth/install")

    query = authorize_query(first)
    assert query["client_id"] == fake.client_id
    assert query["redirect_uri"] == CALLBACK
    assert query["scope"] == " ".join(settings_for_oauth.scopes)
    assert query["scope"] == (
        "crm.objects.contacts.read crm.objects.companies.read crm.objects.deals.read tickets"
    )
    assert authorize_query(second)["state"] != query["state"]  # a fresh state each time
    cookie = install_cookie(first)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "lax"  # HubSpot's redirect back is a cross-site navigation
    assert not cookie["secure"]  # http: a Secure cookie would never come back
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "600"
    assert install_cookie(second).value == cookie.value  # two tabs of one browser both work
    assert first.headers["cache-control"] == "no-store"
    # Postgres keeps hashes: neither the state nor the cookie can be read back from it.
    rows = state_rows(engine)
    assert len(rows) == 2
    kept = repr([tuple(r) for r in rows])
    assert query["state"] not in kept
    assert cookie.value not in kept


def test_install_over_https_sets_a_secure_host_only_cookie(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    settings = oauth_settings(
        fake,
        tmp_path,
        OAUTH_REDIRECT_URL="",
        WEBHOOK_PUBLIC_URL="https://receiver.example.com/webhooks/hubspot",
        HUBSPOT_SCOPES="oauth crm.objects.contacts.read",
    )
    with TestClient(create_app(settings, database_url=clean_db), follow_redirects=False) as c:
        response = c.get("/oauth/install")

    query = authorize_query(response)
    assert query["redirect_uri"] == "https://receiver.example.com/oauth/callback"
    assert query["scope"] == "oauth crm.objects.contacts.read"
    cookie = install_cookie(response)
    assert cookie.key.startswith("__Host-")
    assert cookie["secure"] is True
    assert cookie["samesite"] == "lax"


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ({"OAUTH_REDIRECT_URL": "http://127.0.0.1:8000/oauth/callback"}, "http://127.0.0.1:8000"),
        (
            {
                "OAUTH_REDIRECT_URL": "",
                "WEBHOOK_PUBLIC_URL": "https://hooks.example/webhooks/hubspot",
            },
            "https://hooks.example",
        ),
    ],
)
def test_the_redirect_uri_comes_from_configuration_not_the_host_header(
    clean_db: str,
    fake: FakeHubSpot,
    tmp_path: Path,
    configured: dict[str, str],
    expected: str,
) -> None:
    settings = oauth_settings(fake, tmp_path, **configured)
    with TestClient(create_app(settings, database_url=clean_db), follow_redirects=False) as c:
        query = authorize_query(c.get("/oauth/install", headers={"Host": "evil.example"}))

    assert query["redirect_uri"] == f"{expected}/oauth/callback"


def test_without_a_configured_redirect_url_there_is_no_install(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path, engine: sa.Engine
) -> None:
    settings = oauth_settings(fake, tmp_path, OAUTH_REDIRECT_URL="")
    with TestClient(create_app(settings, database_url=clean_db), follow_redirects=False) as c:
        refused = c.get("/oauth/install", headers={"Host": "evil.example"})

    assert refused.status_code == 404
    assert refused.json()["error"] == "oauth_not_configured"
    assert "WEBHOOK_PUBLIC_URL" in refused.json()["reason"]
    assert "location" not in refused.headers


def test_expired_states_are_deleted_when_a_new_one_is_issued(
    oauth_client: TestClient, engine: sa.Engine
) -> None:
    authorize_query(oauth_client.get("/oauth/install"))
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE oauth_states SET expires_at = now() - interval '1s'"))

    authorize_query(oauth_client.get("/oauth/install"))

    [fresh] = state_rows(engine)
    assert fresh.expires_at > db.utcnow() + timedelta(minutes=9)


# --- callback --------------------------------------------------------------------------------


def test_callback_stores_encrypted_tokens_and_the_portals_webhooks_hydrate_with_them(
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
    access, refresh = opened(row.access_token), opened(row.refresh_token)
    assert access not in row.access_token  # no plaintext at rest
    assert refresh not in row.refresh_token
    assert "Max-Age=0" in installed.headers["set-cookie"]  # the browser's half is spent
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


def test_after_rotating_to_a_new_key_the_old_one_can_go(
    oauth_client: TestClient, fake: FakeHubSpot, engine: sa.Engine, clean_db: str, tmp_path: Path
) -> None:
    assert install(oauth_client, fake, PORTAL).status_code == 200
    before = tokens(engine)[PORTAL]

    both = oauth_settings(
        fake, tmp_path, DATABASE_URL=clean_db, TOKEN_ENCRYPTION_KEY=f"{NEW_TOKEN_KEY},{TOKEN_KEY}"
    )
    assert tokenkeys.rotate(both) == 0
    only_new = oauth_settings(fake, tmp_path, TOKEN_ENCRYPTION_KEY=NEW_TOKEN_KEY)
    api = from_settings(only_new, engine)
    assert api is not None
    records, _ = api.batch_read(PORTAL, "contacts", [501], ["email"])

    assert records[0].properties["email"] == "ada@example.com"
    after = tokens(engine)[PORTAL]
    assert opened(after.access_token, NEW_TOKEN_KEY) == opened(before.access_token)
    assert opened(after.refresh_token, NEW_TOKEN_KEY) == opened(before.refresh_token)


def test_a_used_state_is_refused(
    oauth_client: TestClient, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    state = authorize_query(oauth_client.get("/oauth/install"))["state"]
    browser = dict(oauth_client.cookies)
    first = fake.issue_code(PORTAL, redirect_uri=CALLBACK)
    assert oauth_client.get("/oauth/callback", params={"code": first, "state": state}).is_success

    # The same browser (its cookie put back) replays the state with another code.
    for name, value in browser.items():
        oauth_client.cookies.set(name, value)
    second = fake.issue_code(OTHER_PORTAL, redirect_uri=CALLBACK)
    replayed = oauth_client.get("/oauth/callback", params={"code": second, "state": state})

    assert replayed.status_code == 400
    assert "already used" in replayed.text
    assert set(tokens(engine)) == {PORTAL}
    assert fake.count("/oauth/v1/token") == 1


def test_a_state_another_browser_started_is_refused(
    oauth_client: TestClient, fake: FakeHubSpot, engine: sa.Engine
) -> None:
    # An attacker starts an install, consents in their own portal and sends the victim the
    # callback link: the victim's browser holds another cookie, or none.
    state = authorize_query(oauth_client.get("/oauth/install"))["state"]
    code = fake.issue_code(OTHER_PORTAL, redirect_uri=CALLBACK)
    oauth_client.cookies.clear()
    authorize_query(oauth_client.get("/oauth/install"))  # the victim's own install cookie

    with_other_cookie = oauth_client.get("/oauth/callback", params={"code": code, "state": state})
    oauth_client.cookies.clear()
    without_cookie = oauth_client.get("/oauth/callback", params={"code": code, "state": state})

    assert with_other_cookie.status_code == 400
    assert "did not start this install" in with_other_cookie.text
    assert without_cookie.status_code == 400
    assert tokens(engine) == {}
    assert fake.count("/oauth/v1/token") == 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unknown", "unknown or already used"),
        ("expired", "expired"),
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
    if case == "expired":
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE oauth_states SET expires_at = now()"))
    params = {
        "unknown": {"code": code, "state": good + "x"},
        "expired": {"code": code, "state": good},
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
    fake.revoke_refresh_token(opened(tokens(engine)[PORTAL].refresh_token))
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
