"""service.hubspot.journal_api against the fake journal: paging, expiry, partial reads, the local
journal, the app token's reuse and renewal, retries, and the file download."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from service import db
from service.hubspot.appauth import AppApi, AppToken
from service.hubspot.journal_api import Entry, FileExpired, JournalApi, OffsetExpired
from service.hubspot.sdk import HubSpotError, HubSpotUnavailable
from service.journal_format import read_file
from tests.fake_hubspot import FakeHubSpot
from tests.fake_journal import FakeJournal

PORTAL, OTHER_PORTAL = 62515, 77001
AT = 1_767_225_600_000
GLOBAL = "/webhooks-journal/journal/2026-03"
LOCAL = "/webhooks-journal/journal-local/2026-03"


class Sleeps(list[float]):
    """Records the waits instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    """The waits of the API's retries (nothing sleeps)."""
    return Sleeps()


@pytest.fixture
def requests_sent() -> list[httpx.Request]:
    """The requests the download client sent."""
    return []


@pytest.fixture
def http(requests_sent: list[httpx.Request]) -> Iterator[httpx.Client]:
    """The download client, remembering each request it sends."""
    with httpx.Client(event_hooks={"request": [requests_sent.append]}) as client:
        yield client


def _journal(
    fake: FakeHubSpot,
    sleeps: Sleeps,
    http: httpx.Client,
    *,
    portal_id: int | None = None,
    **options: Any,
) -> JournalApi:
    token = AppToken(fake.url, fake.client_id, fake.client_secret)
    app = AppApi(fake.url, token, sleep=sleeps)
    return JournalApi(app, portal_id=portal_id, http=http, sleep=sleeps, **options)


@pytest.fixture
def journal(fake: FakeHubSpot, sleeps: Sleeps, http: httpx.Client) -> JournalApi:
    """The global journal's API on the fake, with a fresh app token."""
    return _journal(fake, sleeps, http)


def _append(fake: FakeHubSpot, portal_id: int = PORTAL, object_id: int = 101) -> str:
    event = FakeJournal.event(
        "UPDATE", portal_id, "0-1", object_id, occurred_at=AT, properties={"email": "a@b.c"}
    )
    return fake.journal.append(portal_id, [event])


def _offsets(entries: list[Entry]) -> list[str]:
    return [entry.offset for entry in entries]


def test_pages_through_the_journal_from_the_earliest_entry(
    fake: FakeHubSpot, journal: JournalApi
) -> None:
    offsets = [_append(fake, object_id=i) for i in range(5)]

    first = journal.earliest(2)
    second = journal.after(first[-1].offset, 2)
    third = journal.after(second[-1].offset, 2)

    assert _offsets(first + second + third) == offsets
    assert journal.after(offsets[-1], 2) == []
    latest = journal.latest()
    assert latest is not None
    assert latest.offset == offsets[-1]
    assert journal.name == "global"


def test_an_empty_journal_has_no_entries(journal: JournalApi) -> None:
    assert journal.earliest(10) == []
    assert journal.latest() is None


def test_an_expired_offset_raises_offset_expired(fake: FakeHubSpot, journal: JournalApi) -> None:
    offsets = [_append(fake) for _ in range(3)]
    fake.journal.expire_before(offsets[1])

    with pytest.raises(OffsetExpired) as caught:
        journal.after(offsets[0], 10)

    assert caught.value.status == 404
    assert _offsets(journal.earliest(10)) == offsets[2:]


def test_entries_carry_their_file_url_and_its_expiry(
    fake: FakeHubSpot, journal: JournalApi
) -> None:
    _append(fake)
    before = db.utcnow()

    (entry,) = journal.earliest(1)

    assert entry.url.startswith(f"{fake.url}/journal-files/")
    assert entry.expires_at.tzinfo is not None
    assert before + timedelta(seconds=298) < entry.expires_at < db.utcnow() + timedelta(seconds=301)


def test_download_fetches_the_file_without_our_token(
    fake: FakeHubSpot, journal: JournalApi, requests_sent: list[httpx.Request]
) -> None:
    offset = _append(fake)
    (entry,) = journal.earliest(1)

    data = journal.download(entry)

    assert read_file(data, entry_offset=offset).events[0]["propertyName"] == "email"
    assert [r.url.path for r in requests_sent] == [entry.url.split("?")[0][len(fake.url) :]]
    assert "authorization" not in requests_sent[0].headers
    assert fake.journal.downloads == 1


