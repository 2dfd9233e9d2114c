"""`hubspot-webhooks subscriptions plan|apply|list` against the fake HubSpot: the file's problems
with their lines, the plan's diff and exit codes, apply creating and deleting until a second
apply changes nothing, and the legacy v3 list that never shows the developer key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from service.hubspot import subscriptions as journal
from service.ops.subscriptions_file import SubscriptionsFileError, load_file, load_text
from tests.fake_hubspot import FakeHubSpot
from tests.fake_subscriptions import DEVELOPER_API_KEY
from tests.support import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "subscriptions.toml"
GOOD = """
portals = [62515]

[[subscription]]
object = "contacts"
actions = ["create", "update", "delete"]
properties = ["email", "lifecyclestage"]
[[subscription.filter]]
property = "lifecyclestage"
operator = "EQ"
value = "customer"

[[subscription]]
type = "privacy_deletion"
object = "contact"
actions = ["GDPR_DELETE"]
portals = [62515, 77001]
"""


def env_for(fake: FakeHubSpot, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The app's client id and secret and the fake as HubSpot."""
    return {
        "HUBSPOT_CLIENT_ID": fake.client_id,
        "HUBSPOT_CLIENT_SECRET": fake.client_secret,
        "HUBSPOT_API_BASE_URL": fake.url,
        "DATA_DIR": str(tmp_path / "data"),
        **extra,
    }


def write(tmp_path: Path, text: str) -> Path:
    """A subscriptions file holding `text`."""
    path = tmp_path / "subscriptions.toml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(text: str) -> list[str]:
    """The problems `text` has (it must have some)."""
    with pytest.raises(SubscriptionsFileError) as invalid:
        load_text(textwrap.dedent(text), "subs.toml")
    return invalid.value.problems


def state(fake: FakeHubSpot) -> list[tuple[int, str, int | None]]:
    """The fake's subscriptions: (id, type, portal)."""
    return sorted(
        (s["id"], s["subscriptionType"], s.get("portalId")) for s in fake.subscriptions.all()
    )


def test_a_good_file_becomes_one_subscription_per_portal() -> None:
    declared, warnings = load_text(GOOD, "subs.toml")

    assert warnings == []
    assert [(d.subscription.type, d.subscription.portal_id, d.line) for d in declared] == [
        ("OBJECT", 62515, 4),
        ("GDPR_PRIVACY_DELETION", 62515, 13),
        ("GDPR_PRIVACY_DELETION", 77001, 13),
    ]
    contacts = declared[0].subscription
    assert contacts.object_type_id == "0-1"
    assert contacts.actions == ("CREATE", "UPDATE", "DELETE")
    assert [c.text() for c in contacts.filters[0]] == ["lifecyclestage EQ customer"]


