"""The fake HubSpot speaks well enough for the official SDK to run against it unchanged."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hubspot
import pytest
import urllib3
from hubspot import oauth as sdk_oauth
from hubspot.crm import contacts as sdk_contacts
from hubspot.crm import objects as sdk_objects
from hubspot.crm.contacts.exceptions import (
    NotFoundException,
    ServiceException,
    UnauthorizedException,
)
from hubspot.crm.objects import notes as sdk_notes
from hubspot.crm.objects import tasks as sdk_tasks

from tests.factories import OTHER_PORTAL, PORTAL, TOKEN
from tests.fake_hubspot import SEARCH_RESULT_CAP, Call, FakeHubSpot, epoch_ms

OTHER_TOKEN = "pat-na1-00000000-0000-4000-8000-000000077001"
REDIRECT_URI = "https://receiver.example.com/oauth/callback"


def sdk(fake: FakeHubSpot, token: str = TOKEN, **config: Any) -> Any:
    """The official client pointed at the fake; no SDK retries unless asked (as the service)."""
    config.setdefault("retry", urllib3.Retry(total=0, redirect=0))
    return hubspot.Client.create(access_token=token, host=fake.url, **config)


def batch_read(ids: list[str], properties: list[str]) -> Any:
    """A batch read request body, as the SDK's model."""
    return sdk_contacts.BatchReadInputSimplePublicObjectId(
        inputs=[{"id": i} for i in ids], properties=properties, properties_with_history=[]
    )


def search(**fields: Any) -> Any:
    """A search request body, as the SDK's model."""
    return sdk_objects.PublicObjectSearchRequest(**fields)


def body(exc: pytest.ExceptionInfo[Any]) -> Any:
    """The JSON HubSpot answered with, from the SDK's exception (its body is already a str)."""
    return json.loads(exc.value.body)


# --- CRM reads -----------------------------------------------------------------------------------


def test_batch_read_answers_207_with_found_records_and_missing_ids(fake: FakeHubSpot) -> None:
    data, status, headers = sdk(fake).crm.contacts.batch_api.read_with_http_info(
        batch_read(["101", "102", "999", "104"], ["email"])
    )

    assert status == 207
    assert {r.id for r in data.results} == {"101", "102"}
    ada = next(r for r in data.results if r.id == "101")
    # Only what was asked for, plus the three properties HubSpot always adds.
    assert ada.properties == {
        "email": "ada@example.com",
        "createdate": "2026-01-05T09:30:00.000Z",
        "hs_object_id": "101",
        "lastmodifieddate": "2026-03-01T12:00:00.000Z",
    }
    assert ada.updated_at == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert ada.updated_at.tzinfo is not None
    [error] = data.errors
    assert (error.status, error.category) == ("error", "OBJECT_NOT_FOUND")
    assert error.context == {"ids": ["999", "104"]}  # 104 is archived
    assert data.num_errors == 1
    assert data.status == "COMPLETE"
    assert data.started_at <= data.completed_at
    assert headers["X-HubSpot-RateLimit-Max"] == "100"


def test_batch_read_of_found_ids_only_answers_200(fake: FakeHubSpot) -> None:
    _, status, _ = sdk(fake).crm.objects.batch_api.read_with_http_info(
        "companies", batch_read(["201", "202"], ["name"]), archived=False
    )

    assert status == 200


def test_batch_read_refuses_more_than_100_ids(fake: FakeHubSpot) -> None:
    api = sdk(fake).crm.contacts.batch_api

    with pytest.raises(sdk_contacts.ApiException) as refused:
        api.read(batch_read([str(i) for i in range(101)], []))

    assert refused.value.status == 400
    assert body(refused)["category"] == "VALIDATION_ERROR"
    assert (
        len(api.read(batch_read([str(i) for i in range(100)], [])).errors[0].context["ids"]) == 100
    )


def test_batch_read_by_a_merged_id_answers_with_the_surviving_record(fake: FakeHubSpot) -> None:
    fake.merge(PORTAL, "contacts", "101", "102")

    data = sdk(fake).crm.contacts.batch_api.read(batch_read(["102"], ["hs_merged_object_ids"]))

    [survivor] = data.results
    assert survivor.id == "101"
    assert survivor.properties["hs_merged_object_ids"] == "102"


