"""service.hubspot.oauth: the token store: tokens sealed at rest with TOKEN_ENCRYPTION_KEY
(plaintext rows from before read until resealed), used until five minutes before they expire,
refreshed once across processes, and portals that must install again. Against the fake
HubSpot's OAuth and a real Postgres."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from service import db
from service.hubspot.client import (
    HubSpotApi,
    HubSpotError,
    HubSpotUnavailable,
    NeedsReinstall,
    NoToken,
)
from service.hubspot.oauth import (
    KeyUse,
    TokenKeyError,
    Tokens,
    TokenStore,
    key_use,
    portals_needing_reinstall,
    reseal_tokens,
    save_tokens,
)
from service.hubspot.sealing import TokenCipher, generate_key
from tests.factories import NEW_TOKEN_KEY, OTHER_PORTAL, PORTAL, TOKEN_KEY
from tests.fake_hubspot import FakeHubSpot
from tests.support import InstallTokens, MakeApi

BATCH_READ = "/crm/v3/objects/contacts/batch/read"
CIPHER = TokenCipher((TOKEN_KEY,))


def raw_row(engine: sa.Engine, portal_id: int) -> Any:
    """The portal's hubspot_tokens row as stored."""
    with engine.connect() as connection:
        return connection.execute(
            sa.text("SELECT * FROM hubspot_tokens WHERE portal_id = :p"), {"p": portal_id}
        ).one()


def token_row(engine: sa.Engine, portal_id: int) -> Any:
    """The portal's hubspot_tokens row with its tokens opened with the tests' key."""
    row = raw_row(engine, portal_id)._asdict()
    for column in ("access_token", "refresh_token"):
        row[column] = CIPHER.open(row[column])
    return SimpleNamespace(**row)


def set_expiry(engine: sa.Engine, portal_id: int, expires_in: timedelta) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE hubspot_tokens SET expires_at = :x WHERE portal_id = :p"),
            {"p": portal_id, "x": db.utcnow() + expires_in},
        )


