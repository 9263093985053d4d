"""The composition root: the one place that turns :class:`Settings` into running parts.

The daemon, `mailward scan` and the tests build their runtime here, so they run
the same wiring. Scanning parts (rules, model, parser sandbox) are built only
when this process scans itself: with worker processes the caller passes the
pool as the ``scanner`` and this process loads no detector at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .config import Settings
from .envelope import DirectionRules, Envelope
from .errors import MailwardError
from .evidence import Evidence
from .pipeline import Inspector
from .screening import Scanner, Screener, Workers
from .verdict import Relayed

if TYPE_CHECKING:
    from .incidents import IncidentResponse
    from .incidents.response import Relay
    from .metrics import Metrics
    from .quarantine import QuarantineStore
    from .source import MessageSource

log = logging.getLogger(__name__)


class Closeable(Protocol):
    def close(self) -> None: ...


def build_inspector(settings: Settings, *, start_sandbox: bool = False) -> Inspector:
    """Every detector the settings enable, composed over one Unpacker (libmagic, parser sandbox).

    ``start_sandbox``: start the parser sandbox first, so it boots while rules and model load
    (a worker, whose warm-up scan needs it at once); else it starts at its first use.
    """
    from . import models, reputation, signatures  # detector packages load rules and models here
    from .incidents.alerts import model_refusal_alert
    from .unpack import Unpacker

    unpacker = Unpacker(settings.limits)
    if start_sandbox:
        unpacker.sandbox.start()
    try:
        spam = models.detectors(settings, on_refusal=model_refusal_alert(settings))
        detectors = (*signatures.detectors(settings), *spam, *reputation.detectors(settings))
    except BaseException:
        unpacker.close()
        raise
    return Inspector(settings.limits, detectors, unpacker)


class InProcessScanner:
    """Scans in the calling thread: `mailward scan`, the tests, and a milter run with no workers."""

    def __init__(self, inspector: Inspector):
        self.inspector = inspector

    @classmethod
    def from_settings(cls, settings: Settings) -> InProcessScanner:
        return cls(build_inspector(settings))

    def scan(self, source: MessageSource, envelope: Envelope) -> Evidence:
        return self.inspector.inspect(source.read(), envelope)

    def close(self) -> None:
        """Stop the parser sandbox this scanner's Unpacker started."""
        if self.inspector.unpacker is not None:
            self.inspector.unpacker.close()


@dataclass(frozen=True)
class Runtime:
    """What one message needs; the daemon swaps in a new one on reload."""

    screener: Screener
    direction: DirectionRules
    spool_dir: Path
    spool_threshold: int
    incidents: IncidentResponse | None = None  # blocks and suspensions; None = none apply
    metrics: Metrics | None = None
    authserv_id: str = ""  # our Authentication-Results id; forged ones are removed
    owned: tuple[Closeable, ...] = ()  # what this runtime opened, closed when it retires
    quarantine: QuarantineStore | None = None  # the store it holds messages in; None = keeps nothing

    def close(self) -> None:
        """Close what this runtime opened; called once no message uses it any more."""
        _close_all(self.owned)

    def kept_incidents(self) -> IncidentResponse:
        """The incident store of a runtime that keeps (the milter's). Raises for one without
        (`mailward scan`), so a caller that needs it fails rather than skipping blocks unseen."""
        if self.incidents is None:
            raise MailwardError("this runtime keeps no incident store")
        return self.incidents


def _close_all(resources: tuple[Closeable, ...]) -> None:
    """Close each of ``resources``; one that fails to close is logged and the rest still close."""
    for resource in resources:
        try:
            resource.close()
        except Exception:
            log.exception("could not close %s", type(resource).__name__)


