"""service.ops.tokenkeys, `hubspot-webhooks rotate-token-key`: run as a command on a real
database; every row re-sealed with the first key (plaintext rows too) so the old key can go, or
nothing changed; `--generate` prints a key and nothing else."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet

from service import db
from service.hubspot import client
from service.hubspot.oauth import KeyUse, Tokens, key_use, save_tokens
from service.hubspot.sealing import TokenCipher, generate_key
from service.settings import Settings
from tests.factories import NEW_TOKEN_KEY, OTHER_PORTAL, PORTAL, TOKEN_KEY
from tests.fake_hubspot import FakeHubSpot
from tests.support import run_cli


def install(engine: sa.Engine, fake: FakeHubSpot, portal_id: int, key: str) -> None:
    """The portal's OAuth tokens, sealed with `key` as the install would have stored them."""
    access, refresh = fake.issue_tokens(portal_id)
    tokens = Tokens(access, refresh, db.utcnow() + timedelta(minutes=30))
    save_tokens(engine, portal_id, tokens, cipher=TokenCipher((key,)))


def install_before_encryption(engine: sa.Engine, fake: FakeHubSpot, portal_id: int) -> None:
    """The portal's OAuth tokens in plaintext, as stored before tokens were encrypted."""
    access, refresh = fake.issue_tokens(portal_id)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO hubspot_tokens (portal_id, access_token, refresh_token, expires_at)"
                " VALUES (:p, :a, :r, now() + interval '30 minutes')"
            ),
            {"p": portal_id, "a": access, "r": refresh},
        )


def raw_tokens(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT access_token, refresh_token FROM hubspot_tokens ORDER BY portal_id")
        )
        return [(r.access_token, r.refresh_token) for r in rows]


def test_generate_prints_a_key_and_nothing_else_even_when_the_configured_one_is_broken() -> None:
    env = {"TOKEN_ENCRYPTION_KEY": "not-a-key"}

    first = run_cli("rotate-token-key", "--generate", env=env)
    second = run_cli("rotate-token-key", "--generate", env=env)

    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    [key] = first.stdout.splitlines()
    assert first.stdout == key + "\n"
    assert Fernet(key).decrypt(Fernet(key).encrypt(b"x")) == b"x"
    assert second.stdout != first.stdout


def test_rotating_reseals_every_row_with_the_new_key_so_the_old_one_can_go(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    install(engine, fake, PORTAL, TOKEN_KEY)
    install_before_encryption(engine, fake, OTHER_PORTAL)
    env = {"DATABASE_URL": clean_db, "DATA_DIR": str(tmp_path)}

    rotated = run_cli(
        "rotate-token-key", env={**env, "TOKEN_ENCRYPTION_KEY": f"{NEW_TOKEN_KEY},{TOKEN_KEY}"}
    )

    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout == ""
    assert "sealed the OAuth tokens of 2 portal(s) with the first key" in rotated.stderr
    assert "1 were on an older key, 1 were not encrypted" in rotated.stderr
    assert key_use(engine, TokenCipher((NEW_TOKEN_KEY,))) == KeyUse(first=[PORTAL, OTHER_PORTAL])
    # The old key removed from the environment: the tokens still open and still work.
    only_new = Settings.from_env(
        {
            "HUBSPOT_CLIENT_ID": fake.client_id,
            "HUBSPOT_CLIENT_SECRET": fake.client_secret,
            "HUBSPOT_API_BASE_URL": fake.url,
            "TOKEN_ENCRYPTION_KEY": NEW_TOKEN_KEY,
        }
    )
    api = client.from_settings(only_new, engine)
    assert api is not None
    for portal_id in (PORTAL, OTHER_PORTAL):
        records, _ = api.batch_read(portal_id, "contacts", [101], ["email"])
        assert [r.id for r in records] == [101]
    assert fake.refresh_count == 0


def test_a_row_no_key_opens_stops_the_rotation_and_nothing_changes(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    install(engine, fake, PORTAL, TOKEN_KEY)
    install(engine, fake, OTHER_PORTAL, generate_key())  # sealed with a key since lost
    before = raw_tokens(engine)
    env = {"DATABASE_URL": clean_db, "DATA_DIR": str(tmp_path)}

    refused = run_cli(
        "rotate-token-key", env={**env, "TOKEN_ENCRYPTION_KEY": f"{NEW_TOKEN_KEY},{TOKEN_KEY}"}
    )

    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert f"opens the tokens of portals {OTHER_PORTAL};" in line
    assert "Nothing changed" in line
    assert raw_tokens(engine) == before


def test_rotating_without_a_key_names_the_variable(clean_db: str, tmp_path: Path) -> None:
    refused = run_cli("rotate-token-key", env={"DATABASE_URL": clean_db, "DATA_DIR": str(tmp_path)})

    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "TOKEN_ENCRYPTION_KEY is not set" in line
    assert "--generate" in line
