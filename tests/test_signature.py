"""Signature checks against HubSpot's published vectors and the official SDK, not only ourselves."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hubspot.utils.signature import Signature
from hypothesis import given
from hypothesis import strategies as st

from service.signature import (
    InvalidSignature,
    SignatureCheck,
    build_request_uri,
    decode_hubspot_uri,
    sign_v1,
    sign_v2,
    sign_v3,
    verify_request,
    verify_v3,
)

# Vectors from HUBSPOT.md section 1 (HubSpot docs "Validating requests" and the SDK's tests).
SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
V1_BODY = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
    b'"changeSource":"CRM","changeFlag":"NEW","appId":54321}]'
)
V1_SIGNATURE = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
V2_URI = "https://www.example.com/webhook_uri"
V2_BODY = b'{"example_field":"example_value"}'
V2_SIGNATURE = "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
V3_URI = "https://www.example.com/webhook_uri"
V3_BODY = b"{'example_field':'example_value'}"
V3_TIMESTAMP = "1693657560000"
V3_NOW_MS = int(V3_TIMESTAMP)
V3_SIGNATURE = "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="

TOLERANCE_MS = 300_000

# The 12 encodings HubSpot decodes before signing v3, with their decoded characters.
HUBSPOT_DECODED = {
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
# Encodings a full urllib unquote would decode but HubSpot does not.
KEPT_ENCODED = ("%20", "%2B", "%25", "%26", "%3D")


def v3_headers(*, signature: str = V3_SIGNATURE, timestamp: str = V3_TIMESTAMP) -> dict[str, str]:
    """Lower-case keyed headers as the app hands them to verify_request."""
    return {"x-hubspot-signature-v3": signature, "x-hubspot-request-timestamp": timestamp}


def legacy_headers(version: str, signature: str) -> dict[str, str]:
    """Headers of a request carrying only a v1/v2 signature."""
    return {"x-hubspot-signature": signature, "x-hubspot-signature-version": version}


def check(
    headers: Mapping[str, str],
    *,
    secrets: tuple[str, ...] = (SECRET,),
    uri: str = V3_URI,
    body: bytes = V3_BODY,
    now_ms: int = V3_NOW_MS,
    accept_legacy: bool = False,
) -> SignatureCheck:
    """verify_request with the v3 vector's request as defaults."""
    return verify_request(
        headers=headers,
        secrets=secrets,
        method="POST",
        uri=uri,
        body=body,
        now_ms=now_ms,
        tolerance_ms=TOLERANCE_MS,
        accept_legacy=accept_legacy,
    )


def check_v3(
    *,
    secrets: tuple[str, ...] = (SECRET,),
    uri: str = V3_URI,
    body: bytes = V3_BODY,
    timestamp: str = V3_TIMESTAMP,
    signature: str = V3_SIGNATURE,
    now_ms: int = V3_NOW_MS,
) -> None:
    """verify_v3 with the v3 vector as defaults."""
    verify_v3(
        secrets=secrets,
        method="POST",
        uri=uri,
        body=body,
        timestamp=timestamp,
        signature=signature,
        now_ms=now_ms,
        tolerance_ms=TOLERANCE_MS,
    )


def sdk_signature(
    version: str,
    *,
    secret: str,
    body: str,
    uri: str | None = None,
    method: str = "POST",
    timestamp: str | None = None,
) -> str:
    """The official SDK's signature (hubspot.utils.signature), typed for mypy."""
    result: str = Signature.get_signature(
        secret, body, version, http_uri=uri, http_method=method, timestamp=timestamp
    )
    return result


# --- HubSpot's published vectors ---------------------------------------------------------------


def test_v1_matches_published_vector() -> None:
    assert sign_v1(SECRET, V1_BODY) == V1_SIGNATURE


def test_v2_matches_published_vector() -> None:
    assert sign_v2(SECRET, "POST", V2_URI, V2_BODY) == V2_SIGNATURE


def test_v3_matches_published_vector() -> None:
    assert sign_v3(SECRET, "POST", V3_URI, V3_BODY, V3_TIMESTAMP) == V3_SIGNATURE


def test_v3_published_vector_verifies_at_its_own_timestamp() -> None:
    check_v3()


def test_published_vectors_verify_through_verify_request() -> None:
    assert check(v3_headers()) == SignatureCheck("v3")
    v1 = legacy_headers("v1", V1_SIGNATURE)
    assert check(v1, body=V1_BODY, accept_legacy=True) == SignatureCheck("v1")
    v2 = legacy_headers("v2", V2_SIGNATURE)
    assert check(v2, uri=V2_URI, body=V2_BODY, accept_legacy=True) == SignatureCheck("v2")


# --- agreement with the official SDK -----------------------------------------------------------

