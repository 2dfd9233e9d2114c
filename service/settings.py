"""Configuration from the environment: the only module that reads os.environ.

Every problem stops start-up with one line naming the variable (`SettingsError`, exit code 2).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

DEFAULT_API_BASE_URL = "https://api.hubapi.com"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
            port=r.get("PORT", _port) or 8000,
            admin_token=r.get("ADMIN_TOKEN", _admin_token),
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
        )

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


def _port(value: str) -> int:
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


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {value}")
    return path


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


def _ip_list(value: str) -> tuple[str, ...]:
    entries = tuple(v.strip() for v in value.split(",") if v.strip())
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, network or *") from None
    return entries
