"""service.rules.engine: which rules fire, decided in the apply transaction against the mirror.

Rule loading, the previous value a `from` condition compares with (read from the mirror before
the event, inside one batch too), deal stage labels, and the echoes of our own writes. A real
Worker with a RuleEngine loaded from a rules file on a real Postgres; HubSpot is the fake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service.hubspot.pipelines import refresh_stages
from service.rules.engine import load_engine
from service.rules.language import RuleError, rule_from_mapping
from service.settings import Settings
from tests.factories import (
    DEAL_WON,
    DO_LOG,
    OUR_APP_ID,
    PORTAL,
    WHEN_WON,
    change,
    hs,
    stage_of,
)
from tests.fake_hubspot import FakeHubSpot
from tests.support import MakeHarness

# --- loading ---------------------------------------------------------------------------------


def test_a_name_in_both_the_rules_file_and_code_names_both_places(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "won"\n[rules.when]\nobject = "deals"\nkind = "creation"\n'
        '[[rules.do]]\naction = "log"\n'
    )
    settings = Settings.from_env({"RULES_FILE": str(path)})
    code = rule_from_mapping({"name": "won", "when": WHEN_WON, "do": DO_LOG}, "my_rules.py:7")
    other = rule_from_mapping({"name": "other", "when": WHEN_WON, "do": DO_LOG}, "my_rules.py:9")

    with pytest.raises(RuleError) as caught:
        load_engine(settings, [code])

    assert caught.value.problems == [f"rule 'won' is declared twice: at {path}:1 and my_rules.py:7"]
    engine = load_engine(settings, [other])
    assert engine is not None
    assert [r.name for r in engine.rules] == ["won", "other"]
    assert load_engine(Settings.from_env({}), []) is None


# --- conditions against the mirror -----------------------------------------------------------

LIFECYCLE = """
[[rules]]
name = "lead-to-sql"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
from = "lead"
to = "salesqualifiedlead"

[[rules.do]]
action = "log"
message = "{event.previous_value} -> {event.property_value}"

[[rules]]
name = "became-sql"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
to = "salesqualifiedlead"

[[rules.do]]
action = "log"
message = "{event.previous_value|default:nothing} -> {event.property_value}"
"""


def test_from_sees_the_mirror_value_before_the_event(harness: MakeHarness) -> None:
    h = harness(LIFECYCLE)
    h.store(stage_of(102, 1000, "lead"))
    h.apply()
    assert h.fired() == []
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.apply()

    assert h.fired() == [("lead-to-sql", 102, "log"), ("became-sql", 102, "log")]
    assert [r.payload["message"] for r in h.runs()] == [
        "lead -> salesqualifiedlead",
        "lead -> salesqualifiedlead",
    ]


def test_from_sees_the_value_before_each_change_inside_one_batch(harness: MakeHarness) -> None:
    h = harness(LIFECYCLE)
    # Out of order in one delivery: the lead (older) must count as the value before.
    h.store(stage_of(103, 2000, "salesqualifiedlead"), stage_of(103, 1000, "lead"))
    h.apply()

    assert h.fired() == [("lead-to-sql", 103, "log"), ("became-sql", 103, "log")]


def test_a_stale_change_arriving_late_fires_nothing(harness: MakeHarness) -> None:
    h = harness(LIFECYCLE)
    h.store(stage_of(102, 1000, "lead"))
    h.apply()
    h.store(stage_of(102, 3000, "customer"))
    h.apply()
    h.store(stage_of(102, 2000, "salesqualifiedlead"))  # happened before "customer"
    h.apply()

    assert h.fired() == []
    assert h.inbox_statuses() == ["done", "done", "done"]


def test_a_change_from_a_never_seen_record_has_no_previous_value(harness: MakeHarness) -> None:
    h = harness(LIFECYCLE)
    h.store(stage_of(104, 1000, "salesqualifiedlead"))
    h.apply()

    assert h.fired() == [("became-sql", 104, "log")]
    assert h.runs()[0].payload["message"] == "nothing -> salesqualifiedlead"


def test_a_deal_stage_named_by_label_fires_for_its_stage_id(harness: MakeHarness) -> None:
    h = harness(DEAL_WON)
    h.store(change("deal", 301, 2000, "dealstage", "closedlost"))
    h.store(change("deal", 302, 2000, "dealstage", "closedwon"))
    h.apply()

    assert h.fired() == [("deal-won", 302, "slack"), ("deal-won", 302, "webhook")]


def test_labels_of_custom_pipelines_come_from_the_pipelines_api(
    harness: MakeHarness, fake: FakeHubSpot
) -> None:
    fake.set_pipelines(
        PORTAL,
        "deals",
        [
            {
                "id": "enterprise",
                "label": "Enterprise",
                "displayOrder": 1,
                "stages": [
                    {"id": "98765", "label": "Signed", "displayOrder": 0, "metadata": {}},
                    {"id": "98766", "label": "Lost", "displayOrder": 1, "metadata": {}},
                ],
            }
        ],
    )
    h = harness(
        """
        [[rules]]
        name = "signed"
        [rules.when]
        object = "deals"
        kind = "property_change"
        property = "dealstage"
        to = "Signed"
        [[rules.do]]
        action = "log"
        """,
        fake=fake,
    )
    assert h.runner.api is not None
    assert refresh_stages(h.engine, h.runner.api, PORTAL) == 2

    h.store(change("deal", 301, 2000, "dealstage", "98766"))
    h.store(change("deal", 302, 2000, "dealstage", "98765"))
    h.apply()

    assert h.fired() == [("signed", 302, "log")]


# --- echo suppression ------------------------------------------------------------------------

ECHO_RULES = """
[[rules]]
name = "sql-task"
[rules.when]
object = "contacts"
kind = "property_change"
property = "lifecyclestage"
to = "salesqualifiedlead"
[[rules.do]]
action = "hubspot_task"
subject = "Follow up with {record.firstname}"
priority = "HIGH"

