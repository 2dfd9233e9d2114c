"""service.web.app: while an app serves, the start-up heap is frozen out of the collector's
scans and young collections run every GC_YOUNG_THRESHOLD allocations; the last app to stop
puts the collector back as it was."""

from __future__ import annotations

import gc

from starlette.testclient import TestClient

from service.web.app import GC_YOUNG_THRESHOLD, create_app
from tests.support import make_settings


def test_serving_freezes_the_start_up_heap_and_stopping_puts_the_collector_back(
    clean_db: str,
) -> None:
    before = gc.get_threshold()
    with TestClient(create_app(make_settings(), database_url=clean_db)):
        serving = gc.get_threshold()
        frozen = gc.get_freeze_count()

    assert serving == (GC_YOUNG_THRESHOLD, *before[1:])
    assert frozen > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_with_two_apps_the_collector_is_put_back_when_the_last_one_stops(clean_db: str) -> None:
    before = gc.get_threshold()
    first = TestClient(create_app(make_settings(), database_url=clean_db))
    second = TestClient(create_app(make_settings(), database_url=clean_db))
    with first:
        with second:
            pass
        still_serving = gc.get_threshold()

    assert still_serving == (GC_YOUNG_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before
