"""The mirror: set-based SQL applying changes with per-property last-writer-wins."""

from service.mirror.apply import apply_events, handles
from service.mirror.registers import lock_objects
from service.mirror.snapshots import Snapshot, apply_snapshots

__all__ = ["Snapshot", "apply_events", "apply_snapshots", "handles", "lock_objects"]
