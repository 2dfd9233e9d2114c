"""HubSpot API paths for HUBSPOT_API_VERSION: the one place a CRM, association, pipeline or
OAuth path is spelled.

HubSpot's date-based versions put the version after the API's name: `/crm/objects/2026-03/
contacts/batch/read`, `/crm/associations/2026-03/{from}/{to}/batch/read`, `/crm/pipelines/
2026-03/{type}`, `/oauth/2026-03/token` (HUBSPOT.md §5; developers.hubspot.com, api-reference/
2026-03). The legacy family, `v3`, keeps each API's own number: `/crm/v3/objects/...`,
associations on `/crm/v4/...` and tokens on `/oauth/v1/token`. `/v1`-`/v3` paths are
unsupported from September 2027, `/v4` from 2027-03-30. Pure: no I/O, no settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

LEGACY = "v3"
_DATED = re.compile(r"20\d\d-(0[1-9]|1[0-2])")


def _segment(value: str | int) -> str:
    """One path segment, percent-encoded (an object type or id never adds a `/`)."""
    return quote(str(value), safe="")


@dataclass(frozen=True, slots=True)
class ApiPaths:
    """The paths of one API version: `v3` (legacy numbered paths) or a date like `2026-03`."""

    version: str

    def __post_init__(self) -> None:
        if self.version != LEGACY and not _DATED.fullmatch(self.version):
            raise ValueError(f"unknown HubSpot API version {self.version[:20]!r}")

    @property
    def dated(self) -> bool:
        """Whether this is a date-based version (not the legacy numbered paths)."""
        return self.version != LEGACY

    def _api(self, name: str, legacy: str) -> str:
        """`/crm/objects/2026-03` or `/crm/v3/objects`: the root of one API."""
        group, _, api = name.rpartition("/")
        if self.dated:
            return f"/{name}/{self.version}"
        return f"/{group}/{legacy}/{api}" if group else f"/{api}/{legacy}"

    def objects(self, object_type: str) -> str:
        """Create (POST) and list (GET) records of a type."""
        return f"{self._api('crm/objects', 'v3')}/{_segment(object_type)}"

    def record(self, object_type: str, object_id: str | int) -> str:
        """One record: read, update, archive."""
        return f"{self.objects(object_type)}/{_segment(object_id)}"

    def batch_read(self, object_type: str) -> str:
        """Read up to 100 records by id (POST)."""
        return f"{self.objects(object_type)}/batch/read"

    def search(self, object_type: str) -> str:
        """Search records (POST; filterGroups, sorts, after)."""
        return f"{self.objects(object_type)}/search"

    def associations_batch_read(self, from_type: str, to_type: str) -> str:
        """Read the associations of up to 1,000 records (associations v4 on the legacy family)."""
        root = self._api("crm/associations", "v4")
        return f"{root}/{_segment(from_type)}/{_segment(to_type)}/batch/read"

    def pipelines(self, object_type: str) -> str:
        """All pipelines of an object type, with their stages."""
        return f"{self._api('crm/pipelines', 'v3')}/{_segment(object_type)}"

    def oauth_token(self) -> str:
        """Issue and refresh OAuth tokens (POST, form-encoded)."""
        return f"{self._api('oauth', 'v1')}/token"
