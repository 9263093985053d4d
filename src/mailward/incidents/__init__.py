"""Exit-point protection and incident response.

Counters over sliding windows per authenticated account and per client
address, a block list (accounts, addresses, networks, senders, domains) with
expiry, reason and an audit trail, suspensions when an account or host looks
compromised, blocks after repeated failed logins, and alerts to the security
team. State lives in SQLite in the state directory on one host, or in the
quarantine's PostgreSQL database when that backend is configured, so every
milter host counts and blocks together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..actor import Actor
from ..config import Settings
from .alerts import Alert, AlertDispatcher, AlertKind, Delivery, channels_from_settings
from .notices import VirusNotices
from .records import AuditEntry, Block, Origin, SenderEntry, SubjectKind, Totals, normalise
from .response import IncidentResponse, MetricsSink, block_finding
from .store import DB_NAME, IncidentStore, IncidentStoreError

__all__ = [
    "Alert",
    "AlertDispatcher",
    "AlertKind",
    "AuditEntry",
    "Block",
    "Delivery",
    "IncidentResponse",
    "IncidentStore",
    "IncidentStoreError",
    "Origin",
    "SenderEntry",
    "SubjectKind",
    "Totals",
    "block_finding",
    "normalise",
    "open_incidents",
    "open_store",
]


def open_store(settings: Settings, clock: Callable[[], float] = time.time) -> IncidentStore:
    """SQLite in the state directory, or the quarantine's PostgreSQL database when that backend is configured."""
    if settings.quarantine.backend == "postgresql":
        from .store import PostgresIncidentStore

        return PostgresIncidentStore(settings.quarantine.dsn, clock, settings.quarantine.write_timeout)
    from .store import SqliteIncidentStore

    return SqliteIncidentStore(Path(settings.state_dir) / DB_NAME, clock, settings.quarantine.write_timeout)


def open_incidents(
    settings: Settings,
    metrics: MetricsSink | None = None,
    clock: Callable[[], float] = time.time,
    actor: Actor | None = None,
) -> IncidentResponse:
    """The configured store and alert channels, ready for the milter or the CLI."""
    alerts = AlertDispatcher(
        channels_from_settings(settings),
        settings.alerts.dedup_window,
        settings.alerts.rate_limit,
        settings.alerts.rate_period,
        clock,
        metrics.alert if metrics is not None else None,
    )
    store = open_store(settings, clock)
    notices = (
        VirusNotices(settings, clock)
        if (settings.policy.inbound.notify_virus or settings.policy.outbound.notify_virus)
        else None
    )
    try:
        return IncidentResponse(settings, store, alerts, metrics, clock, actor, notices)
    except BaseException:
        store.close()
        raise
