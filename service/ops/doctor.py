"""`hubspot-webhooks doctor`: check a deployment from end to end, one line per check with its fix.

The checks, in order: configuration (Settings loads), database reachable, schema at the
migration head, client secret shaped like one, WEBHOOK_PUBLIC_URL, for a public app (or stored
OAuth tokens) the TOKEN_ENCRYPTION_KEY that seals them, the HubSpot token (one cheap call:
HubSpot's token info) and its read scopes for the object types in the inbox, the rules
file, deal pipelines (when a rule names deal stages), a live worker, the Webhooks Journal (app
token, `latest`, the reader's state: journal_checks.py) when it is a source; with `--self-test`,
a signed test event POSTed to WEBHOOK_PUBLIC_URL that must reach this database (selftest.py).
Secrets and tokens are never printed: only whether they are set and what they look like.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from urllib.parse import urlsplit

import sqlalchemy as sa

from service import db, heartbeats
from service.events import CLASSIC_TYPES, SELF_TEST_TYPE, is_mirrored, object_type_from_id
from service.hubspot import client
from service.hubspot.client import HubSpotError, HubSpotUnavailable
from service.hubspot.oauth import TokenKeyError, key_use
from service.hubspot.sealing import TokenCipher
from service.hubspot.tokeninfo import TokenInfo, token_info
from service.ops import journal_checks, subscription_checks
from service.ops.checks import Check, Status
from service.ops.selftest import SELF_TEST_SECONDS, check_self_test
from service.rules.language import Rule, RuleError, load_rules_file
from service.settings import WEBHOOK_PATH, Settings, SettingsError

# Object types seen in the inbox over this window decide which read scopes the token needs.
RECENT_DAYS = 30
# Any one of these scopes lets a token read the object type (HubSpot's scopes reference; the
# granular `crm.objects.*` names are newer, the short ones still granted to older apps).
READ_SCOPES: Mapping[str, tuple[str, ...]] = {
    "contacts": ("crm.objects.contacts.read",),
    "companies": ("crm.objects.companies.read",),
    "deals": ("crm.objects.deals.read",),
    "tickets": ("tickets", "crm.objects.tickets.read"),
    "products": ("e-commerce", "crm.objects.products.read"),
    "line_items": ("e-commerce", "crm.objects.line_items.read"),
}
CUSTOM_READ_SCOPE = "crm.objects.custom.read"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")  # noqa: S104 - names, not a bind


def main(*, as_json: bool, self_test: bool, env: Mapping[str, str] | None = None) -> int:
    """`doctor [--json] [--self-test]`: print every check; 1 when any failed, else 0."""
    checks = run_checks(env, self_test=self_test)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        report = {"ok": not failed, "checks": [asdict(c) for c in checks]}
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write("".join(c.line() + "\n" for c in checks))
    return 1 if failed else 0


def run_checks(
    env: Mapping[str, str] | None = None,
    *,
    self_test: bool = False,
    wait_seconds: float = SELF_TEST_SECONDS,
) -> list[Check]:
    """Every check, in order; the configuration failing stops the rest (nothing is known)."""
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        return [Check("configuration", "fail", str(exc), "correct that variable and run again")]
    checks = [Check("configuration", "ok", "environment variables are valid")]
    try:
        with db.database_url_for(settings.database_url, settings.data_dir) as url:
            engine = db.create_engine(url, pool_size=1)
            try:
                checks += _checks(settings, engine, self_test, wait_seconds)
            finally:
                engine.dispose()
    except db.DatabaseError as exc:  # the embedded server did not start
        checks.append(Check("database", "fail", str(exc), "set DATABASE_URL to your Postgres"))
    return checks


def _checks(
    settings: Settings, engine: sa.Engine, self_test: bool, wait_seconds: float
) -> list[Check]:
    where = "DATABASE_URL" if settings.database_url else f"embedded database in {settings.data_dir}"
    reachable = check_database(engine, where)
    schema = check_schema(engine) if reachable.status == "ok" else _skipped("database schema")
    usable = reachable.status == "ok" and "not migrated" not in schema.detail
    token, infos = check_token(settings, engine if usable else None)
    rules, rules_check = check_rules(settings)
    keys = check_token_key(settings, engine if usable else None)
    checks = [
        reachable,
        schema,
        check_client_secret(settings),
        check_public_url(settings),
        *([keys] if keys is not None else []),
        token,
        check_scopes(settings, engine, infos) if usable else _skipped("hubspot scopes"),
        rules_check,
        *subscription_checks.check(settings, rules),
        check_pipelines(settings, engine, rules, infos) if usable else _skipped("deal pipelines"),
        check_worker(engine) if usable else _skipped("worker"),
        *journal_checks.checks(settings, engine if usable else None),
    ]
    if self_test:
        test = check_self_test(settings, engine, wait_seconds) if usable else None
        checks.append(test or _skipped("self-test", "fail"))
    return checks


def _skipped(name: str, status: Status = "warn") -> Check:
    return Check(name, status, "cannot tell: the database is not usable", "fix the database first")


def _first_line(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's background link (never the URL)."""
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]