def test_get_page_walks_every_record_and_lists_archived_apart(fake: FakeHubSpot) -> None:
    api = sdk(fake).crm.contacts.basic_api
    seen: list[str] = []
    after = None
    while True:
        page = api.get_page(limit=2, after=after, properties=["email", "lifecyclestage"])
        seen += [r.id for r in page.results]
        if page.paging is None:
            break
        after = page.paging.next.after
        assert not after.isdigit()  # an opaque cursor, as HubSpot's

    assert seen == ["101", "102", "103"]
    archived = api.get_page(archived=True)
    assert [(r.id, r.archived) for r in archived.results] == [("104", True)]
    assert archived.results[0].archived_at is not None


def test_get_by_id_returns_properties_and_associations(fake: FakeHubSpot) -> None:
    api = sdk(fake).crm.contacts.basic_api

    ada = api.get_by_id("101", properties=["phone"], associations=["companies", "deals"])

    assert ada.properties["phone"] == "+44 20 7946 0001"
    assert [a.id for a in ada.associations["companies"].results] == ["201"]
    assert ada.associations["deals"].results[0].type == "contact_to_deal"
    by_email = api.get_by_id("ada@example.com", id_property="email")
    assert by_email.id == "101"
    assert set(by_email.properties) >= {"email", "firstname", "lastname", "hs_object_id"}
    with pytest.raises(NotFoundException):
        api.get_by_id("999")


def test_custom_objects_are_read_by_their_object_type_id(fake: FakeHubSpot) -> None:
    fake.seed(PORTAL, "2-123", [{"id": "9001", "properties": {"car_model": "Difference Engine"}}])

    data = sdk(fake).crm.objects.batch_api.read("2-123", batch_read(["9001"], ["car_model"]))

    [car] = data.results
    assert set(car.properties) == {
        "car_model",
        "hs_createdate",
        "hs_lastmodifieddate",
        "hs_object_id",
    }


def test_each_token_sees_only_its_own_portal(fake: FakeHubSpot) -> None:
    mine = sdk(fake).crm.contacts.basic_api.get_by_id("101")
    theirs = sdk(fake, OTHER_TOKEN).crm.contacts.basic_api.get_by_id("101")

    assert mine.properties["email"] == "ada@example.com"
    assert theirs.properties["email"] == "other-portal@example.com"
    assert fake.count("/crm/v3/objects/contacts/101", portal_id=OTHER_PORTAL) == 1


# --- search --------------------------------------------------------------------------------------


