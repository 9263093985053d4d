"""Prometheus metrics of the milter: what it decided, how long stages took, what failed.

One :class:`Metrics` per daemon, with its own registry (no process-global
state): the daemon keeps it across reloads so counters never reset, and
serves it on ``metrics.listen`` (loopback; Prometheus scrapes it, nothing
else should). Metric names are stable; contrib/prometheus/mailward-alerts.yml
is written against them.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .config import parse_host_port
from .errors import ConfigError
from .evidence import Category
from .verdict import Outcome

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .verdict import Outcome

log = logging.getLogger(__name__)

_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "mailward_messages",
            "Messages and rejected connections by direction and verdict",
            ["direction", "verdict", "reason"],
            registry=r,
        )
        self.message_seconds = _Durations(
            "mailward_message_seconds", "Time from end of data to the verdict", "direction", _STAGE_BUCKETS
        )
        self.stage_seconds = _Durations(
            "mailward_stage_seconds",
            "Time per stage (parse, each detector, quarantine, incidents)",
            "stage",
            _STAGE_BUCKETS,
        )
        r.register(self.message_seconds)
        r.register(self.stage_seconds)
        self.detector_errors = Counter(
            "mailward_detector_errors",
            "Detector failures and errors (the message got on_error or an unchecked finding)",
            ["detector"],
            registry=r,
        )
        self.detector_timeouts = Counter(
            "mailward_detector_timeouts", "Detector timeouts and deadlines", ["detector"], registry=r
        )
        self.scan_failures = Counter(
            "mailward_scan_failures",
            "Messages whose scan could not run (worker died, deadline) or whose callbacks failed",
            ["direction"],
            registry=r,
        )
        self.quarantine_failures = Counter(
            "mailward_quarantine_failures", "Messages the quarantine store refused (tempfailed instead)", registry=r
        )
        self.blocks = Counter("mailward_blocks", "Blocks and suspensions created", ["kind", "origin"], registry=r)
        self.failed_logins = Counter(
            "mailward_failed_logins", "Failed SMTP AUTH attempts seen in Postfix's log", registry=r
        )
        self.alerts = Counter(
            "mailward_alerts", "Alerts raised, by kind and what became of them", ["kind", "delivery"], registry=r
        )
        self.alert_deliveries = Counter(
            "mailward_alert_deliveries", "Alert deliveries per channel", ["channel", "result"], registry=r
        )
        self.model_info = Gauge(
            "mailward_model_info", "The spam model version seen in the latest verdict", ["version"], registry=r
        )
        self.rules_info = Gauge("mailward_rules_info", "Digest of the live YARA rule sources", ["version"], registry=r)
        self._model_version = ""
        self._rules_version = ""
        self._lock = threading.Lock()
        self._sources: dict[str, Callable[[], object]] = {}
        self._verdicts: dict[tuple[str, str, str], Counter] = {}
        r.register(_LiveCollector(self._sources))

    # -- per message ---------------------------------------------------------------------------------

    def observe(self, outcome: Outcome) -> None:
        """Count one screened (or failed, or rejected) message."""
        env, verdict, evidence = outcome.envelope, outcome.verdict, outcome.evidence
        direction = env.direction.value
        key = (direction, verdict.action.value, verdict.reasons[0] if verdict.reasons else "")
        counter = self._verdicts.get(key)
        if counter is None:
            counter = self._verdicts.setdefault(key, self.messages.labels(*key))
        counter.inc()
        if outcome.seconds:
            self.message_seconds.observe(((direction, outcome.seconds),))
        self.stage_seconds.observe(evidence.timings)
        for finding in evidence.findings:
            if finding.name == "parse-error":  # malformed input, not a failing detector
                continue
            if finding.category is Category.ERROR or finding.name.endswith(("-error", "-unavailable")):
                self.detector_errors.labels(finding.detector).inc()
            elif finding.name.endswith(("-timeout", "-deadline")):
                self.detector_timeouts.labels(finding.detector).inc()
        if outcome.error:
            self.scan_failures.labels(direction).inc()
        if outcome.quarantine_failed:
            self.quarantine_failures.inc()
        if evidence.spam is not None and evidence.spam.model_version:
            self._set_info(self.model_info, "_model_version", evidence.spam.model_version)

    def set_rules_version(self, version: str) -> None:
        self._set_info(self.rules_info, "_rules_version", version)

    def _set_info(self, gauge: Gauge, attr: str, version: str) -> None:
        if getattr(self, attr) == version:  # every message names the model: no lock while it is the same
            return
        with self._lock:
            old = getattr(self, attr)
            if old == version:
                return
            if old:
                gauge.remove(old)
            gauge.labels(version).set(1)
            setattr(self, attr, version)

    # -- incident response (mailward.incidents calls these) ------------------------------------------

    def block_created(self, kind: str, origin: str) -> None:
        self.blocks.labels(kind, origin).inc()

    def failed_login(self) -> None:
        self.failed_logins.inc()

    def stage(self, name: str, seconds: float) -> None:
        """A stage timed outside the pipeline (``incidents``: counting one message)."""
        self.stage_seconds.observe(((name, seconds),))

    def alert(self, what: str, label: str, result: str) -> None:
        (self.alerts if what == "alert" else self.alert_deliveries).labels(label, result).inc()

    # -- values read at scrape time ----------------------------------------------------------------

    def watch(self, name: str, source: Callable[[], object]) -> None:
        """Read ``source`` at each scrape (``quarantine``: (count, bytes); ``blocks``: {kind: count})."""
        self._sources[name] = source

    # -- serving ---------------------------------------------------------------------------------------

    def serve(self, listen: str, source: str = "<defaults>") -> WSGIServer:
        """Start the HTTP endpoint on ``HOST:PORT``; returns the server (``shutdown()`` stops it)."""
        try:
            host, port = parse_host_port(listen)  # config.py already checked a loaded file's value
        except ValueError as exc:
            raise ConfigError(source, "metrics.listen", str(exc)) from None
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%s/metrics", host, port)
        return server


class _Durations:
    """A histogram of durations by one label, as Prometheus reads it, that takes one lock per message.

    prometheus_client's Histogram takes a lock for the sum and one for the bucket of each
    observation, and a message brings one per detector.
    """

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...]):
        self._name, self._documentation, self._label = name, documentation, label
        self._bounds = buckets  # ascending; +Inf is the last count
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}  # per label value: observations per bucket, not cumulative
        self._sums: dict[str, float] = {}

    def observe(self, observations: Iterable[tuple[str, float]]) -> None:
        """Count each (label value, seconds)."""
        bounds = self._bounds
        with self._lock:
            for value, seconds in observations:
                counts = self._counts.get(value)
                if counts is None:
                    counts = self._counts[value] = [0] * (len(bounds) + 1)
                    self._sums[value] = 0.0
                counts[bisect_left(bounds, seconds)] += 1
                self._sums[value] += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts = {value: list(per_bucket) for value, per_bucket in self._counts.items()}
            sums = dict(self._sums)
        family = HistogramMetricFamily(self._name, self._documentation, labels=[self._label])
        edges = [*map(floatToGoString, self._bounds), "+Inf"]
        for value in sorted(counts):
            family.add_metric([value], list(zip(edges, accumulate(counts[value]), strict=True)), sums[value])
        yield family


class _LiveCollector:
    """Gauges computed at scrape time, cached briefly so a busy scraper cannot load the database."""

    CACHE_SECONDS = 15.0

    def __init__(self, sources: dict[str, Callable[[], object]]):
        self._sources = sources
        self._cache: dict[str, tuple[float, object]] = {}

    def _read(self, name: str) -> Any:
        source = self._sources.get(name)
        if source is None:
            return None
        at, value = self._cache.get(name, (float("-inf"), None))
        if time.monotonic() - at >= self.CACHE_SECONDS:
            try:
                value = source()
            except Exception:
                log.exception("metrics source %s failed", name)
                value = None
            self._cache[name] = (time.monotonic(), value)
        return value

    def collect(self) -> Iterator[GaugeMetricFamily]:
        quarantine = self._read("quarantine")
        if quarantine is not None:
            count, size = quarantine
            yield GaugeMetricFamily("mailward_quarantine_messages", "Messages held in the quarantine", value=count)
            yield GaugeMetricFamily("mailward_quarantine_bytes", "Bytes of messages held in the quarantine", value=size)
        blocks = self._read("blocks")
        if blocks is not None:
            family = GaugeMetricFamily("mailward_blocks_active", "Active blocks and suspensions", labels=["kind"])
            for kind, count in sorted(blocks.items()):
                family.add_metric([kind], count)
            yield family

    def describe(self) -> list[GaugeMetricFamily]:
        return []
