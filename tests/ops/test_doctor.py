"""service.ops.doctor and selftest: every check passing on a good deployment (the fake HubSpot, a
migrated database), each failure named with its fix, and the self-test event firing nothing."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from service import db, heartbeats
from service.events import SELF_TEST_TYPE, Event
from service.hubspot.oauth import Tokens, save_tokens
from service.hubspot.sealing import TokenCipher, generate_key
from service.ops import doctor
from service.ops.checks import Check
from service.ops.selftest import check_self_test
from service.rules.registry import Registry
from service.settings import Settings
from tests.factories import NEW_TOKEN_KEY, PORTAL, TOKEN_KEY, change, hs
from tests.fake_hubspot import FakeHubSpot
from tests.support import MakeHarness, free_port, store_events

SECRET = "6f1c2a5e-3b7d-4e8f-9a0b-1c2d3e4f5a6b"  # shaped like HubSpot's client secrets
TOKEN = "pat-na1-6f1c2a5e-0000-4000-8000-00000000d0c7"
READ_SCOPES = ("crm.objects.contacts.read", "crm.objects.deals.read")
PUBLIC_URL = "https://hooks.example.com/webhooks/hubspot"
DEAL_STAGE_RULE = """
    [[rules]]
    name = "won"
    [rules.when]
    object = "deals"
    kind = "property_change"
    property = "dealstage"
    to = "closedwon"
    [[rules.do]]
    action = "log"
    message = "won {record.dealname}"
"""


def good_env(database_url: str, fake: FakeHubSpot, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A deployment's environment where every check passes (given events and a live worker)."""
    fake.add_token(TOKEN, PORTAL, scopes=READ_SCOPES)
    rules = tmp_path / "rules.toml"
    rules.write_text(textwrap.dedent(DEAL_STAGE_RULE))
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "HUBSPOT_CLIENT_SECRET": SECRET,
        "WEBHOOK_PUBLIC_URL": PUBLIC_URL,
        "HUBSPOT_ACCESS_TOKEN": TOKEN,
        "HUBSPOT_API_BASE_URL": fake.url,
        "RULES_FILE": str(rules),
        **extra,
    }


def live_worker(engine: sa.Engine) -> None:
    """A worker process that beat just now."""
    with engine.begin() as connection:
        heartbeats.beat(connection, "doctor-test", host="test-host", pid=4242, stages=["apply"])


