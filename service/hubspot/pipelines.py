"""Pipeline stage labels from HubSpot's pipelines API, cached in `pipeline_stages`.

Rules may name a deal stage by its label ("Closed Won"); events carry the stage id, which for
custom pipelines is a number. Labels are fetched once per portal and refreshed hourly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import sqlalchemy as sa

from service.hubspot.client import HubSpotApi, HubSpotError

log = logging.getLogger(__name__)

MAX_AGE_SECONDS = 3600


def refresh_stages(
    engine: sa.Engine, api: HubSpotApi, portal_id: int, object_type: str = "deals"
) -> int:
    """Fetch the portal's pipelines and store every stage's label; returns the stage count."""
    rows = [
        {"stage_id": str(stage.id), "pipeline_id": str(pipeline.id), "label": str(stage.label)}
        for pipeline in api.pipelines(portal_id, object_type)
        for stage in pipeline.stages or []
    ]
    with engine.begin() as connection:
        connection.execute(
            sa.text("DELETE FROM pipeline_stages WHERE portal_id = :p AND object_type = :t"),
            {"p": portal_id, "t": object_type},
        )
        if rows:
            connection.execute(
                sa.text(
                    """
                    INSERT INTO pipeline_stages
                        (portal_id, object_type, stage_id, pipeline_id, label)
                    SELECT :p, :t, r.stage_id, r.pipeline_id, r.label
                    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
                         AS r(stage_id text, pipeline_id text, label text)
                    ON CONFLICT DO NOTHING
                    """
                ),
                {"p": portal_id, "t": object_type, "rows": json.dumps(rows)},
            )
    return len(rows)


def refresh_stale(engine: sa.Engine, api: HubSpotApi, portals: Sequence[int]) -> int:
    """Refresh the portals whose labels are missing or older than an hour; returns how many."""
    with engine.connect() as connection:
        fresh = set(
            connection.scalars(
                sa.text(
                    "SELECT DISTINCT portal_id FROM pipeline_stages WHERE object_type = 'deals'"
                    f" AND fetched_at > now() - interval '{MAX_AGE_SECONDS} seconds'"
                )
            )
        )
    refreshed = 0
    for portal in portals:
        if portal in fresh:
            continue
        try:
            refresh_stages(engine, api, portal)
            refreshed += 1
        except HubSpotError as exc:
            log.warning(
                "pipelines_not_fetched", extra={"portal_id": portal, "error": type(exc).__name__}
            )
    return refreshed
