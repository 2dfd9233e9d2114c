"""The fake Webhooks Journal behaves as HubSpot's (HUBSPOT.md §5, the 2026-03 OpenAPI spec):
paging, 404 after expiry, expiring file URLs, 207 partial reads, the local filter, auth."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.events import Kind, normalise
from service.journal_format import InvalidJournalFile, read_file
from tests.fake_hubspot import FakeHubSpot, legacy_path
from tests.fake_journal import BATCH_MAX, READ_SCOPE, FakeJournal

GLOBAL = "/webhooks-journal/journal/2026-03"
LOCAL = "/webhooks-journal/journal-local/2026-03"
PORTAL, OTHER_PORTAL = 62515, 77001
AT = 1_767_225_600_000


def _token(fake: FakeHubSpot, scopes: str = READ_SCOPE) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "scope": scopes,
    }
    answer = httpx.post(f"{fake.url}/oauth/v1/token", data=form)
    answer.raise_for_status()
    return str(answer.json()["access_token"])


@pytest.fixture
def http(fake: FakeHubSpot) -> Iterator[httpx.Client]:
    """A client of the fake carrying a live app token with the journal's read scope."""
    headers = {"Authorization": f"Bearer {_token(fake)}"}
    with httpx.Client(base_url=fake.url, headers=headers) as client:
        yield client


def _append(fake: FakeHubSpot, portal_id: int = PORTAL, object_id: int = 101) -> str:
    event = FakeJournal.event(
        "UPDATE", portal_id, "0-1", object_id, occurred_at=AT, properties={"email": "a@b.c"}
    )
    return fake.journal.append(portal_id, [event])


