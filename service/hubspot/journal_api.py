"""The Webhooks Journal's calls (2026-03; HUBSPOT.md §5, the OpenAPI spec webhooksJournal.json).

The global journal (`/webhooks-journal/journal/2026-03`) holds the events of every install;
the local one (`/webhooks-journal/journal-local/2026-03?installPortalId=N`) those of one
portal. Both are read with the app's client-credentials token (AppApi). An entry is
`{url, expiresAt, currentOffset}`: `currentOffset` (a UUID) is what to page on, `url` a
short-lived link to the entry's file on a storage host, fetched without our token. HubSpot
keeps entries 3 days: `next` after an older (or unknown) offset answers 404 (OffsetExpired); a
file URL answers 403 once it expired (FileExpired), and reading the entry again gives a new one.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from service.hubspot.appauth import AppApi
from service.hubspot.sdk import HubSpotError, HubSpotUnavailable

log = logging.getLogger(__name__)

GLOBAL_PATH = "/webhooks-journal/journal/2026-03"
LOCAL_PATH = "/webhooks-journal/journal-local/2026-03"
BATCH_MAX = 100  # entries per batch call (the batch/read inputs limit)
MAX_FILE_BYTES = 256 * 1024 * 1024
DOWNLOAD_ATTEMPTS = 4
# The file host is not HubSpot's API: connect fast, but let a large file take its time.
DOWNLOAD_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
_EXPIRED_STATUSES = (403, 404, 410)  # what a storage host answers for an expired signed URL


class OffsetExpired(HubSpotError):
    """`next` answered 404: the offset is older than the journal keeps."""


class FileTooLarge(HubSpotError):
    """The entry's file is larger than max_file_bytes: it is not read into memory."""


class FileExpired(HubSpotError):
    """The file URL answered 403/404/410: it expired before it was read."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One journal entry: its offset, and where (until when) its file can be fetched."""

    offset: str
    url: str
    expires_at: datetime


@functools.cache
def _default_client() -> httpx.Client:
    """One connection pool for every download of the process (thread-safe)."""
    return httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=True)


class JournalApi:
    """The global journal, or the local one of `portal_id`, read with the app's token."""

    def __init__(
        self,
        app: AppApi,
        *,
        portal_id: int | None = None,
        max_file_bytes: int = MAX_FILE_BYTES,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app = app
        self.portal_id = portal_id
        self.max_file_bytes = max_file_bytes
        self._http = http
        self._sleep = sleep
        # The cursor key: one reading position per journal.
        self.name = "global" if portal_id is None else f"local:{portal_id}"

    def earliest(self, count: int) -> list[Entry]:
        """The oldest `count` entries (at most BATCH_MAX) still kept; [] when there are none."""
        data, status = self.app.call(
            "GET", self._path(f"/batch/earliest/{_count(count)}"), expect=(404,)
        )
        return [] if status == 404 else _entries(data)

    def latest(self) -> Entry | None:
        """The newest entry; None when the journal is empty."""
        data, status = self.app.call("GET", self._path("/latest"), expect=(404,))
        return None if status == 404 else _entry(data)

    def after(self, offset: str, count: int) -> list[Entry]:
        """Up to `count` entries after `offset`, oldest first ([] at the end of the journal);
        OffsetExpired when HubSpot no longer knows the offset (404)."""
        path = self._path(f"/batch/{quote(offset, safe='')}/next/{_count(count)}")
        data, status = self.app.call("GET", path, expect=(404,))
        if status == 404:
            raise OffsetExpired(
                f"journal {self.name}: offset {offset} is expired or unknown", status=404
            )
        return _entries(data)

    def read(self, offsets: Sequence[str]) -> list[Entry]:
        """The entries of `offsets`, each with a fresh file URL; offsets HubSpot no longer has
        (207 errors) are left out."""
        entries: list[Entry] = []
        for start in range(0, len(offsets), BATCH_MAX):
            chunk = list(offsets[start : start + BATCH_MAX])
            data, status = self.app.call(
                "POST", self._path("/batch/read"), json_body={"inputs": chunk}
            )
            if status == 207:
                log.warning(
                    "journal_read_partial",
                    extra={"journal": self.name, "errors": _num_errors(data)},
                )
            entries += _entries(data)
        return entries

    def download(self, entry: Entry) -> bytes:
        """The entry's file, as stored (gzip or plain). Sent without our token (a storage host);
        FileExpired on 403/404/410; HubSpotError past max_file_bytes; retries transport errors
        and 5xx, then HubSpotUnavailable."""
        client = self._http or _default_client()
        host = urlsplit(entry.url).hostname or "?"  # the URL's query is a signature: never logged
        last = ""
        for attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                with client.stream("GET", entry.url) as response:
                    status = response.status_code
                    if status in _EXPIRED_STATUSES:
                        raise FileExpired(
                            f"journal file of entry {entry.offset} expired ({status} from {host})",
                            status=status,
                        )
                    if status == 200:
                        return self._body(response, entry)
                    if status != 429 and status < 500:
                        raise HubSpotError(
                            f"journal file of entry {entry.offset}: {host} answered {status}",
                            status=status,
                        )
                    last = f"{host} answered {status}"
            except httpx.RequestError as exc:
                last = f"{type(exc).__name__} from {host}"
            if attempt + 1 < DOWNLOAD_ATTEMPTS:
                self._sleep(min(30.0, 0.5 * 2**attempt))
        raise HubSpotUnavailable(f"journal file of entry {entry.offset}: {last}")

    def _body(self, response: httpx.Response, entry: Entry) -> bytes:
        """The body read in chunks, refused as soon as it passes max_file_bytes."""
        too_large = FileTooLarge(
            f"journal file of entry {entry.offset} is larger than {self.max_file_bytes} bytes"
            " (max_file_bytes)"
        )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_file_bytes:
            raise too_large
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_file_bytes:
                raise too_large
        return bytes(body)

    def _path(self, tail: str) -> str:
        if self.portal_id is None:
            return GLOBAL_PATH + tail
        return f"{LOCAL_PATH}{tail}?installPortalId={self.portal_id}"


def _count(count: int) -> int:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return min(count, BATCH_MAX)


def _entries(data: Any) -> list[Entry]:
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise HubSpotError("journal batch answer without results")
    return [_entry(item) for item in results]


def _entry(data: Any) -> Entry:
    """An entry from HubSpot's JSON; HubSpotError naming the field that is missing."""
    if not isinstance(data, dict):
        raise HubSpotError("journal entry is not a JSON object")
    for name in ("currentOffset", "url", "expiresAt"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise HubSpotError(f"journal entry without {name}")
    return Entry(offset=data["currentOffset"], url=data["url"], expires_at=_time(data["expiresAt"]))


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HubSpotError("journal entry's expiresAt is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _num_errors(data: Any) -> int:
    if isinstance(data, dict):
        number = data.get("numErrors")
        if isinstance(number, int):
            return number
        errors = data.get("errors")
        if isinstance(errors, list):
            return len(errors)
    return 0