[[rules]]
name = "anything-created"
[rules.when]
object = "*"
kind = "creation"
[[rules.do]]
action = "log"

[[rules]]
name = "contact-associations"
[rules.when]
object = "contacts"
kind = "association_change"
[[rules.do]]
action = "log"

[[rules]]
name = "task-status"
[rules.when]
object = "*"
kind = "property_change"
property = "hs_task_status"
[[rules.do]]
action = "log"
"""


def task_events(task_id: int, at: int) -> list[dict[str, Any]]:
    """What HubSpot sends when task `task_id` appears on contact 102 (generic subscriptions)."""
    return [
        hs("object.creation", task_id, at, objectTypeId="0-27", changeSource="INTEGRATION"),
        hs(
            "object.associationChange",
            None,
            at,
            fromObjectTypeId="0-1",
            fromObjectId=102,
            toObjectTypeId="0-27",
            toObjectId=task_id,
            associationTypeId=204,
            associationCategory="HUBSPOT_DEFINED",
            associationRemoved=False,
            isPrimaryAssociation=False,
        ),
        hs(
            "object.propertyChange",
            task_id,
            at,
            objectTypeId="0-27",
            propertyName="hs_task_status",
            propertyValue="NOT_STARTED",
            changeSource="INTEGRATION",
        ),
    ]


def test_the_echo_of_a_task_our_action_created_fires_nothing(
    harness: MakeHarness, fake: FakeHubSpot
) -> None:
    h = harness(ECHO_RULES, fake=fake)
    h.store(change("contact", 102, 1000, "firstname", "Charles"))
    h.store(stage_of(102, 2000, "salesqualifiedlead"))
    h.apply()
    assert h.act() == 1

    (task,) = fake.created("tasks")
    assert task.properties["hs_task_subject"] == "Follow up with Charles"
    assert task.properties["hs_task_priority"] == "HIGH"
    (run,) = h.runs()
    assert (run.status, run.result) == ("done", f"created task {task.id}")
    with h.engine.connect() as connection:
        own = connection.execute(
            sa.text("SELECT portal_id, object_type, object_id FROM own_writes")
        )
        assert [tuple(r) for r in own] == [(PORTAL, "tasks", int(task.id))]

    # Someone else's task on the same contact fires the rules: they would match an echo too.
    h.store(*task_events(999_999, 3000))
    h.apply()
    others = [rule for rule, _, _ in h.fired()[1:]]
    assert sorted(others) == ["anything-created", "contact-associations", "task-status"]

    h.store(*task_events(int(task.id), 3000))
    h.apply()

    echoes = [rule for rule, _, _ in h.fired()[1 + len(others) :]]
    assert echoes == []
    assert len(fake.created("tasks")) == 1


def test_a_rule_on_association_changes_runs_on_the_record_the_association_is_from(
    harness: MakeHarness,
) -> None:
    h = harness(
        """
        [[rules]]
        name = "contact-linked"
        [rules.when]
        object = "contacts"
        kind = "association_change"
        [[rules.do]]
        action = "log"
        message = "{record.firstname} linked"
        """
    )
    h.store(change("contact", 102, 1000, "firstname", "Charles"))
    h.store(
        hs(
            "contact.associationChange",
            None,
            2000,
            associationType="CONTACT_TO_COMPANY",
            fromObjectId=102,
            toObjectId=201,
            associationRemoved=False,
            isPrimaryAssociation=False,
        )
    )
    h.apply()

    (run,) = h.runs()
    assert (run.object_type, run.object_id) == ("contacts", 102)
    assert run.payload["message"] == "Charles linked"


def test_changes_hubspot_attributes_to_our_app_fire_only_rules_that_ask_for_them(
    harness: MakeHarness,
) -> None:
    h = harness(
        """
        [[rules]]
        name = "default"
        [rules.when]
        object = "contacts"
        kind = "property_change"
        property = "lifecyclestage"
        [[rules.do]]
        action = "log"

        [[rules]]
        name = "own-too"
        [rules.when]
        object = "contacts"
        kind = "property_change"
        property = "lifecyclestage"
        include_own_writes = true
        [[rules.do]]
        action = "log"
        """
    )
    ours = stage_of(101, 1000, "lead") | {"changeSource": "INTEGRATION", "sourceId": OUR_APP_ID}
    theirs = stage_of(102, 1000, "lead") | {"changeSource": "CRM_UI", "sourceId": "userId:8827"}
    other_app = stage_of(103, 1000, "lead") | {"changeSource": "INTEGRATION", "sourceId": "99"}
    h.store(ours, theirs, other_app)
    h.apply()

    assert sorted(h.fired()) == [
        ("default", 102, "log"),
        ("default", 103, "log"),
        ("own-too", 101, "log"),
        ("own-too", 102, "log"),
        ("own-too", 103, "log"),
    ]
