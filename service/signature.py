"""HubSpot webhook request signatures (v1, v2, v3): pure functions, no clock reads.

HubSpot docs, "Validating requests from HubSpot":
https://developers.hubspot.com/docs/api/webhooks/validating-requests
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "InvalidSignature",
    "SignatureCheck",
    "build_request_uri",
    "decode_hubspot_uri",
    "sign_v1",
    "sign_v2",
    "sign_v3",
    "verify_request",
    "verify_v3",
]

# The only percent-encodings HubSpot decodes before signing (v3). Anything else, %20, %2B,
# %25, %26, %3D among them, stays encoded exactly as it was received.
_DECODE_TABLE: Mapping[str, str] = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
_DECODE_RE = re.compile("|".join(_DECODE_TABLE), re.IGNORECASE)

V3_HEADER = "x-hubspot-signature-v3"
TIMESTAMP_HEADER = "x-hubspot-request-timestamp"
LEGACY_HEADER = "x-hubspot-signature"
LEGACY_VERSION_HEADER = "x-hubspot-signature-version"


class InvalidSignature(Exception):
    """The request is not proven to come from HubSpot; `reason` is the short public code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """The outcome of a successful verification: which scheme proved the request."""

    version: str


def decode_hubspot_uri(uri: str) -> str:
    """Decode exactly HubSpot's 12 percent-encodings in `uri`, case-insensitively."""
    return _DECODE_RE.sub(lambda m: _DECODE_TABLE[m.group(0).upper()], uri)


def build_request_uri(
    *,
    public_url: str | None,
    scheme: str,
    host: str,
    raw_path: bytes,
    query_string: bytes,
) -> str:
    """The absolute URL HubSpot called, as it must enter the v3 message.

    With `public_url` (the exact target URL configured in HubSpot) the path comes from it and only
    the raw query string is appended; otherwise scheme, host and the undecoded path are used.
    """
    # surrogateescape round-trips any raw byte through str and back (see _encode).
    query = query_string.decode("utf-8", "surrogateescape")
    if public_url is not None:
        base = public_url
    else:
        base = f"{scheme}://{host}{raw_path.decode('utf-8', 'surrogateescape')}"
    return f"{base}?{query}" if query else base


def _encode(text: str) -> bytes:
    """UTF-8, giving back the exact raw bytes of a request line that was not valid UTF-8."""
    return text.encode("utf-8", "surrogateescape")


def sign_v1(secret: str, body: bytes) -> str:
    """v1: hex SHA-256 of client secret + raw body."""
    return hashlib.sha256(secret.encode() + body).hexdigest()


def sign_v2(secret: str, method: str, uri: str, body: bytes) -> str:
    """v2: hex SHA-256 of client secret + method + URI + raw body."""
    return hashlib.sha256(secret.encode() + method.encode() + _encode(uri) + body).hexdigest()


def sign_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """v3: base64 HMAC-SHA256 (key = client secret) of method + decoded URI + body + timestamp."""
    message = method.encode() + _encode(decode_hubspot_uri(uri)) + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify_v3(
    *,
    secrets: Sequence[str],
    method: str,
    uri: str,
    body: bytes,
    timestamp: str,
    signature: str,
    now_ms: int,
    tolerance_ms: int = 300_000,
) -> None:
    """Raise InvalidSignature unless `signature` is a fresh v3 signature by one of `secrets`."""
    # Epoch ms has 13 digits; a longer header would also make int() raise ValueError (> 4300).
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 20:
        raise InvalidSignature("stale_timestamp", "timestamp is not epoch milliseconds")
    if abs(now_ms - int(timestamp)) > tolerance_ms:
        raise InvalidSignature("stale_timestamp", "timestamp outside the replay window")
    given = signature.strip().encode()
    matched = False
    for secret in secrets:
        expected = sign_v3(secret, method, uri, body, timestamp).encode()
        # Keep looping after a match so timing does not reveal which secret matched.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise InvalidSignature("bad_signature", "no configured secret matches the v3 signature")


def verify_legacy(
    *, secrets: Sequence[str], version: str, method: str, uri: str, body: bytes, signature: str
) -> None:
    """Raise InvalidSignature unless `signature` is a v1 or v2 signature by one of `secrets`."""
    given = signature.strip().lower().encode()
    matched = False
    for secret in secrets:
        expected = sign_v2(secret, method, uri, body) if version == "v2" else sign_v1(secret, body)
        matched |= hmac.compare_digest(expected.encode(), given)
    if not matched:
        raise InvalidSignature(
            "bad_signature", f"no configured secret matches the {version} signature"
        )


def verify_request(
    *,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    method: str,
    uri: str,
    body: bytes,
    now_ms: int,
    tolerance_ms: int,
    accept_legacy: bool,
) -> SignatureCheck:
    """Verify a webhook request from its (lower-case keyed) headers; v3 wins when present.

    v1/v2 carry no timestamp, so they are replayable: they are accepted only when `accept_legacy`.
    """
    v3 = headers.get(V3_HEADER)
    if v3 is not None:
        timestamp = headers.get(TIMESTAMP_HEADER)
        if timestamp is None:
            raise InvalidSignature("missing_signature", "v3 signature without a request timestamp")
        verify_v3(
            secrets=secrets,
            method=method,
            uri=uri,
            body=body,
            timestamp=timestamp.strip(),
            signature=v3,
            now_ms=now_ms,
            tolerance_ms=tolerance_ms,
        )
        return SignatureCheck("v3")
    legacy = headers.get(LEGACY_HEADER)
    if legacy is None:
        raise InvalidSignature("missing_signature", "no X-HubSpot-Signature-v3 header")
    if not accept_legacy:
        raise InvalidSignature(
            "legacy_signature_not_accepted", "only a v1/v2 signature; set ACCEPT_LEGACY_SIGNATURES"
        )
    version = headers.get(LEGACY_VERSION_HEADER, "v1").strip().lower()
    if version not in ("v1", "v2"):
        raise InvalidSignature("bad_signature", "unknown X-HubSpot-Signature-Version")
    verify_legacy(
        secrets=secrets, version=version, method=method, uri=uri, body=body, signature=legacy
    )
    return SignatureCheck(version)
