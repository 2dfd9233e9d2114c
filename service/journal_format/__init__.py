"""A Webhooks Journal file -> the push-shaped HubSpot events the inbox stores (HUBSPOT.md §5).

HubSpot documents the journal's endpoints but not, in text, the file an entry's `url` points
to. What is assumed comes from a third-party copy of the 2025 beta guide: a JSON object with
`offset` and `journalEvents`, each event with `type`, `portalId`, `occurredAt`, `action`,
`objectTypeId`, `objectId`, `propertyChanges` and `publishedAt`. Where that leaves the shape
open, reading is tolerant, and says so here:

- the file may be gzip or plain; a JSON object holding `journalEvents` (or `events`), a bare
  array of events, or JSON lines (one event, or one such object, per line);
- `occurredAt` in epoch ms (a number or a digit string) or ISO 8601 (UTC when it names no zone);
  `portalId`, `objectId` and every other id a number or a digit string;
- `propertyChanges` an array of objects (the name under `propertyName`, `name` or `property`,
  the value under `newValue`, `propertyValue` or `value`) or a mapping name -> value (a scalar,
  or an object with one of those value keys); values become strings as HubSpot's push events
  carry them (null -> "", true -> "true");
- associations name the other side in `associatedObjectTypeId`/`toObjectTypeId` and
  `associatedObjectId`/`toObjectId`, with `associationTypeId` and `associationCategory`;
  merges carry `primaryObjectId`, `mergedObjectIds` and `newObjectId`, as push events do.

Each journal event becomes events of HubSpot's push format, which `service.events.normalise`
reads (the classic `contact.*` form for the standard types, `object.*` with `objectTypeId`
otherwise); an action it does not map (APP_INSTALL, lists, unknown) becomes one event of kind
OTHER (`<prefix>.<ACTION>`), stored and visible, never dropped. A file that cannot be read, or
an event without `portalId`/`occurredAt` or with an id outside 64 bits, fails the whole entry
(InvalidJournalFile): its file is kept, marked failed, and can be replayed after a fix.

`eventId` is not in the file: each is derived from what HubSpot wrote into the immutable
entry, so it is stable across re-reads and distinct within an entry (the rule, and why it
holds: service.journal_format.convert).

Privacy: property values appear only in the produced events' `propertyValue`, which privacy
scrubbing redacts; the `journal` key keeps the event's other fields (unknown ones too) but
not `propertyChanges` or `properties`, only the changed properties' names.

Pure: no I/O, no settings, no clock (the wire-format contract in .importlinter holds it).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.batches import InvalidBatch, json_type, parse_batch
from service.journal_format.convert import (
    CONTACT_TYPE_ID,
    NAME_KEYS,
    VALUE_FIELDS,
    InvalidJournalFile,
    parse_id,
    push_events,
)

__all__ = [
    "REDACTED",
    "InvalidJournalFile",
    "JournalFile",
    "compress",
    "decompress",
    "mentioned_contacts",
    "read_file",
    "scrub_file",
]

# service.events.REDACTED: events is a sibling wire format, which this package may not import.
REDACTED = "REDACTED"
# A gzip file may expand; past this a file is refused rather than read into memory.
MAX_PLAIN_BYTES = 1 << 30
_GZIP_MAGIC = b"\x1f\x8b"
_CONTAINER_KEYS = ("journalEvents", "events")


@dataclass(frozen=True, slots=True)
class JournalFile:
    """A journal file read: its events in push shape, ready for the inbox."""

    events: list[dict[str, Any]]  # push-shaped HubSpot events
    json_text: str  # JSON array text of `events` (what inbox.record_events takes)
    journal_events: int  # how many events the file held (before splitting)
    contacts: tuple[tuple[int, int], ...]  # (portal, contact id) pairs the file mentions


def read_file(data: bytes, *, entry_offset: str) -> JournalFile:
    """Read a journal file (gzip or plain) into push-shaped events; InvalidJournalFile if it
    cannot be, naming the event."""
    documents, raw_events, _ = _parse(data)
    del documents
    events: list[dict[str, Any]] = []
    contacts: set[tuple[int, int]] = set()
    for index, raw in enumerate(raw_events):
        events.extend(push_events(index, raw, entry_offset, contacts))
    # ensure_ascii: a lone surrogate stays an escape, which parse_batch makes storable.
    text = json.dumps(events, separators=(",", ":"))
    try:
        batch = parse_batch(text.encode())
    except InvalidBatch as exc:
        raise InvalidJournalFile(f"the events made of the file are refused: {exc}") from None
    return JournalFile(
        events=batch.events,
        json_text=batch.json_text,
        journal_events=len(raw_events),
        contacts=tuple(sorted(contacts)),
    )


def compress(data: bytes) -> bytes:
    """The file gzip-compressed (kept as it is when it already is gzip)."""
    if data.startswith(_GZIP_MAGIC):
        return data
    return _gzip(data)


def decompress(data: bytes) -> bytes:
    """The file's plain bytes (a plain file as it is); InvalidJournalFile for a broken gzip or
    one that expands past MAX_PLAIN_BYTES."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    out = bytearray()
    rest = data
    try:
        while rest.startswith(_GZIP_MAGIC):  # gzip members follow each other
            inflater = zlib.decompressobj(wbits=31)
            pending = rest
            while True:
                out += inflater.decompress(pending, MAX_PLAIN_BYTES + 1 - len(out))
                if len(out) > MAX_PLAIN_BYTES:
                    raise InvalidJournalFile(f"file expands past {MAX_PLAIN_BYTES} bytes")
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    break
                if not pending:
                    raise InvalidJournalFile("gzip file is truncated")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise InvalidJournalFile(f"file is not valid gzip: {exc}") from None
    return bytes(out)


