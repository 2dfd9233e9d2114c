"""service.journal_format: a Webhooks Journal file becomes push-shaped events the inbox stores.

The file's shape is assumed (HUBSPOT.md §5: not documented by HubSpot in text); every produced
event goes through the real parsers, service.batches.parse_batch and service.events.normalise.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from service import events as push
from service.batches import parse_batch
from service.events import Event, Kind, normalise
from service.journal_format import (
    REDACTED,
    InvalidJournalFile,
    JournalFile,
    compress,
    decompress,
    read_file,
    scrub_file,
)

PORTAL = 62515
OFFSET = "0b9d5c8e-3f4a-4c1e-9a53-8a1f1e6b2c70"
AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _event(
    action: str | None,
    object_type_id: str | None = "0-1",
    object_id: int | None = 101,
    **fields: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "OBJECT",
        "portalId": PORTAL,
        "occurredAt": AT,
        "action": action,
        "objectTypeId": object_type_id,
        "objectId": object_id,
        "publishedAt": AT + 7,
    }
    return {k: v for k, v in (event | fields).items() if v is not None}


def _file(*journal_events: Any, offset: str = OFFSET) -> bytes:
    return json.dumps({"offset": offset, "journalEvents": list(journal_events)}).encode()


def _read(data: bytes, offset: str = OFFSET) -> tuple[JournalFile, list[Event]]:
    """Read the file, then run its events through the real ingest and normalise."""
    result = read_file(data, entry_offset=offset)
    stored = parse_batch(result.json_text.encode())
    assert stored.events == result.events
    return result, [normalise(i, raw) for i, raw in enumerate(stored.events)]


def _ids(result: JournalFile) -> list[int]:
    return [e["eventId"] for e in result.events]


# --- each action -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_id", "prefix", "object_type"),
    [
        ("0-1", "contact", "contacts"),
        ("0-2", "company", "companies"),
        ("0-3", "deal", "deals"),
        ("0-5", "ticket", "tickets"),
        ("0-7", "product", "products"),
        ("0-8", "line_item", "line_items"),
        ("2-3456", "object", "2-3456"),
    ],
)
def test_update_gives_one_property_change_per_property(
    type_id: str, prefix: str, object_type: str
) -> None:
    changes = [
        {"propertyName": "firstname", "newValue": "Ada"},
        {"propertyName": "lastname", "newValue": ""},
    ]
    result, events = _read(_file(_event("UPDATE", type_id, propertyChanges=changes)))

    assert [e["subscriptionType"] for e in result.events] == [f"{prefix}.propertyChange"] * 2
    assert [(e.kind, e.object_type, e.object_id) for e in events] == [
        (Kind.PROPERTY_CHANGE, object_type, 101)
    ] * 2
    assert [(e.property_name, e.property_value) for e in events] == [
        ("firstname", "Ada"),
        ("lastname", ""),
    ]
    assert result.journal_events == 1


def test_create_gives_a_creation_and_the_properties_it_carries() -> None:
    changes = [{"propertyName": "dealname", "newValue": "Big"}]
    _, events = _read(_file(_event("CREATE", "0-3", 7, propertyChanges=changes)))

    assert [(e.kind, e.property_name) for e in events] == [
        (Kind.CREATION, None),
        (Kind.PROPERTY_CHANGE, "dealname"),
    ]
    assert {e.object_type for e in events} == {"deals"}


@pytest.mark.parametrize(
    ("action", "kind"),
    [("DELETE", Kind.DELETION), ("RESTORE", Kind.RESTORE), ("GDPR_DELETE", Kind.PRIVACY_DELETION)],
)
def test_delete_restore_and_gdpr_delete_keep_their_kind(action: str, kind: Kind) -> None:
    result, events = _read(_file(_event(action)))

    assert [(e.kind, e.object_type, e.object_id) for e in events] == [(kind, "contacts", 101)]
    assert result.contacts == ((PORTAL, 101),)


def test_merge_names_the_survivor_and_the_merged_ids() -> None:
    merge = _event("MERGE", primaryObjectId=101, mergedObjectIds=[102, "103"], newObjectId=104)
    result, events = _read(_file(merge))

    (event,) = events
    assert event.kind is Kind.MERGE
    assert (event.survivor_id, event.merged_ids) == (104, (102, 103))
    assert event.merge_losers == (101, 102, 103)
    assert result.contacts == tuple((PORTAL, i) for i in (101, 102, 103, 104))


@pytest.mark.parametrize(
    ("action", "other_keys", "removed"),
    [
        ("ASSOCIATION_ADDED", ("associatedObjectTypeId", "associatedObjectId"), False),
        ("ASSOCIATION_REMOVED", ("toObjectTypeId", "toObjectId"), True),
    ],
)
def test_association_events_name_both_sides_and_the_type(
    action: str, other_keys: tuple[str, str], removed: bool
) -> None:
    type_key, id_key = other_keys
    association = _event(
        action,
        "0-2",
        5,
        type="ASSOCIATION",
        associationTypeId=280,
        associationCategory="HUBSPOT_DEFINED",
        **{type_key: "0-1", id_key: "101"},
    )
    result, events = _read(_file(association))

    (event,) = events
    assert event.kind is Kind.ASSOCIATION_CHANGE
    assert event.association == push.Association(
        from_type="companies",
        from_id=5,
        to_type="contacts",
        to_id=101,
        association_type="HUBSPOT_DEFINED:280",
        removed=removed,
        primary=False,
    )
    assert result.contacts == ((PORTAL, 101),)


def test_snapshot_gives_the_properties_it_holds() -> None:
    snapshot = _event("SNAPSHOT", propertyChanges={"email": "a@example.com"})
    _, events = _read(_file(snapshot))

    assert [(e.kind, e.property_name, e.property_value) for e in events] == [
        (Kind.PROPERTY_CHANGE, "email", "a@example.com")
    ]


@pytest.mark.parametrize(
    ("event", "subscription_type", "object_type"),
    [
        (
            _event("APP_INSTALL", None, None, type="APP_LIFECYCLE_EVENT"),
            "journal.APP_INSTALL",
            "journal",
        ),
        (_event("ADDED_TO_LIST", listId=9), "contact.ADDED_TO_LIST", "contacts"),
        (_event("REMOVED_FROM_LIST", "2-77", listId=9), "object.REMOVED_FROM_LIST", "2-77"),
        (_event("SOMETHING_NEW", "0-3"), "deal.SOMETHING_NEW", "deals"),
        (_event("creation"), "contact.CREATION", "contacts"),  # never mistaken for a creation
        (_event("UPDATE"), "contact.UPDATE", "contacts"),  # an update that changed nothing
        (_event(None), "contact.UNKNOWN", "contacts"),  # no action at all
    ],
)
def test_actions_it_does_not_map_are_kept_as_other_events(
    event: dict[str, Any], subscription_type: str, object_type: str
) -> None:
    result, events = _read(_file(event))

    assert [e["subscriptionType"] for e in result.events] == [subscription_type]
    assert [(e.kind, e.object_type) for e in events] == [(Kind.OTHER, object_type)]


def test_every_event_carries_the_push_fields_and_the_journal_fields() -> None:
    update = _event(
        "UPDATE",
        changeSource="CRM_UI",
        sourceId="userId:1",
        somethingNew={"a": 1},
        propertyChanges=[{"propertyName": "email", "newValue": "a@example.com"}],
    )
    result, _ = _read(_file(update))

    (event,) = result.events
    assert 0 < event["eventId"] < 2**63
    assert event["subscriptionId"] == 0
    assert event["attemptNumber"] == 0
    assert (event["portalId"], event["objectId"], event["occurredAt"]) == (PORTAL, 101, AT)
    assert (event["changeSource"], event["sourceId"]) == ("CRM_UI", "userId:1")
    assert event["journal"] == {
        "type": "OBJECT",
        "portalId": PORTAL,
        "occurredAt": AT,
        "action": "UPDATE",
        "objectTypeId": "0-1",
        "objectId": 101,
        "publishedAt": AT + 7,
        "changeSource": "CRM_UI",
        "sourceId": "userId:1",
        "somethingNew": {"a": 1},
        "offset": OFFSET,
        "propertyNames": ["email"],
    }


# --- tolerated shapes --------------------------------------------------------------------------

CHANGES = [{"propertyName": "email", "newValue": "a@example.com"}]
EVENTS = [_event("UPDATE", propertyChanges=CHANGES), _event("DELETE", "0-2", 5)]
LINES = "\n".join(json.dumps(e) for e in EVENTS)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"offset": OFFSET, "journalEvents": EVENTS}),
        json.dumps({"events": EVENTS}),
        json.dumps(EVENTS),
        LINES,
        LINES + "\n\n",
        json.dumps({"journalEvents": EVENTS[:1]})
        + "\n"
        + json.dumps({"journalEvents": EVENTS[1:]}),
    ],
    ids=["journalEvents", "events", "array", "json-lines", "json-lines-blank", "lines-of-objects"],
)
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_each_tolerated_file_shape_gives_the_same_events(text: str, gzipped: bool) -> None:
    expected = read_file(_file(*EVENTS), entry_offset=OFFSET)
    data = gzip.compress(text.encode()) if gzipped else text.encode()

    result, events = _read(data)

    assert result.events == expected.events
    assert [e.kind for e in events] == [Kind.PROPERTY_CHANGE, Kind.DELETION]


def test_a_lone_event_is_a_file_of_one() -> None:
    result, _ = _read(json.dumps(EVENTS[1]).encode())

    assert result.events == read_file(_file(EVENTS[1]), entry_offset=OFFSET).events


@pytest.mark.parametrize(
    "changes",
    [
        [{"name": "email", "value": "a@example.com"}],
        [{"property": "email", "propertyValue": "a@example.com", "oldValue": "old@example.com"}],
        {"email": "a@example.com"},
        {"email": {"newValue": "a@example.com", "oldValue": "old@example.com"}},
        {"email": {"value": "a@example.com"}},
    ],
)
def test_property_changes_are_read_in_each_tolerated_form(changes: Any) -> None:
    result, events = _read(_file(_event("UPDATE", propertyChanges=changes)))

    assert [(e.property_name, e.property_value) for e in events] == [("email", "a@example.com")]
    assert _ids(result) == _ids(read_file(_file(EVENTS[0]), entry_offset=OFFSET))


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, ""), (True, "true"), (False, "false"), (1000, "1000"), (1.5, "1.5"), ("x", "x")],
)
def test_property_values_become_strings_as_push_events_carry_them(value: Any, text: str) -> None:
    _, events = _read(_file(_event("UPDATE", propertyChanges={"amount": value})))

    assert events[0].property_value == text


@pytest.mark.parametrize(
    "occurred_at",
    [
        AT,
        str(AT),
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T01:00:00+01:00",
        "2026-01-01T00:00:00",  # no zone: UTC
    ],
)
def test_occurred_at_may_be_epoch_ms_or_iso_8601(occurred_at: Any) -> None:
    result, events = _read(_file(_event("DELETE", occurredAt=occurred_at)))

    assert events[0].occurred_at == AT
    assert _ids(result) == _ids(read_file(_file(_event("DELETE")), entry_offset=OFFSET))


def test_ids_may_be_digit_strings() -> None:
    as_strings = _event("DELETE", portalId=str(PORTAL), objectId="101")

    result, events = _read(_file(as_strings))

    assert (events[0].portal_id, events[0].object_id) == (PORTAL, 101)
    assert _ids(result) == _ids(read_file(_file(_event("DELETE")), entry_offset=OFFSET))


# --- files that cannot be read -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file is empty"),
        (b"\xff\xfe{}", "neither gzip nor UTF-8"),
        (b"\x1f\x8b not gzip", "not valid gzip"),
        (gzip.compress(_file(EVENTS[0]))[:-12], "truncated"),
        (b'{"journalEvents": [', "not JSON"),
        (b"42", "must hold events"),
        (b'{"offset": "x"}', "without journalEvents"),
        (b'{"journalEvents": {}}', "journalEvents must be an array"),
        (b'{"journalEvents": [NaN]}', "NaN is not a JSON number"),
        (b'{"journalEvents": []}\n{"b": 2', "line 2 is not JSON"),
        (_file(EVENTS[0], 7), r"event \[1\] must be a JSON object"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidJournalFile, match=message):
        read_file(data, entry_offset=OFFSET)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"portalId": None}, "missing required field portalId"),
        ({"occurredAt": None}, "missing required field occurredAt"),
        ({"occurredAt": "yesterday"}, "occurredAt must be epoch ms or an ISO 8601 time"),
        ({"occurredAt": "1969-12-31T00:00:00Z"}, "occurredAt must be a non-negative 64-bit"),
        ({"portalId": 2**63}, "portalId must be a non-negative 64-bit integer"),
        ({"objectId": "1" * 20}, "objectId must be a non-negative 64-bit integer"),
        ({"objectId": -1}, "objectId must be"),
        ({"objectId": True}, "objectId must be"),
        ({"objectId": 1.5}, "objectId must be"),
        ({"action": 3}, "action must be a string"),
        ({"objectTypeId": 1}, "objectTypeId must be a string"),
        ({"action": "MERGE", "mergedObjectIds": 5}, "mergedObjectIds must be an array"),
        ({"action": "MERGE", "mergedObjectIds": [2**64]}, r"mergedObjectIds\[0\] must be"),
        ({"action": "ASSOCIATION_ADDED", "toObjectId": "x"}, "toObjectId must be"),
        ({"propertyChanges": [{"newValue": "a"}]}, r"propertyChanges\[0\] has no property name"),
        ({"propertyChanges": [{"name": "email"}]}, r"propertyChanges\[0\] \(email\) has no value"),
        ({"propertyChanges": ["email"]}, r"propertyChanges\[0\] must be an object"),
        ({"propertyChanges": "email"}, "propertyChanges must be an array or an object"),
    ],
)
def test_an_ill_formed_event_fails_the_whole_entry_naming_it(
    fields: dict[str, Any], message: str
) -> None:
    bad = _event("UPDATE") | fields
    with pytest.raises(InvalidJournalFile, match=rf"event \[1\]: {message}"):
        read_file(_file(EVENTS[0], bad), entry_offset=OFFSET)


def test_the_error_never_shows_a_property_value() -> None:
    bad = _event("UPDATE", propertyChanges=[{"oldValue": "secret@example.com"}])

    with pytest.raises(InvalidJournalFile) as caught:
        read_file(_file(bad), entry_offset=OFFSET)

    assert "secret" not in str(caught.value)


# --- the dedupe key ----------------------------------------------------------------------------

MIXED = [
    _event("CREATE", propertyChanges=CHANGES),
    _event("UPDATE", propertyChanges=[*CHANGES, {"propertyName": "phone", "newValue": "1"}]),
    _event(
        "ASSOCIATION_ADDED", associatedObjectTypeId="0-2", associatedObjectId=5, associationTypeId=1
    ),
    _event("MERGE", primaryObjectId=101, mergedObjectIds=[102]),
    _event("ADDED_TO_LIST", listId=1),
    _event("ADDED_TO_LIST", listId=2),
    _event("DELETE", "0-2", 5),
]


def test_reading_the_same_entry_again_gives_the_same_ids() -> None:
    first = read_file(_file(*MIXED), entry_offset=OFFSET)
    again = read_file(gzip.compress(_file(*MIXED)), entry_offset=OFFSET)

    assert _ids(again) == _ids(first)


def test_the_ids_do_not_depend_on_the_events_position_in_the_file() -> None:
    forward = read_file(_file(*MIXED), entry_offset=OFFSET)
    backward = read_file(_file(*reversed(MIXED)), entry_offset=OFFSET)

    assert sorted(_ids(backward)) == sorted(_ids(forward))


def test_the_events_of_one_entry_have_distinct_ids() -> None:
    result = read_file(_file(*MIXED), entry_offset=OFFSET)

    assert len(result.events) == 9
    assert len(set(_ids(result))) == 9
    assert all(0 < i < 2**63 for i in _ids(result))


def test_the_entry_offset_is_part_of_the_id_unless_the_event_has_its_own() -> None:
    other_entry = read_file(_file(EVENTS[1]), entry_offset="another-offset")
    own = _event("DELETE", "0-2", 5, offset="event-offset")

    assert _ids(other_entry) != _ids(read_file(_file(EVENTS[1]), entry_offset=OFFSET))
    assert _ids(read_file(_file(own), entry_offset="a")) == _ids(
        read_file(_file(own), entry_offset="b")
    )


@pytest.mark.parametrize(
    "change",
    [
        {"portalId": PORTAL + 1},
        {"objectTypeId": "0-2"},
        {"objectId": 102},
        {"action": "RESTORE"},
        {"occurredAt": AT + 1},
        {"associatedObjectTypeId": "0-3"},
        {"associatedObjectId": 6},
        {"associationTypeId": 2},
        {"action": "MERGE", "mergedObjectIds": [103]},
    ],
)
def test_a_differing_field_gives_a_different_id(change: dict[str, Any]) -> None:
    base = _event(
        "ASSOCIATION_ADDED",
        associatedObjectTypeId="0-2",
        associatedObjectId=5,
        associationTypeId=1,
        mergedObjectIds=[102],
    )
    if change.get("action") == "MERGE":
        base["action"] = "MERGE"

    assert _ids(read_file(_file(base | change), entry_offset=OFFSET)) != _ids(
        read_file(_file(base), entry_offset=OFFSET)
    )


def test_a_different_property_gives_a_different_id() -> None:
    email = read_file(_file(_event("UPDATE", propertyChanges={"email": "a"})), entry_offset=OFFSET)
    phone = read_file(_file(_event("UPDATE", propertyChanges={"phone": "a"})), entry_offset=OFFSET)

    assert _ids(email) != _ids(phone)


# --- privacy -----------------------------------------------------------------------------------


def test_property_values_appear_only_in_property_value() -> None:
    secrets = [
        _event(
            "UPDATE",
            propertyChanges=[{"name": "email", "newValue": "SECRET-1", "oldValue": "SECRET-2"}],
        ),
        _event(
            "CREATE",
            "0-2",
            5,
            propertyChanges={"name": {"value": "SECRET-3", "previous": "SECRET-4"}},
        ),
        _event("SNAPSHOT", properties={"email": "SECRET-5"}, propertyChanges={"email": "SECRET-6"}),
    ]
    result, _ = _read(_file(*secrets))

    outside = [{k: v for k, v in e.items() if k != "propertyValue"} for e in result.events]
    assert "SECRET" not in json.dumps(outside)
    assert [e["propertyValue"] for e in result.events if "propertyValue" in e] == [
        "SECRET-1",
        "SECRET-3",
        "SECRET-6",
    ]


def test_contacts_lists_every_contact_the_file_names() -> None:
    named = [
        _event("UPDATE", propertyChanges=CHANGES),
        _event(
            "ASSOCIATION_ADDED",
            "0-2",
            5,
            associatedObjectTypeId="0-1",
            associatedObjectId=201,
            associationTypeId=280,
        ),
        _event("MERGE", primaryObjectId=301, mergedObjectIds=[302]),
        _event("GDPR_DELETE", None, 401, portalId=77001),
        _event("DELETE", "0-2", 6),
    ]
    result = read_file(_file(*named), entry_offset=OFFSET)

    assert result.contacts == (
        (PORTAL, 101),
        (PORTAL, 201),
        (PORTAL, 301),
        (PORTAL, 302),
        (77001, 401),
    )


def test_scrub_file_redacts_the_contacts_values_and_keeps_the_rest() -> None:
    kept = _event("UPDATE", "0-1", 102, propertyChanges={"email": "b@example.com"})
    scrubbed_event = _event(
        "UPDATE",
        propertyChanges=[{"propertyName": "email", "newValue": "a@example.com", "oldValue": "x"}],
    )
    company = _event("UPDATE", "0-2", 101, propertyChanges={"name": {"newValue": "Acme"}})

    scrubbed = scrub_file(compress(_file(scrubbed_event, kept, company)), [(PORTAL, 101)])

    assert scrubbed.startswith(b"\x1f\x8b")
    text = gzip.decompress(scrubbed).decode()
    assert "a@example.com" not in text
    assert '"oldValue":"x"' not in text
    result, events = _read(scrubbed)
    assert [(e.property_name, e.property_value) for e in events] == [
        ("email", REDACTED),
        ("email", "b@example.com"),
        ("name", "Acme"),
    ]
    assert _ids(result) == _ids(
        read_file(_file(scrubbed_event, kept, company), entry_offset=OFFSET)
    )


def test_scrub_file_keeps_json_lines_and_mapping_shapes() -> None:
    lines = "\n".join(
        json.dumps(e)
        for e in [
            _event("UPDATE", propertyChanges={"email": {"newValue": "a@example.com"}}),
            _event("GDPR_DELETE", None, 101, propertyChanges={"phone": "123"}),
        ]
    )

    text = gzip.decompress(scrub_file(lines.encode(), [(PORTAL, 101)])).decode()

    assert len(text.strip().splitlines()) == 2
    assert "a@example.com" not in text
    assert "123" not in text
    assert json.loads(text.splitlines()[0])["propertyChanges"] == {"email": {"newValue": REDACTED}}


def test_scrub_file_refuses_a_file_it_cannot_read() -> None:
    with pytest.raises(InvalidJournalFile):
        scrub_file(b"\x1f\x8b garbage", [(PORTAL, 101)])


def test_redacted_is_the_marker_service_events_knows() -> None:
    assert REDACTED == push.REDACTED


# --- compression -------------------------------------------------------------------------------


def test_compress_and_decompress_round_trip() -> None:
    data = _file(*EVENTS)
    packed = compress(data)

    assert packed.startswith(b"\x1f\x8b")
    assert compress(packed) == packed
    assert compress(data) == packed  # the same bytes every time
    assert decompress(packed) == data
    assert decompress(data) == data


def test_decompress_reads_every_gzip_member() -> None:
    assert decompress(gzip.compress(b"[1,") + gzip.compress(b"2]")) == b"[1,2]"
