"""service.devtools.send, `hubspot-webhooks send`: batching, duplicates, files, secrets, answers
and exit codes.

The requests go to a stand-in for the webhook endpoint (tests.receivers.WebhookEndpoint) that
verifies and deduplicates like service.web.webhook, so these tests need no database;
tests/test_e2e.py drives the real service.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hubspot.utils.signature import Signature

from service import cli
from service.devtools import delivery, samples
from service.devtools import send as sender
from service.devtools.samples import SampleSpec
from service.settings import DEV_SECRET_FILE
from tests.factories import CLIENT_SECRET, sample
from tests.receivers import WebhookEndpoint
from tests.support import free_port


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


# --- duplicates ------------------------------------------------------------------------------


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


# --- the command against the endpoint --------------------------------------------------------


def test_send_posts_one_signed_event_that_the_receiver_stores(
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{endpoint.url}?tenant=a%20b"
    code, out, err = send(capsys, "contact.creation", "--url", url, "--secret", CLIENT_SECRET)
    assert code == 0, out + err
    assert "sent 1 events in 1 requests: stored 1, duplicates 0" in out
    assert "[1/1] 200 in " in out
    assert '{"received": 1, "stored": 1, "duplicates": 0}' in out
    assert CLIENT_SECRET not in out + err
    [request] = endpoint.requests
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
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str]
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
        endpoint.url,
        "--secret",
        CLIENT_SECRET,
    )
    assert code == 0, out
    assert sorted(len(r.events()) for r in endpoint.requests) == [50, 100, 100]
    events = endpoint.events()
    assert len({e["eventId"] for e in events}) == 250
    assert {(e["propertyName"], e["propertyValue"]) for e in events} == {("dealstage", "closedwon")}
    assert "sent 250 events in 3 requests: stored 250, duplicates 0" in out
    assert sum(f"[{i}/3] 200" in out for i in (1, 2, 3)) == 3


def test_duplicate_rate_re_sends_exact_copies_that_are_stored_once(
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path
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
        endpoint.url,
        "--secret",
        CLIENT_SECRET,
    )
    assert code == 0, out
    events = endpoint.events()
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
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    saved = tmp_path / "batch.json"
    common = ("--url", endpoint.url, "--secret", CLIENT_SECRET)
    code, out, _ = send(capsys, "contact.creation", "--count", "3", "--save", str(saved), *common)
    assert code == 0, out
    assert "stored 3, duplicates 0" in out
    code, out, _ = send(capsys, "--file", str(saved), *common)
    assert code == 0, out
    assert "sent 3 events in 1 requests: stored 0, duplicates 3 (already stored)" in out
    assert "nothing new stored" in out
    first, again = endpoint.requests
    assert again.events() == first.events()
    assert again.body == first.body


def test_file_with_one_event_object_is_sent_as_a_batch_of_one(
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    one = sample("ticket.creation")
    path = tmp_path / "one.json"
    path.write_text(json.dumps(one, indent=2))
    code, out, _ = send(capsys, "--file", str(path), "--url", endpoint.url, "--secret", "x" * 8)
    assert code == 1  # the receiver verifies with another secret
    assert "401" in out
    assert "rejected the signature" in out
    assert endpoint.requests[0].events() == [one]


def test_secret_comes_from_the_environment(
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", f"{CLIENT_SECRET},older-secret")
    code, out, err = send(capsys, "contact.deletion", "--url", endpoint.url)
    assert code == 0, out + err
    assert CLIENT_SECRET not in out + err


def test_dev_secret_file_and_port_are_used_when_nothing_else_is_given(
    endpoint: WebhookEndpoint,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: Path,
) -> None:
    env.mkdir()
    (env / DEV_SECRET_FILE).write_text("dev-secret-from-data-dir\n")
    endpoint.secret = "dev-secret-from-data-dir"
    monkeypatch.setenv("PORT", str(endpoint.port))
    code, out, _ = send(capsys, "company.creation")
    assert code == 0, out
    assert f"to http://127.0.0.1:{endpoint.port}/webhooks/hubspot" in out
    assert "dev-secret-from-data-dir" not in out


def test_missing_secret_is_a_configuration_error_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = send(capsys, "contact.creation", "--url", "http://127.0.0.1:9/webhooks")
    assert code == 2
    assert "HUBSPOT_CLIENT_SECRET" in err
    assert out == ""


def test_a_non_2xx_answer_is_printed_and_exits_1(
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.status = 503
    code, out, _ = send(capsys, "contact.creation", "--url", endpoint.url, "--secret", "s")
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
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint.delay = 0.5
    code, out, _ = send(
        capsys, "contact.creation", "--url", endpoint.url, "--secret", "s", "--timeout", "0.1"
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


def test_object_type_accepts_a_name(
    endpoint: WebhookEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = send(
        capsys,
        "object.propertyChange",
        "--object-type",
        "deal",
        "--url",
        endpoint.url,
        "--secret",
        CLIENT_SECRET,
    )
    assert code == 0, out
    [event] = endpoint.events()
    assert (event["objectTypeId"], event["propertyName"]) == ("0-3", "dealstage")
