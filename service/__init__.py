"""A HubSpot webhook receiver: durable, signed, idempotent, with a local CRM mirror.

The public API for user code is what this module exports; handler modules import from here,
never from the internals:

    from service import Event, registry

    @registry.on("deals", "property_change", prop="dealstage")
    def deal_stage_changed(event: Event, session: Session) -> None: ...
"""

from service.events import Event, Kind
from service.rules.registry import DuplicateHandler, Registry, UnknownKind, registry

__all__ = ["DuplicateHandler", "Event", "Kind", "Registry", "UnknownKind", "registry"]
