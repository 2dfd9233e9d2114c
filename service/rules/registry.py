"""The handler registry: user code reacts to normalised events inside the apply transaction.
Handler modules import it from `service` (`@registry.on("deals", "property_change",
prop="dealstage")`, or `@registry.rule` for a rule in code). Handlers run after the built-in
mirror has applied the event's batch, in the same transaction, each event in its own savepoint:
a handler that raises fails only its event, which is retried. A typo fails at import, not in
production: a duplicate key or an unknown kind raises there."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.orm import Session

from service.events import Event, Kind
from service.rules.language import Rule, is_object_type, normalise_object_type, rule_from_mapping

Handler = Callable[[Event, Session], None]
Predicate = Callable[[Event], bool]
HandlerKey = tuple[str, Kind, str | None]
ANY_TYPE = "*"


class DuplicateHandler(Exception):
    """Two handlers were registered for the same (object type, kind, property)."""


class UnknownKind(Exception):
    """A handler was registered for an event kind (or object type) that does not exist."""


@dataclass(frozen=True, slots=True)
class Registration:
    """A handler and where it was defined (for error messages)."""

    handler: Handler
    where: str


def _where(fn: Callable[..., object]) -> str:
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]} ({fn.__qualname__})"
    except (OSError, TypeError):
        return fn.__qualname__


def _caller() -> str:
    frame = inspect.stack()[2]
    return f"{frame.filename}:{frame.lineno}"


class Registry:
    """Handlers by (object type, kind, optional property)."""

    def __init__(self) -> None:
        self._handlers: dict[HandlerKey, Registration] = {}
        self._rules: dict[str, Rule] = {}

    def on(
        self, object_type: str, kind: Kind | str, *, prop: str | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function for events of this type and kind (and property)."""
        place = _caller()
        try:
            kind = Kind(kind)
        except ValueError:
            kinds = ", ".join(k.value for k in Kind)
            raise UnknownKind(
                f"unknown event kind {kind!r} at {place}; the kinds are: {kinds}"
            ) from None
        if not is_object_type(object_type):
            raise UnknownKind(
                f"unknown object type {object_type!r} at {place}; use e.g. contacts, deals, "
                "0-3, 2-12345 or * for any"
            )
        if prop is not None and kind is not Kind.PROPERTY_CHANGE:
            raise UnknownKind(
                f"prop={prop!r} at {place}: only property_change events name a property"
            )
        key: HandlerKey = (normalise_object_type(object_type), kind, prop)

        def register(fn: Handler) -> Handler:
            existing = self._handlers.get(key)
            if existing is not None:
                raise DuplicateHandler(
                    f"{key} is handled twice: by {existing.where} and by {_where(fn)}"
                )
            self._handlers[key] = Registration(fn, _where(fn))
            return fn

        return register

    def rule(
        self,
        name: str,
        *,
        when: Mapping[str, Any],
        do: Sequence[Mapping[str, Any]],
    ) -> Callable[[Predicate], Predicate]:
        """Declare a rule in code; the decorated function is an extra condition on the event.

            @registry.rule("vip-deal", when={"object": "deals", "kind": "property_change",
                           "property": "amount", "above": 50000},
                           do=[{"action": "slack", "text": "{record.dealname}"}])
            def in_emea(event: Event) -> bool: ...

        It is validated exactly like a rules-file rule and becomes the same Rule object.
        """
        place = _caller()

        def register(fn: Predicate) -> Predicate:
            rule = rule_from_mapping({"name": name, "when": when, "do": list(do)}, place)
            if name in self._rules:
                raise DuplicateHandler(
                    f"rule {name!r} is declared twice: at {self._rules[name].source} and {place}"
                )
            self._rules[name] = replace(rule, predicate=fn)
            return fn

        return register

    @property
    def rules(self) -> list[Rule]:
        """Rules declared in code."""
        return list(self._rules.values())

    def handlers_for(self, event: Event) -> list[Handler]:
        """The handlers that apply to `event`, most specific first (none to a self-test)."""
        found: list[Handler] = []
        if not self._handlers or event.is_self_test:
            return found
        for object_type in (event.object_type, ANY_TYPE):
            for prop in (event.property_name, None) if event.property_name else (None,):
                registration = self._handlers.get((object_type, event.kind, prop))
                if registration is not None:
                    found.append(registration.handler)
        return found

    def clear(self) -> None:
        """Forget every handler and code rule (tests)."""
        self._handlers.clear()
        self._rules.clear()

    def __len__(self) -> int:
        return len(self._handlers)


registry = Registry()


def load_modules(names: Iterable[str]) -> None:
    """Import the modules that register user handlers (HANDLER_MODULES)."""
    for name in names:
        importlib.import_module(name)
