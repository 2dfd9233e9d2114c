"""Configuration from the environment: the only module that reads os.environ.

Every problem stops start-up with one line naming the variable (`SettingsError`, exit code 2).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_urlsafe
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

DEFAULT_API_BASE_URL = "https://api.hubapi.com"
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
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_SCOPES = (
    "crm.objects.contacts.read",
    "crm.objects.companies.read",
    "crm.objects.deals.read",
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
    webhook_public_url: str | None = None
    api_base_url: str = DEFAULT_API_BASE_URL
    port: int = 8000
    admin_token: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)
    rules_file: Path | None = None
    slack_webhook_url: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_format: str | None = None  # None: json for serve/worker, console for dev
    max_body_bytes: int = 1024 * 1024
    signature_tolerance_seconds: int = 300
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)
    accept_legacy_signatures: bool = False
    db_pool_size: int = 10
    worker_batch_size: int = 500
    max_attempts: int = 10
    worker_poll_seconds: float = 5.0
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
    # The environment as read, for `env:NAME` references in the rules file (secrets stay there).
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable; raise SettingsError naming the first bad one."""
        env = os.environ if env is None else env
        r = _Reader(env)
        return cls(
            database_url=r.get("DATABASE_URL", _database_url),
            data_dir=r.get("DATA_DIR", Path) or Path(".data"),
            client_secrets=r.get("HUBSPOT_CLIENT_SECRET", _secrets) or (),
            access_token=r.get("HUBSPOT_ACCESS_TOKEN", str),
            client_id=r.get("HUBSPOT_CLIENT_ID", str),
            webhook_public_url=r.get("WEBHOOK_PUBLIC_URL", _public_url),
            api_base_url=r.get("HUBSPOT_API_BASE_URL", _base_url) or DEFAULT_API_BASE_URL,
            port=r.get("PORT", port_number) or 8000,
            admin_token=r.get("ADMIN_TOKEN", _admin_token),
            metrics_token=r.get("METRICS_TOKEN", _bearer_token),
            rules_file=r.get("RULES_FILE", _existing_file),
            slack_webhook_url=r.get("SLACK_WEBHOOK_URL", _base_url),
            log_level=r.get("LOG_LEVEL", _choice(LOG_LEVELS, upper=True)) or "INFO",
            log_format=r.get("LOG_FORMAT", _choice(("json", "console"))),
            max_body_bytes=r.get("MAX_BODY_BYTES", _int_range(1024, 64 * 1024 * 1024))
            or 1024 * 1024,
            signature_tolerance_seconds=r.get("SIGNATURE_TOLERANCE_SECONDS", _int_range(1, 3600))
            or 300,
            forwarded_allow_ips=r.get("FORWARDED_ALLOW_IPS", _ip_list) or ("127.0.0.1",),
            accept_legacy_signatures=r.get("ACCEPT_LEGACY_SIGNATURES", _bool) or False,
            db_pool_size=r.get("DATABASE_POOL_SIZE", _int_range(1, 200)) or 10,
            worker_batch_size=r.get("WORKER_BATCH_SIZE", _int_range(1, 10_000)) or 500,
            max_attempts=r.get("MAX_ATTEMPTS", _int_range(1, 100)) or 10,
            worker_poll_seconds=r.get("WORKER_POLL_SECONDS", _seconds) or 5.0,
            handler_modules=r.get("HANDLER_MODULES", _module_list) or (),
            scopes=r.get("HUBSPOT_SCOPES", _scopes) or DEFAULT_SCOPES,
            mirror_properties=r.get("MIRROR_PROPERTIES", _mirror_properties) or {},
            api_rate_limit=r.get("HUBSPOT_RATE_LIMIT", _rate) or (100, 10_000),
            search_rate_limit=r.get("HUBSPOT_SEARCH_RATE_LIMIT", _rate) or (4, 1_000),
            reconcile_interval_seconds=r.get("RECONCILE_INTERVAL", _duration),
            reconcile_lookback_seconds=r.get("RECONCILE_LOOKBACK", _duration) or 3600.0,
            rules_dry_run=r.get("RULES_DRY_RUN", _bool) or False,
            action_max_attempts=r.get("ACTION_MAX_ATTEMPTS", _int_range(1, 100)) or 8,
            app_id=r.get("HUBSPOT_APP_ID", _digits),
            alert_slack_webhook_url=r.get("ALERT_SLACK_WEBHOOK_URL", _http_url),
            alert_webhook_url=r.get("ALERT_WEBHOOK_URL", _http_url),
            alert_webhook_secret=_alert_secret(r, env),
            alert_lag_seconds=r.get("ALERT_LAG", _duration) or 300.0,
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


def _database_url(value: str) -> str:
    """Accept postgres:// and postgresql:// (Render, Heroku) and normalise for psycopg 3."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ValueError("expected postgresql://user:password@host:port/dbname")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    raise ValueError(f"unsupported scheme {scheme!r}; expected postgres:// or postgresql://")


def _secrets(value: str) -> tuple[str, ...]:
    secrets = tuple(s.strip() for s in value.split(",") if s.strip())
    if not secrets:
        raise ValueError("expected one client secret, or several separated by commas")
    return secrets


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an absolute http:// or https:// URL")
    return value


def _public_url(value: str) -> str:
    parts = urlsplit(_http_url(value))
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment (HubSpot appends its own)")
    return value


def _base_url(value: str) -> str:
    return _http_url(value).rstrip("/")


def port_number(value: str) -> int:
    """A TCP port to listen on, 1 to 65535: the rule for PORT and every `--port`."""
    return _int_range(1, 65535)(value)


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {number}")
        return number

    return parse


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normal = value.upper() if upper else value.lower()
        if normal not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return normal

    return parse


def _admin_token(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    return value


def _bearer_token(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError("must be printable ASCII without spaces (it travels in a header)")
    return value


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {value}")
    return path


def _digits(value: str) -> str:
    if not value.isdigit():
        raise ValueError(f"expected the app's numeric id, got {value!r}")
    return value


def _alert_secret(r: _Reader, env: Mapping[str, str]) -> str | None:
    """ALERT_WEBHOOK_SECRET: one or more whsec_ secrets; required with ALERT_WEBHOOK_URL."""
    secret = r.get("ALERT_WEBHOOK_SECRET", _whsec)
    if secret is None and (env.get("ALERT_WEBHOOK_URL") or "").strip():
        raise SettingsError(
            "ALERT_WEBHOOK_SECRET is not set: ALERT_WEBHOOK_URL needs a whsec_... secret"
        )
    return secret


def _whsec(value: str) -> str:
    """Standard Webhooks secrets, `whsec_<base64>`, several separated by spaces (a rotation)."""
    for secret in value.split():
        encoded = secret.removeprefix("whsec_")
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except ValueError:
            key = b""
        if not secret.startswith("whsec_") or not key:
            raise ValueError("expected whsec_ followed by base64 (Standard Webhooks)")
    return value


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not 0.05 <= number <= 3600:
        raise ValueError(f"expected 0.05 to 3600 seconds, got {value}")
    return number


def _module_list(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a Python module name")
    return names


def _scopes(value: str) -> tuple[str, ...]:
    scopes = tuple(v for v in value.replace(",", " ").split() if v)
    if not scopes:
        raise ValueError("expected OAuth scopes separated by spaces or commas")
    return scopes


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def _duration(value: str) -> float:
    match = _DURATION.match(value.strip().lower())
    if match is None:
        raise ValueError(f"expected a duration like 30s, 15m, 1h or 2d, got {value!r}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def _rate(value: str) -> tuple[int, int]:
    """`100/10s`: at most 100 calls in any 10 seconds -> (100, 10000 ms)."""
    calls, sep, window = value.partition("/")
    if not sep or not calls.strip().isdigit() or int(calls) < 1:
        raise ValueError(f"expected calls/window like 100/10s, got {value!r}")
    return int(calls), int(_duration(window) * 1000)


def _mirror_properties(value: str) -> dict[str, tuple[str, ...]]:
    """`contacts=email,firstname;deals=dealname,amount`."""
    result: dict[str, tuple[str, ...]] = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        object_type, sep, names = part.partition("=")
        props = tuple(n.strip() for n in names.split(",") if n.strip())
        if not sep or not object_type.strip() or not props:
            raise ValueError(f"expected type=prop,prop;type=prop, got {part.strip()!r}")
        result[object_type.strip()] = props
    return result


def _ip_list(value: str) -> tuple[str, ...]:
    entries = tuple(v.strip() for v in value.split(",") if v.strip())
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, network or *") from None
    return entries


# The `dev` command's client secret, created once in DATA_DIR; `send` signs with it by default.
DEV_SECRET_FILE = "dev-client-secret"  # noqa: S105 - a file name, not a secret

log = logging.getLogger(__name__)


def dev_client_secret(data_dir: Path, *, create: bool = True) -> str | None:
    """The local development client secret, kept in DATA_DIR (never printed).

    None when the file does not exist and `create` is false.
    """
    path = data_dir / DEV_SECRET_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(secret)
    log.info("dev_client_secret_created", extra={"path": str(path)})
    return secret
