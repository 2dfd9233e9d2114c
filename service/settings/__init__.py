"""Configuration from the environment: the only module that reads os.environ.

Every problem stops start-up with one line naming the variable (`SettingsError`, exit code 2).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_urlsafe
from typing import TypeVar
from urllib.parse import urlsplit

from service.settings import values
from service.settings.values import port_number as port_number

T = TypeVar("T")

DEFAULT_API_BASE_URL = "https://api.hubapi.com"
DEFAULT_API_VERSION = "2026-03"  # HubSpot's date-based API version (HUBSPOT.md §5)
# The path HubSpot POSTs to: the webhook target URL configured in the app is BASE + this.
WEBHOOK_PATH = "/webhooks/hubspot"
# What a mirror without configuration fetches, per object type (MIRROR_PROPERTIES overrides).
DEFAULT_MIRROR_PROPERTIES: Mapping[str, tuple[str, ...]] = {
    "contacts": (
        "email",
        "firstname",
        "lastname",
        "phone",
        "company",
        "jobtitle",
        "lifecyclestage",
        "hs_lead_status",
        "hubspot_owner_id",
        "createdate",
        "lastmodifieddate",
    ),
    "companies": (
        "name",
        "domain",
        "industry",
        "numberofemployees",
        "annualrevenue",
        "city",
        "country",
        "lifecyclestage",
        "hubspot_owner_id",
        "createdate",
        "hs_lastmodifieddate",
    ),
    "deals": (
        "dealname",
        "dealstage",
        "pipeline",
        "amount",
        "closedate",
        "dealtype",
        "hubspot_owner_id",
        "createdate",
        "hs_lastmodifieddate",
    ),
    "tickets": (
        "subject",
        "content",
        "hs_pipeline",
        "hs_pipeline_stage",
        "hs_ticket_priority",
        "hubspot_owner_id",
        "createdate",
        "hs_lastmodifieddate",
    ),
}
EVENT_SOURCES = ("push", "journal", "both")
JOURNAL_STARTS = ("earliest", "latest")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Read scopes of every type the default mirror keeps (tickets: the `tickets` scope).
DEFAULT_SCOPES = (
    "crm.objects.contacts.read",
    "crm.objects.companies.read",
    "crm.objects.deals.read",
    "tickets",
)


class SettingsError(Exception):
    """An environment variable is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated service configuration. Build it with `Settings.from_env`."""

    database_url: str | None = field(default=None, repr=False)  # may hold a password
    data_dir: Path = Path(".data")
    client_secrets: tuple[str, ...] = field(default=(), repr=False)
    access_token: str | None = field(default=None, repr=False)
    client_id: str | None = None
    webhook_public_url: str | None = None  # WEBHOOK_PUBLIC_URL, else Render's external URL
    oauth_redirect_url: str | None = None  # None: beside webhook_public_url (installs.py)
    api_base_url: str = DEFAULT_API_BASE_URL
    api_version: str = DEFAULT_API_VERSION  # HUBSPOT_API_VERSION: YYYY-MM or v3
    port: int = 8000
    admin_token: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)
    rules_file: Path | None = None
    slack_webhook_url: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_format: str | None = None  # None: json for serve/worker, console for dev
    max_body_bytes: int = 1024 * 1024
    signature_tolerance_seconds: int = 300
    forwarded_allow_ips: tuple[str, ...] = ()  # nobody's X-Forwarded-*; `dev` adds 127.0.0.1
    accept_legacy_signatures: bool = False
    db_pool_size: int = 10
    worker_batch_size: int = 500
    max_attempts: int = 10
    worker_poll_seconds: float = 5.0
    # Undocumented: off only for bench/soak.py, which keeps the partitions on a fast clock itself.
    partition_upkeep: bool = True
    handler_modules: tuple[str, ...] = ()
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    mirror_properties: dict[str, tuple[str, ...]] = field(default_factory=dict)
    api_rate_limit: tuple[int, int] = (100, 10_000)
    search_rate_limit: tuple[int, int] = (4, 1_000)
    reconcile_interval_seconds: float | None = None
    reconcile_lookback_seconds: float = 3600.0
    rules_dry_run: bool = False
    action_max_attempts: int = 8
    app_id: str | None = None
    # Alerts (service/worker/upkeep.py): where they go, and how old a due event may get.
    alert_slack_webhook_url: str | None = field(default=None, repr=False)  # a credential
    alert_webhook_url: str | None = field(default=None, repr=False)
    alert_webhook_secret: str | None = field(default=None, repr=False)
    alert_lag_seconds: float = 300.0
    alert_interval_seconds: float = 30.0
    # The edge (service/web): one deadline per delivery (pool wait, statements and retry), read
    # timeouts for slow clients, a cap on open connections, and the hosts a request may name.
    request_deadline_seconds: float = 3.5
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    max_connections: int | None = None  # None: derived from the open-files limit at start-up
    allowed_hosts: tuple[str, ...] = ()
    # Fernet keys for OAuth tokens at rest: the first encrypts, every one decrypts (rotation).
    token_encryption_keys: tuple[str, ...] = field(default=(), repr=False)
    # How long done and ignored inbox rows are kept (service/partitions.py); at least 48 h.
    inbox_retention_seconds: float = 7 * 86400.0
    # How long done action runs are kept (never less than the inbox: a replayed event whose runs
    # were dropped would fire again), and the per-minute HubSpot API call counts.
    action_retention_seconds: float = 30 * 86400.0
    api_log_retention_seconds: float = 86400.0
    # Where events come from (HUBSPOT.md §5): push (webhook POSTs), journal (the worker polls
    # HubSpot's Webhooks Journal with a client-credentials token) or both.
    event_source: str = "push"
    journal_portal_id: int | None = None  # set: the local journal of that portal; unset: global
    journal_start: str = "earliest"  # where a first run starts reading: earliest or latest
    journal_poll_seconds: float = 5.0
    developer_api_key: str | None = field(default=None, repr=False)  # legacy v3 subscriptions
    subscriptions_file: Path | None = None  # SUBSCRIPTIONS_FILE: subscriptions as code (TOML)
    # The environment as read, for `env:NAME` references in the rules file (secrets stay there).
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise SettingsError naming the first bad one."""
        env = os.environ if env is None else env
        r = _Reader(env)
        return cls(
            database_url=r.get("DATABASE_URL", values.database_url),
            data_dir=r.get("DATA_DIR", Path) or Path(".data"),
            client_secrets=r.get("HUBSPOT_CLIENT_SECRET", values.secrets) or (),
            access_token=r.get("HUBSPOT_ACCESS_TOKEN", str),
            client_id=r.get("HUBSPOT_CLIENT_ID", str),
            webhook_public_url=r.get("WEBHOOK_PUBLIC_URL", values.public_url)
            or _render_public_url(r),
            oauth_redirect_url=r.get("OAUTH_REDIRECT_URL", values.public_url),
            api_base_url=r.get("HUBSPOT_API_BASE_URL", values.base_url) or DEFAULT_API_BASE_URL,
            api_version=r.get("HUBSPOT_API_VERSION", values.api_version) or DEFAULT_API_VERSION,
            port=r.get("PORT", port_number) or 8000,
            admin_token=r.get("ADMIN_TOKEN", values.admin_token),
            metrics_token=r.get("METRICS_TOKEN", values.bearer_token),
            rules_file=r.get("RULES_FILE", values.existing_file),
            slack_webhook_url=r.get("SLACK_WEBHOOK_URL", values.base_url),
            log_level=r.get("LOG_LEVEL", values.choice(LOG_LEVELS, upper=True)) or "INFO",
            log_format=r.get("LOG_FORMAT", values.choice(("json", "console"))),
            max_body_bytes=r.get("MAX_BODY_BYTES", values.int_range(1024, 64 * 1024 * 1024))
            or 1024 * 1024,
            signature_tolerance_seconds=r.get(
                "SIGNATURE_TOLERANCE_SECONDS", values.int_range(1, 3600)
            )
            or 300,
            forwarded_allow_ips=r.get("FORWARDED_ALLOW_IPS", values.ip_list) or (),
            accept_legacy_signatures=r.get("ACCEPT_LEGACY_SIGNATURES", values.boolean) or False,
            db_pool_size=r.get("DATABASE_POOL_SIZE", values.int_range(1, 200)) or 10,
            worker_batch_size=r.get("WORKER_BATCH_SIZE", values.int_range(1, 10_000)) or 500,
            max_attempts=r.get("MAX_ATTEMPTS", values.int_range(1, 100)) or 10,
            worker_poll_seconds=r.get("WORKER_POLL_SECONDS", values.seconds) or 5.0,
            partition_upkeep=r.get("WORKER_PARTITION_UPKEEP", values.boolean) is not False,
            handler_modules=r.get("HANDLER_MODULES", values.module_list) or (),
            scopes=r.get("HUBSPOT_SCOPES", values.scopes) or DEFAULT_SCOPES,
            mirror_properties=r.get("MIRROR_PROPERTIES", values.mirror_properties) or {},
            api_rate_limit=r.get("HUBSPOT_RATE_LIMIT", values.rate) or (100, 10_000),
            search_rate_limit=r.get("HUBSPOT_SEARCH_RATE_LIMIT", values.rate) or (4, 1_000),
            reconcile_interval_seconds=r.get("RECONCILE_INTERVAL", values.duration),
            reconcile_lookback_seconds=r.get("RECONCILE_LOOKBACK", values.duration) or 3600.0,
            rules_dry_run=r.get("RULES_DRY_RUN", values.boolean) or False,
            action_max_attempts=r.get("ACTION_MAX_ATTEMPTS", values.int_range(1, 100)) or 8,
            app_id=r.get("HUBSPOT_APP_ID", values.digits),
            alert_slack_webhook_url=r.get("ALERT_SLACK_WEBHOOK_URL", values.http_url),
            alert_webhook_url=r.get("ALERT_WEBHOOK_URL", values.http_url),
            alert_webhook_secret=_alert_secret(r, env),
            alert_lag_seconds=r.get("ALERT_LAG", values.duration) or 300.0,
            alert_interval_seconds=r.get("ALERT_INTERVAL", values.seconds) or 30.0,
            request_deadline_seconds=r.get("REQUEST_DEADLINE", values.seconds_range(0.1, 4.5))
            or 3.5,
            header_timeout_seconds=r.get("HTTP_HEADER_TIMEOUT", values.seconds_range(0.1, 300))
            or 10.0,
            body_timeout_seconds=r.get("HTTP_BODY_TIMEOUT", values.seconds_range(0.1, 300)) or 10.0,
            max_connections=r.get("MAX_CONNECTIONS", values.int_range(16, 1_000_000)),
            allowed_hosts=r.get("ALLOWED_HOSTS", values.host_list) or (),
            token_encryption_keys=r.get("TOKEN_ENCRYPTION_KEY", values.fernet_keys) or (),
            inbox_retention_seconds=r.get("INBOX_RETENTION", values.retention) or 7 * 86400.0,
            action_retention_seconds=_action_retention(r),
            api_log_retention_seconds=r.get("API_LOG_RETENTION", values.log_retention) or 86400.0,
            event_source=_event_source(r, env),
            journal_portal_id=_int(r.get("HUBSPOT_JOURNAL_PORTAL_ID", values.digits)),
            journal_start=r.get("JOURNAL_START", values.choice(JOURNAL_STARTS)) or "earliest",
            journal_poll_seconds=r.get("JOURNAL_POLL_INTERVAL", values.seconds) or 5.0,
            developer_api_key=r.get("HUBSPOT_DEVELOPER_API_KEY", str),
            subscriptions_file=r.get("SUBSCRIPTIONS_FILE", values.existing_file),
            environ=dict(env),
        )

    @property
    def dashboard_url(self) -> str | None:
        """The admin dashboard's address: WEBHOOK_PUBLIC_URL's origin + /admin (None: unset)."""
        if self.webhook_public_url is None:
            return None
        parts = urlsplit(self.webhook_public_url)
        return f"{parts.scheme}://{parts.netloc}/admin"

    def require_client_secret(self) -> tuple[str, ...]:
        """The client secrets, or SettingsError when none is configured."""
        if not self.client_secrets:
            raise SettingsError(
                "HUBSPOT_CLIENT_SECRET is not set: it must hold your HubSpot app's client secret"
            )
        return self.client_secrets

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (CLI flags win over the environment)."""
        return replace(self, **changes)  # type: ignore[arg-type]


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T]) -> T | None:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return None
        try:
            return parse(raw.strip())
        except (ValueError, OSError) as exc:
            raise SettingsError(f"{name} is invalid: {exc}") from None


def _render_public_url(r: _Reader) -> str | None:
    """Render sets RENDER_EXTERNAL_URL (https://<service>.onrender.com) on every web service:
    platform configuration, not request input, so it can stand in for WEBHOOK_PUBLIC_URL."""
    origin = r.get("RENDER_EXTERNAL_URL", values.base_url)
    return None if origin is None else origin + WEBHOOK_PATH


def _action_retention(r: _Reader) -> float:
    """ACTION_RETENTION: default 30 days, or INBOX_RETENTION when that is longer; never shorter
    than INBOX_RETENTION, because a replay of a stored event whose done runs were dropped would
    fire its rules again."""
    inbox = r.get("INBOX_RETENTION", values.retention) or 7 * 86400.0
    actions = r.get("ACTION_RETENTION", values.retention)
    if actions is None:
        return max(30 * 86400.0, inbox)
    if actions < inbox:
        raise SettingsError(
            f"ACTION_RETENTION ({actions:g}s) is shorter than INBOX_RETENTION ({inbox:g}s): a"
            " replay of a stored event whose action runs were dropped would fire its rules again"
        )
    return actions


def _event_source(r: _Reader, env: Mapping[str, str]) -> str:
    """HUBSPOT_EVENT_SOURCE: push (default), journal or both; the journal needs the app's
    client id and secret (its client-credentials token)."""
    source = r.get("HUBSPOT_EVENT_SOURCE", values.choice(EVENT_SOURCES)) or "push"
    if source != "push":
        for name in ("HUBSPOT_CLIENT_ID", "HUBSPOT_CLIENT_SECRET"):
            if not (env.get(name) or "").strip():
                raise SettingsError(
                    f"{name} is not set: HUBSPOT_EVENT_SOURCE={source} reads the Webhooks"
                    " Journal with the app's client-credentials token"
                )
    return source


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _alert_secret(r: _Reader, env: Mapping[str, str]) -> str | None:
    """ALERT_WEBHOOK_SECRET: one or more whsec_ secrets; required with ALERT_WEBHOOK_URL."""
    secret = r.get("ALERT_WEBHOOK_SECRET", values.whsec)
    if secret is None and (env.get("ALERT_WEBHOOK_URL") or "").strip():
        raise SettingsError(
            "ALERT_WEBHOOK_SECRET is not set: ALERT_WEBHOOK_URL needs a whsec_... secret"
        )
    return secret


# The `dev` command's client secret, created once in DATA_DIR; `send` signs with it by default.
DEV_SECRET_FILE = "dev-client-secret"  # noqa: S105 - a file name, not a secret

log = logging.getLogger(__name__)


def dev_client_secret(data_dir: Path, *, create: bool = True) -> str | None:
    """The local development client secret, kept in DATA_DIR (never printed).

    None when the file does not exist and `create` is false.
    """
    return dev_value(data_dir, DEV_SECRET_FILE, lambda: token_urlsafe(32), create=create)


def dev_value(
    data_dir: Path, file_name: str, make: Callable[[], str], *, create: bool = True
) -> str | None:
    """A secret `dev` keeps in DATA_DIR/`file_name` (mode 0600, never printed), made with
    `make` the first time. None when the file does not exist and `create` is false."""
    path = data_dir / file_name
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    value = make()
    path.touch(mode=0o600)
    path.write_text(value)
    log.info("dev_secret_created", extra={"path": str(path)})
    return value
