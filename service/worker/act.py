"""The act stage: execute due action runs (Slack, HTTP, HubSpot) with no transaction open.

Runs are leased from the outbox in a short transaction, executed, then settled in another: done
with a short result, or failed with the error and retried with backoff (the target's
Retry-After honoured), or dead. The stage LISTENs on the outbox channel, so a run enqueued by
the apply stage starts within milliseconds of its commit; polling is the fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa

from service import actions, outbox
from service.alerting import messages as alert_messages
from service.hubspot.client import HubSpotApi
from service.rules.language import Rule
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ActionRunner:
    """Executes due action runs (the act stage): network I/O, never inside a transaction."""

    engine: sa.Engine
    rules: Sequence[Rule]
    settings: Settings
    api: HubSpotApi | None = None
    batch_size: int = 20
    _http: httpx.Client | None = field(default=None, init=False, repr=False)

    def run_once(self) -> int:
        """Lease and execute up to `batch_size` due runs; returns how many."""
        with self.engine.begin() as connection:
            runs = outbox.claim(connection, self.batch_size)
        for run in runs:
            self._execute(run)
        return len(runs)

    def drain(self) -> int:
        """Execute until nothing is due."""
        total = 0
        while count := self.run_once():
            total += count
        return total

    def close(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            self._http.close()

    def _options(self, run: outbox.Run) -> Mapping[str, Any] | None:
        if alert_messages.is_alert_run(run.portal_id, run.rule):
            return alert_messages.options(self.settings, run.action_index)
        for rule in self.rules:
            if rule.name == run.rule and run.action_index < len(rule.actions):
                return rule.actions[run.action_index].options
        return None

    def _execute(self, run: outbox.Run) -> None:
        if self._http is None:
            self._http = httpx.Client(follow_redirects=False)
        options = self._options(run)
        error: str | None = None
        permanent = False
        retry_after: float | None = None
        outcome: actions.Outcome | None = None
        if options is None and run.payload.get("action") != "log":
            error, permanent = (
                f"rule {run.rule!r} (action {run.action_index}) no longer exists"
                if not alert_messages.is_alert_run(run.portal_id, run.rule)
                else f"{run.rule}: its target ({run.action}) is no longer configured",
                True,
            )
        else:
            context = actions.RunContext(
                run_id=run.id,
                portal_id=run.portal_id,
                payload=run.payload,
                options=options or {},
                environ=self.settings.environ,
                slack_webhook_url=self.settings.slack_webhook_url,
                api=self.api,
                http=self._http,
                attempt=run.attempts,
                tried_before=run.tried_before,
            )
            try:
                outcome = actions.execute(context)
            except actions.ActionFailed as exc:
                error, permanent = str(exc), isinstance(exc, actions.ActionRejected)
                retry_after = exc.retry_after
            except Exception as exc:  # noqa: BLE001 - an executor bug fails its run, not the loop
                error = f"{type(exc).__name__}: {exc}"
        with self.engine.begin() as connection:
            if outcome is not None:
                outbox.complete(connection, run.id, outcome.summary)
                if outcome.created is not None:
                    outbox.record_own_write(connection, run.portal_id, *outcome.created)
                log.info("action_done", extra={"run_id": run.id, "action": run.action})
                return
            status = outbox.fail(
                connection,
                run.id,
                error or "unknown error",
                max_attempts=self.settings.action_max_attempts,
                permanent=permanent,
                retry_after=retry_after,
            )
        log.warning(
            "action_failed",
            extra={"run_id": run.id, "action": run.action, "status": status, "rule": run.rule},
        )
