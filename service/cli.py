"""The `hubspot-webhooks` command: each subcommand builds Settings and calls a domain function."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from service import db
from service.logs import configure_logging
from service.settings import Settings, SettingsError

log = logging.getLogger(__name__)

DEV_SECRET_FILE = "dev-client-secret"  # noqa: S105 - a file name, not a secret
WEBHOOK_PATH = "/webhooks/hubspot"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `hubspot-webhooks` and `python -m service`."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.run(args, settings)
    except SettingsError as exc:
        print(f"hubspot-webhooks: configuration error: {exc}", file=sys.stderr)
        return 2
    except db.DatabaseError as exc:
        print(f"hubspot-webhooks: database error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubspot-webhooks",
        description="Receive HubSpot webhooks durably, exactly once, and mirror the CRM.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the web server (uses DATABASE_URL)")
    serve.add_argument("--host", default="0.0.0.0", help="interface to bind (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, help="port (default $PORT, else 8000)")
    serve.set_defaults(run=_serve)

    dev = sub.add_parser(
        "dev", help="local development: embedded database if needed, migrate, serve"
    )
    dev.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    dev.add_argument("--port", type=int, help="port (default $PORT, else 8000)")
    dev.set_defaults(run=_dev)

    migrate = sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    migrate.set_defaults(run=_migrate)

    from service import sender

    sender.add_arguments(
        sub.add_parser("send", help="sign and POST sample or given events to a webhook URL")
    )
    sub.choices["send"].set_defaults(run=_send)
    return parser


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "json")
    if settings.database_url is None:
        raise SettingsError(
            "DATABASE_URL is not set: `serve` needs a database (use `dev` for an embedded one)"
        )
    settings.require_client_secret()
    _run_uvicorn(settings, settings.database_url, args.host, args.port or settings.port)
    return 0


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "console")
    if not settings.client_secrets:
        settings = settings.with_overrides(client_secrets=(dev_client_secret(settings.data_dir),))
    port = args.port or settings.port
    with db.database_url_for(settings.database_url, settings.data_dir) as url:
        db.migrate(url)
        local = f"http://{_display_host(args.host)}:{port}{WEBHOOK_PATH}"
        public = settings.webhook_public_url or "(set WEBHOOK_PUBLIC_URL for ngrok)"
        print(
            f"\n  Webhook URL:  {local}\n"
            f"  Public URL:   {public}\n"
            f"  Try it:       hubspot-webhooks send contact.creation --url {local}\n",
            file=sys.stderr,
        )
        _run_uvicorn(settings, url, args.host, port)
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(settings.log_level, settings.log_format or "json")
    with db.database_url_for(settings.database_url, settings.data_dir) as url:
        db.migrate(url, args.revision)
    print(f"database at {args.revision}", file=sys.stderr)
    return 0


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from service import sender

    if args.secret is None and not settings.client_secrets:
        local = dev_client_secret(settings.data_dir, create=False)
        if local is not None:
            settings = settings.with_overrides(client_secrets=(local,))
    return sender.run(args, settings)


def _run_uvicorn(settings: Settings, database_url: str, host: str, port: int) -> None:
    import uvicorn

    from service.app import create_app

    app = create_app(settings, database_url=database_url)
    # proxy_headers off: service.app decides itself which peers' X-Forwarded-* to believe,
    # because the signed URL depends on them.
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_config=None, access_log=False)


def dev_client_secret(data_dir: Path, *, create: bool = True) -> str | None:
    """The local development client secret, kept in DATA_DIR (never printed)."""
    path = data_dir / DEV_SECRET_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(secret)
    log.info("dev_client_secret_created", extra={"path": str(path)})
    return secret


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
