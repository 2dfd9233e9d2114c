"""The inbox queue: every statement on inbox_events lives in this package.

Ingest validates a delivery and records it exactly once (`record`: a webhook body, or a journal
file's events); the apply stage claims due rows and settles them (`claims`); privacy erasure
scrubs rows; operators list, show and replay them; retention partitions and purges (`operate`).
Callers use the package: `from service import inbox`, `inbox.claim_due(...)`.
"""

from __future__ import annotations

from service.batches import Batch, InvalidBatch, parse_batch
from service.inbox.claims import _CLAIM, _SETTLE, Claimed, Outcome, claim_due, settle
from service.inbox.operate import (
    PARTITION_SECONDS,
    PURGEABLE_STATUSES,
    Filters,
    get_event,
    list_events,
    partitioning,
    purge,
    replay,
    replay_payloads,
    scrub_contacts,
)
from service.inbox.record import (
    _RECORD_SQL,
    INBOX_CHANNEL,
    JOURNAL_SOURCE,
    Notifier,
    RecordResult,
    record_delivery,
    record_events,
    wake,
)

# Ingest's input, a webhook body validated into a Batch, comes from service.batches (pure) and
# is part of this package's API. The statements `_CLAIM`, `_SETTLE` and `_RECORD_SQL` are named
# for bench/, which measures them as they are.
__all__ = [
    "INBOX_CHANNEL",
    "JOURNAL_SOURCE",
    "PARTITION_SECONDS",
    "PURGEABLE_STATUSES",
    "_CLAIM",
    "_RECORD_SQL",
    "_SETTLE",
    "Batch",
    "Claimed",
    "Filters",
    "InvalidBatch",
    "Notifier",
    "Outcome",
    "RecordResult",
    "claim_due",
    "get_event",
    "list_events",
    "parse_batch",
    "partitioning",
    "purge",
    "record_delivery",
    "record_events",
    "replay",
    "replay_payloads",
    "scrub_contacts",
    "settle",
    "wake",
]