def check_database(engine: sa.Engine, where: str) -> Check:
    """The database answers `SELECT 1`."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return Check(
            "database",
            "fail",
            f"cannot connect to the {where}: {_first_line(exc)}",
            "check DATABASE_URL (host, port, user, password, database) and that Postgres runs",
        )
    return Check("database", "ok", f"{where} answers")


def check_schema(engine: sa.Engine) -> Check:
    """alembic_version holds the head of this version's migration history (or a newer one)."""
    head = db.migration_head()
    try:
        with engine.connect() as connection:
            current = connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
    except sa.exc.ProgrammingError:
        current = None
    if current is None:
        return Check("database schema", "fail", "not migrated", "run `hubspot-webhooks migrate`")
    if current != head and current in db.migration_history():
        return Check(
            "database schema",
            "fail",
            f"at revision {current}, behind this version's head {head}",
            "run `hubspot-webhooks migrate`",
        )
    if current != head:
        # As /readyz: revisions are only added, so one this code does not know is newer (a
        # rolling deploy in progress, or this instance is an old one).
        return Check(
            "database schema",
            "warn",
            f"at revision {current}, newer than this version's head {head}",
            "deploy the newer service everywhere (expand, deploy, contract: see Upgrading)",
        )
    return Check("database schema", "ok", f"migrated to head ({head})")


def check_client_secret(settings: Settings) -> Check:
    """HUBSPOT_CLIENT_SECRET is set and looks like an app client secret (a UUID)."""
    name, configured = "client secret", settings.client_secrets
    where = "the app's client secret, from its Auth tab in HubSpot"
    if not configured:
        return Check(name, "fail", "HUBSPOT_CLIENT_SECRET is not set", f"set it to {where}")
    if any(s.startswith("pat-") for s in configured):
        return Check(
            name,
            "fail",
            "HUBSPOT_CLIENT_SECRET looks like a pat- private app access token, not a client secret",
            f"move the pat- token to HUBSPOT_ACCESS_TOKEN and set HUBSPOT_CLIENT_SECRET to {where}",
        )
    if not all(_UUID.match(s) for s in configured):
        return Check(
            name,
            "warn",
            "set, but not shaped like HubSpot's client secrets (xxxxxxxx-xxxx-...)",
            f"copy {where}",
        )
    return Check(name, "ok", f"set ({len(configured)}), shaped like a client secret")


def check_public_url(settings: Settings) -> Check:
    """WEBHOOK_PUBLIC_URL is https and ends with the webhook path."""
    name, url = "public URL", settings.webhook_public_url
    wanted = f"https://YOUR-HOST{WEBHOOK_PATH}"
    if url is None:
        return Check(
            name,
            "warn",
            "WEBHOOK_PUBLIC_URL is not set: behind a proxy v3 signatures will not match",
            f"set it to {wanted}, the app's webhook target URL",
        )
    parts = urlsplit(url)
    if not parts.path.endswith(WEBHOOK_PATH):
        return Check(
            name,
            "fail",
            f"{url} does not end with {WEBHOOK_PATH}, the path this service listens on",
            f"set WEBHOOK_PUBLIC_URL and the app's target URL to {wanted}",
        )
    if parts.scheme != "https":
        if (parts.hostname or "") in _LOCAL_HOSTS:
            return Check(
                name,
                "warn",
                f"{url} is a local http address HubSpot cannot reach",
                "for HubSpot, use an https tunnel (ngrok) or your deployment's https URL",
            )
        return Check(
            name, "fail", f"{url} is not https: HubSpot calls https URLs only", f"use {wanted}"
        )
    return Check(name, "ok", f"{url}")