def mentioned_contacts(data: bytes) -> tuple[tuple[int, int], ...] | None:
    """The (portal, contact id) pairs of a file `read_file` refused, as far as it can be read
    (an event without occurredAt still names its contact); None when it is not JSON at all, so
    privacy erasure cannot know whom it mentions."""
    try:
        _, raw_events, _ = _parse(data)
    except InvalidJournalFile:
        return None
    found = {_contact_of(raw) for raw in raw_events if isinstance(raw, dict)}
    return tuple(sorted(c for c in found if c is not None))


def scrub_file(data: bytes, contacts: Iterable[tuple[int, int]]) -> bytes:
    """The same file with those contacts' property values replaced by REDACTED (privacy
    deletion), gzip-compressed; InvalidJournalFile if it cannot be read (then delete it)."""
    wanted = set(contacts)
    documents, raw_events, lines = _parse(data)
    for raw in raw_events:
        if isinstance(raw, dict) and _contact_of(raw) in wanted:
            for name in VALUE_FIELDS:
                if name in raw:
                    raw[name] = _redacted(raw[name])
    texts = [json.dumps(document, separators=(",", ":")) for document in documents]
    return _gzip(("\n".join(texts) + ("\n" if lines else "")).encode())


# --- reading the file ------------------------------------------------------------------------


def _gzip(data: bytes) -> bytes:
    # mtime 0: the same file compresses to the same bytes.
    return gzip.compress(data, mtime=0)


def _parse(data: bytes) -> tuple[list[Any], list[Any], bool]:
    """(the JSON documents of the file, its events inside them, whether it is JSON lines)."""
    plain = decompress(data)
    if not plain.strip():
        raise InvalidJournalFile("file is empty")
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJournalFile("file is neither gzip nor UTF-8 JSON") from None
    try:
        document = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":
            raise InvalidJournalFile(
                f"file is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        return _json_lines(text)
    return [document], _events_of(document, "file"), False


def _json_lines(text: str) -> tuple[list[Any], list[Any], bool]:
    documents: list[Any] = []
    events: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            document = _loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidJournalFile(
                f"line {number} is not JSON: {exc.msg} at column {exc.colno}"
            ) from None
        documents.append(document)
        events.extend(_events_of(document, f"line {number}"))
    return documents, events, True


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidJournalFile("file nests too deep") from None


def _reject_constant(name: str) -> Any:
    raise InvalidJournalFile(f"file is not JSON: {name} is not a JSON number")


def _events_of(document: Any, where: str) -> list[Any]:
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        for key in _CONTAINER_KEYS:
            if key in document:
                events = document[key]
                if not isinstance(events, list):
                    raise InvalidJournalFile(f"{where}: {key} must be an array")
                return events
        if "action" in document:  # a lone event
            return [document]
        raise InvalidJournalFile(f"{where}: an object without journalEvents")
    raise InvalidJournalFile(f"{where} must hold events, got {json_type(document)}")


# --- privacy -----------------------------------------------------------------------------------


def _contact_of(raw: Mapping[str, Any]) -> tuple[int, int] | None:
    """(portal, contact id) when the event is about a contact."""
    action = raw.get("action")
    gdpr = isinstance(action, str) and action.upper() == "GDPR_DELETE"
    if raw.get("objectTypeId") != CONTACT_TYPE_ID and not gdpr:
        return None
    try:
        return parse_id(raw.get("portalId"), "portalId"), parse_id(raw.get("objectId"), "objectId")
    except InvalidJournalFile:
        return None


def _redacted(values: Any) -> Any:
    """Property changes with every value replaced by REDACTED, names and shape kept."""
    if isinstance(values, list):
        return [
            {k: v if k in NAME_KEYS else REDACTED for k, v in item.items()}
            if isinstance(item, dict)
            else REDACTED
            for item in values
        ]
    if isinstance(values, dict):
        return {
            name: dict.fromkeys(given, REDACTED) if isinstance(given, dict) else REDACTED
            for name, given in values.items()
        }
    return REDACTED
