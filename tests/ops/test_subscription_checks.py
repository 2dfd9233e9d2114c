"""Coverage warnings: `rules check` (offline, from a subscriptions file or a project app's
webhooks-hsmeta.json) and `doctor` (the journal subscriptions or a legacy app's v3 list) name each
event a rule or the mirror needs that nothing subscribes to, with the fix, and keep exit codes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from service.events import Kind
from service.hubspot.subscriptions import LegacySubscription
from service.ops import doctor
from service.ops.subscription_checks import (
    Coverage,
    from_legacy,
    mirror_warnings,
    rule_warnings,
)
from service.rules.language import load_rules_text
from tests.fake_hubspot import FakeHubSpot
from tests.fake_subscriptions import DEVELOPER_API_KEY
from tests.support import EXAMPLE_RULES, ROOT, run_cli

HSMETA = ROOT / "examples/hubspot-project/src/app/webhooks/webhooks-hsmeta.json"
RULES = """\
[[rules]]
name = "won-deals"
[rules.when]
object = "deals"
kind = "property_change"
property = "dealstage"
to = "closedwon"
[[rules.do]]
action = "log"
message = "won"
"""
# Deals without dealstage changes; contacts without deletions or privacy deletions.
SUBSCRIPTIONS = """\
portals = [62515]
[[subscription]]
object = "deals"
actions = ["create", "update", "delete"]
properties = ["dealname", "pipeline", "amount", "closedate", "dealtype", "hubspot_owner_id"]
[[subscription]]
object = "contacts"
actions = ["create"]
"""
DEALSTAGE = (
    "rule 'won-deals' needs deal property changes of dealstage; nothing subscribes to them"
    ' (add "dealstage" to the deals subscription\'s properties)'
)


def files(tmp_path: Path) -> tuple[Path, Path]:
    """The rules file and the subscriptions file."""
    rules, subscriptions = tmp_path / "rules.toml", tmp_path / "subscriptions.toml"
    rules.write_text(RULES)
    subscriptions.write_text(SUBSCRIPTIONS)
    return rules, subscriptions


def test_rules_check_warns_about_a_rule_and_the_mirror_and_still_passes(tmp_path: Path) -> None:
    rules, subscriptions = files(tmp_path)

    result = run_cli("rules", "check", str(rules), "--subscriptions", str(subscriptions), env={})

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{rules}: 1 rules, 1 actions: ok\n"
    assert result.stderr.splitlines() == [
        f"{rules}:1: warning: {DEALSTAGE}",
        f"{subscriptions}: warning: the mirror keeps contacts but nothing subscribes to contact"
        ' deletions: deleted contacts will stay in the mirror (add "delete" to the contacts'
        " subscription's actions)",
        f"{subscriptions}: warning: the mirror keeps contacts' email, firstname, lastname, phone,"
        " company, jobtitle, lifecyclestage, hs_lead_status, hubspot_owner_id but nothing"
        ' subscribes to their changes: they go stale until a reconcile (add "email",'
        ' "firstname", "lastname", "phone", "company", "jobtitle", "lifecyclestage",'
        ' "hs_lead_status", "hubspot_owner_id" to the contacts subscription\'s properties)',
        f"{subscriptions}: warning: the mirror keeps contacts but nothing subscribes to contact"
        " privacy deletions: an erased contact's personal data stays in the mirror (add a"
        " privacy_deletion subscription for contacts)",
        f"{subscriptions}: warning: the mirror keeps deals' dealstage but nothing subscribes to"
        ' their changes: they go stale until a reconcile (add "dealstage" to the deals'
        " subscription's properties)",
    ]


def test_rules_check_reads_subscriptions_file_and_mirror_properties(tmp_path: Path) -> None:
    rules, subscriptions = files(tmp_path)
    env = {
        "SUBSCRIPTIONS_FILE": str(subscriptions),
        "MIRROR_PROPERTIES": "contacts=email;deals=dealname",
    }

    result = run_cli("rules", "check", str(rules), env=env)

    assert result.returncode == 0, result.stderr
    assert f"{rules}:1: warning: {DEALSTAGE}" in result.stderr
    assert "contacts' email but nothing subscribes" in result.stderr
    assert "the mirror keeps deals'" not in result.stderr  # MIRROR_PROPERTIES: only dealname


def test_without_a_subscriptions_file_rules_check_says_nothing_of_coverage(
    tmp_path: Path,
) -> None:
    rules, _ = files(tmp_path)

    result = run_cli("rules", "check", str(rules), env={})

    assert result.returncode == 0
    assert result.stderr == ""


def test_the_project_apps_hsmeta_covers_the_example_rules_and_the_mirror() -> None:
    result = run_cli("rules", "check", str(EXAMPLE_RULES), "--subscriptions", str(HSMETA), env={})

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_an_hsmeta_without_dealstage_gets_a_push_fix(tmp_path: Path) -> None:
    rules, _ = files(tmp_path)
    hsmeta = tmp_path / "webhooks-hsmeta.json"
    hsmeta.write_text(
        HSMETA.read_text().replace('"propertyName": "dealstage"', '"propertyName": "x"')
    )

    result = run_cli("rules", "check", str(rules), "--subscriptions", str(hsmeta), env={})

    assert result.returncode == 0
    assert (
        'nothing subscribes to them (subscribe to deal.propertyChange for "dealstage")'
        in result.stderr
    )


def test_an_invalid_subscriptions_file_is_a_warning_in_rules_check(tmp_path: Path) -> None:
    rules, subscriptions = files(tmp_path)
    subscriptions.write_text('[[subscription]]\nobject = "deals"\nactions = ["explode"]\n')

    result = run_cli("rules", "check", str(rules), "--subscriptions", str(subscriptions), env={})

    assert result.returncode == 0
    assert f"{subscriptions}: warning: cannot check subscription coverage:" in result.stderr


def test_legacy_subscriptions_cover_by_event_type_and_paused_ones_do_not() -> None:
    rules, _ = load_rules_text(RULES, "r.toml")
    legacy = [
        LegacySubscription("1", "deal.propertyChange", True, property_name="dealstage"),
        LegacySubscription("2", "object.deletion", False, object_type_id="0-3"),
        LegacySubscription("3", "object.creation", True, object_type_id="2-99"),
    ]

    coverage = Coverage(from_legacy(legacy), journal=False)

    assert coverage.events == {
        ("deals", Kind.PROPERTY_CHANGE, "dealstage"),
        ("2-99", Kind.CREATION, None),
    }
    assert rule_warnings(rules, coverage) == []
    warnings = mirror_warnings(coverage)
    assert warnings[0] == (
        "the mirror keeps 2-99 but nothing subscribes to 2-99 object deletions: deleted 2-99 will"
        " stay in the mirror (subscribe to object.deletion)"
    )
    assert "(subscribe to deal.deletion)" in warnings[1]


def doctor_env(
    database_url: str, fake: FakeHubSpot, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """A deployment whose rules need dealstage changes."""
    rules, _ = files(tmp_path)
    return {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp_path / "data"),
        "HUBSPOT_CLIENT_SECRET": fake.client_secret,
        "HUBSPOT_API_BASE_URL": fake.url,
        "RULES_FILE": str(rules),
        **extra,
    }


def subscription_checks(env: dict[str, str]) -> list[str]:
    """doctor's subscriptions lines."""
    return [c.line() for c in doctor.run_checks(env) if c.name == "subscriptions"]