secrets_st = st.text(min_size=1, max_size=64)
bodies_st = st.text(max_size=400)
methods_st = st.sampled_from(["POST", "GET", "PUT", "PATCH", "DELETE"])
timestamps_st = st.integers(min_value=0, max_value=99_999_999_999_999).map(str)
# No '%' in plain characters, so the only percent-encodings in a generated URI are the kept ones.
_uri_chars = st.characters(
    codec="ascii", min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="%#?"
)
_path_st = st.lists(
    st.one_of(st.text(_uri_chars, min_size=1, max_size=8), st.sampled_from(KEPT_ENCODED)),
    max_size=8,
).map("".join)
_query_st = st.lists(
    st.one_of(
        st.text(st.characters(codec="ascii", exclude_characters="%# "), min_size=1, max_size=8),
        st.sampled_from(KEPT_ENCODED),
    ),
    max_size=8,
).map("".join)
uris_st = st.builds(
    lambda scheme, host, path, query: f"{scheme}://{host}/{path}" + (f"?{query}" if query else ""),
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,12}){0,3}(:[0-9]{1,5})?", fullmatch=True),
    _path_st,
    _query_st,
)


@given(secret=secrets_st, body=bodies_st)
def test_v1_agrees_with_official_sdk(secret: str, body: str) -> None:
    assert sign_v1(secret, body.encode()) == sdk_signature("v1", secret=secret, body=body)


@given(secret=secrets_st, method=methods_st, uri=uris_st, body=bodies_st)
def test_v2_agrees_with_official_sdk(secret: str, method: str, uri: str, body: str) -> None:
    expected = sdk_signature("v2", secret=secret, body=body, uri=uri, method=method)
    assert sign_v2(secret, method, uri, body.encode()) == expected


@given(secret=secrets_st, method=methods_st, uri=uris_st, body=bodies_st, timestamp=timestamps_st)
def test_v3_agrees_with_official_sdk(
    secret: str, method: str, uri: str, body: str, timestamp: str
) -> None:
    expected = sdk_signature(
        "v3", secret=secret, body=body, uri=uri, method=method, timestamp=timestamp
    )
    assert sign_v3(secret, method, uri, body.encode(), timestamp) == expected


@given(secret=secrets_st, method=methods_st, uri=uris_st, body=bodies_st, timestamp=timestamps_st)
def test_official_sdk_v3_signature_verifies(
    secret: str, method: str, uri: str, body: str, timestamp: str
) -> None:
    verify_v3(
        secrets=[secret],
        method=method,
        uri=uri,
        body=body.encode(),
        timestamp=timestamp,
        signature=sdk_signature(
            "v3", secret=secret, body=body, uri=uri, method=method, timestamp=timestamp
        ),
        now_ms=int(timestamp),
    )


# Pairs (as sent, as HubSpot signs it) built side by side, independently of decode_hubspot_uri.
_encoded_pair_st = st.sampled_from(sorted(HUBSPOT_DECODED.items())).flatmap(
    lambda item: st.sampled_from([item, (item[0].lower(), item[1])])
)
_plain_pair_st = st.one_of(
    st.text(_uri_chars, min_size=1, max_size=6), st.sampled_from(KEPT_ENCODED)
).map(lambda text: (text, text))


@given(
    secret=secrets_st,
    pairs=st.lists(st.one_of(_encoded_pair_st, _plain_pair_st), max_size=12),
    body=bodies_st,
    timestamp=timestamps_st,
)
def test_v3_signs_the_uri_as_hubspot_decodes_it(
    secret: str, pairs: list[tuple[str, str]], body: str, timestamp: str
) -> None:
    sent = "https://example.com/hook/" + "".join(sent for sent, _ in pairs)
    signed = "https://example.com/hook/" + "".join(signed for _, signed in pairs)
    expected = sdk_signature("v3", secret=secret, body=body, uri=signed, timestamp=timestamp)
    assert sign_v3(secret, "POST", sent, body.encode(), timestamp) == expected


# --- the decode table --------------------------------------------------------------------------


@pytest.mark.parametrize(("encoded", "decoded"), sorted(HUBSPOT_DECODED.items()))
def test_each_hubspot_encoding_is_decoded_in_either_case(encoded: str, decoded: str) -> None:
    assert decode_hubspot_uri(f"/a{encoded}b") == f"/a{decoded}b"
    assert decode_hubspot_uri(f"/a{encoded.lower()}b") == f"/a{decoded}b"


@pytest.mark.parametrize("encoded", KEPT_ENCODED)
def test_encodings_outside_the_table_are_left_alone(encoded: str) -> None:
    assert decode_hubspot_uri(f"/a{encoded}b") == f"/a{encoded}b"
    assert decode_hubspot_uri(f"/a{encoded.lower()}b") == f"/a{encoded.lower()}b"


