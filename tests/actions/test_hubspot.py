"""service.actions.hubspot: tasks and notes on a record, created through the API client on the
fake HubSpot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from service import outbox
from service.actions import ActionFailed, ActionRejected, Outcome, execute
from service.actions.hubspot import NOTE_BODY_MAX, SEARCH_SETTLE_SECONDS, marker
from service.hubspot.client import MAX_TRIES, HubSpotApi
from tests.factories import PORTAL, change, run_context
from tests.fake_hubspot import FakeHubSpot, epoch_ms
from tests.support import DbClock, MakeApi, MakeHarness

TASKS = "/crm/v3/objects/tasks"
NOTES = "/crm/v3/objects/notes"
SEARCHES = {"tasks": f"{TASKS}/search", "notes": f"{NOTES}/search"}

# Each test runs on the date-based paths and on v3 (the fake matches prefixes in either form).
pytestmark = pytest.mark.both_api_versions


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
    outcome = execute(run_context(http, task_payload(owner_id="77001"), api=api, run_id=42))

    (task,) = fake.created("tasks")
    assert task.portal_id == PORTAL
    assert task.properties == {
        "hs_task_subject": "Send the contract",
        "hs_task_body": "Big deal is closed won\n\n(hubspot-webhooks run 42)",
        "hs_timestamp": "2026-06-01T09:00:00.000Z",
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": "HIGH",
        "hubspot_owner_id": "77001",
    }
    assert task.associations == association("301", 216)
    assert outcome == Outcome(f"created task {task.id}", ("tasks", int(task.id)))
    # The first attempt of a run cannot have created anything before: no search.
    assert fake.count(SEARCHES["tasks"]) == 0


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
    outcome = execute(run_context(http, note_payload("contacts", 101), api=api, run_id=7))

    (note,) = fake.created("notes")
    assert note.properties == {
        "hs_note_body": "Moved to Closed Won\n\n(hubspot-webhooks run 7)",
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

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, task_payload(), api=api, run_id=5))

    assert not isinstance(caught.value, ActionRejected)
    assert f"HubSpot answered {status}" in str(caught.value)
    assert "may have been created" in str(caught.value)
    # Search may not see a task created a moment ago: the retry waits until it would.
    assert caught.value.retry_after == SEARCH_SETTLE_SECONDS
    assert fake.created("tasks") == []
    # A create may have landed when the answer is lost: the client does not repeat the POST,
    # the outbox retries the run.
    assert fake.count(TASKS, method="POST") == 1

    outcome = execute(run_context(http, task_payload(), api=api, run_id=5, attempt=2))

    # The retry looked for the task first, found none (this 5xx came before the create), made it.
    assert fake.count(SEARCHES["tasks"]) == 1
    (task,) = fake.created("tasks")
    assert outcome == Outcome(f"created task {task.id}", ("tasks", int(task.id)))


def test_a_dropped_connection_to_hubspot_fails_the_attempt(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    fake.drop_next(1, path_prefix=TASKS)

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, task_payload(), api=api))

    assert not isinstance(caught.value, ActionRejected)
    assert caught.value.retry_after == SEARCH_SETTLE_SECONDS


# --- a lost answer (issue 10, finding 9) ------------------------------------------------------

WON = """
[[rules]]
name = "won"
[rules.when]
object = "deals"
kind = "property_change"
property = "dealstage"
to = "closedwon"

