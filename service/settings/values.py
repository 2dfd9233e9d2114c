"""Parsers for environment variable values: each takes the raw text and returns the value, or
raises ValueError with a reason (Settings.from_env adds the variable's name)."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit


def database_url(value: str) -> str:
    """Accept postgres:// and postgresql:// (Render, Heroku) and normalise for psycopg 3."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        raise ValueError("expected postgresql://user:password@host:port/dbname")
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return f"postgresql+psycopg://{rest}"
    raise ValueError(f"unsupported scheme {scheme!r}; expected postgres:// or postgresql://")


def secrets(value: str) -> tuple[str, ...]:
    secrets = tuple(s.strip() for s in value.split(",") if s.strip())
    if not secrets:
        raise ValueError("expected one client secret, or several separated by commas")
    return secrets


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an absolute http:// or https:// URL")
    return value


def public_url(value: str) -> str:
    parts = urlsplit(http_url(value))
    if parts.query or parts.fragment:
        raise ValueError("must not contain a query string or fragment (HubSpot appends its own)")
    return value


def base_url(value: str) -> str:
    return http_url(value).rstrip("/")


def api_version(value: str) -> str:
    """HubSpot's API version: a date-based `YYYY-MM` (HUBSPOT.md §5) or the legacy `v3`."""
    if value == "v3" or re.fullmatch(r"20\d\d-(0[1-9]|1[0-2])", value):
        return value
    raise ValueError("must be a date-based version like 2026-03, or v3")


def port_number(value: str) -> int:
    """A TCP port to listen on, 1 to 65535: the rule for PORT and every `--port`."""
    return int_range(1, 65535)(value)


def int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {number}")
        return number

    return parse


def boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def parse(value: str) -> str:
        normal = value.upper() if upper else value.lower()
        if normal not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return normal

    return parse


def admin_token(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    return value


def bearer_token(value: str) -> str:
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")
    if not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError("must be printable ASCII without spaces (it travels in a header)")
    return value


def existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {value}")
    return path


def digits(value: str) -> str:
    if not value.isdigit():
        raise ValueError(f"expected the app's numeric id, got {value!r}")
    return value


def whsec(value: str) -> str:
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


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not 0.05 <= number <= 3600:
        raise ValueError(f"expected 0.05 to 3600 seconds, got {value}")
    return number


def seconds_range(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from `low` to `high`, written plainly or as a duration (`3.5s`)."""

    def parse(value: str) -> float:
        number = duration(value)
        if not low <= number <= high:
            raise ValueError(f"expected {low:g} to {high:g} seconds, got {value}")
        return number

    return parse


_HOST = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$"
)


def host_list(value: str) -> tuple[str, ...]:
    """Host names a request's Host header may carry, with an optional port; `*.` for subdomains."""
    hosts = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if not hosts:
        raise ValueError("expected host names separated by commas")
    for host in hosts:
        if not _HOST.match(host) and not _is_ip_host(host):
            raise ValueError(f"{host!r} is not a host name or address")
    return hosts


def _is_ip_host(host: str) -> bool:
    if host.startswith("[") and "]" in host:
        address = host[1 : host.index("]")]
    else:
        address = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def fernet_keys(value: str) -> tuple[str, ...]:
    """Fernet keys (32 bytes, URL-safe base64) separated by commas: the first encrypts."""
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    if not keys:
        raise ValueError("expected one Fernet key, or several separated by commas")
    for index, key in enumerate(keys, 1):
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(
                f"key {index} is not a Fernet key (32 bytes in URL-safe base64); make one with"
                " `hubspot-webhooks rotate-token-key --generate`"
            )
    return keys


def module_list(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a Python module name")
    return names


def scopes(value: str) -> tuple[str, ...]:
    scopes = tuple(v for v in value.replace(",", " ").split() if v)
    if not scopes:
        raise ValueError("expected OAuth scopes separated by spaces or commas")
    return scopes


DURATION_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def duration(value: str) -> float:
    match = DURATION_PATTERN.match(value.strip().lower())
    if match is None:
        raise ValueError(f"expected a duration like 30s, 15m, 1h or 2d, got {value!r}")
    seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


# HubSpot retries a failed delivery for up to 24 hours after the first attempt. A row older than
# the retention may go with its partition: were it still inside that window, a retry of it would
# be stored again as new. 48 hours is that window plus a day of margin (late first deliveries).
MIN_RETENTION_SECONDS = 48 * 3600


def retention(value: str) -> float:
    """A retention period: a duration of at least MIN_RETENTION_SECONDS (48 h)."""
    seconds = duration(value)
    if seconds < MIN_RETENTION_SECONDS:
        raise ValueError(
            f"{value!r} is shorter than 48h: HubSpot retries a delivery for up to 24 hours, and a"
            " retry of an event whose partition was already dropped would be stored again as new"
            " (48h is that window plus a day of margin)"
        )
    return seconds


# The longest window anything reads from the per-minute API call counts is 5 minutes (the
# rate_limited alert, /metrics, the admin): an hour keeps that whole across a dropped partition.
MIN_LOG_RETENTION_SECONDS = 3600


def log_retention(value: str) -> float:
    """The API call log's retention: a duration of at least an hour."""
    seconds = duration(value)
    if seconds < MIN_LOG_RETENTION_SECONDS:
        raise ValueError(
            f"{value!r} is shorter than 1h: the rate_limited alert and /metrics read the last 5"
            " minutes of API calls, which must outlive the partition drop"
        )
    return seconds


def rate(value: str) -> tuple[int, int]:
    """`100/10s`: at most 100 calls in any 10 seconds -> (100, 10000 ms)."""
    calls, sep, window = value.partition("/")
    if not sep or not calls.strip().isdigit() or int(calls) < 1:
        raise ValueError(f"expected calls/window like 100/10s, got {value!r}")
    return int(calls), int(duration(window) * 1000)


def mirror_properties(value: str) -> dict[str, tuple[str, ...]]:
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


def ip_list(value: str) -> tuple[str, ...]:
    entries = tuple(v.strip() for v in value.split(",") if v.strip())
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, network or *") from None
    return entries
