"""service.portals: pausing and resuming a portal, and the backlog per portal, on the real
database (what a pause does to each stage's claim is tested with that stage)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from service import portals
from tests.factories import PORTAL, numbered_event
from tests.support import Store


def pause(engine: sa.Engine, portal: int, reason: str | None = None) -> portals.Control:
    with engine.begin() as connection:
        return portals.pause(connection, portal, reason)


def resume(engine: sa.Engine, portal: int) -> bool:
    with engine.begin() as connection:
        return portals.resume(connection, portal)


def paused(engine: sa.Engine) -> list[portals.Control]:
    with engine.connect() as connection:
        return portals.paused(connection)


def test_a_pause_is_recorded_with_its_reason_and_a_resume_clears_it(
    clean_db: str, engine: sa.Engine
) -> None:
    control = pause(engine, PORTAL, "  bulk import of 200k contacts  ")

    assert (control.portal_id, control.paused, control.reason) == (
        PORTAL,
        True,
        "bulk import of 200k contacts",
    )
    assert paused(engine) == [control]
    assert resume(engine, PORTAL) is True
    assert paused(engine) == []
    with engine.connect() as connection:
        [row] = portals.list_controls(connection)
    assert (row.paused, row.reason) == (False, None)
    assert row.updated_at >= control.updated_at


def test_pausing_again_keeps_since_when_and_takes_a_new_reason(
    clean_db: str, engine: sa.Engine
) -> None:
    first = pause(engine, PORTAL, "bulk import")
    again = pause(engine, PORTAL)
    renamed = pause(engine, PORTAL, "bulk import, day 2")

    assert again.paused_at == first.paused_at == renamed.paused_at
    assert (again.reason, renamed.reason) == ("bulk import", "bulk import, day 2")


def test_a_resumed_portal_paused_again_starts_afresh(clean_db: str, engine: sa.Engine) -> None:
    first = pause(engine, PORTAL, "bulk import")
    resume(engine, PORTAL)
    second = pause(engine, PORTAL)

    assert second.paused_at is not None
    assert first.paused_at is not None
    assert second.paused_at > first.paused_at
    assert second.reason is None


def test_resuming_a_portal_that_is_not_paused_changes_nothing(
    clean_db: str, engine: sa.Engine
) -> None:
    assert resume(engine, PORTAL) is False
    with engine.connect() as connection:
        assert portals.list_controls(connection) == []


def test_a_long_reason_is_cut(clean_db: str, engine: sa.Engine) -> None:
    assert pause(engine, PORTAL, "x" * 2_000).reason == "x" * portals.MAX_REASON


@pytest.mark.parametrize("portal", [0, -5, 2**63])
def test_a_portal_hubspot_cannot_have_issued_is_refused(
    portal: int, clean_db: str, engine: sa.Engine
) -> None:
    with pytest.raises(portals.InvalidPortal, match="positive integer"):
        pause(engine, portal)
    with pytest.raises(portals.InvalidPortal):
        resume(engine, portal)


def test_backlogs_count_due_and_later_rows_per_portal(store: Store, engine: sa.Engine) -> None:
    store([numbered_event(n) for n in (1, 2, 3)] + [numbered_event(4, portalId=7)])
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET status = 'failed',"
                " next_attempt_at = now() + interval '1 minute' WHERE event_id = 3"
            )
        )
        connection.execute(sa.text("UPDATE inbox_events SET status = 'done' WHERE event_id = 2"))
        connection.execute(
            sa.text(
                "UPDATE inbox_events SET next_attempt_at = now() - interval '90 seconds'"
                " WHERE event_id = 1"
            )
        )

    with engine.connect() as connection:
        found = portals.backlogs(connection)

    assert set(found) == {PORTAL, 7}
    assert (found[PORTAL].due, found[PORTAL].later) == (1, 1)
    assert 89 <= found[PORTAL].oldest_due_seconds < 120
    assert (found[7].due, found[7].later) == (1, 0)