def contact_and_deal_events(database_url: str) -> None:
    """Contacts and deals arrive (so the token needs both read scopes)."""
    store_events(
        database_url,
        [
            hs("contact.creation", 101, 1_700_000_000_000),
            change("deal", 201, 1_700_000_000_001, "dealstage", "closedwon"),
        ],
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    """The checks by name (each name once)."""
    named = {c.name: c for c in checks}
    assert len(named) == len(checks)
    return named


@pytest.fixture
def ready(clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path) -> dict[str, str]:
    """A healthy deployment: good environment, events received, a live worker."""
    contact_and_deal_events(clean_db)
    live_worker(engine)
    return good_env(clean_db, fake, tmp_path)


def test_every_check_passes_on_a_good_deployment(ready: dict[str, str]) -> None:
    checks = doctor.run_checks(ready)

    assert [c.name for c in checks] == [
        "configuration",
        "database",
        "database schema",
        "client secret",
        "public URL",
        "hubspot token",
        "hubspot scopes",
        "rules file",
        "deal pipelines",
        "worker",
    ]
    assert all(c.status == "ok" for c in checks), [c.line() for c in checks]
    named = by_name(checks)
    assert f"portal {PORTAL}" in named["hubspot token"].detail
    assert named["hubspot scopes"].detail == "read scopes for contacts, deals"
    assert "deal stages readable" in named["deal pipelines"].detail
    assert "test-host pid 4242" in named["worker"].detail


def test_output_never_shows_the_token_or_the_secret(
    ready: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**ready, "HUBSPOT_CLIENT_SECRET": TOKEN, "HUBSPOT_ACCESS_TOKEN": TOKEN + "x"}
    for as_json in (False, True):
        doctor.main(as_json=as_json, self_test=False, env=bad)
        out = capsys.readouterr().out
        assert TOKEN not in out
        assert "pat-" in out  # "looks like a pat- private app access token"


def test_a_bad_configuration_is_the_one_failing_check() -> None:
    [check] = doctor.run_checks({"PORT": "eighty"})

    assert check.status == "fail"
    assert "PORT is invalid" in check.detail
    assert check.line().startswith("✗ configuration: PORT is invalid")


def test_an_unreachable_database_fails_and_the_checks_needing_it_cannot_tell(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    named = by_name(doctor.run_checks(good_env(url, fake, tmp_path)))

    assert named["database"].status == "fail"
    assert "Connection refused" in named["database"].detail
    assert "DATABASE_URL" in named["database"].fix
    for name in ("database schema", "hubspot scopes", "deal pipelines", "worker"):
        assert named[name].status == "warn"
        assert named[name].detail.startswith("cannot tell")
    assert named["hubspot token"].status == "ok"  # needs no database


def test_an_unmigrated_database_says_run_migrate(
    database_url: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    name = "hubspot_webhooks_doctor_empty"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    empty = sa.make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        named = by_name(doctor.run_checks(good_env(empty, fake, tmp_path)))
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    assert named["database"].status == "ok"
    assert named["database schema"].line() == (
        "✗ database schema: not migrated (fix: run `hubspot-webhooks migrate`)"
    )
    assert named["worker"].status == "warn"


def schema_check_at(ready: dict[str, str], revision: str) -> tuple[Check, str]:
    """doctor's schema check with alembic_version set to `revision`; and the real head."""
    settings = Settings.from_env(ready)
    assert settings.database_url is not None
    engine = sa.create_engine(settings.database_url)
    with engine.begin() as connection:
        head = connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    try:
        return by_name(doctor.run_checks(ready))["database schema"], head
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = :h"), {"h": head})
        engine.dispose()


def test_a_database_behind_the_head_says_run_migrate(ready: dict[str, str]) -> None:
    assert by_name(doctor.run_checks(ready))["database schema"].status == "ok"

    check, head = schema_check_at(ready, "0001")

    assert check.status == "fail"
    assert check.detail == f"at revision 0001, behind this version's head {head}"
    assert "hubspot-webhooks migrate" in check.fix


def test_a_database_newer_than_the_code_is_a_warning_as_readyz_is_ready(
    ready: dict[str, str],
) -> None:
    check, head = schema_check_at(ready, "9999_from_a_newer_release")

    assert check.status == "warn"
    assert (
        check.detail
        == f"at revision 9999_from_a_newer_release, newer than this version's head {head}"
    )
    assert "deploy the newer service" in check.fix


@pytest.mark.parametrize(
    ("secret", "status", "words"),
    [
        (TOKEN, "fail", "looks like a pat- private app access token"),
        ("not-a-uuid-secret", "warn", "not shaped like HubSpot's client secrets"),
        ("", "fail", "HUBSPOT_CLIENT_SECRET is not set"),
    ],
)
def test_a_client_secret_that_is_not_one_is_named(
    ready: dict[str, str], secret: str, status: str, words: str
) -> None:
    check = by_name(doctor.run_checks({**ready, "HUBSPOT_CLIENT_SECRET": secret}))["client secret"]

    assert (check.status, words in check.detail) == (status, True), check.line()
    assert "Auth tab" in check.fix
    if secret.startswith("pat-"):
        assert "HUBSPOT_ACCESS_TOKEN" in check.fix


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("http://hooks.example.com/webhooks/hubspot", "fail", "is not https"),
        ("https://hooks.example.com/hubspot", "fail", "does not end with /webhooks/hubspot"),
        ("http://127.0.0.1:8000/webhooks/hubspot", "warn", "local http address"),
        ("", "warn", "WEBHOOK_PUBLIC_URL is not set"),
    ],
)
def test_a_public_url_hubspot_cannot_use_is_named(
    ready: dict[str, str], url: str, status: str, words: str
) -> None:
    check = by_name(doctor.run_checks({**ready, "WEBHOOK_PUBLIC_URL": url}))["public URL"]

    assert check.status == status, check.line()
    assert words in check.detail
    assert check.fix


def test_a_token_hubspot_refuses_fails_with_the_fix(
    ready: dict[str, str], fake: FakeHubSpot
) -> None:
    named = by_name(doctor.run_checks({**ready, "HUBSPOT_ACCESS_TOKEN": "pat-na1-revoked"}))

    assert named["hubspot token"].status == "fail"
    assert named["hubspot token"].detail == (
        "HubSpot refused the token (401 INVALID_AUTHENTICATION)"
    )
    assert "HUBSPOT_ACCESS_TOKEN" in named["hubspot token"].fix
    assert named["hubspot scopes"].status == "warn"
    assert named["deal pipelines"].status == "warn"
    assert fake.count(path_prefix="/oauth/v2/private-apps") == 1  # one cheap call


def test_no_token_is_a_warning_not_a_failure(ready: dict[str, str]) -> None:
    env = {k: v for k, v in ready.items() if k != "HUBSPOT_ACCESS_TOKEN"}
    named = by_name(doctor.run_checks(env))

    assert named["hubspot token"].status == "warn"
    assert "HUBSPOT_ACCESS_TOKEN" in named["hubspot token"].fix
    assert named["hubspot scopes"].detail.startswith("cannot tell")


def test_a_missing_read_scope_for_received_events_fails(
    clean_db: str, engine: sa.Engine, fake: FakeHubSpot, tmp_path: Path
) -> None:
    env = good_env(clean_db, fake, tmp_path)
    fake.add_token(TOKEN, PORTAL, scopes=["crm.objects.contacts.read"])  # no deals
    contact_and_deal_events(clean_db)
    store_events(clean_db, [hs("object.creation", 9, 1_700_000_000_002, objectTypeId="2-777")])
    live_worker(engine)

    check = by_name(doctor.run_checks(env))["hubspot scopes"]

    assert check.status == "fail"
    assert "deals events arrive but the token lacks crm.objects.deals.read" in check.detail
    assert "2-777 events arrive but the token lacks crm.objects.custom.read" in check.detail
    assert "private app's Scopes tab" in check.fix


def test_an_oauth_app_checks_each_installed_portals_token(
    ready: dict[str, str], engine: sa.Engine, fake: FakeHubSpot
) -> None:
    access, refresh = fake.issue_tokens(PORTAL, scopes=["oauth", *READ_SCOPES])
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO hubspot_tokens (portal_id, access_token, refresh_token, expires_at)"
                " VALUES (:p, :a, :r, now() + interval '1 hour')"
            ),
            {"p": PORTAL, "a": access, "r": refresh},
        )
    env = {k: v for k, v in ready.items() if k != "HUBSPOT_ACCESS_TOKEN"}
    env["HUBSPOT_CLIENT_ID"] = fake.client_id

    named = by_name(doctor.run_checks(env))

    assert named["hubspot token"].detail == "OAuth tokens work for 1 portal(s)"
    assert named["hubspot scopes"].status == "ok"
    assert named["deal pipelines"].status == "ok"