def test_mixed_uri_decodes_only_the_table() -> None:
    uri = "https://example.com/a%3Ab%20c%2fd?q=%40x%26y%3Dz%2B1%25%28%29%2a%2C%3b%21%24%27%3F"
    expected = "https://example.com/a:b%20c/d?q=@x%26y%3Dz%2B1%25()*,;!$'?"
    assert decode_hubspot_uri(uri) == expected


def test_decoding_is_a_single_pass() -> None:
    assert decode_hubspot_uri("/a%253A%252F") == "/a%253A%252F"


# --- verify_v3: the replay window --------------------------------------------------------------


def test_stale_timestamp_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(now_ms=V3_NOW_MS + TOLERANCE_MS + 1)
    assert info.value.reason == "stale_timestamp"


def test_future_timestamp_beyond_tolerance_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(now_ms=V3_NOW_MS - TOLERANCE_MS - 1)
    assert info.value.reason == "stale_timestamp"


@pytest.mark.parametrize("offset_ms", [TOLERANCE_MS, -TOLERANCE_MS])
def test_timestamp_exactly_at_the_tolerance_is_accepted(offset_ms: int) -> None:
    check_v3(now_ms=V3_NOW_MS + offset_ms)


@pytest.mark.parametrize(
    "timestamp",
    ["", "abc", "1693657560000.0", "1.69365756e12", "-1693657560000", " 1693657560000", "¹²³"],
)
def test_non_numeric_timestamp_is_rejected(timestamp: str) -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(timestamp=timestamp)
    assert info.value.reason == "stale_timestamp"


def test_timestamp_too_long_for_int_is_rejected_not_crashing() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(timestamp="9" * 5000)
    assert info.value.reason == "stale_timestamp"


# --- verify_v3: what the signature covers ------------------------------------------------------


def test_tampered_body_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(body=V3_BODY.replace(b"example_value", b"example_valuE"))
    assert info.value.reason == "bad_signature"


def test_tampered_uri_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(uri=V3_URI + "?x=1")
    assert info.value.reason == "bad_signature"


def test_tampered_timestamp_within_window_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(timestamp=str(V3_NOW_MS + 1))
    assert info.value.reason == "bad_signature"


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(secrets=("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",))
    assert info.value.reason == "bad_signature"


def test_no_secrets_rejects_everything() -> None:
    with pytest.raises(InvalidSignature) as info:
        check_v3(secrets=())
    assert info.value.reason == "bad_signature"


def test_second_secret_of_a_rotation_list_matches() -> None:
    check_v3(secrets=("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", SECRET))
    assert check(v3_headers(), secrets=("old-secret", SECRET)) == SignatureCheck("v3")


# --- verify_request: which header wins ---------------------------------------------------------


def test_request_without_any_signature_header_is_missing_signature() -> None:
    with pytest.raises(InvalidSignature) as info:
        check({"content-type": "application/json"}, accept_legacy=True)
    assert info.value.reason == "missing_signature"


def test_v3_header_without_timestamp_header_is_missing_signature() -> None:
    with pytest.raises(InvalidSignature) as info:
        check({"x-hubspot-signature-v3": V3_SIGNATURE})
    assert info.value.reason == "missing_signature"


@pytest.mark.parametrize(("version", "signature"), [("v1", V1_SIGNATURE), ("v2", V2_SIGNATURE)])
def test_legacy_signature_is_refused_unless_accepted(version: str, signature: str) -> None:
    with pytest.raises(InvalidSignature) as info:
        check(legacy_headers(version, signature), uri=V2_URI, body=V1_BODY)
    assert info.value.reason == "legacy_signature_not_accepted"


def test_accepted_legacy_v1_signature_verifies() -> None:
    result = check(legacy_headers("v1", V1_SIGNATURE), body=V1_BODY, accept_legacy=True)
    assert result == SignatureCheck("v1")


def test_accepted_legacy_v2_signature_verifies() -> None:
    headers = legacy_headers("v2", V2_SIGNATURE)
    result = check(headers, uri=V2_URI, body=V2_BODY, accept_legacy=True)
    assert result == SignatureCheck("v2")


def test_legacy_signature_without_version_header_is_treated_as_v1() -> None:
    headers = {"x-hubspot-signature": V1_SIGNATURE}
    assert check(headers, body=V1_BODY, accept_legacy=True) == SignatureCheck("v1")


