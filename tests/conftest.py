"""Shared fixtures: one real, migrated Postgres per test session and a clean slate per test; the
fake HubSpot and API clients on it; the local Slack and webhook receiver; the outbox harness."""

from __future__ import annotations

import os
import secrets
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from service import db
from service.hubspot import client
from service.hubspot.client import HubSpotApi, default_budgets
from service.hubspot.paths import ApiPaths
from service.hubspot.ratelimit import Budget, RateLimiter
from service.rules.engine import load_engine
from service.rules.registry import Registry
from service.settings import DEFAULT_API_VERSION, Settings
from service.worker.act import ActionRunner
from service.worker.apply import Worker
from tests.factories import (
    CLIENT_SECRET,
    HOOK_PATH,
    OUR_APP_ID,
    SLACK_PATH,
    TOKEN,
    TOKEN_KEY,
    WEBHOOK_SECRET,
)
from tests.fake_hubspot import FakeHubSpot
from tests.receivers import Receiver
from tests.support import (
    Harness,
    MakeApi,
    MakeHarness,
    Sleeps,
    Store,
    empty_database,
    store_events,
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker that changes how the fake HubSpot starts (markers are strict)."""
    config.addinivalue_line(
        "markers",
        "fake_hubspot(seed): the `fake` fixture starts empty and calls seed(fake) instead of"
        " loading tests/payloads/hubspot_seed.json",
    )
    config.addinivalue_line(
        "markers",
        "both_api_versions: run each test using the API clients once per HUBSPOT_API_VERSION"
        " path family (date-based 2026-03 and legacy v3)",
    )


API_VERSIONS = ("2026-03", "v3")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `api_version` over both path families in modules marked both_api_versions."""
    marked = metafunc.definition.get_closest_marker("both_api_versions") is not None
    if marked and "api_version" in metafunc.fixturenames:
        metafunc.parametrize("api_version", API_VERSIONS, indirect=True)


@pytest.fixture
def api_version(request: pytest.FixtureRequest) -> str:
    """The HUBSPOT_API_VERSION of the API clients: the default, or each family when marked."""
    return str(getattr(request, "param", DEFAULT_API_VERSION))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database: a fresh one on TEST_DATABASE_URL's server, else an embedded server."""
    configured = Settings.from_env({"DATABASE_URL": os.environ.get("TEST_DATABASE_URL", "")})
    if configured.database_url is None:
        with db.database_url_for(None, tmp_path_factory.mktemp("pg")) as server_url:
            yield from _fresh_database(server_url)
    else:
        yield from _fresh_database(configured.database_url)


def _fresh_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database so concurrent test runs never share tables."""
    name = f"hubspot_webhooks_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        db.migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A synchronous engine on the test database, for reading rows back."""
    eng = db.create_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def clean_db(database_url: str, engine: sa.Engine) -> str:
    """The test database URL, with every table emptied first."""
    with engine.begin() as connection:
        tables = connection.scalars(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        ).all()
        if tables:
            names = ", ".join(f'"{t}"' for t in tables)
            connection.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    return database_url


@pytest.fixture(scope="session")
def migrated_template(database_url: str) -> Iterator[str]:
    """The name of a migrated database nobody stays connected to, which `own_database` copies."""
    with empty_database(database_url, "hubspot_webhooks_template") as url:
        db.migrate(url)
        yield str(sa.make_url(url).database)


@pytest.fixture
def own_database(database_url: str, migrated_template: str) -> Iterator[str]:
    """A migrated database of the test's own, for tests that change the inbox's partitions
    (the session's database keeps its layout for every other test)."""
    name = f"hubspot_webhooks_own_{secrets.token_hex(4)}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"'))
    try:
        yield sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def own_engine(own_database: str) -> Iterator[sa.Engine]:
    """An engine on `own_database`."""
    eng = db.create_engine(own_database)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings as a deployment would have them, with a known client secret."""
    return Settings.from_env(
        {"HUBSPOT_CLIENT_SECRET": CLIENT_SECRET, "DATA_DIR": str(tmp_path / "data")}
    )


@pytest.fixture
def store(clean_db: str) -> Store:
    """Store events in the (clean) test database's inbox."""
    return lambda events: store_events(clean_db, events)


@pytest.fixture
def worker(clean_db: str, engine: sa.Engine) -> Worker:
    """A worker on the test database, with a registry of its own (no user handlers)."""
    return Worker(engine, batch_size=500, max_attempts=3, handlers=Registry())


# --- the fake HubSpot and API clients --------------------------------------------------------


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeHubSpot]:
    """A running fake HubSpot with the seed portals (62515 and 77001), their records and their
    private app tokens. A module that needs another start marks itself
    `pytest.mark.fake_hubspot(seed=function)`: the fake starts empty and `function(fake)` runs."""
    marker = request.node.get_closest_marker("fake_hubspot")
    seed: Callable[[FakeHubSpot], object] = (
        marker.kwargs["seed"] if marker is not None else FakeHubSpot.load_seed_file
    )
    with FakeHubSpot() as server:
        seed(server)
        yield server