def test_a_public_app_without_a_working_token_key_is_named_with_the_fix(
    ready: dict[str, str], engine: sa.Engine, fake: FakeHubSpot
) -> None:
    env = {k: v for k, v in ready.items() if k != "HUBSPOT_ACCESS_TOKEN"}
    env["HUBSPOT_CLIENT_ID"] = fake.client_id
    access, refresh = fake.issue_tokens(PORTAL, scopes=["oauth", *READ_SCOPES])
    tokens = Tokens(access, refresh, db.utcnow() + timedelta(hours=1))

    missing = by_name(doctor.run_checks(env))["token encryption"]
    save_tokens(engine, PORTAL, tokens, cipher=TokenCipher((generate_key(),)))
    lost = by_name(doctor.run_checks({**env, "TOKEN_ENCRYPTION_KEY": TOKEN_KEY}))
    save_tokens(engine, PORTAL, tokens, cipher=TokenCipher((TOKEN_KEY,)))
    older = by_name(
        doctor.run_checks({**env, "TOKEN_ENCRYPTION_KEY": f"{NEW_TOKEN_KEY},{TOKEN_KEY}"})
    )
    sealed = by_name(doctor.run_checks({**env, "TOKEN_ENCRYPTION_KEY": TOKEN_KEY}))
    malformed = doctor.run_checks({**env, "TOKEN_ENCRYPTION_KEY": "not-a-key"})

    assert missing.status == "fail"
    assert "TOKEN_ENCRYPTION_KEY is not set" in missing.detail
    assert "rotate-token-key --generate" in missing.fix
    assert lost["token encryption"].status == "fail"
    assert lost["token encryption"].detail == f"no key opens the tokens of portals {PORTAL}"
    assert lost["hubspot token"].status == "fail"
    assert older["token encryption"].status == "warn"
    assert "1 on an older key" in older["token encryption"].detail
    assert "rotate-token-key" in older["token encryption"].fix
    assert sealed["token encryption"].status == "ok"
    assert sealed["hubspot token"].detail == "OAuth tokens work for 1 portal(s)"
    assert [(c.name, c.status) for c in malformed] == [("configuration", "fail")]
    assert "TOKEN_ENCRYPTION_KEY" in malformed[0].detail


