"""The journal reader stage: HubSpot's Webhooks Journal into the inbox (HUBSPOT_EVENT_SOURCE
journal or both; HUBSPOT.md §5).

One reader per journal across every worker: the round runs only in the process holding a
session advisory lock on a connection of its own (`pg_try_advisory_lock`); the others' rounds
do nothing. A round checks the journal's latest entry, reads up to `PAGE` entries after the
cursor (the first run starts at the journal's earliest entry, or after its latest with
JOURNAL_START=latest), and for each, in order: downloads its file (a URL past its expiry is
renewed once through `batch/read`), parses it (service/journal_format) and then, in ONE
transaction, stores its events in the inbox (`inbox.record_events`), keeps the file
(`journal.record_entry`), moves the cursor from the offset it started from
(`journal.advance`, a compare-and-set: a miss rolls everything back) and wakes the apply
workers. No transaction is open across a network call. A crash before the commit loses
nothing (the entry is read again); after it, nothing is read twice. A file that cannot be
parsed is kept, marked `failed` with the reason (`journal status`, `journal replay`) and passed.

Falling behind is never silent. `next` answering 404 (the cursor's offset is older than the
three days the journal keeps) records a gap from the last occurredAt stored to now and starts
again at the earliest entry. A file whose renewed URL fails too records a gap for that entry
and goes on after it (reading from the earliest entry again would meet the same file). Open
gaps are reconciled from the CRM search API, every portal (the local journal: its portal) and
mirrored type since the gap's start, and marked; a failed reconcile is kept on the gap and
tried again after `RECONCILE_RETRY_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from service import db, inbox, journal, journal_format
from service.hubspot import appauth, client
from service.hubspot.client import HubSpotApi
from service.hubspot.journal_api import Entry, FileExpired, FileTooLarge, JournalApi, OffsetExpired
from service.hubspot.reconcile import known_portals, reconcile
from service.hubspot.sdk import HubSpotError
from service.settings import DEFAULT_MIRROR_PROPERTIES, Settings

log = logging.getLogger(__name__)

PAGE = 100  # entries per `batch/{offset}/next/{count}` (the endpoint's most)
# The advisory lock's namespace ("HSWH" 5); the key is hashtext(journal name).
LOCK_NAMESPACE = 0x48_53_57_48_05 & 0x7FFFFFFF
PURGE_SECONDS = 300.0
RECONCILE_RETRY_SECONDS = 60.0


class _Moved(Exception):
    """The cursor was not where this round left it: another reader moved it."""


class JournalReader:
    """The journal stage of a worker: `run_once` is one round (for worker.loop.run_loop)."""

    def __init__(
        self,
        engine: sa.Engine,
        api: JournalApi,
        settings: Settings,
        *,
        crm: Callable[[], HubSpotApi | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.api = api
        self.settings = settings
        self.journal = api.name
        self._crm = crm or (lambda: client.from_settings(settings, engine))
        self._clock = clock
        self._lock: sa.Connection | None = None
        self._purged_at = 0.0
        self._reconcile_after = 0.0

    # --- one round ---------------------------------------------------------------------------

    def run_once(self) -> int:
        """Read the next page of entries if this process holds the journal's lock; how many
        entries were stored or marked failed (0: nothing new, or another worker reads)."""
        if not self._locked():
            return 0
        try:
            done = self._read_page()
        except HubSpotError as exc:
            self._note_error(exc)
            raise
        self._reconcile_gaps()
        self._purge()
        return done

    def drain(self) -> int:
        """Read to the journal's end (`worker --drain`): rounds until one finds nothing."""
        total = 0
        while done := self.run_once():
            total += done
        return total

    def close(self) -> None:
        """Give up the lock (its connection goes back to the pool, or away if broken) and the
        journal API's connections."""
        self.api.app.session.close()
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            lock.execute(
                sa.text("SELECT pg_advisory_unlock(:ns, hashtext(:journal))"),
                {"ns": LOCK_NAMESPACE, "journal": self.journal},
            )
        except sa.exc.DBAPIError:
            lock.invalidate()  # the session is gone, and its lock with it
        lock.close()

    def _locked(self) -> bool:
        if self._lock is not None:
            try:  # still the same session? (a database restart ends it, and the lock with it)
                self._lock.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.DBAPIError:
                self.close()
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = connection.scalar(
            sa.text("SELECT pg_try_advisory_lock(:ns, hashtext(:journal))"),
            {"ns": LOCK_NAMESPACE, "journal": self.journal},
        )
        if not got:
            connection.close()
            return False
        self._lock = connection
        log.info("journal_reader_started", extra={"journal": self.journal})
        return True

    def _read_page(self) -> int:
        with self.engine.connect() as connection:
            cursor = journal.cursor(connection, self.journal)
        offset = None if cursor is None else cursor.current_offset
        latest = self.api.latest()
        if offset is None and self.settings.journal_start == "latest" and latest is not None:
            # Start after the latest entry: what happened before this service is not read.
            with self.engine.begin() as connection:
                if not journal.advance(
                    connection,
                    self.journal,
                    expected=None,
                    offset=latest.offset,
                    last_event_ms=None,
                ):
                    return 0
            offset = latest.offset
        if offset is None:
            page = self.api.earliest(PAGE)
        else:
            try:
                page = self.api.after(offset, PAGE)
            except OffsetExpired:
                self._gap("offset_expired", cursor, offset, None)
                page = self.api.earliest(PAGE)
        with self.engine.begin() as connection:
            # `behind`: the entries after the cursor this check saw, at most PAGE (PAGE: PAGE or
            # more); 0 once the reader is at the journal's end.
            journal.note_latest(
                connection,
                self.journal,
                latest_offset=None if latest is None else latest.offset,
                behind=len(page),
            )
        done = 0
        for entry in page:
            try:
                self._store(entry, offset)
            except _Moved:
                log.warning("journal_cursor_moved", extra={"journal": self.journal})
                break
            offset = entry.offset
            done += 1
        return done

    # --- one entry ---------------------------------------------------------------------------

    def _store(self, entry: Entry, expected: str | None) -> None:
        try:
            data = self._download(entry)
        except FileExpired:
            with self.engine.connect() as connection:
                cursor = journal.cursor(connection, self.journal)
            self._gap("file_expired", cursor, expected, entry.offset)
            return
        except FileTooLarge as exc:  # failed and visible, the reader goes on
            data = b""
            error: str | None = str(exc)
        else:
            error = None
        parsed: journal_format.JournalFile | None = None
        try:
            parsed = None if error else journal_format.read_file(data, entry_offset=entry.offset)
        except journal_format.InvalidJournalFile as exc:
            error = str(exc)
        with self.engine.begin() as connection:
            stored, events, last_ms = 0, 0, None
            if parsed is not None:
                result = inbox.record_events(
                    connection, parsed.json_text, source=inbox.JOURNAL_SOURCE
                )
                stored, events = result.stored, len(parsed.events)
                last_ms = max((int(e["occurredAt"]) for e in parsed.events), default=None)
            journal.record_entry(
                connection,
                self.journal,
                entry.offset,
                expires_at=entry.expires_at,
                file=journal_format.compress(data) if data else None,
                file_bytes=len(data),
                events=events,
                stored=stored,
                status="stored" if parsed is not None else "failed",
                error=error,
                # A refused file still names its contacts for privacy erasure, if it is JSON.
                contacts=journal_format.mentioned_contacts(data)
                if parsed is None
                else parsed.contacts,
            )
            if not journal.advance(
                connection,
                self.journal,
                expected=expected,
                offset=entry.offset,
                last_event_ms=last_ms,
            ):
                raise _Moved
            if stored:
                inbox.wake(connection)
        extra: dict[str, Any] = {"journal": self.journal, "offset": entry.offset}
        if parsed is None:  # the reason says what and where, never a value of the file
            log.error("journal_entry_failed", extra={**extra, "error": error})
        else:
            extra |= {"events": events, "stored": stored, "duplicates": events - stored}
            log.info("journal_entry_stored", extra=extra)

    def _download(self, entry: Entry) -> bytes:
        """The entry's file; an expired URL (by its expiresAt, or as the download found) is
        renewed once through `batch/read`. FileExpired when the renewed one fails too."""
        if entry.expires_at > db.utcnow():
            try:
                return self.api.download(entry)
            except FileExpired:
                pass
        fresh = self.api.read([entry.offset])
        if not fresh:
            raise FileExpired(f"entry {entry.offset} has no file any more")
        return self.api.download(fresh[0])

    # --- falling behind ----------------------------------------------------------------------

    def _gap(
        self, reason: str, cursor: journal.Cursor | None, from_offset: str | None, to: str | None
    ) -> None:
        """Record the window missed; for a file, pass its entry (compare-and-set, as a store)."""
        since_ms = None if cursor is None else cursor.last_event_ms
        if since_ms is None and cursor is not None and cursor.entry_at is not None:
            since_ms = int(cursor.entry_at.timestamp() * 1000)
        until_ms = int(self._clock() * 1000)
        with self.engine.begin() as connection:
            known = journal.open_gaps(connection, self.journal)
            if reason == "offset_expired" and any(g.from_offset == from_offset for g in known):
                return  # this expiry is recorded already (a round interrupted after it)
            journal.record_gap(
                connection,
                self.journal,
                reason=reason,
                since_ms=since_ms,
                until_ms=until_ms,
                from_offset=from_offset,
                to_offset=to,
            )
            if to is not None and not journal.advance(
                connection, self.journal, expected=from_offset, offset=to, last_event_ms=None
            ):
                raise _Moved
        self._reconcile_after = 0.0
        log.error(
            "journal_gap",
            extra={"journal": self.journal, "reason": reason, "since_ms": since_ms, "to": to},
        )

    def _reconcile_gaps(self) -> None:
        now = self._clock()
        if now < self._reconcile_after:
            return
        with self.engine.connect() as connection:
            gaps = journal.open_gaps(connection, self.journal)
        if not gaps:
            return
        api = self._crm()
        try:
            if api is None:
                raise HubSpotError("no CRM API client: set HUBSPOT_CLIENT_ID or an access token")
            since = [g.since_ms for g in gaps]
            since_ms = 0 if None in since else min(s for s in since if s is not None)
            for portal_id in self._portals():
                for object_type in self._types():
                    reconcile(
                        self.engine,
                        api,
                        portal_id=portal_id,
                        object_type=object_type,
                        since_ms=since_ms,
                        configured_properties=self.settings.mirror_properties,
                    )
        except HubSpotError as exc:
            self._reconcile_after = now + RECONCILE_RETRY_SECONDS
            log.error(
                "journal_gap_reconcile_failed",
                extra={"journal": self.journal, "error": type(exc).__name__},
            )
            with self.engine.begin() as connection:
                for gap in gaps:
                    journal.gap_reconciled(connection, gap.id, error=_describe(exc))
            return
        with self.engine.begin() as connection:
            for gap in gaps:
                journal.gap_reconciled(connection, gap.id)
        log.info("journal_gap_reconciled", extra={"journal": self.journal, "gaps": len(gaps)})

    def _portals(self) -> Sequence[int]:
        portal = self.settings.journal_portal_id
        return [portal] if portal is not None else known_portals(self.engine)

    def _types(self) -> list[str]:
        """The mirrored types: the standard ones, and those MIRROR_PROPERTIES names."""
        return list(dict.fromkeys([*DEFAULT_MIRROR_PROPERTIES, *self.settings.mirror_properties]))

    # --- upkeep ------------------------------------------------------------------------------

    def _purge(self) -> None:
        now = self._clock()
        if now - self._purged_at < PURGE_SECONDS:
            return
        self._purged_at = now
        before = db.utcnow() - timedelta(seconds=self.settings.inbox_retention_seconds)
        with self.engine.begin() as connection:
            purged = journal.purge_files(connection, before)
        if purged:
            log.info("journal_files_purged", extra={"journal": self.journal, "entries": purged})

    def _note_error(self, exc: BaseException) -> None:
        with self.engine.begin() as connection:
            journal.note_error(connection, self.journal, _describe(exc))


def _describe(exc: BaseException) -> str:
    """An error as stored for operators: its type and HubSpot's message (no file content)."""
    return f"{type(exc).__name__}: {exc}"[: journal.MAX_ERROR]


def from_settings(settings: Settings, engine: sa.Engine) -> JournalReader | None:
    """The reader the settings describe (None: HUBSPOT_EVENT_SOURCE is push, or no client id
    and secret)."""
    if settings.event_source not in ("journal", "both"):
        return None
    app = appauth.from_settings(settings)
    if app is None:
        return None
    return JournalReader(engine, JournalApi(app, portal_id=settings.journal_portal_id), settings)
