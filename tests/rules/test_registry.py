"""service.rules.registry: handler keys, lookup, the mistakes it refuses at import time, and
rules declared in code."""

from __future__ import annotations

import inspect
import re
import textwrap

import pytest
from sqlalchemy.orm import Session

from service import DuplicateHandler, Registry, UnknownKind
from service.events import Event, Kind
from service.rules.language import Rule, RuleError, load_rules_text, normalise_object_type
from tests.factories import DO_LOG, WHEN_WON, change, event, hs

THIS_FILE = __file__


def next_line() -> int:
    """The number of the caller's next source line."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_lineno + 1


def contact_handler(event: Event, session: Session) -> None:
    """A handler defined at module level, so its place is known."""


def another_contact_handler(event: Event, session: Session) -> None:
    """A second handler for the same key."""


def register_unknown_kind(registry: Registry) -> None:
    """Registers a kind that does not exist: the call is on the next line."""
    registry.on("contacts", "propertyChanged")


def register_bad_object_type(registry: Registry) -> None:
    """Registers an object type no HubSpot object has: the call is on the next line."""
    registry.on("Contacts!", Kind.CREATION)


def test_decorator_registers_the_function_and_returns_it_unchanged() -> None:
    registry = Registry()

    @registry.on("contacts", Kind.CREATION)
    def created(event: Event, session: Session) -> None:
        """Reacts to new contacts."""

    assert len(registry) == 1
    assert registry.handlers_for(event(hs("contact.creation", 1, 1000))) == [created]
    assert created.__name__ == "created"
    assert created.__doc__ == "Reacts to new contacts."


def test_kind_may_be_given_as_its_string_value() -> None:
    registry = Registry()
    registry.on("deals", "property_change", prop="dealstage")(contact_handler)

    assert registry.handlers_for(event(change("deal", 5, 1000, "dealstage", "won"))) == [
        contact_handler
    ]


def test_handlers_for_finds_exact_property_any_property_and_any_type_most_specific_first() -> None:
    registry = Registry()

    @registry.on("*", Kind.PROPERTY_CHANGE)
    def any_type(event: Event, session: Session) -> None: ...

    @registry.on("*", Kind.PROPERTY_CHANGE, prop="email")
    def any_type_email(event: Event, session: Session) -> None: ...

    @registry.on("contacts", Kind.PROPERTY_CHANGE)
    def any_property(event: Event, session: Session) -> None: ...

    @registry.on("contacts", Kind.PROPERTY_CHANGE, prop="email")
    def email(event: Event, session: Session) -> None: ...

    found = registry.handlers_for(event(change("contact", 1, 1000, "email", "a@example.com")))
    assert found == [email, any_property, any_type_email, any_type]

    found = registry.handlers_for(event(change("contact", 1, 1000, "firstname", "Ada")))
    assert found == [any_property, any_type]

    found = registry.handlers_for(event(change("deal", 1, 1000, "email", "a@example.com")))
    assert found == [any_type_email, any_type]


def test_a_property_handler_is_not_called_for_other_properties_kinds_or_types() -> None:
    registry = Registry()
    registry.on("contacts", Kind.PROPERTY_CHANGE, prop="email")(contact_handler)

    assert registry.handlers_for(event(change("contact", 1, 1000, "firstname", "Ada"))) == []
    assert registry.handlers_for(event(change("company", 1, 1000, "email", "a@b.c"))) == []
    assert registry.handlers_for(event(hs("contact.creation", 1, 1000))) == []


def test_any_type_handler_sees_every_object_type_including_custom_objects() -> None:
    registry = Registry()
    registry.on("*", Kind.CREATION)(contact_handler)

    for raw in (
        hs("contact.creation", 1, 1000),
        hs("deal.creation", 2, 1000),
        hs("object.creation", 3, 1000, objectTypeId="2-4242"),
    ):
        assert registry.handlers_for(event(raw)) == [contact_handler]
    assert registry.handlers_for(event(hs("contact.deletion", 1, 1000))) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("contact", "contacts"),
        ("contacts", "contacts"),
        ("0-1", "contacts"),
        ("company", "companies"),
        ("0-2", "companies"),
        ("deal", "deals"),
        ("0-3", "deals"),
        ("ticket", "tickets"),
        ("0-5", "tickets"),
        ("line_item", "line_items"),
        ("0-8", "line_items"),
        ("2-4242", "2-4242"),
        ("*", "*"),
    ],
)
def test_object_type_aliases_map_to_one_key(name: str, expected: str) -> None:
    assert normalise_object_type(name) == expected


@pytest.mark.parametrize("alias", ["contact", "contacts", "0-1"])
def test_a_handler_under_any_alias_sees_classic_and_generic_events(alias: str) -> None:
    registry = Registry()
    registry.on(alias, Kind.PROPERTY_CHANGE)(contact_handler)

    classic = change("contact", 1, 1000, "email", "a@example.com")
    generic = hs(
        "object.propertyChange",
        1,
        1000,
        objectTypeId="0-1",
        propertyName="email",
        propertyValue="a@example.com",
    )
    assert registry.handlers_for(event(classic)) == [contact_handler]
    assert registry.handlers_for(event(generic)) == [contact_handler]


@pytest.mark.parametrize("second_alias", ["contact", "contacts", "0-1"])
def test_the_same_key_under_another_alias_is_a_duplicate(second_alias: str) -> None:
    registry = Registry()
    registry.on("contacts", Kind.CREATION)(contact_handler)

    with pytest.raises(DuplicateHandler):
        registry.on(second_alias, Kind.CREATION)(another_contact_handler)
    assert registry.handlers_for(event(hs("contact.creation", 1, 1000))) == [contact_handler]


def test_duplicate_key_raises_naming_both_places() -> None:
    registry = Registry()
    registry.on("contacts", Kind.PROPERTY_CHANGE, prop="email")(contact_handler)

    with pytest.raises(DuplicateHandler) as info:
        registry.on("contact", "property_change", prop="email")(another_contact_handler)

    message = str(info.value)
    first = f"{THIS_FILE}:{contact_handler.__code__.co_firstlineno}"
    second = f"{THIS_FILE}:{another_contact_handler.__code__.co_firstlineno}"
    assert first in message
    assert second in message
    assert message.index(first) < message.index(second)
    assert "contact_handler" in message
    assert "another_contact_handler" in message
    assert "email" in message


def test_duplicate_decorated_handlers_name_both_decorated_functions() -> None:
    registry = Registry()

    @registry.on("deals", Kind.CREATION)
    def first(event: Event, session: Session) -> None: ...

    with pytest.raises(DuplicateHandler) as info:

        @registry.on("0-3", Kind.CREATION)
        def second(event: Event, session: Session) -> None: ...

    message = str(info.value)
    places = re.findall(re.escape(THIS_FILE) + r":(\d+)", message)
    assert len(places) == 2
    assert int(places[0]) == first.__code__.co_firstlineno
    assert int(places[1]) > int(places[0])
    assert "first" in message
    assert "second" in message


def test_the_same_kind_with_and_without_property_are_different_keys() -> None:
    registry = Registry()
    registry.on("contacts", Kind.PROPERTY_CHANGE)(contact_handler)
    registry.on("contacts", Kind.PROPERTY_CHANGE, prop="email")(another_contact_handler)

    assert len(registry) == 2


def test_unknown_kind_raises_naming_the_kind_the_place_and_the_valid_kinds() -> None:
    registry = Registry()

    with pytest.raises(UnknownKind) as info:
        register_unknown_kind(registry)

    message = str(info.value)
    assert "'propertyChanged'" in message
    assert f"{THIS_FILE}:{register_unknown_kind.__code__.co_firstlineno + 2}" in message
    for kind in Kind:
        assert kind.value in message
    assert len(registry) == 0


@pytest.mark.parametrize("kind", ["propertyChange", "created", "", "PROPERTY_CHANGE"])
def test_hubspot_spellings_and_typos_of_kinds_are_refused(kind: str) -> None:
    with pytest.raises(UnknownKind, match="unknown event kind"):
        Registry().on("contacts", kind)


def test_bad_object_type_raises_naming_the_type_and_the_place() -> None:
    registry = Registry()

    with pytest.raises(UnknownKind) as info:
        register_bad_object_type(registry)

    message = str(info.value)
    assert "'Contacts!'" in message
    assert f"{THIS_FILE}:{register_bad_object_type.__code__.co_firstlineno + 2}" in message
    assert len(registry) == 0


@pytest.mark.parametrize("object_type", ["", "Contacts", "contact s", "0-1-2", "2-", "**"])
def test_malformed_object_types_are_refused(object_type: str) -> None:
    with pytest.raises(UnknownKind, match="unknown object type"):
        Registry().on(object_type, Kind.CREATION)


def test_clear_forgets_every_handler() -> None:
    registry = Registry()
    registry.on("contacts", Kind.CREATION)(contact_handler)

    registry.clear()

    assert len(registry) == 0
    assert registry.handlers_for(event(hs("contact.creation", 1, 1000))) == []


@pytest.mark.parametrize("object_type", ["contcts", "companys", "deal_s", "object"])
def test_misspelled_object_type_is_refused_at_import(object_type: str) -> None:
    # The module promises "a typo fails at import". These names match no event the worker will
    # ever see (`object` is HubSpot's generic prefix, never an event's object type), so each
    # registers a handler that silently never runs.
    with pytest.raises(UnknownKind, match="unknown object type"):
        Registry().on(object_type, Kind.CREATION)


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

    (from_toml,), warnings = load_rules_text(
        textwrap.dedent(
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
        ),
        "rules.toml",
    )
    assert warnings == []
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