def test_search_filters_and_sorts_on_the_last_modified_property(fake: FakeHubSpot) -> None:
    api = sdk(fake).crm.objects.search_api
    since = epoch_ms("2026-03-02T00:00:00Z")

    newest_first = api.do_search(
        "contacts",
        search(
            filter_groups=[
                {
                    "filters": [
                        {"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(since)}
                    ]
                }
            ],
            sorts=[{"propertyName": "lastmodifieddate", "direction": "DESCENDING"}],
            properties=["email"],
            limit=1,
        ),
    )
    deals = api.do_search(
        "deals",
        search(
            filter_groups=[
                {
                    "filters": [
                        {
                            "propertyName": "hs_lastmodifieddate",
                            "operator": "LT",
                            "value": "2026-03-06T00:00:00.000Z",
                        }
                    ]
                },
                {
                    "filters": [
                        {"propertyName": "dealstage", "operator": "EQ", "value": "CLOSEDWON"}
                    ]
                },
            ],
            sorts=["hs_lastmodifieddate"],
        ),
    )

    assert newest_first.total == 2  # 104 is archived: search never returns it
    assert [r.id for r in newest_first.results] == ["103"]
    assert newest_first.paging.next.after == "1"
    assert newest_first.results[0].properties["email"] == "mary@example.com"
    assert [r.id for r in deals.results] == ["301", "302"]


def test_search_refuses_to_page_past_10000_results(fake: FakeHubSpot) -> None:
    fake.generate(PORTAL, "contacts", 25_000)
    fake.set_rate_limit(search_per_second=100)
    api = sdk(fake).crm.contacts.search_api
    oldest_first = {"sorts": ["lastmodifieddate"], "limit": 200}

    last_page = api.do_search(search(after="9800", **oldest_first))
    with pytest.raises(sdk_contacts.ApiException) as refused:
        api.do_search(search(after=last_page.paging.next.after, **oldest_first))

    assert last_page.total == 25_003
    assert len(last_page.results) == 200
    assert last_page.paging.next.after == str(SEARCH_RESULT_CAP)
    assert refused.value.status == 400
    assert body(refused)["category"] == "VALIDATION_ERROR"
    # Re-anchoring the filter on the last timestamp seen is how to get past the cap.
    anchor = last_page.results[-1].properties["lastmodifieddate"]
    rest = api.do_search(
        search(
            filter_groups=[
                {
                    "filters": [
                        {"propertyName": "lastmodifieddate", "operator": "GT", "value": anchor}
                    ]
                }
            ],
            **oldest_first,
        )
    )
    assert rest.total == 25_003 - SEARCH_RESULT_CAP


def test_search_has_its_own_per_second_limit_and_no_rate_limit_headers(fake: FakeHubSpot) -> None:
    fake.set_rate_limit(search_per_second=2)
    api = sdk(fake).crm.objects.search_api

    _, _, headers = api.do_search_with_http_info("contacts", search())
    api.do_search("contacts", search())
    with pytest.raises(sdk_objects.ApiException) as limited:
        api.do_search("contacts", search())

    assert not any(name.lower().startswith("x-hubspot-ratelimit") for name in headers)
    assert limited.value.status == 429
    assert limited.value.headers["Retry-After"] == "1"
    assert body(limited)["policyName"] == "SECONDLY"
    # Other endpoints still answer: the search limit is separate.
    assert sdk(fake).crm.contacts.basic_api.get_by_id("101").id == "101"


def test_search_sees_changes_only_after_the_index_lag(fake: FakeHubSpot) -> None:
    fake.search_lag = 60
    fake.upsert(PORTAL, "contacts", "101", {"lifecyclestage": "evangelist"})
    api = sdk(fake).crm.objects.search_api
    evangelists = search(
        filter_groups=[
            {
                "filters": [
                    {"propertyName": "lifecyclestage", "operator": "EQ", "value": "evangelist"}
                ]
            }
        ]
    )

    assert api.do_search("contacts", evangelists).total == 0
    fake.search_lag = 0
    assert [r.id for r in api.do_search("contacts", evangelists).results] == ["101"]
    assert fake.get(PORTAL, "contacts", "101") is not None


# --- writes and pipelines -----------------------------------------------------------------------


def test_tasks_and_notes_are_created_with_their_associations(fake: FakeHubSpot) -> None:
    client = sdk(fake)
    on_contact = sdk_tasks.PublicAssociationsForObject(
        to=sdk_tasks.PublicObjectId(id="101"),
        types=[
            sdk_tasks.AssociationSpec(
                association_category="HUBSPOT_DEFINED", association_type_id=204
            )
        ],
    )
    task = client.crm.objects.tasks.basic_api.create(
        sdk_tasks.SimplePublicObjectInputForCreate(
            properties={
                "hs_task_subject": "Call Ada back",
                "hs_timestamp": "2026-03-10T09:00:00.000Z",
                "hs_task_status": "NOT_STARTED",
            },
            associations=[on_contact],
        )
    )
    note = client.crm.objects.notes.basic_api.create(
        {
            "properties": {"hs_note_body": "Deal won", "hs_timestamp": "1773100000000"},
            "associations": [
                {
                    "to": {"id": "301"},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}],
                }
            ],
        }
    )

    assert task.properties["hs_task_subject"] == "Call Ada back"
    assert task.created_at is not None
    assert task.properties["hs_createdate"] == task.properties["hs_lastmodifieddate"]
    [created_task] = fake.created("tasks")
    assert created_task.id == task.id
    assert created_task.associations[0]["to"] == {"id": "101"}
    assert [c.object_type for c in fake.created()] == ["tasks", "notes"]
    assert fake.count("/crm/v3/objects/notes", method="POST", status=201) == 1
    deal = client.crm.deals.basic_api.get_by_id("301", associations=["notes"])
    assert [a.id for a in deal.associations["notes"].results] == [note.id]


