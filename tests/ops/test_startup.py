"""service.ops.startup: what `serve` and `worker` refuse to start without (the host this service
is, a public app's token key and redirect URL), and the local defaults `dev` fills in."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.hubspot.installs import redirect_uri
from service.hubspot.sealing import TokenCipher
from service.ops.startup import check_serve, check_worker, dev_settings, local_token_key
from service.settings import Settings, SettingsError
from tests.factories import TOKEN_KEY

PUBLIC_URL = "https://hooks.example/webhooks/hubspot"


def test_serve_must_know_which_host_it_is() -> None:
    with pytest.raises(SettingsError, match=r"^WEBHOOK_PUBLIC_URL or ALLOWED_HOSTS must be set"):
        check_serve(Settings.from_env({}))

    check_serve(Settings.from_env({"ALLOWED_HOSTS": "hooks.example"}))
    check_serve(Settings.from_env({"WEBHOOK_PUBLIC_URL": PUBLIC_URL}))
    check_serve(Settings.from_env({"RENDER_EXTERNAL_URL": "https://web.onrender.com"}))


def test_a_public_app_needs_a_token_key_to_serve_or_work_and_a_redirect_url_to_serve() -> None:
    app = {"HUBSPOT_CLIENT_ID": "client-id", "ALLOWED_HOSTS": "hooks.example"}

    for check in (check_serve, check_worker):
        with pytest.raises(SettingsError, match=r"^TOKEN_ENCRYPTION_KEY is not set: .*--generate"):
            check(Settings.from_env(app))
    keyed = {**app, "TOKEN_ENCRYPTION_KEY": TOKEN_KEY}
    with pytest.raises(SettingsError, match=r"^OAUTH_REDIRECT_URL is not set"):
        check_serve(Settings.from_env(keyed))
    check_worker(Settings.from_env(keyed))
    check_serve(Settings.from_env({**keyed, "WEBHOOK_PUBLIC_URL": PUBLIC_URL}))
    redirect = "https://hooks.example/oauth/callback"
    check_serve(Settings.from_env({**keyed, "OAUTH_REDIRECT_URL": redirect}))


def test_dev_believes_its_local_proxy_and_brings_installs_back_where_it_listens(
    tmp_path: Path,
) -> None:
    local = dev_settings(Settings.from_env({"DATA_DIR": str(tmp_path)}), "127.0.0.1", 8123)
    v6 = dev_settings(Settings.from_env({"DATA_DIR": str(tmp_path)}), "::1", 8000)
    tunnel = dev_settings(
        Settings.from_env(
            {
                "DATA_DIR": str(tmp_path),
                "WEBHOOK_PUBLIC_URL": "https://abc.ngrok-free.app/webhooks/hubspot",
                "FORWARDED_ALLOW_IPS": "10.0.0.0/8",
            }
        ),
        "127.0.0.1",
        8000,
    )

    assert local.forwarded_allow_ips == ("127.0.0.1",)
    assert local.allowed_hosts == ()  # the Host header, as before
    assert redirect_uri(local) == "http://127.0.0.1:8123/oauth/callback"
    assert redirect_uri(v6) == "http://[::1]:8000/oauth/callback"
    assert local.client_secrets == ((tmp_path / "dev-client-secret").read_text(),)
    assert local.token_encryption_keys == ()  # not a public app: no key made
    assert not (tmp_path / "dev-token-key").exists()
    assert tunnel.forwarded_allow_ips == ("10.0.0.0/8",)
    assert redirect_uri(tunnel) == "https://abc.ngrok-free.app/oauth/callback"


def test_dev_keeps_a_token_key_in_data_dir_that_commands_on_its_database_use(
    tmp_path: Path,
) -> None:
    env = {"DATA_DIR": str(tmp_path), "HUBSPOT_CLIENT_ID": "client-id"}

    first = dev_settings(Settings.from_env(env), "127.0.0.1", 8000)
    again = dev_settings(Settings.from_env(env), "127.0.0.1", 8000)

    [key] = first.token_encryption_keys
    assert again.token_encryption_keys == (key,)
    assert TokenCipher((key,)).open(TokenCipher((key,)).seal("t")) == "t"
    assert (tmp_path / "dev-token-key").stat().st_mode & 0o077 == 0
    assert local_token_key(Settings.from_env(env)).token_encryption_keys == (key,)
    deployed = Settings.from_env({**env, "DATABASE_URL": "postgres://x@h/d"})
    assert local_token_key(deployed).token_encryption_keys == ()
    configured = Settings.from_env({**env, "TOKEN_ENCRYPTION_KEY": TOKEN_KEY})
    assert local_token_key(configured).token_encryption_keys == (TOKEN_KEY,)
    assert dev_settings(configured, "127.0.0.1", 8000).token_encryption_keys == (TOKEN_KEY,)
