"""service.rules.language: the TOML format, what each condition matches, rules from mappings.

Offline: no database, no network.
"""

from __future__ import annotations

import textwrap

import pytest

from service.events import Event, Kind
from service.rules.engine import DEFAULT_DEAL_STAGES
from service.rules.language import (
    Action,
    Rule,
    RuleError,
    load_rules_file,
    load_rules_text,
    rule_from_mapping,
)
from service.rules.templates import render
from tests.factories import DO_LOG, WHEN_WON, change, event, hs
from tests.support import EXAMPLE_RULES, line_number


def stage(value: str, *, source: str = "CRM_UI") -> Event:
    """A deal's dealstage changed to `value`."""
    raw = change("deal", 301, 1000, "dealstage", value)
    raw["changeSource"] = source
    return event(raw)


def load(text: str, path: str = "rules.toml") -> list[Rule]:
    """Rules from TOML text (dedented), which must be valid."""
    rules, warnings = load_rules_text(textwrap.dedent(text), path)
    assert warnings == []
    return rules


def one(text: str) -> Rule:
    """The only rule of a valid TOML text."""
    (rule,) = load(text)
    return rule


def rule(when: str, do: str = 'action = "log"') -> Rule:
    """A rule named `r` with this [rules.when] body and one action."""
    return one(f'[[rules]]\nname = "r"\n[rules.when]\n{when}\n[[rules.do]]\n{do}\n')


# --- the format ------------------------------------------------------------------------------


def test_the_example_rules_load_as_four_rules() -> None:
    rules, warnings = load_rules_file(EXAMPLE_RULES)

    assert warnings == []
    assert [r.name for r in rules] == [
        "deal-won",
        "sql-follow-up",
        "enterprise-company",
        "big-deal-note",
    ]
    won, sql, company, note = rules
    assert (won.object_type, won.kind, won.prop, won.equals) == (
        "deals",
        Kind.PROPERTY_CHANGE,
        "dealstage",
        ("Closed Won",),
    )
    assert [a.type for a in won.actions] == ["slack", "webhook"]
    assert won.actions[1].options["secret"] == "env:DEAL_WON_WEBHOOK_SECRET"
    assert (sql.prop, sql.equals, sql.exclude_change_sources) == (
        "lifecyclestage",
        ("salesqualifiedlead",),
        frozenset({"IMPORT"}),
    )
    assert [a.type for a in sql.actions] == ["hubspot_task"]
    assert sql.actions[0].options["priority"] == "HIGH"
    assert (company.object_type, company.prop, company.above) == (
        "companies",
        "numberofemployees",
        1000.0,
    )
    assert (note.prop, note.above, note.actions[0].type) == ("amount", 50000.0, "hubspot_note")
    for r in rules:
        header = line_number(EXAMPLE_RULES.read_text(), 'name = "' + r.name + '"') - 1
        assert r.source == f"{EXAMPLE_RULES}:{header}"
        assert not r.include_own_writes


def test_the_example_deal_won_rule_fires_on_the_stage_id_and_renders_its_message() -> None:
    won = load_rules_file(EXAMPLE_RULES)[0][0]
    labels = DEFAULT_DEAL_STAGES.get
    record = {"dealname": "Big deal", "amount": "1234.5"}

    assert won.matches(stage("closedwon"), "contractsent", labels)
    assert not won.matches(stage("closedlost"), "contractsent", labels)
    assert render(str(won.actions[0].options["text"]), stage("closedwon"), record, None) == (
        ":trophy: Deal won: Big deal for 1,234.50 (deal 301)"
    )


def test_object_types_are_normalised_whichever_name_the_rule_uses() -> None:
    for name in ("deal", "deals", "0-3"):
        assert rule(f'object = "{name}"\nkind = "creation"').object_type == "deals"
    assert rule('object = "2-12345"\nkind = "creation"').object_type == "2-12345"
    assert rule('object = "*"\nkind = "creation"').object_type == "*"


def test_a_stage_label_can_be_resolved_to_its_id_when_the_rules_load() -> None:
    ids = {label: stage_id for stage_id, label in DEFAULT_DEAL_STAGES.items()}
    text = textwrap.dedent(
        """\
        [[rules]]
        name = "won"
        [rules.when]
        object = "deals"
        kind = "property_change"
        property = "dealstage"
        to = "Closed Won"
        [[rules.do]]
        action = "log"
        """
    )

    (won,), _ = load_rules_text(text, stage_labels=ids.get)

    assert won.equals == ("closedwon",)
    assert won.matches(stage("closedwon"), None)


# --- conditions ------------------------------------------------------------------------------


def test_equals_to_and_in_name_the_new_value() -> None:
    base = 'object = "deals"\nkind = "property_change"\nproperty = "dealstage"\n'
    equals = rule(base + 'equals = "closedwon"')
    to = rule(base + 'to = "closedwon"')
    any_of = rule(base + 'in = ["closedwon", "closedlost"]')

    for r in (equals, to, any_of):
        assert r.matches(stage("closedwon"), None)
        assert not r.matches(stage("contractsent"), None)
    assert any_of.matches(stage("closedlost"), None)
    assert not equals.matches(stage("closedlost"), None)