def test_engagements_need_hs_timestamp_and_a_real_association_target(fake: FakeHubSpot) -> None:
    api = sdk(fake).crm.objects.notes.basic_api
    to_nobody = [
        {
            "to": {"id": "999"},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}],
        }
    ]

    with pytest.raises(sdk_notes.ApiException) as no_timestamp:
        api.create({"properties": {"hs_note_body": "x"}})
    with pytest.raises(sdk_notes.ApiException) as no_target:
        api.create({"properties": {"hs_timestamp": "1"}, "associations": to_nobody})

    assert no_timestamp.value.status == no_target.value.status == 400
    assert fake.created() == []


NOTE_ON_DEAL_301 = {
    "properties": {"hs_note_body": "Deal won", "hs_timestamp": "2026-03-10T09:00:00.000Z"},
    "associations": [
        {
            "to": {"id": "301"},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 214}],
        }
    ],
}


def test_a_lost_answer_comes_after_the_record_was_stored(fake: FakeHubSpot) -> None:
    fake.lose_answer_next(1, path_prefix="/crm/v3/objects/notes")
    fake.lose_answer_next(1, status=504, path_prefix="/crm/v3/objects/notes")
    api = sdk(fake).crm.objects.notes.basic_api

    with pytest.raises(urllib3.exceptions.ProtocolError):
        api.create(NOTE_ON_DEAL_301)
    with pytest.raises(sdk_notes.ApiException) as gateway:
        api.create(NOTE_ON_DEAL_301)

    assert gateway.value.status == 504
    assert len(fake.created("notes")) == 2  # both stored, neither answered
    assert [c.status for c in fake.calls] == [0, 504]
    assert [c.portal_id for c in fake.calls] == [PORTAL, PORTAL]


def test_search_filters_engagements_by_the_record_they_are_on(fake: FakeHubSpot) -> None:
    api = sdk(fake).crm.objects.notes
    on_301 = api.basic_api.create(NOTE_ON_DEAL_301).id
    api.basic_api.create({**NOTE_ON_DEAL_301, "associations": []})

    def on_deal(deal: str, at: str = "1773133200000") -> list[str]:
        found = api.search_api.do_search(
            search(
                filter_groups=[
                    {
                        "filters": [
                            {"propertyName": "associations.deal", "operator": "EQ", "value": deal},
                            {"propertyName": "hs_timestamp", "operator": "EQ", "value": at},
                        ]
                    }
                ],
                properties=["hs_note_body"],
            )
        )
        return [r.id for r in found.results]

    assert on_deal("301") == [on_301]
    assert on_deal("302") == []
    assert on_deal("301", at="1773133200001") == []


def test_deal_pipeline_maps_stage_labels_to_ids(fake: FakeHubSpot) -> None:
    pipelines = sdk(fake).crm.pipelines.pipelines_api.get_all("deals").results

    [sales] = pipelines
    stages = {s.label: s.id for s in sales.stages}
    assert stages["Closed Won"] == "closedwon"
    assert stages["Closed Lost"] == "closedlost"
    assert next(iter(stages.values())) == "appointmentscheduled"
    assert sales.stages[-1].metadata == {"isClosed": "true", "probability": "0.0"}


# --- OAuth and authentication -------------------------------------------------------------------


def test_oauth_code_exchange_refresh_and_introspection(fake: FakeHubSpot) -> None:
    code = fake.issue_code(
        PORTAL, scopes=["oauth", "crm.objects.contacts.read"], redirect_uri=REDIRECT_URI
    )
    tokens_api = sdk(fake).oauth.tokens_api
    credentials = {"client_id": fake.client_id, "client_secret": fake.client_secret}

    first = tokens_api.create(
        grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI, **credentials
    )
    info = sdk(fake).oauth.access_tokens_api.get(first.access_token)
    _, _, headers = sdk(fake, first.access_token).crm.contacts.basic_api.get_by_id_with_http_info(
        "101"
    )
    second = tokens_api.create(
        grant_type="refresh_token", refresh_token=first.refresh_token, **credentials
    )

    assert (first.token_type, first.expires_in) == ("bearer", 1800)
    assert (info.hub_id, info.app_id, info.token_type) == (PORTAL, fake.app_id, "access")
    assert info.scopes == ["oauth", "crm.objects.contacts.read"]
    assert 1790 <= info.expires_in <= 1800
    assert "X-HubSpot-RateLimit-Daily" not in headers  # OAuth calls have no daily limit
    assert second.access_token != first.access_token
    assert second.refresh_token == first.refresh_token  # HubSpot keeps the refresh token
    assert fake.refresh_count == 1
    with pytest.raises(sdk_oauth.ApiException) as reused:
        tokens_api.create(
            grant_type="authorization_code", code=code, redirect_uri=REDIRECT_URI, **credentials
        )
    assert body(reused)["status"] == "BAD_AUTH_CODE"


