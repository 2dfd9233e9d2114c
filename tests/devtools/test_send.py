"""`hubspot-webhooks send`: realistic samples, HubSpot's signatures, batching, exit codes.

The requests go to a small stdlib HTTP server that verifies and deduplicates like service.web.app,
so these tests need no database; tests/test_e2e.py drives the real service.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from hubspot.utils.signature import Signature

from service import cli, inbox
from service.devtools import delivery, samples
from service.devtools import send as sender
from service.devtools.samples import SampleSpec
from service.settings import DEV_SECRET_FILE
from service.signature import InvalidSignature, verify_request
from tests.conftest import CLIENT_SECRET

COMMON_FIELDS = {
    "eventId",
    "subscriptionId",
    "portalId",
    "appId",
    "occurredAt",
    "subscriptionType",
    "attemptNumber",
    "changeSource",
}


# --- a receiver that answers like service.web.app ------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as it arrived on the wire."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def events(self) -> list[dict[str, Any]]:
        """The JSON array in the body."""
        data = json.loads(self.body)
        assert isinstance(data, list)
        return data


@dataclass
class Receiver:
    """Records requests, verifies the v3 signature, stores each event once, answers counts."""

    secret: str = CLIENT_SECRET
    status: int = 200
    delay: float = 0.0
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    stored: set[tuple[Any, ...]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The webhook URL of this receiver."""
        return f"http://127.0.0.1:{self.port}/webhooks/hubspot"

    def events(self) -> list[dict[str, Any]]:
        """Every event received, in arrival order, duplicates included."""
        with self.lock:
            return [e for r in self.requests for e in r.events()]

    def handle(self, received: Received) -> tuple[int, dict[str, Any]]:
        """The answer service.web.app would give."""
        with self.lock:
            self.requests.append(received)
        time.sleep(self.delay)
        if self.status != 200:
            return self.status, {"error": "unavailable"}
        try:
            verify_request(
                headers=received.headers,
                secrets=(self.secret,),
                method=received.method,
                uri=f"http://{received.headers['host']}{received.target}",
                body=received.body,
                now_ms=int(time.time() * 1000),
                tolerance_ms=300_000,
                accept_legacy=False,
            )
        except InvalidSignature as exc:
            return 401, {"error": "unauthorized", "reason": exc.reason}
        events = inbox.parse_batch(received.body).events
        with self.lock:
            keys = [_key(e) for e in events]
            new = {k for k in keys if k not in self.stored}
            self.stored |= new
        return 200, {
            "received": len(events),
            "stored": len(new),
            "duplicates": len(events) - len(new),
        }


