"""Rules, offline: the TOML format, conditions, code rules, validation with lines, templates.

The only tests here that touch a database URL are the start-up refusals, and those processes
exit before they connect.
"""

from __future__ import annotations

import inspect
import os
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from service import cli
from service.events import Event, Kind, normalise
from service.rules.engine import DEFAULT_DEAL_STAGES, load_engine
from service.rules.language import (
    Action,
    Rule,
    RuleError,
    load_rules_file,
    load_rules_text,
    rule_from_mapping,
)
from service.rules.registry import DuplicateHandler, Registry
from service.rules.templates import render
from service.settings import Settings
from tests.conftest import CLIENT_SECRET, run_cli
from tests.test_mirror import change, hs

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rules.toml"
INVALID = Path(__file__).resolve().parent / "payloads" / "rules_invalid.toml"
THIS_FILE = __file__

WHEN_WON: dict[str, Any] = {
    "object": "deals",
    "kind": "property_change",
    "property": "dealstage",
    "to": "closedwon",
}
DO_LOG: list[dict[str, Any]] = [{"action": "log", "message": "won {record.dealname}"}]


def event(raw: Mapping[str, Any], inbox_id: int = 1) -> Event:
    """A HubSpot event as the worker sees it."""
    return normalise(inbox_id, raw)


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


