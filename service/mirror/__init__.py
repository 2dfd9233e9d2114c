"""The mirror: set-based SQL applying changes with per-property last-writer-wins."""

from service.mirror.apply import Snapshot, apply_events, apply_snapshots, handles, lock_objects

__all__ = ["Snapshot", "apply_events", "apply_snapshots", "handles", "lock_objects"]
