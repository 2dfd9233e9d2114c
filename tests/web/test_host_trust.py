"""service.web.webhook's host trust: the Host a delivery may name (ALLOWED_HOSTS, checked before
the signature), whose X-Forwarded-* headers are believed (FORWARDED_ALLOW_IPS: nobody unless
named), and the host-agnostic default `dev` and these tests run with."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from service.settings import WEBHOOK_PATH, Settings
from service.web.app import create_app
from tests.factories import CLIENT_SECRET, numbered_event, v3_headers
from tests.support import make_settings

EVIL = "http://evil2.example/webhooks/hubspot"


def stored(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.text("SELECT count(*) FROM inbox_events")) or 0)


def signed(uri: str, headers: dict[str, str], number: int = 1) -> dict[str, Any]:
    """A one-event delivery signed for `uri`, with `headers`, as TestClient.post's keywords."""
    body = json.dumps([numbered_event(number)]).encode()
    return {"content": body, "headers": {**v3_headers(body, uri=uri), **headers}}


def test_a_delivery_signed_for_another_host_is_refused_before_its_signature(
    clean_db: str, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # A delivery captured from another deployment with the same secret, replayed here with the
    # Host header it was signed for.
    settings = make_settings(ALLOWED_HOSTS="hooks.example.com")
    with (
        caplog.at_level(logging.WARNING, logger="service.web.webhook"),
        TestClient(create_app(settings, database_url=clean_db)) as client,
    ):
        replayed = client.post(WEBHOOK_PATH, **signed(EVIL, {"Host": "evil2.example"}))
        unsigned = client.post(WEBHOOK_PATH, content=b"[]", headers={"Host": "evil2.example"})

    assert replayed.status_code == 421
    assert replayed.json()["error"] == "host_not_allowed"
    assert "ALLOWED_HOSTS" in replayed.json()["reason"]
    assert unsigned.status_code == 421  # refused before the signature is looked at
    assert stored(engine) == 0
    [record, _] = [r for r in caplog.records if r.getMessage() == "webhook_rejected"]
    assert record.__dict__["reason"] == "host_not_allowed"
    assert record.__dict__["host"] == "evil2.example"
    logged = " ".join(f"{k}={v}" for k, v in record.__dict__.items())
    assert CLIENT_SECRET not in logged
    assert replayed.request.headers["x-hubspot-signature-v3"] not in logged


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("hooks.example.com", 200),
        ("HOOKS.Example.com", 200),
        ("hooks.example.com:8080", 200),  # a name without a port allows any port
        ("a.example.net", 200),
        ("a.b.example.net", 200),
        ("example.net", 421),  # `*.example.net` is its subdomains
        ("hooks.example.com.evil2.example", 421),
        ("evilhooks.example.com", 421),
        ("127.0.0.1:8443", 200),
        ("127.0.0.1:8444", 421),  # with a port, only that port
        ("[::1]:8000", 200),
        ("[::1]:8001", 421),
    ],
)
def test_allowed_hosts_are_names_wildcards_and_ports(clean_db: str, host: str, status: int) -> None:
    settings = make_settings(
        ALLOWED_HOSTS="hooks.example.com, *.example.net, 127.0.0.1:8443, [::1]:8000"
    )
    with TestClient(create_app(settings, database_url=clean_db)) as client:
        response = client.post(
            WEBHOOK_PATH, **signed(f"http://{host}{WEBHOOK_PATH}", {"Host": host})
        )

    assert response.status_code == status, response.text


def test_the_host_a_trusted_proxy_forwards_is_the_host_checked(clean_db: str) -> None:
    settings = make_settings(ALLOWED_HOSTS="hooks.example.com", FORWARDED_ALLOW_IPS="10.0.0.0/8")
    public = f"https://hooks.example.com{WEBHOOK_PATH}"
    forwarded = {"Host": "web:8000", "X-Forwarded-Proto": "https"}
    app = create_app(settings, database_url=clean_db)
    with TestClient(app, client=("10.1.2.3", 40000)) as proxied:
        kept = proxied.post(
            WEBHOOK_PATH,
            **signed(public, {**forwarded, "X-Forwarded-Host": "hooks.example.com"}, 1),
        )
        evil = proxied.post(
            WEBHOOK_PATH,
            **signed(
                "https://evil2.example/webhooks/hubspot",
                {**forwarded, "X-Forwarded-Host": "evil2.example"},
                2,
            ),
        )
    with TestClient(app, client=("192.0.2.9", 40000)) as direct:
        untrusted = direct.post(
            WEBHOOK_PATH,
            **signed(public, {**forwarded, "X-Forwarded-Host": "hooks.example.com"}, 3),
        )

    assert kept.status_code == 200, kept.text
    assert evil.status_code == 421
    assert untrusted.status_code == 421  # its own Host, web:8000, is not allowed


def test_forwarded_headers_are_believed_from_no_peer_by_default(clean_db: str) -> None:
    public = f"https://hooks.example.com{WEBHOOK_PATH}"
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com"}
    app = create_app(make_settings(), database_url=clean_db)
    with TestClient(app, client=("127.0.0.1", 40000)) as local:
        response = local.post(WEBHOOK_PATH, **signed(public, headers))

    assert response.status_code == 401
    assert response.json()["reason"] == "bad_signature"
    assert Settings.from_env({}).forwarded_allow_ips == ()


def test_without_allowed_hosts_the_url_is_rebuilt_from_the_host_header(clean_db: str) -> None:
    # What `dev` and a bare create_app do; `serve` refuses to start this way (tests/test_cli.py).
    with TestClient(create_app(make_settings(), database_url=clean_db)) as client:
        response = client.post(WEBHOOK_PATH, **signed(EVIL, {"Host": "evil2.example"}))

    assert response.status_code == 200
