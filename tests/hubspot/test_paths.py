"""ApiPaths: every endpoint family on the date-based and the legacy paths (HUBSPOT.md §5)."""

from __future__ import annotations

import pytest

from service.hubspot.paths import ApiPaths

DATED = ApiPaths("2026-03")
LEGACY = ApiPaths("v3")


def test_crm_object_paths_put_the_date_after_the_api_name() -> None:
    assert DATED.objects("tasks") == "/crm/objects/2026-03/tasks"
    assert DATED.record("contacts", 51) == "/crm/objects/2026-03/contacts/51"
    assert DATED.batch_read("contacts") == "/crm/objects/2026-03/contacts/batch/read"
    assert DATED.search("deals") == "/crm/objects/2026-03/deals/search"


def test_crm_object_paths_on_v3_keep_the_numbered_paths() -> None:
    assert LEGACY.objects("tasks") == "/crm/v3/objects/tasks"
    assert LEGACY.record("contacts", 51) == "/crm/v3/objects/contacts/51"
    assert LEGACY.batch_read("contacts") == "/crm/v3/objects/contacts/batch/read"
    assert LEGACY.search("deals") == "/crm/v3/objects/deals/search"


def test_association_paths_are_dated_or_associations_v4() -> None:
    expected = "/crm/associations/2026-03/deals/contacts/batch/read"
    assert DATED.associations_batch_read("deals", "contacts") == expected
    expected = "/crm/v4/associations/deals/contacts/batch/read"
    assert LEGACY.associations_batch_read("deals", "contacts") == expected


def test_pipeline_paths() -> None:
    assert DATED.pipelines("deals") == "/crm/pipelines/2026-03/deals"
    assert LEGACY.pipelines("tickets") == "/crm/v3/pipelines/tickets"


def test_oauth_token_paths_are_dated_or_oauth_v1() -> None:
    assert DATED.oauth_token() == "/oauth/2026-03/token"
    assert LEGACY.oauth_token() == "/oauth/v1/token"


def test_later_versions_follow_the_same_form() -> None:
    assert ApiPaths("2026-09").search("p_custom") == "/crm/objects/2026-09/p_custom/search"


def test_a_segment_cannot_add_path_parts() -> None:
    assert (
        DATED.record("contacts", "1/../../oauth")
        == "/crm/objects/2026-03/contacts/1%2F..%2F..%2Foauth"
    )


@pytest.mark.parametrize("version", ["v4", "2026-3", "2026-13", "latest", ""])
def test_an_unknown_version_is_refused(version: str) -> None:
    with pytest.raises(ValueError, match="unknown HubSpot API version"):
        ApiPaths(version)