def _offsets(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [entry["currentOffset"] for entry in answer.json()["results"]]


def test_batches_page_through_the_journal_oldest_first(
    fake: FakeHubSpot, http: httpx.Client
) -> None:
    offsets = [_append(fake, object_id=i) for i in range(5)]

    first = _offsets(http.get(f"{GLOBAL}/batch/earliest/2"))
    second = _offsets(http.get(f"{GLOBAL}/batch/{first[-1]}/next/2"))
    third = _offsets(http.get(f"{GLOBAL}/batch/{second[-1]}/next/2"))
    end = _offsets(http.get(f"{GLOBAL}/batch/{third[-1]}/next/2"))

    assert first + second + third == offsets
    assert end == []
    assert _offsets(http.get(f"{GLOBAL}/batch/latest/2")) == offsets[-2:]
    assert fake.journal.offsets == offsets
    body = http.get(f"{GLOBAL}/batch/earliest/1").json()
    assert body["status"] == "COMPLETE"
    assert {"startedAt", "completedAt"} <= set(body)


def test_single_entry_endpoints(fake: FakeHubSpot, http: httpx.Client) -> None:
    assert http.get(f"{GLOBAL}/earliest").status_code == 404  # an empty journal
    assert http.get(f"{GLOBAL}/latest").status_code == 404
    offsets = [_append(fake) for _ in range(3)]

    earliest = http.get(f"{GLOBAL}/earliest").json()
    latest = http.get(f"{GLOBAL}/latest").json()
    following = http.get(f"{GLOBAL}/offset/{offsets[0]}/next").json()

    assert set(earliest) == {"url", "expiresAt", "currentOffset"}
    assert [earliest["currentOffset"], following["currentOffset"], latest["currentOffset"]] == (
        offsets
    )
    assert http.get(f"{GLOBAL}/offset/{offsets[-1]}/next").status_code == 204


def test_batch_counts_are_capped_at_100(fake: FakeHubSpot, http: httpx.Client) -> None:
    for _ in range(BATCH_MAX + 5):
        _append(fake)

    assert len(_offsets(http.get(f"{GLOBAL}/batch/earliest/500"))) == BATCH_MAX
    assert http.get(f"{GLOBAL}/batch/earliest/0").status_code == 400


def test_next_after_an_expired_or_unknown_offset_is_404(
    fake: FakeHubSpot, http: httpx.Client
) -> None:
    offsets = [_append(fake) for _ in range(4)]
    fake.journal.expire_before(offsets[1])

    expired = http.get(f"{GLOBAL}/batch/{offsets[0]}/next/10")

    assert expired.status_code == 404
    body = expired.json()
    assert (body["status"], body["category"]) == ("error", "OBJECT_NOT_FOUND")
    assert body["message"]
    assert body["correlationId"]
    assert http.get(f"{GLOBAL}/offset/{offsets[1]}/next").status_code == 404
    assert http.get(f"{GLOBAL}/batch/{uuid.uuid4()}/next/1").status_code == 404
    assert http.get(f"{GLOBAL}/earliest").json()["currentOffset"] == offsets[2]
    assert fake.journal.offsets == offsets[2:]


def test_file_urls_serve_the_file_without_auth_and_expire(
    fake: FakeHubSpot, http: httpx.Client
) -> None:
    event = FakeJournal.event("DELETE", PORTAL, "0-2", 5, occurred_at=AT)
    offset = fake.journal.append(PORTAL, [event])
    first = http.get(f"{GLOBAL}/latest").json()
    second = http.get(f"{GLOBAL}/latest").json()

    download = httpx.get(first["url"])  # no Authorization header

    assert download.status_code == 200
    assert json.loads(gzip.decompress(download.content)) == {
        "offset": offset,
        "journalEvents": [event],
    }
    assert first["url"] != second["url"]  # every read gives a fresh URL
    assert fake.journal.downloads == 1
    fake.journal.url_ttl = 0
    expired = http.get(f"{GLOBAL}/latest").json()["url"]
    answer = httpx.get(expired)
    assert answer.status_code == 403
    assert "expired" in answer.text
    assert httpx.get(second["url"]).status_code == 200  # issued before, with its own expiry
    assert fake.journal.downloads == 2


def test_url_expiry_is_given_in_iso_8601(fake: FakeHubSpot, http: httpx.Client) -> None:
    _append(fake)

    expires_at = http.get(f"{GLOBAL}/latest").json()["expiresAt"]

    assert expires_at.endswith("Z")
    assert expires_at[4] == "-"
    assert expires_at[10] == "T"


def test_batch_read_answers_207_when_some_offsets_are_unknown(
    fake: FakeHubSpot, http: httpx.Client
) -> None:
    offsets = [_append(fake) for _ in range(2)]
    unknown = str(uuid.uuid4())

    complete = http.post(f"{GLOBAL}/batch/read", json={"inputs": offsets})
    partial = http.post(f"{GLOBAL}/batch/read", json={"inputs": [offsets[1], unknown]})

    assert _offsets(complete) == offsets
    assert partial.status_code == 207
    body = partial.json()
    assert [entry["currentOffset"] for entry in body["results"]] == [offsets[1]]
    assert body["numErrors"] == 1
    assert body["errors"][0]["category"] == "OBJECT_NOT_FOUND"
    too_many = {"inputs": [str(uuid.uuid4()) for _ in range(BATCH_MAX + 1)]}
    assert http.post(f"{GLOBAL}/batch/read", json=too_many).status_code == 400


def test_the_local_journal_holds_only_the_install_portals_entries(
    fake: FakeHubSpot, http: httpx.Client
) -> None:
    mine = [_append(fake, PORTAL), _append(fake, PORTAL)]
    theirs = _append(fake, OTHER_PORTAL)
    mine.append(_append(fake, PORTAL))
    query = f"?installPortalId={PORTAL}"

    local = _offsets(http.get(f"{LOCAL}/batch/earliest/10{query}"))
    following = _offsets(http.get(f"{LOCAL}/batch/{mine[1]}/next/10{query}"))

    assert local == mine
    assert following == mine[2:]  # the other portal's entry is skipped
    assert http.get(f"{LOCAL}/latest{query}").json()["currentOffset"] == mine[-1]
    assert http.get(f"{LOCAL}/batch/{theirs}/next/10{query}").status_code == 404
    assert http.get(f"{LOCAL}/batch/earliest/10").status_code == 400
    assert len(_offsets(http.get(f"{GLOBAL}/batch/earliest/10"))) == 4


@pytest.mark.parametrize("path", [f"{GLOBAL}/latest", f"{LOCAL}/latest?installPortalId={PORTAL}"])
def test_journal_calls_need_a_live_app_token_with_the_read_scope(
    fake: FakeHubSpot, path: str
) -> None:
    _append(fake)
    without_scope = {
        "Authorization": f"Bearer {_token(fake, 'developer.webhooks_journal.subscriptions.read')}"
    }
    live = {"Authorization": f"Bearer {_token(fake)}"}

    assert httpx.get(fake.url + path).status_code == 401
    assert (
        httpx.get(fake.url + path, headers={"Authorization": "Bearer pat-na1-test"}).status_code
        == 401
    )
    assert httpx.get(fake.url + path, headers=without_scope).status_code == 403
    assert httpx.get(fake.url + path, headers=live).status_code == 200
    fake.expire_app_tokens()
    assert httpx.get(fake.url + path, headers=live).status_code == 401


def test_journal_calls_are_recorded_and_keep_their_dated_path(
    fake: FakeHubSpot, http: httpx.Client
) -> None:
    _append(fake)

    http.get(f"{GLOBAL}/batch/earliest/5")

    assert legacy_path(f"{GLOBAL}/batch/earliest/5") == f"{GLOBAL}/batch/earliest/5"
    assert fake.count(GLOBAL, status=200, method="GET") == 1


def test_a_broken_file_downloads_as_garbage(fake: FakeHubSpot, http: httpx.Client) -> None:
    offset = _append(fake)
    fake.journal.break_next_file(offset, times=1)

    garbage = httpx.get(http.get(f"{GLOBAL}/latest").json()["url"]).content
    good = httpx.get(http.get(f"{GLOBAL}/latest").json()["url"]).content

    with pytest.raises(InvalidJournalFile):
        read_file(garbage, entry_offset=offset)
    assert json.loads(gzip.decompress(good))["offset"] == offset


@pytest.mark.parametrize(
    ("action", "options", "kinds"),
    [
        ("CREATE", {"properties": {"email": "a@b.c"}}, [Kind.CREATION, Kind.PROPERTY_CHANGE]),
        ("UPDATE", {"properties": {"email": "a@b.c"}}, [Kind.PROPERTY_CHANGE]),
        ("DELETE", {}, [Kind.DELETION]),
        ("RESTORE", {}, [Kind.RESTORE]),
        ("MERGE", {"merged_ids": [102]}, [Kind.MERGE]),
        ("GDPR_DELETE", {}, [Kind.PRIVACY_DELETION]),
        (
            "ASSOCIATION_ADDED",
            {"associated": ("0-2", 5), "association_type_id": 279},
            [Kind.ASSOCIATION_CHANGE],
        ),
        (
            "ASSOCIATION_REMOVED",
            {"associated": ("0-2", 5), "association_type_id": 279},
            [Kind.ASSOCIATION_CHANGE],
        ),
    ],
)
def test_the_event_builders_write_what_journal_format_reads(
    action: str, options: dict[str, Any], kinds: list[Kind]
) -> None:
    event = FakeJournal.event(action, PORTAL, "0-1", 101, occurred_at=AT, **options)
    data = json.dumps({"offset": "o", "journalEvents": [event]}).encode()

    events = [normalise(i, e) for i, e in enumerate(read_file(data, entry_offset="o").events)]

    assert [e.kind for e in events] == kinds
    assert {(e.portal_id, e.object_id, e.occurred_at) for e in events} == {(PORTAL, 101, AT)}