def test_a_revoked_refresh_token_is_refused(fake: FakeHubSpot) -> None:
    code = fake.issue_code(PORTAL)
    tokens_api = sdk(fake).oauth.tokens_api
    credentials = {"client_id": fake.client_id, "client_secret": fake.client_secret}
    tokens = tokens_api.create(grant_type="authorization_code", code=code, **credentials)
    fake.revoke_refresh_token(tokens.refresh_token)

    with pytest.raises(sdk_oauth.ApiException) as refused:
        tokens_api.create(
            grant_type="refresh_token", refresh_token=tokens.refresh_token, **credentials
        )
    with pytest.raises(sdk_oauth.ApiException) as wrong_secret:
        tokens_api.create(
            grant_type="refresh_token",
            refresh_token=tokens.refresh_token,
            client_id=fake.client_id,
            client_secret="nope",
        )

    assert refused.value.status == 400
    assert body(refused)["status"] == "BAD_REFRESH_TOKEN"
    assert body(wrong_secret)["status"] == "BAD_CLIENT_SECRET"


def test_unknown_and_expired_tokens_answer_401(fake: FakeHubSpot) -> None:
    access_token, _ = fake.issue_tokens(PORTAL)
    fake.expire_token(access_token)

    with pytest.raises(UnauthorizedException) as unknown:
        sdk(fake, "pat-na1-unknown").crm.contacts.basic_api.get_by_id("101")
    with pytest.raises(UnauthorizedException) as expired:
        sdk(fake, access_token).crm.contacts.basic_api.get_by_id("101")

    assert body(unknown)["category"] == "INVALID_AUTHENTICATION"
    assert body(unknown)["correlationId"]
    assert body(expired)["category"] == "EXPIRED_AUTHENTICATION"
    assert fake.count(status=401) == 2


