"""The soak benchmark's poison: a handler that fails every `bench_poison` property change.

bench/soak.py starts its workers with `HANDLER_MODULES=soak_handler` and `MAX_ATTEMPTS=1`, so
the few events it marks this way go dead at once, as events a broken handler keeps failing do;
they then outlive their partitions (retention never drops dead rows) until `purge` deletes them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service import Event, registry

POISON_PROPERTY = "bench_poison"


@registry.on("contacts", "property_change", prop=POISON_PROPERTY)
def poisoned(event: Event, session: Session) -> None:
    """Fail the event, as a handler with a bug does."""
    raise RuntimeError("bench/soak.py: a poisoned event, failed on purpose")