def check_token_key(settings: Settings, engine: sa.Engine | None) -> Check | None:
    """TOKEN_ENCRYPTION_KEY is set for a public app and opens every stored token with its first
    key; None (no line) for a private app with no OAuth tokens stored."""
    name = "token encryption"
    use = key_use(engine, TokenCipher(settings.token_encryption_keys)) if engine else None
    stored = use is not None and any((use.first, use.older, use.plaintext, use.unreadable))
    if settings.client_id is None and not stored:
        return None
    if not settings.token_encryption_keys:
        fix = (
            "set TOKEN_ENCRYPTION_KEY to what `hubspot-webhooks rotate-token-key --generate` prints"
        )
        return Check(
            name, "fail", "TOKEN_ENCRYPTION_KEY is not set: OAuth tokens cannot be kept", fix
        )
    if use is None:
        return _skipped(name)
    if use.unreadable:
        portals = ", ".join(map(str, use.unreadable))
        fix = "add the key they were encrypted with to TOKEN_ENCRYPTION_KEY, after the first"
        return Check(name, "fail", f"no key opens the tokens of portals {portals}", fix)
    if use.plaintext or use.older:
        detail = f"{len(use.plaintext)} portal(s) unencrypted, {len(use.older)} on an older key"
        return Check(name, "warn", detail, "run `hubspot-webhooks rotate-token-key`")
    return Check(
        name, "ok", f"OAuth tokens of {len(use.first)} portal(s) sealed with the first key"
    )


def check_token(settings: Settings, engine: sa.Engine | None) -> tuple[Check, dict[int, TokenInfo]]:
    """The private app token (or each installed portal's OAuth token) works: its token info."""
    name = "hubspot token"
    if settings.access_token is not None:
        try:
            info = token_info(settings.api_base_url, settings.access_token)
        except HubSpotError as exc:
            return _token_refused(name, exc, "HUBSPOT_ACCESS_TOKEN"), {}
        detail = f"private app token works (portal {info.portal_id}, {len(info.scopes)} scopes)"
        return Check(name, "ok", detail), {info.portal_id: info}
    if settings.client_id is None:
        return Check(
            name,
            "warn",
            "no HubSpot token configured: records are not fetched, HubSpot actions cannot run",
            "set HUBSPOT_ACCESS_TOKEN (private app) or HUBSPOT_CLIENT_ID (OAuth app)",
        ), {}
    if engine is None:
        return _skipped(name), {}
    return _oauth_tokens(settings, engine)


def _token_refused(name: str, exc: HubSpotError, where: str) -> Check:
    if isinstance(exc, HubSpotUnavailable):
        return Check(
            name, "fail", f"HubSpot did not answer: {exc}", "check HUBSPOT_API_BASE_URL and egress"
        )
    return Check(
        name,
        "fail",
        f"HubSpot refused the token ({exc.status} {exc.category})".replace(" )", ")"),
        f"{where}: create a new token (private app > Auth > rotate) and set it",
    )


def _oauth_tokens(settings: Settings, engine: sa.Engine) -> tuple[Check, dict[int, TokenInfo]]:
    name = "hubspot token"
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT portal_id, needs_reinstall FROM hubspot_tokens ORDER BY portal_id")
        ).all()
    if not rows:
        fix = "open /oauth/install on this service and install the app in your portal"
        return Check(name, "warn", "OAuth app, installed in no portal yet", fix), {}
    reinstall = [str(r.portal_id) for r in rows if r.needs_reinstall]
    if reinstall:
        fix = "open /oauth/install and install the app again in those portals"
        detail = f"portals {', '.join(reinstall)} must install the app again"
        return Check(name, "fail", detail, fix), {}
    infos: dict[int, TokenInfo] = {}
    store = client.from_settings(settings, engine)
    assert store is not None  # client_id is set
    for row in rows:
        try:
            infos[row.portal_id] = token_info(settings.api_base_url, store.token_for(row.portal_id))
        except TokenKeyError as exc:
            return Check(name, "fail", str(exc), "see the token encryption check"), {}
        except HubSpotError as exc:
            return _token_refused(name, exc, f"portal {row.portal_id}"), {}
    return Check(name, "ok", f"OAuth tokens work for {len(infos)} portal(s)"), infos


