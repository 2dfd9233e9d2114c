"""service.rules.templates: `{event.x}` and `{record.y|filter}` render safely, and nothing else.

Offline: no database, no network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from service.rules.templates import render
from tests.factories import change, event

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