def problems(text: str, path: str = "rules.toml") -> list[str]:
    """The problems an invalid TOML text is refused with."""
    with pytest.raises(RuleError) as caught:
        load_rules_text(text, path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def line_number(text: str, line: str, occurrence: int = 1) -> int:
    """The 1-based number of the `occurrence`th line of `text` that is exactly `line`."""
    found = [n for n, text_line in enumerate(text.splitlines(), 1) if text_line.strip() == line]
    return found[occurrence - 1]


def invalid_lines() -> tuple[int, int, int]:
    """The lines of the three mistakes in payloads/rules_invalid.toml."""
    text = INVALID.read_text()
    return (
        line_number(text, 'text = "Won: {record.dealname} {event.nope}"'),
        line_number(text, 'object = "leads"'),
        line_number(text, 'action = "email"'),
    )


def next_line() -> int:
    """The number of the caller's next source line."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


# --- the format ------------------------------------------------------------------------------


def test_the_example_rules_load_as_four_rules() -> None:
    rules, warnings = load_rules_file(EXAMPLE)

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
        header = line_number(EXAMPLE.read_text(), 'name = "' + r.name + '"') - 1
        assert r.source == f"{EXAMPLE}:{header}"
        assert not r.include_own_writes


def test_the_example_deal_won_rule_fires_on_the_stage_id_and_renders_its_message() -> None:
    won = load_rules_file(EXAMPLE)[0][0]
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


# --- rules in code ---------------------------------------------------------------------------


def test_a_code_rule_becomes_the_same_rule_as_its_toml_twin() -> None:
    registry = Registry()
    calls: list[Event] = []

    @registry.rule(
        "vip-deal",
        when={"object": "deal", "kind": "property_change", "property": "amount", "above": 50000},
        do=[{"action": "slack", "text": "{record.dealname} is {event.property_value|money}"}],
    )
    def in_emea(e: Event) -> bool:
        calls.append(e)
        return e.portal_id == 62515

    from_toml = one(
        """
        [[rules]]
        name = "vip-deal"
        [rules.when]
        object = "deals"
        kind = "property_change"
        property = "amount"
        above = 50000
        [[rules.do]]
        action = "slack"
        text = "{record.dealname} is {event.property_value|money}"
        """
    )
    (from_code,) = registry.rules

    assert isinstance(from_code, Rule)
    assert from_code.source.startswith(f"{THIS_FILE}:")
    assert from_code.predicate is in_emea
    for name in ("name", "object_type", "kind", "prop", "equals", "from_values", "above"):
        assert getattr(from_code, name) == getattr(from_toml, name), name
    assert [(a.type, dict(a.options)) for a in from_code.actions] == [
        (a.type, dict(a.options)) for a in from_toml.actions
    ]
    big = event(change("deal", 301, 1000, "amount", "75000"))
    assert from_code.matches(big, None)
    assert calls == [big]
    assert not from_code.matches(event(change("deal", 301, 1000, "amount", "10")), None)
    assert len(calls) == 1  # the predicate runs only once the declared conditions hold


def test_a_code_rule_name_declared_twice_names_both_places() -> None:
    registry = Registry()
    first = next_line()
    registry.rule("dup", when=WHEN_WON, do=DO_LOG)(lambda e: True)
    second = next_line()
    declare = registry.rule("dup", when=WHEN_WON, do=DO_LOG)
    with pytest.raises(DuplicateHandler) as caught:
        declare(lambda e: True)

    message = str(caught.value)
    assert "'dup'" in message
    assert f"{THIS_FILE}:{first}" in message
    assert f"{THIS_FILE}:{second}" in message
    assert len(registry.rules) == 1


def test_an_invalid_code_rule_is_refused_where_it_is_declared() -> None:
    registry = Registry()
    line = next_line()
    declare = registry.rule("bad", when={**WHEN_WON, "colour": "red"}, do=[{"action": "email"}])
    with pytest.raises(RuleError) as caught:
        declare(lambda e: True)

    assert any("unknown condition 'colour'" in p for p in caught.value.problems)
    assert any("unknown action 'email'" in p for p in caught.value.problems)
    assert all(p.startswith(f"{THIS_FILE}:{line}") for p in caught.value.problems)
    assert all("(fix: " in p for p in caught.value.problems)
    assert registry.rules == []


def test_rule_from_mapping_validates_like_the_file() -> None:
    r = rule_from_mapping({"name": "won", "when": WHEN_WON, "do": DO_LOG}, "my_rules.py:12")

    assert (r.source, r.object_type, r.equals) == ("my_rules.py:12", "deals", ("closedwon",))
    assert r.actions == (Action("log", DO_LOG[0], 0),)
    with pytest.raises(RuleError, match="unknown kind"):
        rule_from_mapping({"name": "x", "when": {**WHEN_WON, "kind": "won"}, "do": DO_LOG}, "f")


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


# --- validation ------------------------------------------------------------------------------

_WHEN = """\
[[rules]]
name = "r"
[rules.when]
object = "deals"
kind = "property_change"
property = "dealstage"
{when}
[[rules.do]]
action = "log"
"""
_DO = """\
[[rules]]
name = "r"
[rules.when]
object = "deals"
kind = "creation"

[[rules.do]]
{do}
"""

# (rules text, the exact line the problem is on, what the message says)
INVALID_CASES: list[tuple[str, str, str]] = [
    (
        '[[rules]]\nname = "r"\ncolour = "red"\n[rules.when]\nobject = "deals"\nkind = "creation"\n'
        '[[rules.do]]\naction = "log"\n',
        'colour = "red"',
        "unknown rule field 'colour'",
    ),
    (_WHEN.format(when='colour = "red"'), 'colour = "red"', "unknown condition 'colour'"),
    (_WHEN.format(when='above = "a lot"'), 'above = "a lot"', "above must be a number"),
    (_WHEN.format(when="below = true"), "below = true", "below must be a number"),
    (_WHEN.format(when="equals = [[1]]"), "equals = [[1]]", "equals must be a string"),
    (_WHEN.format(when='in = "closedwon"'), 'in = "closedwon"', "`in` must be a list"),
    (
        _WHEN.format(when='exclude_change_sources = "IMPORT"'),
        'exclude_change_sources = "IMPORT"',
        "exclude_change_sources must be a list of strings",
    ),
    (
        _WHEN.format(when='include_own_writes = "yes"'),
        'include_own_writes = "yes"',
        "must be true or false",
    ),
    (
        _WHEN.format(when='to = "closedwon"\nequals = "closedlost"'),
        'equals = "closedlost"',
        "use only one of equals, to, in",
    ),
    (
        '[[rules]]\nname = "r"\n[rules.when]\nobject = "deals"\nkind = "property_change"\n'
        'property = 5\n[[rules.do]]\naction = "log"\n',
        "property = 5",
        "property must be a string",
    ),
    (
        '[[rules]]\nname = "r"\n[rules.when]\nobject = "deals"\nkind = "property_change"\n'
        'to = "closedwon"\n[[rules.do]]\naction = "log"\n',
        'to = "closedwon"',
        "a value condition needs a property",
    ),
    (
        '[[rules]]\nname = "r"\n[rules.when]\nobject = "deals"\nkind = "creation"\n'
        'equals = "x"\n[[rules.do]]\naction = "log"\n',
        'equals = "x"',
        'equals needs kind = "property_change"',
    ),
    (
        '[[rules]]\nname = "r"\n[rules.when]\nobject = "leads"\nkind = "creation"\n'
        '[[rules.do]]\naction = "log"\n',
        'object = "leads"',
        "unknown object 'leads'",
    ),
    (
        '[[rules]]\nname = "r"\n[rules.when]\nobject = "deals"\nkind = "renamed"\n'
        '[[rules.do]]\naction = "log"\n',
        'kind = "renamed"',
        "unknown kind 'renamed'",
    ),
    (_DO.format(do='action = "email"'), 'action = "email"', "unknown action 'email'"),
    (
        _DO.format(do='action = "slack"\ntext = "hi"\ncolour = "red"'),
        'colour = "red"',
        "unknown slack option 'colour'",
    ),
    (_DO.format(do='action = "slack"'), "[[rules.do]]", "slack needs 'text'"),
    (_DO.format(do='action = "hubspot_task"'), "[[rules.do]]", "hubspot_task needs 'subject'"),
    (_DO.format(do='action = "hubspot_note"'), "[[rules.do]]", "hubspot_note needs 'body'"),
    (
        _DO.format(do='action = "webhook"\nsecret = "env:S"'),
        "[[rules.do]]",
        "webhook needs 'url'",
    ),
    (
        _DO.format(do='action = "webhook"\nurl = "env:U"\nsecret = "hunter2"'),
        'secret = "hunter2"',
        "webhook secret must be whsec_... or env:VARIABLE",
    ),
    (
        _DO.format(do='action = "webhook"\nurl = "ftp://x"\nsecret = "env:S"'),
        'url = "ftp://x"',
        "webhook url must be http(s)",
    ),
    (
        _DO.format(do='action = "hubspot_task"\nsubject = "s"\npriority = "URGENT"'),
        'priority = "URGENT"',
        "priority 'URGENT'",
    ),
    (
        _DO.format(do='action = "hubspot_task"\nsubject = "s"\ndue_in_days = -1'),
        "due_in_days = -1",
        "due_in_days must be a whole number",
    ),
    (
        _DO.format(do='action = "slack"\ntext = "Deal {event.nope} created"'),
        'text = "Deal {event.nope} created"',
        "event has no field 'nope'",
    ),
    (
        _DO.format(do='action = "log"\nmessage = "{event.__class__}"'),
        'message = "{event.__class__}"',
        "event has no field '__class__'",
    ),
    (
        _DO.format(do='action = "slack"\ntext = "{deal.amount}"'),
        'text = "{deal.amount}"',
        "unknown template namespace 'deal'",
    ),
    (
        _DO.format(do='action = "slack"\ntext = "{record.amount|euros}"'),
        'text = "{record.amount|euros}"',
        "unknown filter 'euros'",
    ),
    (
        _DO.format(do='action = "slack"\ntext = "was {event.previous_value}"'),
        'text = "was {event.previous_value}"',
        "only property changes have a previous_value",
    ),
]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    INVALID_CASES,
    ids=[case[2] for case in INVALID_CASES],
)
def test_each_problem_names_file_line_and_a_fix(text: str, line: str, message: str) -> None:
    found = problems(text, "deals.toml")

    expected = f"deals.toml:{line_number(text, line)}: "
    assert any(message in p for p in found), found
    for problem in found:
        assert problem.startswith(expected), (problem, expected)
        assert re.search(r"\(fix: .+\)$", problem), problem


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    text = INVALID.read_text()

    template, leads, email = invalid_lines()

    found = problems(text, "rules_invalid.toml")

    assert found == [
        f"rules_invalid.toml:{template}: event has no field 'nope' (fix: use one of"
        " change_source, event_id, kind, object_id, object_type, occurred_at, portal_id,"
        " previous_value, property_name, property_value, source_id, subscription_type)",
        f"rules_invalid.toml:{leads}: rule 'new-lead': unknown object 'leads' (fix: use"
        ' contacts, companies, deals, tickets, a type id like "2-12345", or "*")',
        f"rules_invalid.toml:{email}: rule 'new-lead': unknown action 'email' (fix: use one of"
        " slack, webhook, hubspot_task, hubspot_note, log)",
    ]


def test_a_duplicate_rule_name_names_both_lines() -> None:
    valid = '[[rules]]\nname = "same"\n[rules.when]\nobject = "deals"\nkind = "creation"\n'
    text = f'{valid}[[rules.do]]\naction = "log"\n\n{valid}[[rules.do]]\naction = "log"\n'

    (problem,) = problems(text)

    second = line_number(text, "[[rules]]", 2)
    assert problem.startswith(
        f"rules.toml:{second}: rule name 'same' is used twice (first at line 1)"
    )
    assert "(fix: " in problem


def test_a_comment_after_a_rules_header_does_not_shift_the_lines_of_later_rules() -> None:
    text = textwrap.dedent(
        """\
        [[rules]]  # deals first
        name = "won"
        [rules.when]
        object = "deals"
        kind = "creation"
        [[rules.do]]
        action = "log"

        [[rules]]
        name = "typo"
        [rules.when]
        object = "leads"
        kind = "creation"
        [[rules.do]]
        action = "log"
        """
    )

    leads = line_number(text, 'object = "leads"')

    (problem,) = problems(text)

    assert problem.startswith(f"rules.toml:{leads}: "), problem


def test_a_rule_without_a_name_or_actions_is_refused() -> None:
    text = '[[rules]]\n[rules.when]\nobject = "deals"\nkind = "creation"\n'

    found = problems(text)

    assert found == [
        'rules.toml:1: rule without a name (fix: add name = "deal-won-slack")',
        "rules.toml:1: rule 'rule at line 1' does nothing"
        ' (fix: add [[rules.do]] with action = "log")',
    ]


def test_a_toml_syntax_error_reports_its_line() -> None:
    text = '[[rules]]\nname = "r"\n[rules.when]\nobject = "deals"\nkind = = "creation"\n'

    (problem,) = problems(text, "broken.toml")

    assert problem.startswith("broken.toml:5: not valid TOML: ")
    assert "(fix: check quoting and brackets)" in problem


def test_an_unreadable_rules_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"cannot read.*\(fix: check RULES_FILE\)"):
        load_rules_file(tmp_path / "missing.toml")


def test_unknown_top_level_keys_are_refused() -> None:
    (problem,) = problems('title = "my rules"\n')

    assert problem.startswith("rules.toml:1: unknown top-level key 'title'")


# --- templates -------------------------------------------------------------------------------

DEAL = event(change("deal", 301, 1000, "amount", "75000"))


def fill(
    template: str, record: Mapping[str, Any] | None = None, previous: str | None = None
) -> str:
    return render(template, DEAL, record or {}, previous)


def test_templates_fill_event_and_record_fields() -> None:
    record = {"dealname": "Big deal", "amount": "1234.5", "hubspot_owner_id": 77}

    assert fill("{record.dealname} ({record.amount|money})", record) == "Big deal (1,234.50)"
    assert fill("{event.property_name}={event.property_value|number}") == "amount=75,000"
    assert fill("{event.object_type}:{event.object_id} {event.kind}") == "deals:301 property_change"
    assert fill("{event.portal_id} {event.change_source}") == "62515 CRM_UI"
    assert fill("was {event.previous_value}", previous="5") == "was 5"
    assert fill("{record.hubspot_owner_id}", record) == "77"
    assert fill("{record.dealname|upper} {record.dealname|lower}", record) == "BIG DEAL big deal"


def test_missing_fields_render_empty_or_their_default() -> None:
    assert fill("[{record.dealname}]") == "[]"
    assert fill("[{record.dealname|default:a deal}]") == "[a deal]"
    assert fill("[{record.amount|money}]") == "[]"
    assert fill("[{event.previous_value}]") == "[]"
    assert fill("[{event.nope}] [{nothing.here}]") == "[] []"


def test_money_of_text_that_is_not_a_number_is_left_as_it_is() -> None:
    assert fill("{record.amount|money}", {"amount": "about 5k"}) == "about 5k"
    assert fill("{record.amount|money}", {"amount": "NaN"}) == "NaN"
    assert fill("{record.amount|money}", {"amount": "-12.3"}) == "-12.30"
    assert fill("{record.amount|money}", {"amount": "1234567.891"}) == "1,234,567.89"


def test_money_of_a_huge_exponent_stays_short() -> None:
    # A property value is anyone's text: "1e999999999" must not render a billion digits.
    rendered = fill("{record.amount|money}", {"amount": "1e100000"})

    assert len(rendered) <= 64, f"{len(rendered)} characters"


def test_templates_execute_no_code_and_reach_no_attributes() -> None:
    record = {"dealname": "Big deal"}
    templates = [
        "{event.__class__}",
        "{event.__init__}",
        "{record.__class__}",
        "{event.raw}",
        "{event.inbox_id}",
        "{record.keys}",
        "{record.get}",
    ]

    for template in templates:
        assert fill(template, record) == "", template
    for template in (
        "{event.property_value.__class__}",
        "{record.dealname.__class__.__mro__}",
        "{event.property_value!r}",
        "{event.property_value:>20}",
        "{0.__class__}",
        "{event[property_value]}",
        "{__import__('os').getcwd()}",
    ):
        rendered = fill(template, record)
        assert "<class" not in rendered, template
        assert "75000" not in rendered, template
        assert os.getcwd() not in rendered
        assert rendered == template  # not a placeholder: the text stays as written


def test_a_template_never_reformats_what_a_value_contains() -> None:
    record = {"dealname": "{event.property_value} {record.secret}", "secret": "s3cr3t"}

    assert fill("{record.dealname}", record) == "{event.property_value} {record.secret}"


# --- the command -----------------------------------------------------------------------------


def test_rules_check_accepts_the_examples() -> None:
    result = run_cli("rules", "check", str(EXAMPLE), env={})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{EXAMPLE}: 4 rules, 5 actions: ok"


def test_rules_check_reads_rules_file_when_no_file_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RULES_FILE", str(EXAMPLE))

    assert cli.main(["rules", "check"]) == 0
    assert capsys.readouterr().out.strip() == f"{EXAMPLE}: 4 rules, 5 actions: ok"

    monkeypatch.delenv("RULES_FILE")
    assert cli.main(["rules", "check"]) == 2
    assert "give a FILE or set RULES_FILE" in capsys.readouterr().err


def test_rules_check_lists_each_problem_with_file_and_line() -> None:
    result = run_cli("rules", "check", str(INVALID), env={})

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "hubspot-webhooks: invalid rules:"
    found = [re.match(rf"  {re.escape(str(INVALID))}:(\d+): .+ \(fix: .+\)$", x) for x in lines[1:]]
    assert all(found), lines
    assert [int(m.group(1)) for m in found if m] == list(invalid_lines())


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_the_service_refuses_to_start_with_an_invalid_rules_file(
    database_url: str, tmp_path: Path, command: list[str]
) -> None:
    env = {
        "DATABASE_URL": database_url,
        "HUBSPOT_CLIENT_SECRET": CLIENT_SECRET,
        "RULES_FILE": str(INVALID),
        "DATA_DIR": str(tmp_path),
    }

    result = run_cli(*command, env=env)

    assert result.returncode == 2, result.stderr
    assert "invalid rules" in result.stderr
    assert f"{INVALID}:{invalid_lines()[1]}: " in result.stderr
    assert "unknown object 'leads'" in result.stderr


def test_the_worker_starts_with_a_valid_rules_file(clean_db: str, tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": clean_db,
        "RULES_FILE": str(EXAMPLE),
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "WARNING",
    }

    result = run_cli("worker", "--drain", env=env)

    assert result.returncode == 0, result.stderr
    assert "ran 0 actions" in result.stderr


def test_a_rules_file_that_does_not_exist_stops_start_up_naming_rules_file(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("HUBSPOT_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("RULES_FILE", str(tmp_path / "nope.toml"))

    assert cli.main(["worker"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "RULES_FILE" in line
    assert "nope.toml" in line