def build_runtime(
    settings: Settings,
    *,
    scanner: Scanner | None = None,
    workers: Workers | None = None,
    metrics: Metrics | None = None,
    relay: Relay | None = None,
    clock: Callable[[], float] = time.time,
    keep: bool = True,
) -> Runtime:
    """Stores, incident response and screener for ``settings``; scans go to ``scanner``.

    ``workers`` (the milter's pool): each message is screened whole in a worker, which builds its
    own runtime here; this one decides only what no worker finished, with no scanner at all.
    Without either, the runtime scans in process and owns that scanner. ``relay`` (a worker's):
    where its incident response reports, for the milter's metrics, instead of ``metrics``.
    ``keep=False`` (`mailward scan`) decides as the milter would but keeps
    nothing: no quarantine, incident store or release key is opened.
    Whatever is opened here is closed by :meth:`Runtime.close`, and by this
    function when a later part fails to open.
    """
    from .incidents import open_incidents
    from .quarantine import open_store
    from .quarantine.release import ReleaseVerifier
    from .reputation import authserv_id

    owned: list[Closeable] = []
    store: QuarantineStore | None = None
    try:
        if scanner is None and workers is None:
            own = InProcessScanner.from_settings(settings)
            owned.append(own)
            scanner = own
        if not keep:
            screener, incidents = Screener(settings, scanner, None, clock=clock, report=False), None
        else:
            store = open_store(settings, clock)
            owned.append(store)
            incidents = open_incidents(settings, relay or metrics, clock=clock)
            owned.append(incidents)
            screener = Screener(
                settings,
                scanner,
                store,
                clock=clock,
                watch=incidents,
                release=ReleaseVerifier.from_settings(settings, store).accept,
                lists=incidents,
                workers=workers,
            )
    except BaseException:
        _close_all(tuple(reversed(owned)))
        raise
    return Runtime(
        screener,
        settings.direction.rules(),
        Path(settings.state_dir) / "spool",
        settings.milter.spool_threshold,
        incidents,
        metrics,
        authserv_id(settings.reputation),
        owned=tuple(reversed(owned)),
        quarantine=store,
    )


def build_worker_runtime(settings: Settings, scanner: Scanner) -> tuple[Runtime, Callable[[], Relayed]]:
    """A screening worker's runtime (its own stores, incident response and screener, scanning with
    ``scanner``), and what drains the metrics its incident response reported, for the milter."""
    from .incidents.response import Relay

    relay = Relay()
    return build_runtime(settings, scanner=scanner, relay=relay), relay.drain


class LiveRuntime:
    """The current :class:`Runtime` and the retired ones still in use by messages.

    A message leases the runtime current at MAIL FROM and returns it at its
    end; a retired runtime is closed when its last lease returns, so a reload
    never pulls a store from under a message in flight and never leaks one.
    """

    def __init__(self, runtime: Runtime):
        self._lock = threading.Lock()
        self._current = runtime
        self._leases: dict[int, int] = {id(runtime): 0}
        self._retired: dict[int, Runtime] = {}

    @property
    def current(self) -> Runtime:
        return self._current

    def acquire(self) -> Runtime:
        with self._lock:
            runtime = self._current
            self._leases[id(runtime)] += 1
            return runtime

    def release(self, runtime: Runtime) -> None:
        key, done = id(runtime), None
        with self._lock:
            self._leases[key] -= 1
            if not self._leases[key] and key in self._retired:
                done = self._retired.pop(key)
                del self._leases[key]
        if done is not None:
            done.close()

    def swap(self, runtime: Runtime) -> None:
        """Make ``runtime`` current; the old one closes as soon as no message holds it."""
        with self._lock:
            old, self._current = self._current, runtime
            self._leases[id(runtime)] = 0
            idle = not self._leases[id(old)]
            if idle:
                del self._leases[id(old)]
            else:
                self._retired[id(old)] = old
        if idle:
            old.close()

    def close(self) -> None:
        """At stop: close the current runtime (libmilter has ended every connection)."""
        with self._lock:
            runtimes = [self._current, *self._retired.values()]
            self._retired.clear()
        for runtime in runtimes:
            runtime.close()