@pytest.mark.parametrize(
    ("headers", "uri", "body"),
    [
        (legacy_headers("v1", V1_SIGNATURE), V3_URI, V1_BODY + b" "),
        (legacy_headers("v1", V2_SIGNATURE), V3_URI, V1_BODY),
        (legacy_headers("v2", V2_SIGNATURE), V2_URI + "/", V2_BODY),
        (legacy_headers("v2", V1_SIGNATURE), V2_URI, V2_BODY),
        (legacy_headers("v3", V2_SIGNATURE), V2_URI, V2_BODY),
    ],
    ids=["v1-tampered-body", "v1-wrong", "v2-tampered-uri", "v2-wrong", "unknown-version"],
)
def test_wrong_accepted_legacy_signature_is_bad_signature(
    headers: dict[str, str], uri: str, body: bytes
) -> None:
    with pytest.raises(InvalidSignature) as info:
        check(headers, uri=uri, body=body, accept_legacy=True)
    assert info.value.reason == "bad_signature"


def test_legacy_signature_with_wrong_secret_is_bad_signature() -> None:
    with pytest.raises(InvalidSignature) as info:
        check(
            legacy_headers("v1", V1_SIGNATURE),
            secrets=("other",),
            body=V1_BODY,
            accept_legacy=True,
        )
    assert info.value.reason == "bad_signature"


def test_present_v3_wins_over_a_bad_legacy_signature() -> None:
    headers = v3_headers() | legacy_headers("v1", "0" * 64)
    assert check(headers, accept_legacy=True) == SignatureCheck("v3")


def test_bad_v3_does_not_fall_back_to_a_valid_legacy_signature() -> None:
    headers = v3_headers(signature=V3_SIGNATURE.replace("K", "L")) | legacy_headers(
        "v1", sign_v1(SECRET, V3_BODY)
    )
    with pytest.raises(InvalidSignature) as info:
        check(headers, accept_legacy=True)
    assert info.value.reason == "bad_signature"


def test_stale_v3_through_verify_request_is_rejected() -> None:
    with pytest.raises(InvalidSignature) as info:
        check(v3_headers(), now_ms=V3_NOW_MS + TOLERANCE_MS + 1)
    assert info.value.reason == "stale_timestamp"


def test_base64_plus_in_signature_is_not_url_decoded() -> None:
    assert "+" in V3_SIGNATURE
    assert "/" in V3_SIGNATURE
    assert check(v3_headers()) == SignatureCheck("v3")
    # What a form/URL decoder would have made of the header: both must fail, not be "repaired".
    for mangled in (V3_SIGNATURE.replace("+", " "), V3_SIGNATURE.replace("+", "%2B")):
        with pytest.raises(InvalidSignature) as info:
            check(v3_headers(signature=mangled))
        assert info.value.reason == "bad_signature"


# --- build_request_uri -------------------------------------------------------------------------


def test_public_url_with_raw_query_is_the_signed_uri() -> None:
    uri = build_request_uri(
        public_url="https://hooks.example.com/hubspot/webhook",
        scheme="http",
        host="10.0.0.5:8000",
        raw_path=b"/webhook",
        query_string=b"a=1&b=%20x%2B%3A",
    )
    assert uri == "https://hooks.example.com/hubspot/webhook?a=1&b=%20x%2B%3A"


def test_public_url_without_query_is_used_as_is() -> None:
    uri = build_request_uri(
        public_url="https://hooks.example.com/hubspot/webhook",
        scheme="http",
        host="10.0.0.5:8000",
        raw_path=b"/webhook",
        query_string=b"",
    )
    assert uri == "https://hooks.example.com/hubspot/webhook"


def test_uri_from_scheme_host_and_raw_path_keeps_encodings() -> None:
    uri = build_request_uri(
        public_url=None,
        scheme="https",
        host="example.com",
        raw_path=b"/hook%20path/a%2Bb%3Ac",
        query_string=b"x=%20y%26z",
    )
    assert uri == "https://example.com/hook%20path/a%2Bb%3Ac?x=%20y%26z"


def test_uri_from_scheme_host_and_raw_path_without_query_has_no_question_mark() -> None:
    uri = build_request_uri(
        public_url=None,
        scheme="https",
        host="example.com",
        raw_path=b"/hook%20path",
        query_string=b"",
    )
    assert uri == "https://example.com/hook%20path"


def test_built_uri_signs_like_hubspot() -> None:
    uri = build_request_uri(
        public_url=None,
        scheme="https",
        host="example.com",
        raw_path=b"/hook%20path/a%3Ab",
        query_string=b"x=%40y%26z",
    )
    signed_by_hubspot = "https://example.com/hook%20path/a:b?x=@y%26z"
    body = '[{"eventId":1}]'
    expected = sdk_signature(
        "v3", secret=SECRET, body=body, uri=signed_by_hubspot, timestamp=V3_TIMESTAMP
    )
    assert sign_v3(SECRET, "POST", uri, body.encode(), V3_TIMESTAMP) == expected