def test_refreshes_in_flight_together_are_counted(fake: FakeHubSpot) -> None:
    fake.refresh_delay = 0.2
    code = fake.issue_code(PORTAL)
    tokens_api = sdk(fake).oauth.tokens_api
    credentials = {"client_id": fake.client_id, "client_secret": fake.client_secret}
    refresh_token = tokens_api.create(
        grant_type="authorization_code", code=code, **credentials
    ).refresh_token

    def refresh(_: int) -> str:
        api = sdk(fake).oauth.tokens_api
        return str(
            api.create(
                grant_type="refresh_token", refresh_token=refresh_token, **credentials
            ).access_token
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        access_tokens = set(pool.map(refresh, range(2)))

    assert len(access_tokens) == 2
    assert fake.refresh_count == 2
    assert fake.max_concurrent_refreshes == 2


# --- rate limits and faults ---------------------------------------------------------------------


def test_the_ten_second_window_answers_429_with_retry_after(fake: FakeHubSpot) -> None:
    fake.set_rate_limit(3, 10.0, daily=1000)
    api = sdk(fake).crm.contacts.basic_api

    remaining = []
    for _ in range(3):
        _, _, headers = api.get_by_id_with_http_info("101")
        remaining.append(headers["X-HubSpot-RateLimit-Remaining"])
    with pytest.raises(sdk_contacts.ApiException) as limited:
        api.get_by_id("101")

    assert remaining == ["2", "1", "0"]
    assert headers["X-HubSpot-RateLimit-Max"] == "3"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert headers["X-HubSpot-RateLimit-Daily"] == "1000"
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "997"
    assert limited.value.status == 429
    assert 1 <= int(limited.value.headers["Retry-After"]) <= 10
    assert body(limited) == {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": body(limited)["correlationId"],
        "policyName": "TEN_SECONDLY_ROLLING",
    }
    assert fake.count(status=429) == 1
    # Each private app has its own window.
    assert sdk(fake, OTHER_TOKEN).crm.contacts.basic_api.get_by_id("101").id == "101"
    fake.reset()
    assert api.get_by_id("101").id == "101"


def test_injected_server_errors_come_before_recovery(fake: FakeHubSpot) -> None:
    fake.fail_next(1, status=500)
    fake.fail_next(1, status=503, path_prefix="/crm/v3/objects/contacts/batch")
    client = sdk(fake)

    with pytest.raises(ServiceException) as internal:
        client.crm.contacts.basic_api.get_by_id("101")
    assert client.crm.contacts.basic_api.get_by_id("101").id == "101"  # not a batch path
    with pytest.raises(ServiceException) as unavailable:
        client.crm.contacts.batch_api.read(batch_read(["101"], []))
    assert client.crm.contacts.batch_api.read(batch_read(["101"], [])).results[0].id == "101"

    assert internal.value.status == 500
    assert body(internal)["category"] == "INTERNAL_ERROR"
    assert unavailable.value.status == 503
    assert unavailable.value.body.startswith("<html>")  # gateway errors are not JSON
    assert [c.status for c in fake.calls] == [500, 200, 503, 200]


def test_a_dropped_connection_is_a_connection_error(fake: FakeHubSpot) -> None:
    fake.drop_next(3)

    with pytest.raises(urllib3.exceptions.ProtocolError):
        sdk(fake).crm.contacts.batch_api.read(batch_read(["101"], []))
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        sdk(fake).crm.contacts.basic_api.get_by_id("101")
    with httpx.Client() as http, pytest.raises(httpx.RemoteProtocolError):
        http.get(
            f"{fake.url}/crm/v3/objects/contacts/101", headers={"Authorization": f"Bearer {TOKEN}"}
        )

    assert fake.calls == [
        Call("POST", "/crm/v3/objects/contacts/batch/read", None, 0),
        Call("GET", "/crm/v3/objects/contacts/101", None, 0),
        Call("GET", "/crm/v3/objects/contacts/101", None, 0),
    ]


def test_the_sdk_by_default_retries_a_dropped_get_without_telling(fake: FakeHubSpot) -> None:
    fake.drop_next(2)

    ada = hubspot.Client.create(access_token=TOKEN, host=fake.url).crm.contacts.basic_api.get_by_id(
        "101"
    )

    assert ada.id == "101"
    assert [c.status for c in fake.calls] == [0, 0, 200]


def test_latency_delays_answers_past_a_client_timeout(fake: FakeHubSpot) -> None:
    fake.latency(0.3, path_prefix="/crm/v3/objects/contacts/batch")
    client = sdk(fake)

    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        client.crm.contacts.batch_api.read(batch_read(["101"], []), _request_timeout=0.1)
    started = time.monotonic()
    client.crm.contacts.batch_api.read(batch_read(["101"], []))
    slow = time.monotonic() - started
    started = time.monotonic()
    client.crm.contacts.basic_api.get_by_id("101")
    fast = time.monotonic() - started

    assert slow >= 0.3 > fast


def test_upsert_and_archive_move_the_last_modified_time(fake: FakeHubSpot) -> None:
    before = fake.get(PORTAL, "deals", "301")
    fake.upsert(PORTAL, "deals", "301", {"dealstage": "closedwon"})
    after = fake.get(PORTAL, "deals", "301")
    new_id = fake.upsert(
        PORTAL, "deals", properties={"dealname": "New"}, at=datetime.now(UTC) - timedelta(days=1)
    )
    fake.archive(PORTAL, "deals", "302")

    assert before is not None
    assert after is not None
    assert after["properties"]["dealstage"] == "closedwon"
    assert after["properties"]["hs_lastmodifieddate"] > before["properties"]["hs_lastmodifieddate"]
    assert after["updatedAt"] == after["properties"]["hs_lastmodifieddate"]
    assert int(new_id) > 302
    with pytest.raises(sdk_objects.ApiException) as gone:
        sdk(fake).crm.objects.basic_api.get_by_id("deals", "302")
    assert gone.value.status == 404