def test_every_problem_is_named_with_its_line_and_fix() -> None:
    text = """\
        portals = [62515]
        colour = "blue"
        [[subscription]]
        object = "contacts"
        actions = ["create", "explode"]
        propertys = ["email"]
        [[subscription.filter]]
        property = "email"
        operator = "LIKE"
        value = "a"
        [[subscription]]
        object = "widgets"
        actions = ["delete"]
        [[subscription]]
        object = "deals"
        actions = ["update"]
        properties = ["amount"]
        [[subscription.filter]]
        property = "amount"
        operator = "IN"
        value = "5"
    """
    found = problems(text)

    assert found == [
        "subs.toml:2: unknown top-level key 'colour' (fix: the file holds `portals = [...]` and"
        " [[subscription]] tables)",
        "subs.toml:6: unknown key 'propertys' in an object subscription (fix: an object"
        " subscription takes actions, filter, object, object_ids, portals, properties)",
        "subs.toml:5: unknown action 'explode' (fix: use some of "
        + ", ".join(a.lower() for a in journal.ACTIONS)
        + ")",
        "subs.toml:9: unknown operator 'LIKE' (fix: use one of "
        + ", ".join(journal.OPERATORS)
        + ")",
        "subs.toml:12: unknown object 'widgets' (fix: object = \"contacts\" (or companies, deals,"
        ' tickets, products, line_items, "2-123"))',
        'subs.toml:18: IN takes values (fix: values = ["a", "b"])',
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[subscription]]\nobject = "contacts"\nactions = ["create"]\n',
            "subs.toml:1: this object subscription names no portal (fix: add portals = [12345678]",
        ),
        (
            'portals = [1]\n[[subscription]]\ntype = "webhook"\n',
            "subs.toml:3: unknown subscription type 'webhook'",
        ),
        (
            'portals = [1]\n[[subscription]]\ntype = "list_membership"\nactions = ["added_to_list"]'
            "\n",
            "subs.toml:2: a list_membership subscription needs lists",
        ),
        (
            'portals = [1]\n[[subscription]]\nobject = "deals"\nactions = ["create"]\n'
            '[[subscription]]\nobject = "0-3"\nactions = ["create"]\n',
            "subs.toml:5: the same subscription is declared twice (first at line 2)",
        ),
        ('portals = "62515"\n', "subs.toml:1: portals must be a list of HubSpot account ids"),
        ("[[subscription]\n", "subs.toml:1: not valid TOML"),
        (
            '[[subscription]]\ntype = "app_lifecycle"\nportals = [1]\n',
            "subs.toml:1: an app_lifecycle subscription needs event_type",
        ),
    ],
)
def test_each_mistake_is_refused_where_it_is(text: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(text)), problems(text)


def test_an_update_without_properties_is_a_warning() -> None:
    _, warnings = load_text(
        'portals = [1]\n[[subscription]]\nobject = "deals"\nactions = ["update"]\n', "s.toml"
    )

    assert warnings == [
        "s.toml:2: warning: subscribes to updates of no property (add properties = [...])"
    ]


def test_plan_apply_then_a_second_apply_changes_nothing(fake: FakeHubSpot, tmp_path: Path) -> None:
    path, env = write(tmp_path, GOOD), env_for(fake, tmp_path)

    plan = run_cli("subscriptions", "plan", str(path), env=env)
    assert plan.returncode == 2, plan.stderr
    assert plan.stdout.splitlines() == [
        "+ create OBJECT contacts (0-1) portal 62515: create, update, delete; properties email,"
        " lifecyclestage; filter lifecyclestage EQ customer",
        "+ create GDPR_PRIVACY_DELETION contacts (0-1) portal 62515: gdpr_delete",
        "+ create GDPR_PRIVACY_DELETION contacts (0-1) portal 77001: gdpr_delete",
        "= 0 unchanged",
        "Plan: 3 to create, 0 to delete.",
    ]
    assert fake.subscriptions.all() == []  # plan changes nothing

    applied = run_cli("subscriptions", "apply", str(path), "--yes", env=env)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[-1] == "Apply complete: 3 created, 0 deleted, 0 unchanged."
    after_first = state(fake)
    assert len(after_first) == 3
    contacts = next(s for s in fake.subscriptions.all() if s["subscriptionType"] == "OBJECT")
    assert len(fake.subscriptions.filters_of(contacts["id"])) == 1

    again = run_cli("subscriptions", "apply", str(path), "--yes", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        "= 3 unchanged",
        "No changes: HubSpot's subscriptions match the file.",
    ]
    assert state(fake) == after_first
    assert run_cli("subscriptions", "plan", str(path), env=env).returncode == 0