@pytest.fixture
def make_api(clean_db: str, engine: sa.Engine, fake: FakeHubSpot, api_version: str) -> MakeApi:
    """Make API clients on the fake, on a clean database: the private app token by default,
    OAuth with `token=None`; backoff pauses are recorded, not waited (`sleep`); another engine
    stands for another process."""

    def make(
        own: sa.Engine | None = None,
        /,
        *,
        token: str | None = TOKEN,
        sleep: Callable[[float], None] | None = None,
        limiter_sleep: Callable[[float], None] | None = None,
        budgets: dict[str, Budget] | None = None,
    ) -> HubSpotApi:
        on = engine if own is None else own
        return HubSpotApi(
            engine=on,
            base_url=fake.url,
            limiter=RateLimiter(
                on, budgets or default_budgets(), sleep=limiter_sleep or time.sleep
            ),
            private_token=token,
            client_id=fake.client_id,
            client_secret=fake.client_secret,
            token_keys=(TOKEN_KEY,),
            sleep=sleep or Sleeps(),
            paths=ApiPaths(api_version),
        )

    return make


@pytest.fixture
def api(clean_db: str, make_api: MakeApi) -> HubSpotApi:
    """The private app client for portal 62515, on a clean database."""
    return make_api()


# --- local receivers -------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local stand-in for Slack and a webhook receiver: one server, any path."""
    with Receiver() as server:
        yield server


# --- the outbox harness ----------------------------------------------------------------------


@pytest.fixture
def harness(
    clean_db: str, engine: sa.Engine, receiver: Receiver, tmp_path: Path, api_version: str
) -> Iterator[MakeHarness]:
    """Build a Harness from rules TOML, extra environment and optional user handlers; with
    `fake=`, the HubSpot actions call that fake HubSpot."""
    runners: list[ActionRunner] = []

    def build(
        rules: str,
        *,
        handlers: Registry | None = None,
        fake: FakeHubSpot | None = None,
        **env: str,
    ) -> Harness:
        path = tmp_path / f"rules-{len(runners)}.toml"
        path.write_text(textwrap.dedent(rules))
        environ = {
            "DATABASE_URL": clean_db,
            "RULES_FILE": str(path),
            "SLACK_WEBHOOK_URL": receiver.url_for(SLACK_PATH),
            "HOOK_URL": receiver.url_for(HOOK_PATH),
            "HOOK_SECRET": WEBHOOK_SECRET,
            "HUBSPOT_APP_ID": OUR_APP_ID,
            **env,
        }
        if fake is not None:
            environ |= {"HUBSPOT_ACCESS_TOKEN": TOKEN, "HUBSPOT_API_BASE_URL": fake.url}
            environ |= {"HUBSPOT_API_VERSION": api_version}
        settings = Settings.from_env(environ)
        rule_engine = load_engine(settings, [])
        assert rule_engine is not None
        worker = Worker(engine, max_attempts=3, handlers=handlers or Registry(), rules=rule_engine)
        runner = ActionRunner(
            engine, rule_engine.rules, settings, api=client.from_settings(settings, engine)
        )
        runners.append(runner)
        return Harness(engine, clean_db, settings, worker, runner, receiver, environ)

    yield build
    for runner in runners:
        runner.close()
