"""The handler registry's former import path, kept so handler modules written for 0.1 still load.

New code imports from the package itself: `from service import Event, registry`.
"""

from service import DuplicateHandler, Registry, UnknownKind, registry

__all__ = ["DuplicateHandler", "Registry", "UnknownKind", "registry"]