def test_an_expired_file_url_raises_file_expired_and_a_fresh_read_fixes_it(
    fake: FakeHubSpot, journal: JournalApi
) -> None:
    offset = _append(fake)
    fake.journal.url_ttl = 0
    (stale,) = journal.earliest(1)

    with pytest.raises(FileExpired) as caught:
        journal.download(stale)

    assert caught.value.status == 403
    assert "X-Amz-Signature" not in str(caught.value)  # the signed URL is never shown
    fake.journal.url_ttl = 300
    (fresh,) = journal.read([offset])
    assert fresh.url != stale.url
    assert journal.download(fresh)


def test_read_leaves_out_the_offsets_hubspot_no_longer_has(
    fake: FakeHubSpot, journal: JournalApi
) -> None:
    offsets = [_append(fake) for _ in range(3)]
    fake.journal.expire_before(offsets[0])

    entries = journal.read(offsets)

    assert _offsets(entries) == offsets[1:]
    assert fake.count(f"{GLOBAL}/batch/read", status=207) == 1


def test_read_sends_at_most_100_offsets_per_call(fake: FakeHubSpot, journal: JournalApi) -> None:
    offsets = [_append(fake) for _ in range(150)]

    assert _offsets(journal.read(offsets)) == offsets
    assert fake.count(f"{GLOBAL}/batch/read", status=200) == 2


def test_the_local_journal_reads_one_portal(
    fake: FakeHubSpot, sleeps: Sleeps, http: httpx.Client
) -> None:
    mine = [_append(fake, PORTAL), _append(fake, OTHER_PORTAL), _append(fake, PORTAL)]
    local = _journal(fake, sleeps, http, portal_id=PORTAL)

    first = local.earliest(10)

    assert local.name == f"local:{PORTAL}"
    assert _offsets(first) == [mine[0], mine[2]]
    assert _offsets(local.after(mine[0], 10)) == [mine[2]]
    latest = local.latest()
    assert latest is not None
    assert latest.offset == mine[2]
    assert fake.count(LOCAL) == 3
    assert fake.count(GLOBAL) == 0


def test_the_app_token_is_fetched_once_and_reused(fake: FakeHubSpot, journal: JournalApi) -> None:
    _append(fake)

    journal.earliest(1)
    journal.latest()
    journal.earliest(1)

    assert fake.app_tokens_issued == 1


def test_a_refused_token_is_replaced(fake: FakeHubSpot, journal: JournalApi) -> None:
    offset = _append(fake)
    journal.earliest(1)
    fake.expire_app_tokens()

    assert _offsets(journal.earliest(1)) == [offset]
    assert fake.app_tokens_issued == 2
    assert fake.count(GLOBAL, status=401) == 1


def test_429_is_retried_after_retry_after(
    fake: FakeHubSpot, journal: JournalApi, sleeps: Sleeps
) -> None:
    offset = _append(fake)
    fake.fail_next(1, 429, path_prefix=GLOBAL)

    assert _offsets(journal.earliest(1)) == [offset]
    assert sleeps == [1.0]


def test_download_retries_5xx_and_dropped_connections(
    fake: FakeHubSpot, journal: JournalApi, sleeps: Sleeps
) -> None:
    _append(fake)
    (entry,) = journal.earliest(1)
    fake.fail_next(1, 503, path_prefix="/journal-files")
    fake.drop_next(1, path_prefix="/journal-files")

    assert journal.download(entry)
    assert len(sleeps) == 2


def test_download_gives_up_when_the_host_keeps_failing(
    fake: FakeHubSpot, journal: JournalApi
) -> None:
    _append(fake)
    (entry,) = journal.earliest(1)
    fake.fail_next(10, 500, path_prefix="/journal-files")

    with pytest.raises(HubSpotUnavailable, match="answered 500"):
        journal.download(entry)


def test_download_refuses_a_file_larger_than_max_file_bytes(
    fake: FakeHubSpot, sleeps: Sleeps, http: httpx.Client
) -> None:
    _append(fake)
    small = _journal(fake, sleeps, http, max_file_bytes=50)
    (entry,) = small.earliest(1)

    with pytest.raises(HubSpotError, match="larger than 50 bytes"):
        small.download(entry)


@pytest.mark.parametrize("field", ["currentOffset", "url", "expiresAt"])
def test_an_entry_missing_a_field_is_an_error_naming_it(
    fake: FakeHubSpot, journal: JournalApi, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    _append(fake)
    render = FakeJournal._render

    def without_field(self: FakeJournal, entry: Any) -> dict[str, Any]:
        answer = render(self, entry)
        del answer[field]
        return answer

    monkeypatch.setattr(FakeJournal, "_render", without_field)

    with pytest.raises(HubSpotError, match=f"journal entry without {field}"):
        journal.earliest(1)


def test_count_must_be_positive(journal: JournalApi) -> None:
    with pytest.raises(ValueError, match="count must be at least 1"):
        journal.earliest(0)