def test_doctor_reads_the_legacy_v3_list_and_warns(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    fake.subscriptions.add_legacy("deal.creation")
    env = doctor_env(
        clean_db,
        fake,
        tmp_path,
        HUBSPOT_APP_ID=str(fake.app_id),
        HUBSPOT_DEVELOPER_API_KEY=DEVELOPER_API_KEY,
    )

    (line,) = subscription_checks(env)

    assert line.startswith(
        f"! subscriptions: 3 gap(s) in the v3 subscriptions of app {fake.app_id}:"
    )
    assert 'subscribe to deal.propertyChange for "dealstage"' in line
    assert DEVELOPER_API_KEY not in line


def test_doctor_reads_the_journal_subscriptions_when_the_journal_is_a_source(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    _, subscriptions = files(tmp_path)
    env = doctor_env(
        clean_db,
        fake,
        tmp_path,
        HUBSPOT_CLIENT_ID=fake.client_id,
        HUBSPOT_EVENT_SOURCE="journal",
    )
    applied = run_cli("subscriptions", "apply", str(subscriptions), "--yes", env=env)
    assert applied.returncode == 0, applied.stderr

    (line,) = subscription_checks(env)

    assert line.startswith("! subscriptions: 5 gap(s) in the journal subscriptions:")
    assert DEALSTAGE in line


def test_doctor_falls_back_to_subscriptions_file_and_says_ok_when_covered(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    example = ROOT / "examples" / "subscriptions.toml"
    env = doctor_env(clean_db, fake, tmp_path, SUBSCRIPTIONS_FILE=str(example))

    assert subscription_checks(env) == [
        f"✓ subscriptions: {example} cover the rules and the mirror"
    ]


def test_doctor_has_no_subscriptions_line_with_nothing_to_read(
    clean_db: str, fake: FakeHubSpot, tmp_path: Path
) -> None:
    assert subscription_checks(doctor_env(clean_db, fake, tmp_path)) == []


def test_a_rule_on_any_object_is_covered_by_any_object(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        [[rules]]
        name = "any-deletion"
        [rules.when]
        object = "*"
        kind = "deletion"
        [[rules.do]]
        action = "log"
        message = "gone"
        """
    )
    rules, _ = load_rules_text(text, "r.toml")

    assert rule_warnings(rules, Coverage({("deals", Kind.DELETION, None)})) == []
    ((_, warning),) = rule_warnings(rules, Coverage({("deals", Kind.CREATION, None)}))
    assert warning.startswith("rule 'any-deletion' needs any object's deletions;")