def _key(event: dict[str, Any]) -> tuple[Any, ...]:
    object_id = event.get("objectId", event.get("fromObjectId"))
    return (
        event["portalId"],
        event.get("subscriptionId"),
        event["eventId"],
        object_id,
        event["occurredAt"],
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver = cast(_Server, self.server).receiver
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = receiver.handle(Received(self.command, self.path, headers, body))
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver on a free port of 127.0.0.1."""
    state = Receiver()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = state
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No secret, port or database from the developer's shell; an empty DATA_DIR."""
    for name in ("HUBSPOT_CLIENT_SECRET", "PORT", "DATABASE_URL", "WEBHOOK_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return data_dir


def send(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `hubspot-webhooks send ARGV` in-process: exit code, stdout, stderr."""
    code = cli.main(["send", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- samples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subscription_type", [*samples.SAMPLE_TYPES, "contact.someFutureKind", "line_item.creation"]
)
def test_every_sample_type_is_a_batch_the_inbox_accepts(subscription_type: str) -> None:
    now_ms = int(time.time() * 1000)
    events = samples.build_events(
        SampleSpec(subscription_type=subscription_type), 3, rng=random.Random(1), now_ms=now_ms
    )
    batch = inbox.parse_batch(delivery.encode_batch(events))
    assert batch.events == events
    for event in events:
        assert event.keys() >= COMMON_FIELDS
        assert event["subscriptionType"] == subscription_type
        assert event["attemptNumber"] == 0
        assert event["occurredAt"] == now_ms
        assert event["portalId"] == samples.DEFAULT_PORTAL_ID
        assert event["appId"] == samples.DEFAULT_APP_ID
        assert isinstance(event.get("objectId", event.get("fromObjectId")), int)


def sample(subscription_type: str, **options: Any) -> dict[str, Any]:
    """One built-in sample event."""
    spec = SampleSpec(subscription_type=subscription_type, **options)
    return samples.build_event(spec, event_id=123456789, occurred_at=1, rng=random.Random(7))


def test_creation_is_flagged_new_and_carries_only_common_fields() -> None:
    event = sample("company.creation")
    assert event.keys() == COMMON_FIELDS | {"objectId", "changeFlag"}
    assert event["changeFlag"] == "NEW"
    assert event["changeSource"] == "CRM_UI"


@pytest.mark.parametrize(
    "subscription_type", ["contact.deletion", "contact.privacyDeletion", "deal.restore"]
)
def test_deletion_restore_and_privacy_deletion_carry_the_common_fields(
    subscription_type: str,
) -> None:
    assert sample(subscription_type).keys() == COMMON_FIELDS | {"objectId"}


def test_unknown_kinds_get_the_common_fields() -> None:
    assert sample("contact.someFutureKind").keys() == COMMON_FIELDS | {"objectId"}


@pytest.mark.parametrize(
    ("subscription_type", "options", "expected"),
    [
        ("contact.propertyChange", {}, ("lifecyclestage", "customer")),
        ("deal.propertyChange", {}, ("dealstage", "closedwon")),
        ("deal.propertyChange", {"property_name": "dealstage"}, ("dealstage", "closedwon")),
        ("deal.propertyChange", {"property_value": "closedlost"}, ("dealstage", "closedlost")),
        (
            "contact.propertyChange",
            {"property_name": "email", "property_value": "a@example.com"},
            ("email", "a@example.com"),
        ),
        ("contact.propertyChange", {"property_name": "phone", "property_value": ""}, ("phone", "")),
        ("contact.propertyChange", {"property_name": "jobtitle"}, ("jobtitle", "Example")),
        ("object.propertyChange", {"object_type_id": "0-3"}, ("dealstage", "closedwon")),
        ("object.propertyChange", {"object_type_id": "2-999"}, ("name", "Example")),
    ],
)
def test_property_change_names_a_property_and_its_new_value_as_a_string(
    subscription_type: str, options: dict[str, Any], expected: tuple[str, str]
) -> None:
    event = sample(subscription_type, **options)
    assert (event["propertyName"], event["propertyValue"]) == expected
    assert event["sourceId"].startswith("userId:")


def test_merge_names_primary_merged_and_new_object() -> None:
    event = sample("contact.merge", object_id=501)
    assert event["objectId"] == event["primaryObjectId"] == event["newObjectId"] == 501
    assert isinstance(event["mergedObjectIds"], list)
    assert event["mergedObjectIds"]
    assert 501 not in event["mergedObjectIds"]
    assert all(isinstance(i, int) for i in event["mergedObjectIds"])
    assert isinstance(event["numberOfPropertiesMoved"], int)


def test_association_change_names_both_ends_instead_of_an_object() -> None:
    event = sample("contact.associationChange", object_id=77)
    assert event.keys() == COMMON_FIELDS | {
        "associationType",
        "fromObjectId",
        "toObjectId",
        "associationRemoved",
        "isPrimaryAssociation",
    }
    assert event["associationType"] == "CONTACT_TO_COMPANY"
    assert event["fromObjectId"] == 77
    assert isinstance(event["toObjectId"], int)
    assert event["associationRemoved"] is False
    assert event["isPrimaryAssociation"] is False
    assert sample("deal.associationChange")["associationType"] == "DEAL_TO_CONTACT"


@pytest.mark.parametrize(
    "subscription_type",
    [f"object.{kind}" for kind in ("creation", "deletion", "merge", "restore", "propertyChange")],
)
def test_generic_object_events_carry_the_object_type_id(subscription_type: str) -> None:
    assert sample(subscription_type, object_type_id="0-3")["objectTypeId"] == "0-3"


def test_generic_association_names_both_object_types() -> None:
    event = sample("object.associationChange", object_type_id="0-1")
    assert "objectTypeId" not in event
    assert "objectId" not in event
    assert event["fromObjectTypeId"] == "0-1"
    assert event["toObjectTypeId"] == "0-2"
    assert event["associationCategory"] == "HUBSPOT_DEFINED"
    assert isinstance(event["associationTypeId"], int)
    assert isinstance(event["fromObjectId"], int)
    assert isinstance(event["toObjectId"], int)


def test_conversation_new_message_names_the_message() -> None:
    event = sample("conversation.newMessage")
    assert event["messageType"] == "MESSAGE"
    assert isinstance(event["messageId"], str)
    assert event["messageId"]


def test_event_ids_are_unique_9_to_10_digit_numbers_and_new_every_run() -> None:
    spec = SampleSpec(subscription_type="contact.creation")
    first = samples.build_events(spec, 500, rng=random.Random())
    second = samples.build_events(spec, 500, rng=random.Random())
    ids = [e["eventId"] for e in first]
    assert len(set(ids)) == 500
    assert all(100_000_000 <= i < 10_000_000_000 for i in ids)
    assert not set(ids) & {e["eventId"] for e in second}


def test_subscription_id_is_stable_per_subscription() -> None:
    contact = SampleSpec(subscription_type="contact.propertyChange")
    same = SampleSpec(subscription_type="contact.propertyChange", object_id=5, portal_id=9)
    assert contact.subscription_id() == same.subscription_id()
    other_property = SampleSpec(subscription_type="contact.propertyChange", property_name="email")
    deal = SampleSpec(subscription_type="object.creation", object_type_id="0-3")
    company = SampleSpec(subscription_type="object.creation", object_type_id="0-2")
    assert len({s.subscription_id() for s in (contact, other_property, deal, company)}) == 4


def test_object_id_is_fixed_when_given() -> None:
    spec = SampleSpec(subscription_type="contact.creation", object_id=42, portal_id=7)
    events = samples.build_events(spec, 5, rng=random.Random(3))
    assert {(e["objectId"], e["portalId"]) for e in events} == {(42, 7)}


def test_duplicates_are_identical_re_sends_that_follow_their_original() -> None:
    rng = random.Random(11)
    originals = samples.build_events(SampleSpec(), 50, rng=rng)
    sent = sender.with_duplicates(originals, 30, rng)
    assert len(sent) == 80
    first_seen: dict[int, int] = {}
    for position, event in enumerate(sent):
        first_seen.setdefault(event["eventId"], position)
        original = next(o for o in originals if o["eventId"] == event["eventId"])
        assert delivery.encode_batch([event]) == delivery.encode_batch([original])
    # The originals keep their order; every re-send comes after its first copy.
    assert [e["eventId"] for e in originals] == sorted(first_seen, key=first_seen.__getitem__)


# --- signatures ------------------------------------------------------------------------------


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


# --- the command against a receiver ----------------------------------------------------------


def test_send_posts_one_signed_event_that_the_receiver_stores(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{receiver.url}?tenant=a%20b"
    code, out, err = send(capsys, "contact.creation", "--url", url, "--secret", CLIENT_SECRET)
    assert code == 0, out + err
    assert "sent 1 events in 1 requests: stored 1, duplicates 0" in out
    assert "[1/1] 200 in " in out
    assert '{"received": 1, "stored": 1, "duplicates": 0}' in out
    assert CLIENT_SECRET not in out + err
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.target == "/webhooks/hubspot?tenant=a%20b"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-hubspot-signature-version"] == "v1"
    assert abs(int(request.headers["x-hubspot-request-timestamp"]) - time.time() * 1000) < 10_000
    [event] = request.events()
    assert event["subscriptionType"] == "contact.creation"
    # The bytes signed are the bytes sent, in HubSpot's compact form.
    assert request.body == delivery.encode_batch([event])
    assert request.headers["x-hubspot-signature-v3"] == Signature.get_signature(
        CLIENT_SECRET,
        request.body.decode(),
        "v3",
        http_uri=url,
        timestamp=request.headers["x-hubspot-request-timestamp"],
    )
    assert request.headers["x-hubspot-signature"] == Signature.get_signature(
        CLIENT_SECRET, request.body.decode(), "v1"
    )


def test_count_batch_and_concurrency_split_the_events_into_requests(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = send(
        capsys,
        "deal.propertyChange",
        "--property",
        "dealstage",
        "--value",
        "closedwon",
        "--count",
        "250",
        "--batch",
        "100",
        "--concurrency",
        "4",
        "--url",
        receiver.url,
        "--secret",
        CLIENT_SECRET,
    )
    assert code == 0, out
    assert sorted(len(r.events()) for r in receiver.requests) == [50, 100, 100]
    events = receiver.events()
    assert len({e["eventId"] for e in events}) == 250
    assert {(e["propertyName"], e["propertyValue"]) for e in events} == {("dealstage", "closedwon")}
    assert "sent 250 events in 3 requests: stored 250, duplicates 0" in out
    assert sum(f"[{i}/3] 200" in out for i in (1, 2, 3)) == 3


def test_duplicate_rate_re_sends_exact_copies_that_are_stored_once(
    receiver: Receiver, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    saved = tmp_path / "batch.json"
    code, out, _ = send(
        capsys,
        "contact.creation",
        "--count",
        "100",
        "--duplicate-rate",
        "0.2",
        "--batch",
        "10",
        "--concurrency",
        "3",
        "--save",
        str(saved),
        "--url",
        receiver.url,
        "--secret",
        CLIENT_SECRET,
    )
    assert code == 0, out
    events = receiver.events()
    assert len(events) == 100
    by_id: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_id.setdefault(event["eventId"], []).append(event)
    assert len(by_id) == 80
    assert sum(len(copies) - 1 for copies in by_id.values()) == 20
    for copies in by_id.values():
        assert all(copy == copies[0] for copy in copies)
    assert "sent 100 events in 10 requests: stored 80, duplicates 20 (already stored)" in out
    assert "(80 distinct + 20 re-sent)" in out
    assert {e["eventId"] for e in json.loads(saved.read_text())} == set(by_id)


def test_a_saved_batch_sent_again_stores_nothing_new_and_says_so(
    receiver: Receiver, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    saved = tmp_path / "batch.json"
    common = ("--url", receiver.url, "--secret", CLIENT_SECRET)
    code, out, _ = send(capsys, "contact.creation", "--count", "3", "--save", str(saved), *common)
    assert code == 0, out
    assert "stored 3, duplicates 0" in out
    code, out, _ = send(capsys, "--file", str(saved), *common)
    assert code == 0, out
    assert "sent 3 events in 1 requests: stored 0, duplicates 3 (already stored)" in out
    assert "nothing new stored" in out
    first, again = receiver.requests
    assert again.events() == first.events()
    assert again.body == first.body


def test_file_with_one_event_object_is_sent_as_a_batch_of_one(
    receiver: Receiver, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one = sample("ticket.creation")
    path = tmp_path / "one.json"
    path.write_text(json.dumps(one, indent=2))
    code, out, _ = send(capsys, "--file", str(path), "--url", receiver.url, "--secret", "x" * 8)
    assert code == 1  # the receiver verifies with another secret
    assert "401" in out
    assert "rejected the signature" in out
    assert receiver.requests[0].events() == [one]


def test_secret_comes_from_the_environment(
    receiver: Receiver, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", f"{CLIENT_SECRET},older-secret")
    code, out, err = send(capsys, "contact.deletion", "--url", receiver.url)
    assert code == 0, out + err
    assert CLIENT_SECRET not in out + err


def test_dev_secret_file_and_port_are_used_when_nothing_else_is_given(
    receiver: Receiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: Path,
) -> None:
    env.mkdir()
    (env / DEV_SECRET_FILE).write_text("dev-secret-from-data-dir\n")
    receiver.secret = "dev-secret-from-data-dir"
    monkeypatch.setenv("PORT", str(receiver.port))
    code, out, _ = send(capsys, "company.creation")
    assert code == 0, out
    assert f"to http://127.0.0.1:{receiver.port}/webhooks/hubspot" in out
    assert "dev-secret-from-data-dir" not in out


def test_missing_secret_is_a_configuration_error_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = send(capsys, "contact.creation", "--url", "http://127.0.0.1:9/webhooks")
    assert code == 2
    assert "HUBSPOT_CLIENT_SECRET" in err
    assert out == ""


def test_a_non_2xx_answer_is_printed_and_exits_1(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.status = 503
    code, out, _ = send(capsys, "contact.creation", "--url", receiver.url, "--secret", "s")
    assert code == 1
    assert "[1/1] 503 in " in out
    assert '{"error": "unavailable"}' in out
    assert "1 failed (1 events not confirmed stored)" in out


def test_an_unreachable_receiver_exits_1_and_skips_the_remaining_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/hubspot"
    code, out, _ = send(capsys, "contact.creation", "--count", "300", "--url", url, "--secret", "s")
    assert code == 1
    assert f"cannot connect to {url}" in out
    assert "[2/3] not sent (100 events)" in out
    assert "[3/3] not sent (100 events)" in out
    assert "2 not sent (200 events)" in out
    assert "is the receiver running?" in out


def test_a_slow_receiver_times_out_and_exits_1(
    receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.delay = 0.5
    code, out, _ = send(
        capsys, "contact.creation", "--url", receiver.url, "--secret", "s", "--timeout", "0.1"
    )
    assert code == 1
    assert "no response within 0.1 s" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a SUBSCRIPTION_TYPE"),
        (["contact.creation", "--file", "{file}"], "not both"),
        (["--file", "{file}", "--count", "3"], "--count: not with --file"),
        (["--file", "{file}", "--portal", "1"], "--portal: not with --file"),
        (["--file", "{missing}"], "cannot read"),
        (["--file", "{not_json}"], "is not a JSON file"),
        (["--file", "{empty}"], "holds no events"),
        (["contact.creation", "--value", "x"], "propertyChange events only"),
        (["contact.creation", "--object-type", "0-3"], "object.* events only"),
    ],
)
def test_unusable_options_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    files = {
        "file": tmp_path / "events.json",
        "missing": tmp_path / "missing.json",
        "not_json": tmp_path / "bad.json",
        "empty": tmp_path / "empty.json",
    }
    files["file"].write_text(json.dumps([sample("contact.creation")]))
    files["not_json"].write_text("[{")
    files["empty"].write_text("[]")
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    code, out, err = send(capsys, *args, "--secret", "s", "--url", "http://127.0.0.1:9/x")
    assert code == 2
    assert message in err
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["contact.creation", "--batch", "101"],
        ["contact.creation", "--batch", "0"],
        ["contact.creation", "--duplicate-rate", "1"],
        ["contact.creation", "--count", "0"],
        ["contact.creation", "--url", "ftp://example.com/x"],
        ["not-a-subscription-type"],
        ["object.creation", "--object-type", "widget"],
    ],
)
def test_malformed_options_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["send", *argv])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_object_type_accepts_a_name(receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = send(
        capsys,
        "object.propertyChange",
        "--object-type",
        "deal",
        "--url",
        receiver.url,
        "--secret",
        CLIENT_SECRET,
    )
    assert code == 0, out
    [event] = receiver.events()
    assert (event["objectTypeId"], event["propertyName"]) == ("0-3", "dealstage")