def store_plaintext(engine: sa.Engine, portal_id: int, tokens: tuple[str, str]) -> None:
    """A row as this service stored it before tokens were encrypted."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO hubspot_tokens (portal_id, access_token, refresh_token, expires_at)"
                " VALUES (:p, :a, :r, now() + interval '1 hour')"
            ),
            {"p": portal_id, "a": tokens[0], "r": tokens[1]},
        )


def store_without_key(engine: sa.Engine, fake: FakeHubSpot) -> TokenStore:
    return TokenStore(
        engine=engine,
        base_url=fake.url,
        client_id=fake.client_id,
        client_secret=fake.client_secret,
        cipher=TokenCipher(()),
    )


# --- at rest ---------------------------------------------------------------------------------


def test_tokens_are_sealed_at_rest_and_opened_for_calls(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    tokens = install_tokens(PORTAL, expires_in=timedelta(minutes=4))  # due for a refresh
    stored = raw_row(engine, PORTAL)
    assert stored.access_token.startswith("fernet:")
    assert tokens.access_token not in stored.access_token
    assert tokens.refresh_token not in stored.refresh_token
    api = make_api(token=None)

    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    assert fake.refresh_count == 1
    refreshed = raw_row(engine, PORTAL)  # the refresh stores sealed tokens too
    assert refreshed.access_token.startswith("fernet:")
    assert api.token_for(PORTAL) not in refreshed.access_token
    assert CIPHER.open(refreshed.access_token) == api.token_for(PORTAL)


def test_a_row_stored_before_encryption_is_read_with_one_warning_and_sealed_by_its_refresh(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    caplog: pytest.LogCaptureFixture,
) -> None:
    access, refresh = fake.issue_tokens(PORTAL)
    store_plaintext(engine, PORTAL, (access, refresh))
    api = make_api(token=None)

    with caplog.at_level(logging.WARNING, logger="service.hubspot.oauth"):
        assert api.token_for(PORTAL) == access
        assert api.token_for(PORTAL) == access

    warnings = [r for r in caplog.records if r.getMessage() == "hubspot_token_not_encrypted"]
    assert len(warnings) == 1
    assert warnings[0].__dict__["portal_id"] == PORTAL
    assert access not in caplog.text
    set_expiry(engine, PORTAL, timedelta(minutes=1))
    fresh = api.token_for(PORTAL)
    assert raw_row(engine, PORTAL).access_token.startswith("fernet:")
    assert token_row(engine, PORTAL).access_token == fresh


def test_without_the_right_key_tokens_are_neither_stored_nor_opened(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    install_tokens: InstallTokens,
) -> None:
    install_tokens(PORTAL, expires_in=timedelta(minutes=30))
    no_key = store_without_key(engine, fake)
    wrong_key = TokenStore(engine=engine, base_url=fake.url, cipher=TokenCipher((NEW_TOKEN_KEY,)))
    unsealed = Tokens("access", "refresh", db.utcnow() + timedelta(hours=1))

    with pytest.raises(TokenKeyError, match="TOKEN_ENCRYPTION_KEY is not set"):
        no_key.token_for(PORTAL)
    with pytest.raises(TokenKeyError, match="no TOKEN_ENCRYPTION_KEY key opens"):
        wrong_key.token_for(PORTAL)
    with pytest.raises(TokenKeyError, match="TOKEN_ENCRYPTION_KEY is not set"):
        save_tokens(engine, OTHER_PORTAL, unsealed, cipher=TokenCipher(()))
    with pytest.raises(TokenKeyError, match="TOKEN_ENCRYPTION_KEY is not set"):
        no_key.install(fake.issue_code(OTHER_PORTAL), "http://127.0.0.1/oauth/callback")

    assert fake.count("/oauth/v1/token") == 0  # refused before the code was spent
    with engine.connect() as connection:
        assert connection.scalar(sa.text("SELECT count(*) FROM hubspot_tokens")) == 1


def test_resealing_moves_every_row_to_the_first_key_or_changes_nothing(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, install_tokens: InstallTokens
) -> None:
    old = install_tokens(PORTAL, expires_in=timedelta(minutes=30))  # sealed with TOKEN_KEY
    store_plaintext(engine, OTHER_PORTAL, fake.issue_tokens(OTHER_PORTAL))
    rotating = TokenCipher((NEW_TOKEN_KEY, TOKEN_KEY))
    assert key_use(engine, rotating) == KeyUse(older=[PORTAL], plaintext=[OTHER_PORTAL])

    before = reseal_tokens(engine, rotating)

    assert before == KeyUse(older=[PORTAL], plaintext=[OTHER_PORTAL])
    new_only = TokenCipher((NEW_TOKEN_KEY,))
    assert key_use(engine, new_only) == KeyUse(first=[PORTAL, OTHER_PORTAL])
    assert new_only.open(raw_row(engine, PORTAL).access_token) == old.access_token
    assert reseal_tokens(engine, rotating) == KeyUse(first=[PORTAL, OTHER_PORTAL])

    # A row none of the keys opens: nothing is changed, the portal is named.
    third = TokenCipher((generate_key(),))
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE hubspot_tokens SET access_token = :a WHERE portal_id = :p"),
            {"a": third.seal("x"), "p": OTHER_PORTAL},
        )
    kept = raw_row(engine, PORTAL).access_token
    with pytest.raises(TokenKeyError, match=f"portals {OTHER_PORTAL}$"):
        reseal_tokens(engine, TokenCipher((TOKEN_KEY, NEW_TOKEN_KEY)))
    assert raw_row(engine, PORTAL).access_token == kept


# --- tokens ----------------------------------------------------------------------------------


def test_without_a_private_token_or_install_there_is_no_token(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    api = make_api(token=None)

    with pytest.raises(NoToken, match="/oauth/install"):
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert fake.calls == []


def test_oauth_token_is_used_until_five_minutes_before_it_expires(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    tokens = install_tokens(PORTAL, expires_in=timedelta(minutes=6))
    api = make_api(token=None)

    assert api.token_for(PORTAL) == tokens.access_token
    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])
    assert [r.id for r in records] == [101]
    assert fake.refresh_count == 0

    set_expiry(engine, PORTAL, timedelta(minutes=4))
    refreshed = api.token_for(PORTAL)

    assert refreshed != tokens.access_token
    assert fake.refresh_count == 1
    row = token_row(engine, PORTAL)
    assert row.access_token == refreshed
    assert row.refresh_token == tokens.refresh_token
    # expires_at comes from HubSpot's expires_in (1800 s).
    expected = db.utcnow() + timedelta(seconds=fake.access_token_ttl)
    assert abs((row.expires_at - expected).total_seconds()) < 5
    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])
    assert [r.id for r in records] == [101]
    assert fake.refresh_count == 1


def test_token_hubspot_says_expired_is_refreshed_once_and_the_call_repeated(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    tokens = install_tokens(PORTAL, expires_in=timedelta(minutes=20))
    fake.expire_token(tokens.access_token)
    api = make_api(token=None)

    records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert [r.id for r in records] == [101]
    assert [c.status for c in fake.calls if c.under(BATCH_READ)] == [401, 200]
    assert fake.refresh_count == 1
    assert token_row(engine, PORTAL).access_token != tokens.access_token


def test_concurrent_refreshes_across_processes_happen_once(
    database_url: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    install_tokens(PORTAL, expires_in=timedelta(minutes=1))
    fake.refresh_delay = 0.3
    workers = 4
    barrier = threading.Barrier(workers)
    used: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        # Each thread is a process of its own: its own engine, limiter and client.
        own = db.create_engine(database_url, pool_size=2)
        try:
            api = make_api(own, token=None)
            barrier.wait()
            records, _ = api.batch_read(PORTAL, "contacts", [101], ["email"])
            assert [r.id for r in records] == [101]
            used.append(api.token_for(PORTAL))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert fake.refresh_count == 1
    assert fake.max_concurrent_refreshes == 1
    assert len(set(used)) == 1
    assert used[0] == token_row(engine, PORTAL).access_token


def test_threads_waiting_for_another_processes_refresh_need_one_connection_each(
    database_url: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    install_tokens(PORTAL, expires_in=timedelta(minutes=1))
    fake.refresh_delay = 1.0
    # Two threads of one process (say a worker's hydrate and reconcile threads) share an
    # engine with a connection each; another process is refreshing the portal's token.
    shared = sa.create_engine(database_url, pool_size=2, max_overflow=0, pool_timeout=3)
    other = db.create_engine(database_url, pool_size=2)
    results: dict[str, str | BaseException] = {}

    def run(name: str, api: HubSpotApi) -> None:
        try:
            results[name] = api.token_for(PORTAL)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            results[name] = exc

    try:
        refreshing = threading.Thread(target=run, args=("other", make_api(other, token=None)))
        refreshing.start()
        deadline = time.monotonic() + 5
        while fake.refresh_count == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = [
            threading.Thread(target=run, args=(name, make_api(shared, token=None)))
            for name in ("hydrate", "reconcile")
        ]
        for thread in waiting:
            thread.start()
        for thread in [refreshing, *waiting]:
            thread.join(30)
    finally:
        shared.dispose()
        other.dispose()

    assert fake.refresh_count == 1
    assert results["hydrate"] == results["reconcile"] == results["other"]
    assert results["other"] == token_row(engine, PORTAL).access_token


def test_revoked_refresh_token_needs_reinstall_and_other_portals_go_on(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    broken = install_tokens(PORTAL, expires_in=timedelta(minutes=1))
    install_tokens(OTHER_PORTAL, expires_in=timedelta(minutes=1))
    fake.revoke_refresh_token(broken.refresh_token)
    api = make_api(token=None)

    with pytest.raises(NeedsReinstall):
        api.batch_read(PORTAL, "contacts", [101], ["email"])
    records, _ = api.batch_read(OTHER_PORTAL, "contacts", [101], ["email"])

    assert records[0].properties["email"] == "other-portal@example.com"
    row = token_row(engine, PORTAL)
    assert row.needs_reinstall is True
    assert "BAD_REFRESH_TOKEN" in row.last_error
    assert token_row(engine, OTHER_PORTAL).needs_reinstall is False
    assert portals_needing_reinstall(engine) == [PORTAL]
    # Marked once: later calls fail at once, without asking HubSpot again.
    refreshes = fake.refresh_count
    with pytest.raises(NeedsReinstall):
        api.batch_read(PORTAL, "contacts", [101], ["email"])
    assert fake.refresh_count == refreshes
    assert fake.count(BATCH_READ, portal_id=PORTAL) == 0
    # Installing again clears the mark.
    install_tokens(PORTAL, expires_in=timedelta(minutes=30))
    assert portals_needing_reinstall(engine) == []
    assert [r.id for r in api.batch_read(PORTAL, "contacts", [101], ["email"])[0]] == [101]


def test_refresh_refused_by_hubspot_needs_reinstall(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    install_tokens(PORTAL, expires_in=timedelta(minutes=1))
    fake.fail_next(1, status=400, path_prefix="/oauth/v1/token")
    api = make_api(token=None)

    with pytest.raises(NeedsReinstall):
        api.token_for(PORTAL)

    assert portals_needing_reinstall(engine) == [PORTAL]


def test_refresh_hitting_a_server_error_is_not_a_reinstall(
    clean_db: str,
    engine: sa.Engine,
    fake: FakeHubSpot,
    make_api: MakeApi,
    install_tokens: InstallTokens,
) -> None:
    tokens = install_tokens(PORTAL, expires_in=timedelta(minutes=1))
    fake.fail_next(1, status=503, path_prefix="/oauth/v1/token")
    api = make_api(token=None)

    with pytest.raises(HubSpotUnavailable):
        api.token_for(PORTAL)

    assert portals_needing_reinstall(engine) == []
    assert api.token_for(PORTAL) != tokens.access_token  # the next try refreshes


def test_private_app_token_is_never_refreshed(api: HubSpotApi, fake: FakeHubSpot) -> None:
    fake.fail_next(1, status=401)

    with pytest.raises(HubSpotError) as refused:
        api.batch_read(PORTAL, "contacts", [101], ["email"])

    assert refused.value.status == 401
    assert fake.refresh_count == 0