def received_object_types(engine: sa.Engine) -> set[str]:
    """The object types of the events received in the last RECENT_DAYS (self-tests aside)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT DISTINCT split_part(subscription_type, '.', 1) AS prefix,"
                " CASE WHEN subscription_type LIKE 'object.%' THEN"
                " coalesce(payload->>'objectTypeId', payload->>'fromObjectTypeId') END AS type_id"
                " FROM inbox_events WHERE received_at > now() - make_interval(days => :days)"
                " AND subscription_type <> :self_test"
            ),
            {"days": RECENT_DAYS, "self_test": SELF_TEST_TYPE},
        ).all()
    return {
        object_type_from_id(r.type_id or "")
        if r.prefix == "object"
        else CLASSIC_TYPES.get(r.prefix, r.prefix)
        for r in rows
    }


def required_scopes(object_type: str) -> tuple[str, ...]:
    """The read scopes of which one lets a token fetch `object_type` (empty: none needed)."""
    if object_type in READ_SCOPES:
        return READ_SCOPES[object_type]
    return (CUSTOM_READ_SCOPE,) if is_mirrored(object_type) else ()


def check_scopes(settings: Settings, engine: sa.Engine, infos: Mapping[int, TokenInfo]) -> Check:
    """The token has a read scope for every object type whose events arrive."""
    name = "hubspot scopes"
    if not infos:
        return Check(name, "warn", "cannot tell: no working HubSpot token", "see hubspot token")
    types = sorted(t for t in received_object_types(engine) if required_scopes(t))
    if not types:
        return Check(name, "ok", "no CRM events received yet: no read scope needed so far")
    missing: dict[str, str] = {}
    for portal_id, info in infos.items():
        for object_type in types:
            if not info.scopes & set(required_scopes(object_type)):
                missing[object_type] = f"{required_scopes(object_type)[0]} (portal {portal_id})"
    if missing:
        where = (
            "the private app's Scopes tab, then use its token"
            if settings.access_token
            else "HUBSPOT_SCOPES, then install the app again"
        )
        detail = "; ".join(f"{t} events arrive but the token lacks {s}" for t, s in missing.items())
        return Check(
            name, "fail", detail, f"add {', '.join(sorted(missing))} read scopes in {where}"
        )
    return Check(name, "ok", f"read scopes for {', '.join(types)}")


def check_rules(settings: Settings) -> tuple[list[Rule], Check]:
    """RULES_FILE loads and validates."""
    name, path = "rules file", settings.rules_file
    if path is None:
        return [], Check(name, "ok", "RULES_FILE is not set: no rules")
    try:
        rules, _warnings = load_rules_file(path)
    except RuleError as exc:
        first = exc.problems[0] if exc.problems else "invalid"
        detail = f"{len(exc.problems)} problem(s) in {path}; first: {first}"
        return [], Check(name, "fail", detail, f"run `hubspot-webhooks rules check {path}`")
    actions = sum(len(r.actions) for r in rules)
    return rules, Check(name, "ok", f"{path}: {len(rules)} rules, {actions} actions")


def check_pipelines(
    settings: Settings, engine: sa.Engine, rules: Sequence[Rule], infos: Mapping[int, TokenInfo]
) -> Check:
    """When a rule names deal stages, each portal's deal pipelines are readable."""
    name = "deal pipelines"
    if not any(r.prop == "dealstage" for r in rules):
        return Check(name, "ok", "no rule names a deal stage: not needed")
    api = client.from_settings(settings, engine)
    if api is None or not infos:
        fix = "set a working HubSpot token (see hubspot token)"
        return Check(name, "warn", "cannot tell: no working HubSpot token", fix)
    stages = 0
    for portal_id in infos:
        try:
            stages += sum(len(p.stages or []) for p in api.pipelines(portal_id, "deals"))
        except HubSpotError as exc:
            fix = "give the token crm.objects.deals.read (pipelines are read with it)"
            return Check(name, "fail", f"portal {portal_id}: {exc}", fix)
    return Check(name, "ok", f"{stages} deal stages readable in {len(infos)} portal(s)")


def check_worker(engine: sa.Engine) -> Check:
    """Some worker process beat within heartbeats.LIVE_SECONDS."""
    name = "worker"
    with engine.connect() as connection:
        live = heartbeats.live_workers(connection, heartbeats.LIVE_SECONDS)
    if not live:
        return Check(
            name,
            "fail",
            f"no worker seen in the last {heartbeats.LIVE_SECONDS:.0f} s: events are stored,"
            " not applied",
            "start `hubspot-webhooks worker` (on Render: a background worker service)",
        )
    who = ", ".join(f"{w.host} pid {w.pid}" for w in live[:3])
    return Check(name, "ok", f"{len(live)} live ({who})")
