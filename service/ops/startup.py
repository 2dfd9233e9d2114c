"""What `serve`, `worker` and `dev` ask of the configuration beyond Settings' own checks.

`serve` must know which host it is: WEBHOOK_PUBLIC_URL (on Render, RENDER_EXTERNAL_URL stands
in for it) or ALLOWED_HOSTS, or it would check signatures against whatever Host header a request
names. A public app (HUBSPOT_CLIENT_ID) needs TOKEN_ENCRYPTION_KEY to keep its OAuth tokens, in
`serve` and `worker`, and `serve` a redirect URL to send installing users back to. Each failure
is a SettingsError naming the variables (one line, exit 2).

`dev` keeps local defaults instead: the client secret and the token key it keeps in DATA_DIR,
X-Forwarded-* believed from 127.0.0.1 (ngrok's agent), the URL rebuilt from the Host header,
and OAuth's redirect to the address it listens on. Other commands on dev's embedded database
(no DATABASE_URL) open tokens with dev's key.
"""

from __future__ import annotations

from pathlib import Path

from service.hubspot.installs import CALLBACK_PATH, redirect_uri
from service.hubspot.sealing import generate_key
from service.settings import Settings, SettingsError, dev_client_secret, dev_value

DEV_TOKEN_KEY_FILE = "dev-token-key"  # noqa: S105 - a file name, not a key
MISSING_KEY = (
    "TOKEN_ENCRYPTION_KEY is not set: a public app (HUBSPOT_CLIENT_ID) keeps its OAuth tokens"
    " encrypted with it; make one with `hubspot-webhooks rotate-token-key --generate`"
)


def check_serve(settings: Settings) -> None:
    """Raise SettingsError unless `serve` knows its host and, for a public app, its key and
    redirect URL."""
    if settings.webhook_public_url is None and not settings.allowed_hosts:
        raise SettingsError(
            "WEBHOOK_PUBLIC_URL or ALLOWED_HOSTS must be set: signatures are checked against"
            " the public URL, or against the Host header only if ALLOWED_HOSTS lists it"
        )
    check_worker(settings)
    if settings.client_id is not None and redirect_uri(settings) is None:
        raise SettingsError(
            "OAUTH_REDIRECT_URL is not set: with HUBSPOT_CLIENT_ID and no WEBHOOK_PUBLIC_URL,"
            f" set it to https://<your host>{CALLBACK_PATH}"
        )


def check_worker(settings: Settings) -> None:
    """Raise SettingsError when a public app has no TOKEN_ENCRYPTION_KEY."""
    if settings.client_id is not None and not settings.token_encryption_keys:
        raise SettingsError(MISSING_KEY)


def dev_settings(settings: Settings, host: str, port: int) -> Settings:
    """`dev`'s local defaults for what the environment leaves unset (see the module doc)."""
    changes: dict[str, object] = {}
    if not settings.client_secrets:
        changes["client_secrets"] = (dev_client_secret(settings.data_dir),)
    if not settings.forwarded_allow_ips:
        changes["forwarded_allow_ips"] = ("127.0.0.1",)
    if redirect_uri(settings) is None:
        where = f"[{host}]" if ":" in host else host
        changes["oauth_redirect_url"] = f"http://{where}:{port}{CALLBACK_PATH}"
    if settings.client_id is not None and not settings.token_encryption_keys:
        changes["token_encryption_keys"] = (dev_token_key(settings.data_dir),)
    return settings.with_overrides(**changes)


def local_token_key(settings: Settings) -> Settings:
    """On dev's embedded database (no DATABASE_URL) without TOKEN_ENCRYPTION_KEY: dev's key,
    when `dev` has made one."""
    if settings.token_encryption_keys or settings.database_url is not None:
        return settings
    key = dev_token_key(settings.data_dir, create=False)
    return settings if key is None else settings.with_overrides(token_encryption_keys=(key,))


def dev_token_key(data_dir: Path, *, create: bool = True) -> str | None:
    """The local development token encryption key, kept in DATA_DIR (never printed).

    None when the file does not exist and `create` is false.
    """
    return dev_value(data_dir, DEV_TOKEN_KEY_FILE, generate_key, create=create)
