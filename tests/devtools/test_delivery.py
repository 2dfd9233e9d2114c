"""service.devtools.delivery: batches signed as HubSpot signs them, for the URL as it goes on the
wire."""

from __future__ import annotations

import time

from hubspot.utils.signature import Signature

from service.devtools import delivery
from service.signature import verify_request
from tests.factories import CLIENT_SECRET, sample


def test_signatures_verify_with_our_verifier_and_the_official_sdk() -> None:
    url = "http://127.0.0.1:8000/webhooks/hubspot?portal=62515&source=send"
    body = delivery.encode_batch([sample("contact.propertyChange", property_value="Zoë")])
    assert b'"propertyValue":"Zo\\u00eb"' in body  # escaped, as HubSpot's bodies can be
    timestamp_ms = int(time.time() * 1000)
    headers = delivery.signed_headers(
        secret=CLIENT_SECRET, url=url, body=body, timestamp_ms=timestamp_ms
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["X-HubSpot-Request-Timestamp"] == str(timestamp_ms)
    assert headers["X-HubSpot-Signature-Version"] == "v1"
    lower = {k.lower(): v for k, v in headers.items()}
    check = verify_request(
        headers=lower,
        secrets=(CLIENT_SECRET,),
        method="POST",
        uri=url,
        body=body,
        now_ms=timestamp_ms,
        tolerance_ms=300_000,
        accept_legacy=False,
    )
    assert check.version == "v3"
    without_v3 = {k: v for k, v in lower.items() if k != "x-hubspot-signature-v3"}
    legacy = verify_request(
        headers=without_v3,
        secrets=(CLIENT_SECRET,),
        method="POST",
        uri=url,
        body=body,
        now_ms=timestamp_ms,
        tolerance_ms=300_000,
        accept_legacy=True,
    )
    assert legacy.version == "v1"
    text = body.decode()
    assert headers["X-HubSpot-Signature-v3"] == Signature.get_signature(
        CLIENT_SECRET, text, "v3", http_uri=url, http_method="POST", timestamp=str(timestamp_ms)
    )
    assert headers["X-HubSpot-Signature"] == Signature.get_signature(CLIENT_SECRET, text, "v1")


def test_the_signed_uri_is_the_url_as_it_goes_on_the_wire() -> None:
    assert (
        delivery.signing_uri("http://127.0.0.1:80/webhooks/hubspot?a=b c")
        == "http://127.0.0.1/webhooks/hubspot?a=b%20c"
    )
    ngrok = "https://abc.ngrok.app/webhooks/hubspot?x=%3A"
    assert delivery.signing_uri(ngrok) == ngrok
