"""service.actions.hubspot: tasks and notes on a record, created through the API client on the
fake HubSpot."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.actions import ActionFailed, ActionRejected, Outcome, execute
from service.hubspot.client import HubSpotApi
from tests.factories import PORTAL, run_context
from tests.fake_hubspot import FakeHubSpot, epoch_ms

TASKS = "/crm/v3/objects/tasks"


def task_payload(
    object_type: str = "deals", object_id: Any = 301, **changes: Any
) -> dict[str, Any]:
    payload = {
        "action": "hubspot_task",
        "object_type": object_type,
        "object_id": object_id,
        "subject": "Send the contract",
        "body": "Big deal is closed won",
        "priority": "HIGH",
        "due_at_ms": epoch_ms("2026-06-01T09:00:00.000Z"),
        "owner_id": None,
    }
    payload.update(changes)
    return payload


def note_payload(object_type: str = "deals", object_id: Any = 301) -> dict[str, Any]:
    return {
        "action": "hubspot_note",
        "object_type": object_type,
        "object_id": object_id,
        "body": "Moved to Closed Won",
        "timestamp_ms": epoch_ms("2026-05-01T12:30:00.250Z"),
    }


def association(object_id: str, type_id: int) -> list[dict[str, Any]]:
    return [
        {
            "to": {"id": object_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
        }
    ]


def test_a_task_is_created_on_the_record_with_its_properties(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    outcome = execute(run_context(http, task_payload(owner_id="77001"), api=api))

    (task,) = fake.created("tasks")
    assert task.portal_id == PORTAL
    assert task.properties == {
        "hs_task_subject": "Send the contract",
        "hs_task_body": "Big deal is closed won",
        "hs_timestamp": "2026-06-01T09:00:00.000Z",
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": "HIGH",
        "hubspot_owner_id": "77001",
    }
    assert task.associations == association("301", 216)
    assert outcome == Outcome(f"created task {task.id}", ("tasks", int(task.id)))


def test_a_task_without_an_owner_sends_no_owner(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    execute(run_context(http, task_payload(owner_id=None), api=api))

    assert "hubspot_owner_id" not in fake.created("tasks")[0].properties


@pytest.mark.parametrize(
    ("record", "type_ids"),
    [
        (("contacts", 101), (204, 202)),
        (("companies", 201), (192, 190)),
        (("deals", 301), (216, 214)),
        (("tickets", 401), (230, 228)),
        (("0-3", 302), (216, 214)),  # the generic form's object type id
    ],
)
def test_engagements_use_hubspots_association_type_ids(
    http: httpx.Client,
    api: HubSpotApi,
    fake: FakeHubSpot,
    record: tuple[str, int],
    type_ids: tuple[int, int],
) -> None:
    object_type, object_id = record
    execute(run_context(http, task_payload(object_type, object_id), api=api))
    execute(run_context(http, note_payload(object_type, object_id), api=api))

    (task,) = fake.created("tasks")
    (note,) = fake.created("notes")
    assert task.associations == association(str(object_id), type_ids[0])
    assert note.associations == association(str(object_id), type_ids[1])


def test_a_note_is_created_on_the_record_timeline(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    outcome = execute(run_context(http, note_payload("contacts", 101), api=api))

    (note,) = fake.created("notes")
    assert note.properties == {
        "hs_note_body": "Moved to Closed Won",
        "hs_timestamp": "2026-05-01T12:30:00.250Z",
    }
    assert note.associations == association("101", 202)
    assert outcome.summary == f"created note {note.id}"
    assert outcome.created == ("notes", int(note.id))


def test_hubspot_refusing_the_task_is_rejected(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    fake.fail_next(1, 400, path_prefix=TASKS)

    with pytest.raises(ActionRejected, match="400 VALIDATION_ERROR"):
        execute(run_context(http, task_payload(), api=api))

    assert fake.created("tasks") == []


def test_a_task_on_a_record_hubspot_does_not_have_is_rejected(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    with pytest.raises(ActionRejected, match="400"):
        execute(run_context(http, task_payload("deals", 999_999), api=api))

    assert fake.created("tasks") == []


@pytest.mark.parametrize("status", [500, 503])
def test_a_hubspot_server_error_fails_the_attempt_and_the_retry_creates_the_task(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot, status: int
) -> None:
    fake.fail_next(1, status, path_prefix=TASKS)
    ctx = run_context(http, task_payload(), api=api, run_id=5)

    with pytest.raises(ActionFailed) as caught:
        execute(ctx)

    assert not isinstance(caught.value, ActionRejected)
    assert f"HubSpot answered {status}" in str(caught.value)
    assert fake.created("tasks") == []
    # A create may have landed when the answer is lost: the client does not repeat the POST,
    # the outbox retries the run.
    assert fake.count(TASKS, method="POST") == 1

    outcome = execute(ctx)

    assert outcome.created is not None
    assert len(fake.created("tasks")) == 1


def test_a_dropped_connection_to_hubspot_fails_the_attempt(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    fake.drop_next(1, path_prefix=TASKS)

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, task_payload(), api=api))

    assert not isinstance(caught.value, ActionRejected)


def test_hubspot_actions_without_credentials_are_rejected(http: httpx.Client) -> None:
    with pytest.raises(ActionRejected, match="no HubSpot credentials"):
        execute(run_context(http, task_payload()))
    with pytest.raises(ActionRejected, match="no HubSpot credentials"):
        execute(run_context(http, note_payload()))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (task_payload("products", 1), "not products"),
        (task_payload("2-123456", 1), "not 2-123456"),
        (task_payload("deals", None), "no deals record"),
        (task_payload(priority="URGENT"), "priority"),
        (task_payload(due_at_ms="tomorrow"), "milliseconds"),
    ],
)
def test_tasks_hubspot_could_never_accept_are_rejected_without_a_call(
    http: httpx.Client,
    api: HubSpotApi,
    fake: FakeHubSpot,
    payload: dict[str, Any],
    reason: str,
) -> None:
    with pytest.raises(ActionRejected, match=reason):
        execute(run_context(http, payload, api=api))

    assert fake.count(TASKS) == 0
