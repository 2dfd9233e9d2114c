"""Handlers: the registry users extend, and the built-in mirror handlers."""

from service.handlers.registry import DuplicateHandler, Registry, UnknownKind, registry

__all__ = ["DuplicateHandler", "Registry", "UnknownKind", "registry"]
