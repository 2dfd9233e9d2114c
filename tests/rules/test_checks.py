"""service.rules.checks: every problem of a rules text names its file, its line and a fix.

Offline: no database, no network.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from service.rules.language import RuleError, load_rules_file, load_rules_text
from tests.support import INVALID_RULES, invalid_rule_lines, line_number


def problems(text: str, path: str = "rules.toml") -> list[str]:
    """The problems an invalid TOML text is refused with."""
    with pytest.raises(RuleError) as caught:
        load_rules_text(text, path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


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
    text = INVALID_RULES.read_text()

    template, leads, email = invalid_rule_lines()

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