def test_from_needs_the_previous_value_and_an_actual_change() -> None:
    r = rule(
        'object = "contacts"\nkind = "property_change"\nproperty = "lifecyclestage"\n'
        'from = "lead"\nto = "salesqualifiedlead"'
    )
    sql = event(change("contact", 1, 1000, "lifecyclestage", "salesqualifiedlead"))

    assert r.watches_previous
    assert r.matches(sql, "lead")
    assert not r.matches(sql, "subscriber")
    assert not r.matches(sql, None)  # nothing known before: not "from lead"
    assert not r.matches(sql, "salesqualifiedlead")


def test_from_alone_fires_when_the_value_leaves_it() -> None:
    r = rule(
        'object = "contacts"\nkind = "property_change"\nproperty = "lifecyclestage"\n'
        'from = ["lead", "subscriber"]'
    )

    assert r.matches(event(change("contact", 1, 1000, "lifecyclestage", "customer")), "lead")
    assert not r.matches(event(change("contact", 1, 1000, "lifecyclestage", "lead")), "lead")


def test_above_and_below_compare_numbers_and_ignore_what_is_not_a_number() -> None:
    r = rule(
        'object = "deals"\nkind = "property_change"\nproperty = "amount"\n'
        "above = 1000\nbelow = 5000.5"
    )

    def amount(value: str) -> Event:
        return event(change("deal", 301, 1000, "amount", value))

    assert r.matches(amount("1000.01"), None)
    assert r.matches(amount("5000"), None)
    for value in ("1000", "5000.5", "99999", "", "lots", "nan", "inf", "-inf"):
        assert not r.matches(amount(value), None), value


def test_exclude_change_sources_skips_those_sources_only() -> None:
    r = rule(
        'object = "contacts"\nkind = "property_change"\nproperty = "lifecyclestage"\n'
        'to = "salesqualifiedlead"\nexclude_change_sources = ["IMPORT", "INTEGRATION"]'
    )

    def sql(source: str) -> Event:
        raw = change("contact", 1, 1000, "lifecyclestage", "salesqualifiedlead")
        raw["changeSource"] = source
        return event(raw)

    assert r.matches(sql("CRM_UI"), None)
    assert r.matches(sql("WORKFLOWS"), None)
    assert not r.matches(sql("IMPORT"), None)
    assert not r.matches(sql("INTEGRATION"), None)


def test_kind_object_and_property_must_all_match() -> None:
    r = rule('object = "deals"\nkind = "property_change"\nproperty = "dealstage"')
    anything_created = rule('object = "*"\nkind = "creation"')

    assert r.matches(stage("closedwon"), None)
    assert not r.matches(event(change("deal", 301, 1000, "amount", "5")), None)
    assert not r.matches(event(change("contact", 1, 1000, "dealstage", "closedwon")), None)
    assert not r.matches(event(hs("deal.creation", 301, 1000)), None)
    assert anything_created.matches(event(hs("deal.creation", 301, 1000)), None)
    assert anything_created.matches(
        event(hs("object.creation", 9, 1000, objectTypeId="0-27")), None
    )
    assert not anything_created.matches(event(hs("deal.deletion", 301, 1000)), None)


def test_deal_stages_may_be_named_by_label_or_by_id() -> None:
    base = 'object = "deals"\nkind = "property_change"\nproperty = "dealstage"\n'
    by_label = rule(base + 'to = "Closed Won"')
    by_id = rule(base + 'to = "closedwon"')
    custom = rule(base + 'from = "Signed"\nto = "closed won"')
    labels = {**DEFAULT_DEAL_STAGES, "98765": "Signed"}.get

    assert by_label.matches(stage("closedwon"), None, labels)
    assert not by_label.matches(stage("closedwon"), None)  # without labels, only ids match
    assert not by_label.matches(stage("closedlost"), None, labels)
    assert by_id.matches(stage("closedwon"), None, labels)
    assert by_id.matches(stage("closedwon"), None)
    # Labels compare without regard to case; `from` resolves through the same function.
    assert custom.matches(stage("closedwon"), "98765", labels)
    assert not custom.matches(stage("closedwon"), "contractsent", labels)


# --- rules from mappings (what code rules are made of) ---------------------------------------


def test_rule_from_mapping_validates_like_the_file() -> None:
    r = rule_from_mapping({"name": "won", "when": WHEN_WON, "do": DO_LOG}, "my_rules.py:12")

    assert (r.source, r.object_type, r.equals) == ("my_rules.py:12", "deals", ("closedwon",))
    assert r.actions == (Action("log", DO_LOG[0], 0),)
    with pytest.raises(RuleError, match="unknown kind"):
        rule_from_mapping({"name": "x", "when": {**WHEN_WON, "kind": "won"}, "do": DO_LOG}, "f")
