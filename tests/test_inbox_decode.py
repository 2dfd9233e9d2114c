"""The claim reads stored payloads with orjson where that is exact (service/inbox/claims.py):
what a worker gets is what json.loads reads from the stored jsonb, numbers included."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from service import inbox
from tests.factories import numbered_event
from tests.support import store_events

# Numbers orjson alone would read differently (as floats, or not at all), nested too.
WIDE = {
    "wide": 123456789012345678901234567890,
    "below": -9223372036854775809,
    "ratio": 0.1,
    "huge": "1e400",
    "nested": {"ids": [18446744073709551616, 7], "deep": {"x": 2.5}},
}


@pytest.mark.parametrize("extra", [{}, WIDE], ids=["hubspot-shaped", "wide-numbers"])
def test_claimed_payloads_equal_json_loads_of_the_stored_row(
    clean_db: str, engine: sa.Engine, extra: dict[str, object]
) -> None:
    store_events(clean_db, [numbered_event(1)])
    with engine.begin() as connection:
        if extra:
            # 1e400 is no JSON a client sends, but jsonb stores it: put it in as a number.
            document = json.dumps(extra).replace('"1e400"', "1e400")
            connection.execute(
                sa.text("UPDATE inbox_events SET payload = payload || CAST(:extra AS jsonb)"),
                {"extra": document},
            )
        stored = connection.scalar(sa.text("SELECT CAST(payload AS text) FROM inbox_events"))
        claimed = inbox.claim_due(connection, 10)
    assert len(claimed) == 1
    expected = json.loads(str(stored))
    assert claimed[0].payload == expected
    assert repr(claimed[0].payload) == repr(expected)  # ints stay ints, floats stay floats
    if extra:
        assert claimed[0].payload["wide"] == WIDE["wide"]
        assert claimed[0].payload["huge"] == 10**400  # jsonb keeps it as a 401-digit integer
