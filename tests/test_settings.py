"""Settings.from_env: defaults, normalisation, and one clear line per bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings, SettingsError


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})

    assert settings.database_url is None
    assert settings.data_dir == Path(".data")
    assert settings.client_secrets == ()
    assert settings.api_base_url == "https://api.hubapi.com"
    assert settings.port == 8000
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.signature_tolerance_seconds == 300
    assert settings.forwarded_allow_ips == ()  # no peer's X-Forwarded-* is believed
    assert settings.allowed_hosts == ()
    assert settings.token_encryption_keys == ()
    assert settings.accept_legacy_signatures is False
    assert settings.log_level == "INFO"
    assert settings.log_format is None


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@db.internal:5432/app",
        "postgresql://u:p@db.internal:5432/app",
        "POSTGRES://u:p@db.internal:5432/app",
    ],
)
def test_render_and_heroku_database_urls_are_normalised(url: str) -> None:
    settings = Settings.from_env({"DATABASE_URL": url})

    assert settings.database_url == "postgresql+psycopg://u:p@db.internal:5432/app"


def test_client_secret_list_allows_rotation() -> None:
    settings = Settings.from_env({"HUBSPOT_CLIENT_SECRET": " new , old ,"})

    assert settings.client_secrets == ("new", "old")


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "PORT": "10000",
            "MAX_BODY_BYTES": "2048",
            "SIGNATURE_TOLERANCE_SECONDS": "60",
            "FORWARDED_ALLOW_IPS": "10.0.0.0/8, 127.0.0.1",
            "ACCEPT_LEGACY_SIGNATURES": "TRUE",
            "WEBHOOK_PUBLIC_URL": "https://abc.ngrok-free.app/webhooks/hubspot",
            "HUBSPOT_API_BASE_URL": "http://127.0.0.1:9999/",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "console",
        }
    )

    assert settings.port == 10000
    assert settings.max_body_bytes == 2048
    assert settings.signature_tolerance_seconds == 60
    assert settings.forwarded_allow_ips == ("10.0.0.0/8", "127.0.0.1")
    assert settings.accept_legacy_signatures is True
    assert settings.webhook_public_url == "https://abc.ngrok-free.app/webhooks/hubspot"
    assert settings.api_base_url == "http://127.0.0.1:9999"
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "console"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://u@h/db"),
        ("DATABASE_URL", "just-a-host"),
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("MAX_BODY_BYTES", "-1"),
        ("SIGNATURE_TOLERANCE_SECONDS", "0"),
        ("WEBHOOK_PUBLIC_URL", "ngrok.app/webhooks/hubspot"),
        ("WEBHOOK_PUBLIC_URL", "https://x.example/webhooks/hubspot?a=1"),
        ("HUBSPOT_API_BASE_URL", "ftp://api.hubapi.com"),
        ("SLACK_WEBHOOK_URL", "hooks.slack.com/services/x"),
        ("FORWARDED_ALLOW_IPS", "10.0.0.0/8,proxy.local"),
        ("ACCEPT_LEGACY_SIGNATURES", "maybe"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("ADMIN_TOKEN", "short"),
        ("METRICS_TOKEN", "short"),
        ("METRICS_TOKEN", "has a space in the middle"),
        ("RULES_FILE", "/no/such/rules.toml"),
        ("HUBSPOT_CLIENT_SECRET", " , "),
        ("ALERT_SLACK_WEBHOOK_URL", "hooks.slack.com/services/x"),
        ("ALERT_WEBHOOK_URL", "example.com/alerts"),
        ("ALERT_WEBHOOK_SECRET", "not-a-whsec"),
        ("ALERT_WEBHOOK_SECRET", "whsec_!!!"),
        ("ALERT_LAG", "soon"),
        ("HUBSPOT_EVENT_SOURCE", "pull"),
        ("HUBSPOT_JOURNAL_PORTAL_ID", "portal-1"),
        ("JOURNAL_START", "yesterday"),
        ("JOURNAL_POLL_INTERVAL", "often"),
        ("SUBSCRIPTIONS_FILE", "/no/such/subscriptions.toml"),
    ],
)
def test_malformed_variable_is_named_in_one_line(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})

    message = str(raised.value)
    assert message.startswith(f"{name} is invalid: ")
    assert "\n" not in message


@pytest.mark.parametrize("source", ["journal", "both"])
@pytest.mark.parametrize("missing", ["HUBSPOT_CLIENT_ID", "HUBSPOT_CLIENT_SECRET"])
def test_journal_source_needs_the_apps_client_credentials(source: str, missing: str) -> None:
    env = {"HUBSPOT_CLIENT_ID": "app-id", "HUBSPOT_CLIENT_SECRET": "app-secret"}
    del env[missing]

    with pytest.raises(
        SettingsError, match=rf"^{missing} is not set: HUBSPOT_EVENT_SOURCE={source}"
    ):
        Settings.from_env({"HUBSPOT_EVENT_SOURCE": source, **env})


def test_journal_settings_are_read() -> None:
    settings = Settings.from_env(
        {
            "HUBSPOT_EVENT_SOURCE": "both",
            "HUBSPOT_CLIENT_ID": "app-id",
            "HUBSPOT_CLIENT_SECRET": "app-secret",
            "HUBSPOT_JOURNAL_PORTAL_ID": "62515",
            "JOURNAL_START": "latest",
            "JOURNAL_POLL_INTERVAL": "2",
            "HUBSPOT_DEVELOPER_API_KEY": "dev-key-value",
        }
    )

    assert (settings.event_source, settings.journal_portal_id) == ("both", 62515)
    assert (settings.journal_start, settings.journal_poll_seconds) == ("latest", 2.0)
    assert "dev-key-value" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.event_source, defaults.journal_portal_id) == ("push", None)
    assert (defaults.journal_start, defaults.journal_poll_seconds) == ("earliest", 5.0)


def test_missing_client_secret_is_named_when_required() -> None:
    with pytest.raises(SettingsError, match=r"^HUBSPOT_CLIENT_SECRET is not set"):
        Settings.from_env({}).require_client_secret()


def test_secrets_are_not_in_the_repr() -> None:
    settings = Settings.from_env(
        {"HUBSPOT_CLIENT_SECRET": "s3cr3t-value", "HUBSPOT_ACCESS_TOKEN": "pat-na1-xyz"}
    )

    assert "s3cr3t-value" not in repr(settings)
    assert "pat-na1-xyz" not in repr(settings)


def test_metrics_token_is_read_and_kept_out_of_the_repr() -> None:
    token = "a-long-enough-metrics-token"

    settings = Settings.from_env({"METRICS_TOKEN": token})

    assert settings.metrics_token == token
    assert token not in repr(settings)
    assert Settings.from_env({}).metrics_token is None


def test_alert_settings_are_read_with_a_lag_in_seconds_or_units() -> None:
    secret = "whsec_" + "c2VjcmV0LWtleS1vZi10aGlydHktdHdvLWJ5dGVzIQ=="
    settings = Settings.from_env(
        {
            "ALERT_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
            "ALERT_WEBHOOK_URL": "https://ops.example/alerts",
            "ALERT_WEBHOOK_SECRET": secret,
            "ALERT_LAG": "30m",
            "WEBHOOK_PUBLIC_URL": "https://hooks.example:8443/webhooks/hubspot",
        }
    )

    assert settings.alert_slack_webhook_url == "https://hooks.slack.com/services/T/B/X"
    assert settings.alert_webhook_url == "https://ops.example/alerts"
    assert settings.alert_webhook_secret == secret
    assert settings.alert_lag_seconds == 1800
    assert settings.dashboard_url == "https://hooks.example:8443/admin"
    assert secret not in repr(settings)
    assert "hooks.slack.com" not in repr(settings)
    assert Settings.from_env({"ALERT_LAG": "90"}).alert_lag_seconds == 90
    defaults = Settings.from_env({})
    assert defaults.alert_lag_seconds == 300
    assert defaults.dashboard_url is None


def test_an_alert_webhook_without_its_secret_is_named_in_one_line() -> None:
    with pytest.raises(SettingsError, match=r"^ALERT_WEBHOOK_SECRET is not set: [^\n]*$"):
        Settings.from_env({"ALERT_WEBHOOK_URL": "https://ops.example/alerts"})


def test_on_render_the_external_url_is_the_public_origin_unless_one_is_set() -> None:
    render = {"RENDER_EXTERNAL_URL": "https://hubspot-webhooks-web.onrender.com"}
    public = "https://hooks.example/webhooks/hubspot"

    derived = Settings.from_env(render)
    explicit = Settings.from_env({**render, "WEBHOOK_PUBLIC_URL": public})

    assert derived.webhook_public_url == (
        "https://hubspot-webhooks-web.onrender.com/webhooks/hubspot"
    )
    assert explicit.webhook_public_url == public
    assert derived.oauth_redirect_url is None
    with pytest.raises(SettingsError, match="RENDER_EXTERNAL_URL"):
        Settings.from_env({"RENDER_EXTERNAL_URL": "onrender.com"})
    with pytest.raises(SettingsError, match="OAUTH_REDIRECT_URL"):
        Settings.from_env({"OAUTH_REDIRECT_URL": "https://x.example/oauth/callback?a=1"})


def test_inbox_retention_defaults_to_a_week_and_reads_durations() -> None:
    assert Settings.from_env({}).inbox_retention_seconds == 7 * 86400
    assert Settings.from_env({"INBOX_RETENTION": "30d"}).inbox_retention_seconds == 30 * 86400
    assert Settings.from_env({"INBOX_RETENTION": "48h"}).inbox_retention_seconds == 48 * 3600


def test_workers_keep_partitions_unless_told_not_to() -> None:
    assert Settings.from_env({}).partition_upkeep is True
    assert Settings.from_env({"WORKER_PARTITION_UPKEEP": "on"}).partition_upkeep is True
    assert Settings.from_env({"WORKER_PARTITION_UPKEEP": "off"}).partition_upkeep is False
    with pytest.raises(SettingsError, match="WORKER_PARTITION_UPKEEP"):
        Settings.from_env({"WORKER_PARTITION_UPKEEP": "sometimes"})


@pytest.mark.parametrize("value", ["1d", "24h", "47h", "3600"])
def test_an_inbox_retention_inside_hubspots_retry_window_is_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"INBOX_RETENTION": value})

    message = str(raised.value)
    assert message.startswith("INBOX_RETENTION is invalid: ")
    assert "shorter than 48h" in message
    assert "retries a delivery for up to 24 hours" in message
    assert "\n" not in message


def test_action_retention_defaults_to_a_month_or_the_inbox_retention_when_longer() -> None:
    assert Settings.from_env({}).action_retention_seconds == 30 * 86400
    longer = Settings.from_env({"INBOX_RETENTION": "60d"})
    assert longer.action_retention_seconds == 60 * 86400
    equal = Settings.from_env({"INBOX_RETENTION": "10d", "ACTION_RETENTION": "10d"})
    assert equal.action_retention_seconds == 10 * 86400


@pytest.mark.parametrize(
    ("inbox_retention", "action_retention"), [(None, "6d"), ("14d", "13d"), ("60d", "30d")]
)
def test_an_action_retention_shorter_than_the_inbox_retention_is_refused_naming_both(
    inbox_retention: str | None, action_retention: str
) -> None:
    env = {"ACTION_RETENTION": action_retention}
    if inbox_retention is not None:
        env["INBOX_RETENTION"] = inbox_retention
    with pytest.raises(SettingsError) as raised:
        Settings.from_env(env)

    message = str(raised.value)
    assert message.startswith("ACTION_RETENTION (")
    assert "shorter than INBOX_RETENTION" in message
    assert "would fire its rules again" in message


def test_an_action_retention_inside_hubspots_retry_window_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match=r"^ACTION_RETENTION is invalid: .*shorter than 48h"):
        Settings.from_env({"ACTION_RETENTION": "1d"})


def test_api_log_retention_defaults_to_a_day_and_refuses_less_than_an_hour() -> None:
    assert Settings.from_env({}).api_log_retention_seconds == 86400
    assert Settings.from_env({"API_LOG_RETENTION": "2h"}).api_log_retention_seconds == 7200
    with pytest.raises(SettingsError, match=r"^API_LOG_RETENTION is invalid: .*shorter than 1h"):
        Settings.from_env({"API_LOG_RETENTION": "10m"})


def test_hubspot_api_version_defaults_to_2026_03_and_accepts_dates_and_v3() -> None:
    assert Settings.from_env({}).api_version == "2026-03"
    assert Settings.from_env({"HUBSPOT_API_VERSION": "v3"}).api_version == "v3"
    assert Settings.from_env({"HUBSPOT_API_VERSION": " 2026-09 "}).api_version == "2026-09"


@pytest.mark.parametrize("value", ["v4", "2026-3", "2026-13", "2026-00", "26-03", "latest"])
def test_a_malformed_hubspot_api_version_is_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^HUBSPOT_API_VERSION is invalid: "):
        Settings.from_env({"HUBSPOT_API_VERSION": value})