def test_an_invalid_rules_file_fails_and_points_at_rules_check(
    ready: dict[str, str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "x"\n[rules.when]\nobject = "leads"\n')

    check = by_name(doctor.run_checks({**ready, "RULES_FILE": str(bad)}))["rules file"]

    assert check.status == "fail"
    assert "problem(s) in" in check.detail
    assert check.fix == f"run `hubspot-webhooks rules check {bad}`"


def test_unreadable_deal_pipelines_fail_when_a_rule_names_deal_stages(
    ready: dict[str, str], fake: FakeHubSpot
) -> None:
    fake.fail_next(1, 403, path_prefix="/crm/v3/pipelines")

    check = by_name(doctor.run_checks(ready))["deal pipelines"]

    assert check.status == "fail"
    assert "403" in check.detail
    assert "crm.objects.deals.read" in check.fix


def test_no_live_worker_fails_with_the_fix(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    check = by_name(doctor.run_checks(good_env(clean_db, fake, tmp_path)))["worker"]

    assert check.status == "fail"
    assert "no worker seen" in check.detail
    assert check.fix.startswith("start `hubspot-webhooks worker`")


def test_json_is_one_object_with_every_check_and_the_exit_code_follows_failures(
    ready: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert doctor.main(as_json=True, self_test=False, env=ready) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert len(report["checks"]) == 10
    assert set(report["checks"][0]) == {"name", "status", "detail", "fix"}

    warned = {**ready, "WEBHOOK_PUBLIC_URL": ""}
    assert doctor.main(as_json=False, self_test=False, env=warned) == 0  # warnings pass
    assert "! public URL: WEBHOOK_PUBLIC_URL is not set" in capsys.readouterr().out

    failing = {**ready, "WEBHOOK_PUBLIC_URL": "http://hooks.example.com/webhooks/hubspot"}
    assert doctor.main(as_json=True, self_test=False, env=failing) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["public URL"]


# --- the self-test event ---------------------------------------------------------------------


def test_the_self_test_event_is_stored_and_fires_no_rule_and_no_handler(
    harness: MakeHarness, tmp_path: Path
) -> None:
    # A rule and a handler for any object's OTHER events: the widest a user can write.
    seen: list[Event] = []
    handlers = Registry()

    @handlers.on("*", "other")
    def everything(event: Event, session: Session) -> None:
        seen.append(event)

    h = harness(
        """
        [[rules]]
        name = "anything-else"
        [rules.when]
        object = "*"
        kind = "other"
        [[rules.do]]
        action = "log"
        message = "{event.subscription_type}"
        """,
        handlers=handlers,
    )
    posted: list[dict[str, Any]] = []

    def deliver(url: str, *, content: bytes, headers: dict[str, str], **_: Any) -> httpx.Response:
        """The path to the server, short: store the body through the ingest path."""
        assert headers["X-HubSpot-Signature-v3"]
        posted.extend(json.loads(content))
        store_events(h.database_url, posted)
        return httpx.Response(200, request=httpx.Request("POST", url))

    settings = Settings.from_env(
        {"HUBSPOT_CLIENT_SECRET": SECRET, "WEBHOOK_PUBLIC_URL": PUBLIC_URL}
    )
    check = check_self_test(settings, h.engine, 5.0, post=deliver)

    assert check.status == "ok", check.line()
    assert "signed test event stored as inbox id" in check.detail
    [event] = posted
    assert (event["subscriptionType"], event["portalId"]) == (SELF_TEST_TYPE, 0)
    assert h.apply() == 1
    assert h.inbox_statuses() == ["ignored"]
    assert h.fired() == []
    assert seen == []
    # The same kind of event from HubSpot's own namespace does fire both: the guard is the marker.
    h.store(hs("conversation.newMessage", 5, 1_700_000_000_000))
    h.apply()
    assert [r for r, _, _ in h.fired()] == ["anything-else"]
    assert len(seen) == 1


def test_a_self_test_the_server_refuses_names_the_fix(
    ready: dict[str, str], engine: sa.Engine
) -> None:
    def refuse(url: str, **_: Any) -> httpx.Response:
        return httpx.Response(401, request=httpx.Request("POST", url))

    check = check_self_test(Settings.from_env(ready), engine, 0.5, post=refuse)

    assert check.status == "fail"
    assert check.detail == f"{PUBLIC_URL} answered 401"
    assert "same HUBSPOT_CLIENT_SECRET and WEBHOOK_PUBLIC_URL" in check.fix


def test_a_self_test_that_never_reaches_this_database_fails(
    ready: dict[str, str], engine: sa.Engine
) -> None:
    def elsewhere(url: str, **_: Any) -> httpx.Response:
        return httpx.Response(200, request=httpx.Request("POST", url))

    check = check_self_test(Settings.from_env(ready), engine, 0.3, post=elsewhere)

    assert check.status == "fail"
    assert "not in this database" in check.detail
    assert "another database" in check.fix