[[rules.do]]
"""
DO = {
    "tasks": 'action = "hubspot_task"\nsubject = "Send the contract"',
    "notes": 'action = "hubspot_note"\nbody = "Deal {event.object_id} is closed won"',
}


@pytest.mark.parametrize("answer", [0, 502, 504], ids=["connection-closed", "502", "504"])
@pytest.mark.parametrize("kind", ["tasks", "notes"])
def test_a_lost_answer_after_hubspot_created_it_leaves_one_record_and_a_done_run(
    harness: MakeHarness, fake: FakeHubSpot, kind: str, answer: int
) -> None:
    h = harness(WON + DO[kind], fake=fake)
    h.store(change("deal", 301, 1000, "dealstage", "closedwon"))
    h.apply()
    # HubSpot stores the record, then the answer is lost (connection closed, or a gateway 5xx).
    fake.lose_answer_next(1, status=answer, path_prefix=f"/crm/v3/objects/{kind}")

    h.act()

    (run,) = h.runs()
    assert run.status == "failed"
    assert "may have been created" in run.last_error
    assert len(fake.created(kind)) == 1
    # The retry waits until search would see a record created by the lost attempt.
    assert run.next_attempt_at >= datetime.now(UTC) + timedelta(seconds=SEARCH_SETTLE_SECONDS - 5)

    h.make_due()
    h.act()

    (record,) = fake.created(kind)
    (run,) = h.runs()
    assert (run.status, run.attempts) == ("done", 2)
    assert run.result.startswith(f"created {kind[:-1]} {record.id} ")
    assert fake.count(SEARCHES[kind]) == 1
    assert fake.count(f"/crm/v3/objects/{kind}", method="POST") == 2  # the create, the search
    with h.engine.connect() as connection:
        own = connection.execute(sa.text("SELECT object_type, object_id FROM own_writes")).all()
    assert own == [(kind, int(record.id))]


def test_an_operator_replay_after_a_lost_answer_looks_before_creating_again(
    harness: MakeHarness, fake: FakeHubSpot
) -> None:
    h = harness(WON + DO["tasks"], fake=fake)
    h.store(change("deal", 301, 1000, "dealstage", "closedwon"))
    h.apply()
    fake.lose_answer_next(1, status=0, path_prefix=TASKS)
    h.act()
    (run,) = h.runs()
    assert run.status == "failed"

    # An operator replays it (the Replay button, `actions replay`): attempts start again at 0.
    with h.engine.begin() as connection:
        assert outbox.replay(connection, outbox.RunFilters(ids=(run.id,))) == 1
    h.act()

    (record,) = fake.created("tasks")
    (run,) = h.runs()
    assert (run.status, run.attempts) == ("done", 1)
    assert run.result.startswith(f"created task {record.id} ")
    assert fake.count(SEARCHES["tasks"]) == 1


def test_a_retry_takes_only_the_task_of_its_own_run(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    # Another run made a task on the same deal, due at the same moment.
    other = execute(run_context(http, task_payload(), api=api, run_id=15))

    ours = execute(run_context(http, task_payload(), api=api, run_id=5, attempt=2))

    assert fake.count(SEARCHES["tasks"]) == 1
    assert ours.created is not None
    assert ours.created != other.created
    assert [t.properties["hs_task_body"] for t in fake.created("tasks")] == [
        "Big deal is closed won\n\n(hubspot-webhooks run 15)",
        "Big deal is closed won\n\n(hubspot-webhooks run 5)",
    ]


def test_a_retry_finds_the_task_even_when_hubspot_rewrote_the_body_as_html(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    first = fake.seed(
        PORTAL,
        "tasks",
        [
            {
                "properties": {
                    "hs_task_body": "<p>Big deal is closed won</p><p>(hubspot-webhooks&nbsp;run"
                    " 5)</p>",
                    "hs_timestamp": "2026-06-01T09:00:00.000Z",
                },
                "associations": {"deals": ["301"]},
            }
        ],
    )

    outcome = execute(run_context(http, task_payload(), api=api, run_id=5, attempt=2))

    assert outcome.created == ("tasks", int(first[0]))
    assert fake.created("tasks") == []


def test_a_failed_search_fails_the_retry_and_creates_nothing(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    fake.fail_next(MAX_TRIES, 503, path_prefix=SEARCHES["notes"])  # past the client's retries

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, note_payload(), api=api, run_id=5, attempt=3))

    assert not isinstance(caught.value, ActionRejected)
    assert "looking for the note" in str(caught.value)
    assert fake.created("notes") == []


def test_a_rate_limited_create_is_retried_without_waiting_for_search(
    http: httpx.Client, engine: sa.Engine, fake: FakeHubSpot, make_api: MakeApi
) -> None:
    # 429 says HubSpot did not take the request: nothing can have been created.
    api = make_api(limiter_sleep=DbClock(engine))
    fake.fail_next(MAX_TRIES, 429, path_prefix=TASKS)

    with pytest.raises(ActionFailed) as caught:
        execute(run_context(http, task_payload(), api=api))

    assert not isinstance(caught.value, ActionRejected)
    assert "429" in str(caught.value)
    assert caught.value.retry_after is None
    assert fake.created("tasks") == []


def test_the_marker_fits_in_a_note_of_the_longest_body(
    http: httpx.Client, api: HubSpotApi, fake: FakeHubSpot
) -> None:
    payload = {**note_payload(), "body": "x" * (NOTE_BODY_MAX + 10)}

    execute(run_context(http, payload, api=api, run_id=123456))

    body = fake.created("notes")[0].properties["hs_note_body"]
    assert body is not None
    assert len(body) == NOTE_BODY_MAX
    assert body.endswith(marker(123456))


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
