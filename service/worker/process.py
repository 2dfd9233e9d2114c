"""One worker process: the apply loop in the main thread, the other stages in threads beside it.

`run` is `hubspot-webhooks worker`: apply (stage 2) in the calling thread; act (4), hydrate (3),
the partitions of the inbox, the action runs and the API call log (5) and, when configured, the
scheduled reconcile, pipeline-label refresh and alerts every ALERT_INTERVAL (5) in daemon threads,
and with HUBSPOT_EVENT_SOURCE journal or both the journal reader (service/hubspot/journal.py).
SIGTERM or SIGINT sets one stop event: the current batch finishes, every loop ends, exit 0.
`in_background` is the same set of stages inside `dev`, beside the web server.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from service import db, fetches, outbox
from service.hubspot import client, journal
from service.hubspot.hydration import Hydrator
from service.hubspot.pipelines import refresh_stale
from service.hubspot.reconcile import known_portals
from service.rules.engine import RuleEngine, load_engine
from service.rules.registry import load_modules, registry
from service.settings import Settings, SettingsError
from service.worker.act import ActionRunner
from service.worker.apply import Worker
from service.worker.heartbeat import Heartbeat
from service.worker.loop import Wakeup, run_loop
from service.worker.upkeep import (
    PARTITIONS_SECONDS,
    Alerts,
    keep_partitions,
    run_reconcile,
)

log = logging.getLogger(__name__)

PIPELINES_REFRESH_SECONDS = 600.0


def load_rules(settings: Settings) -> RuleEngine | None:
    """User handler modules, then the rules of RULES_FILE and code; RuleError if invalid.

    Logs `rules_loaded`, so `serve`, `dev` and `worker` each say what they will fire.
    """
    load_modules(settings.handler_modules)
    code = registry.rules
    engine = load_engine(settings, code)
    from_file = list(engine.rules[: len(engine.rules) - len(code)]) if engine else []  # file first
    actions = sum(len(rule.actions) for rule in from_file)
    where = (
        f"{len(from_file)} rules, {actions} actions from {settings.rules_file}"
        if settings.rules_file is not None
        else "no RULES_FILE"
    )
    log.info(
        "rules_loaded",
        extra={
            "summary": f"{where}; {len(code)} code rules",
            "rules": len(from_file),
            "actions": actions,
            "file": None if settings.rules_file is None else str(settings.rules_file),
            "code_rules": len(code),
        },
    )
    return engine


@dataclass(frozen=True, slots=True)
class Drained:
    """What `worker --drain` did: events applied, records fetched (None: no API), actions run."""

    applied: int
    fetched: int | None
    ran: int


def run(settings: Settings) -> None:
    """`hubspot-webhooks worker`: run every stage until SIGTERM or SIGINT."""
    engine = _engine(settings)
    rules = load_rules(settings)
    try:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        apply = _apply_stage(settings, engine, rules)
        with (
            _stages(settings, engine, stop, rules) as stages,
            Heartbeat(engine, ("apply", *stages), last_batch=lambda: apply.last_batch_at),
        ):
            apply.run(stop)
    finally:
        engine.dispose()


def drain(settings: Settings) -> Drained:
    """`hubspot-webhooks worker --drain`: apply, fetch and act until each finds nothing to do.

    A one-off run like the operator commands, so like them it uses the embedded database `dev`
    runs when DATABASE_URL is unset; missing tables are a DatabaseError saying to migrate.
    """
    rules = load_rules(settings)
    with db.one_off_engine(settings.database_url, settings.data_dir, pool_size=2) as engine:
        return _drain(settings, engine, rules)


def _drain(settings: Settings, engine: sa.Engine, rules: RuleEngine | None) -> Drained:
    reader = journal.from_settings(settings, engine)  # journal mode: read it to the end first
    if reader is not None:
        try:
            reader.drain()
        finally:
            reader.close()
    applied = _apply_stage(settings, engine, rules).drain()
    fetched = None
    hydrator = _hydrate_stage(settings, engine)
    if hydrator is not None:
        fetched = hydrator.drain()
        hydrator.close()
    runner = _act_stage(settings, engine, rules)
    ran = runner.drain()
    runner.close()
    return Drained(applied, fetched, ran)


def _engine(settings: Settings) -> sa.Engine:
    # Strict, unlike `--drain`: a long-running worker deployed without DATABASE_URL must stop
    # here, not wait forever on an empty embedded database of its own.
    if settings.database_url is None:
        raise SettingsError(
            "DATABASE_URL is not set: `worker` needs the service's database"
            " (only `worker --drain` falls back to dev's embedded one)"
        )
    # The stages share one pool; the pipelined hydrate stage alone uses up to 5 connections at
    # once (its read, two claim threads, two writers).
    return db.create_engine(settings.database_url, pool_size=4)


@contextmanager
def in_background(settings: Settings, url: str) -> Iterator[None]:
    """`dev` runs a worker beside the web server, in threads, until the server stops."""
    rules = load_rules(settings)
    engine = db.create_engine(url, pool_size=4)
    stop = threading.Event()
    apply = _apply_stage(settings, engine, rules)
    thread = threading.Thread(target=apply.run, args=(stop,), name="worker", daemon=True)
    with (
        _stages(settings, engine, stop, rules) as stages,
        Heartbeat(engine, ("apply", *stages), last_batch=lambda: apply.last_batch_at),
    ):
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)
    engine.dispose()


def _apply_stage(settings: Settings, engine: sa.Engine, rules: RuleEngine | None) -> Worker:
    return Worker(
        engine,
        batch_size=settings.worker_batch_size,
        max_attempts=settings.max_attempts,
        poll_seconds=settings.worker_poll_seconds,
        rules=rules,
        # Rules once per change: with the journal, a change can arrive twice.
        dedupe_changes=settings.event_source != "push",
    )


def _act_stage(settings: Settings, engine: sa.Engine, rules: RuleEngine | None) -> ActionRunner:
    return ActionRunner(
        engine,
        rules.rules if rules is not None else [],
        settings,
        api=client.from_settings(settings, engine),
    )


def _hydrate_stage(settings: Settings, engine: sa.Engine) -> Hydrator | None:
    api = client.from_settings(settings, engine)
    if api is None:
        log.warning(
            "hydration_disabled",
            extra={"reason": "set HUBSPOT_ACCESS_TOKEN or HUBSPOT_CLIENT_ID to fetch records"},
        )
        return None
    return Hydrator(
        engine,
        api,
        settings.mirror_properties,
        max_attempts=settings.max_attempts,
        pipelined=True,
    )


@contextmanager
def _stages(
    settings: Settings, engine: sa.Engine, stop: threading.Event, rules: RuleEngine | None
) -> Iterator[list[str]]:
    """The stages that call out run in threads of their own beside the apply loop (their
    names are yielded)."""
    threads: list[threading.Thread] = []

    def start(name: str, step: Callable[[], int], idle: float, wakeup: Wakeup | None) -> None:
        kwargs = {"idle_seconds": idle, "wakeup": wakeup}
        thread = threading.Thread(
            target=run_loop, args=(name, step, stop), kwargs=kwargs, name=name, daemon=True
        )
        threads.append(thread)

    runner = _act_stage(settings, engine, rules)
    # The act stage wakes on the outbox's NOTIFY: a run starts as soon as its event is applied.
    start(
        "act",
        runner.run_once,
        min(1.0, settings.worker_poll_seconds),  # retries come due by time, not by NOTIFY
        Wakeup(engine, outbox.ACTIONS_CHANNEL),
    )
    hydrator = _hydrate_stage(settings, engine)
    if hydrator is not None:
        api = hydrator.api
        interval = settings.reconcile_interval_seconds
        if interval is not None:

            def scheduled_reconcile() -> int:
                return run_reconcile(engine, api, settings)  # then wait for the next interval

            start("reconcile", scheduled_reconcile, interval, None)
        if rules is not None and rules.uses_stage_labels:

            def stage_labels() -> int:
                refresh_stale(engine, api, known_portals(engine))
                return 0  # then wait

            start("pipelines", stage_labels, PIPELINES_REFRESH_SECONDS, None)
        # Woken by the fetch queue's NOTIFY: records asked for by the apply stage (creations,
        # restores, merges) are fetched at once, not at the next poll.
        start(
            "hydrate",
            hydrator.run_once,
            settings.worker_poll_seconds,
            Wakeup(engine, fetches.CHANNEL),
        )
    if settings.alert_slack_webhook_url or settings.alert_webhook_url:
        start("alerts", Alerts(engine, settings).step, settings.alert_interval_seconds, None)
    reader = journal.from_settings(settings, engine)  # HUBSPOT_EVENT_SOURCE journal or both
    if reader is not None:  # a round that stored entries is followed by the next at once
        start("journal", reader.run_once, settings.journal_poll_seconds, None)
    if settings.partition_upkeep:  # off: someone else keeps them (bench/soak.py's fast clock)
        start("partitions", lambda: keep_partitions(engine, settings), PARTITIONS_SECONDS, None)
    for thread in threads:
        thread.start()
    try:
        yield [thread.name for thread in threads]
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        runner.close()
        if hydrator is not None:
            hydrator.close()
        if reader is not None:
            reader.close()