def test_apply_deletes_what_the_file_no_longer_declares(fake: FakeHubSpot, tmp_path: Path) -> None:
    env = env_for(fake, tmp_path)
    run_cli("subscriptions", "apply", str(write(tmp_path, GOOD)), "--yes", env=env)
    fewer = GOOD.split("[[subscription]]\ntype", maxsplit=1)[0]
    (contacts,) = [s["id"] for s in fake.subscriptions.all() if s["subscriptionType"] == "OBJECT"]

    plan = run_cli("subscriptions", "plan", str(write(tmp_path, fewer)), env=env)
    applied = run_cli("subscriptions", "apply", str(write(tmp_path, fewer)), "--yes", env=env)

    assert plan.returncode == 2
    assert sum(line.startswith("- delete #") for line in plan.stdout.splitlines()) == 2
    assert "Plan: 0 to create, 2 to delete." in plan.stdout
    assert applied.returncode == 0, applied.stderr
    assert [s[0] for s in state(fake)] == [contacts]


def test_a_changed_subscription_is_created_before_the_old_one_is_deleted(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    env = env_for(fake, tmp_path)
    run_cli("subscriptions", "apply", str(write(tmp_path, GOOD)), "--yes", env=env)
    changed = GOOD.replace('"email", "lifecyclestage"', '"email", "lifecyclestage", "phone"')

    applied = run_cli("subscriptions", "apply", str(write(tmp_path, changed)), "--yes", env=env)

    lines = applied.stdout.splitlines()
    created = next(i for i, line in enumerate(lines) if line.startswith("created #"))
    deleted = next(i for i, line in enumerate(lines) if line.startswith("deleted #"))
    assert created < deleted
    (contacts,) = [s for s in fake.subscriptions.all() if s["subscriptionType"] == "OBJECT"]
    assert contacts["properties"] == ["email", "lifecyclestage", "phone"]
    assert run_cli("subscriptions", "plan", str(write(tmp_path, changed)), env=env).returncode == 0


def test_an_upsert_that_updated_in_place_is_not_deleted_afterwards(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    fake.subscriptions.upsert_on = ("portalId", "objectTypeId")
    env = env_for(fake, tmp_path)
    run_cli("subscriptions", "apply", str(write(tmp_path, GOOD)), "--yes", env=env)
    changed = GOOD.replace('actions = ["create", "update", "delete"]', 'actions = ["create"]')

    applied = run_cli("subscriptions", "apply", str(write(tmp_path, changed)), "--yes", env=env)

    assert applied.returncode == 0, applied.stderr
    assert any(line.endswith("HubSpot updated it in place") for line in applied.stdout.splitlines())
    (contacts,) = [s for s in fake.subscriptions.all() if s["subscriptionType"] == "OBJECT"]
    assert contacts["actions"] == ["CREATE"]
    assert run_cli("subscriptions", "plan", str(write(tmp_path, changed)), env=env).returncode == 0


def test_apply_without_a_terminal_asks_for_yes_and_changes_nothing(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    result = run_cli(
        "subscriptions", "apply", str(write(tmp_path, GOOD)), env=env_for(fake, tmp_path)
    )

    assert result.returncode == 1
    assert "pass --yes to apply" in result.stderr
    assert fake.subscriptions.all() == []


def test_an_invalid_file_is_refused_before_any_call(fake: FakeHubSpot, tmp_path: Path) -> None:
    path = write(tmp_path, 'portals = [1]\n[[subscription]]\nobject = "deals"\nactions = ["x"]\n')

    result = run_cli("subscriptions", "plan", str(path), env=env_for(fake, tmp_path))

    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[0]
        == "hubspot-webhooks subscriptions: invalid subscriptions file:"
    )
    assert f"{path}:4: unknown action 'x'" in result.stderr
    assert fake.calls == []


def test_without_client_credentials_one_line_names_them(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)

    result = run_cli("subscriptions", "plan", str(path), env={"DATA_DIR": str(tmp_path)})

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "HUBSPOT_CLIENT_ID and HUBSPOT_CLIENT_SECRET must be set" in result.stderr


def test_the_file_defaults_to_subscriptions_file(fake: FakeHubSpot, tmp_path: Path) -> None:
    env = env_for(fake, tmp_path, SUBSCRIPTIONS_FILE=str(write(tmp_path, GOOD)))

    assert run_cli("subscriptions", "plan", env=env).returncode == 2
    assert run_cli("subscriptions", "plan", env=env_for(fake, tmp_path)).returncode == 1


def test_list_prints_a_table_and_json_lines(fake: FakeHubSpot, tmp_path: Path) -> None:
    env = env_for(fake, tmp_path)
    run_cli("subscriptions", "apply", str(write(tmp_path, GOOD)), "--yes", env=env)

    table = run_cli("subscriptions", "list", env=env)
    lines = run_cli("subscriptions", "list", "--json", env=env)

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "TYPE", "PORTAL", "OBJECT", "ACTIONS", "PROPERTIES", "FILTERS"]
    assert len(rows) == 3
    assert "lifecyclestage EQ customer" in table.stdout
    assert table.stderr == "3 journal subscriptions\n"
    parsed = [json.loads(line) for line in lines.stdout.splitlines()]
    assert {p["type"] for p in parsed} == {"OBJECT", "GDPR_PRIVACY_DELETION"}
    assert next(p for p in parsed if p["type"] == "OBJECT")["properties"] == [
        "email",
        "lifecyclestage",
    ]


def test_list_legacy_reads_v3_subscriptions_and_never_shows_the_key(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    fake.subscriptions.add_legacy("deal.propertyChange", property_name="dealstage")
    env = {
        "DATA_DIR": str(tmp_path),
        "HUBSPOT_API_BASE_URL": fake.url,
        "HUBSPOT_APP_ID": str(fake.app_id),
        "HUBSPOT_DEVELOPER_API_KEY": DEVELOPER_API_KEY,
    }

    table = run_cli("subscriptions", "list", "--legacy", env=env)
    lines = run_cli("subscriptions", "list", "--legacy", "--json", env=env)
    wrong = run_cli(
        "subscriptions",
        "list",
        "--legacy",
        env={**env, "HUBSPOT_DEVELOPER_API_KEY": "not-the-key-123"},
    )

    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1].split()[1:] == ["deal.propertyChange", "dealstage", "True"]
    assert json.loads(lines.stdout)["event_type"] == "deal.propertyChange"
    assert wrong.returncode == 1
    assert "HubSpot answered 401" in wrong.stderr
    for result in (table, lines, wrong):
        assert DEVELOPER_API_KEY not in result.stdout + result.stderr
        assert "not-the-key-123" not in result.stdout + result.stderr


def test_list_legacy_without_the_key_names_what_to_set(tmp_path: Path) -> None:
    result = run_cli("subscriptions", "list", "--legacy", env={"DATA_DIR": str(tmp_path)})

    assert result.returncode == 1
    assert "HUBSPOT_APP_ID and HUBSPOT_DEVELOPER_API_KEY" in result.stderr


def test_the_example_file_parses_and_plans_cleanly(fake: FakeHubSpot, tmp_path: Path) -> None:
    declared, warnings = load_file(EXAMPLE)
    assert warnings == []
    assert {d.subscription.type for d in declared} == {
        "OBJECT",
        "ASSOCIATION",
        "GDPR_PRIVACY_DELETION",
    }
    env = env_for(fake, tmp_path)

    first = run_cli("subscriptions", "apply", str(EXAMPLE), "--yes", env=env)
    second = run_cli("subscriptions", "plan", str(EXAMPLE), env=env)

    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert second.returncode == 0, second.stdout
    assert f"= {len(declared)} unchanged" in second.stdout


def test_a_subscription_of_a_type_the_file_cannot_declare_is_left_alone(
    fake: FakeHubSpot, tmp_path: Path
) -> None:
    # An EVENT subscription (the response's sixth type) cannot be declared in the file.
    made = fake.subscriptions.seed({"subscriptionType": "EVENT", "objectTypeId": "0-1"})

    plan = run_cli("subscriptions", "plan", str(write(tmp_path, GOOD)), env=env_for(fake, tmp_path))

    assert f"~ leave #{made} EVENT: a type the file cannot declare" in plan.stdout
    assert "- delete" not in plan.stdout
