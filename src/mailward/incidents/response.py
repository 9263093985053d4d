"""Incident response: count what senders do, suspend what looks compromised, block, and tell someone.

One :class:`IncidentResponse` per milter runtime (and per CLI run). The milter
asks it, per connection and per transaction, whether a block applies
(:meth:`client_block`, :meth:`sender_block`: in-memory, see
:mod:`.blocklist`), and hands it every screened message (:meth:`triage`:
counted in memory, see :mod:`.counting`; only a limit reached waits on the
store). The log follower hands it failed logins (:meth:`failed_login`).

Counting failures never fail mail: a database error is logged and the
message goes on as if no limit applied.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..actor import Actor
from ..addresses import IPAddress, client_ip, policy_subject
from ..config import CounterLimits, Settings
from ..envelope import Direction, Envelope
from ..errors import ConfigError
from ..evidence import Category, Finding, Severity
from ..policy import Listed
from ..verdict import Outcome, Relayed, new_incident_id
from .alerts import Alert, AlertDispatcher, AlertKind
from .blocklist import BlockList
from .counting import Flusher, WindowCounts
from .notices import VirusNotices
from .records import (
    Block,
    Counter,
    Metric,
    Origin,
    SenderEntry,
    SubjectKind,
    Totals,
    block_duration,
    new_subject,
    normalise,
)
from .senderlists import SenderLists
from .store import CountKey, IncidentStore, IncidentStoreError

log = logging.getLogger(__name__)

PRUNE_EVERY = 300.0  # seconds between deletions of counter rows older than every window
GUESSER_PREFIX_V6 = 64  # failed logins from one IPv6 /64 count, and are blocked, as one guesser

_SYMPTOM = {
    Metric.MESSAGES: "message burst",
    Metric.RECIPIENTS: "recipient flood",
    Metric.SPAM: "spam burst",
    Metric.MALWARE: "malware sent",
}


class MetricsSink(Protocol):
    def block_created(self, kind: str, origin: str) -> None: ...
    def failed_login(self) -> None: ...
    def stage(self, name: str, seconds: float) -> None: ...
    def alert(self, what: str, label: str, result: str) -> None: ...


class Relay:
    """The metrics of a screening worker's incident response, recorded for the milter to replay.

    The Prometheus metrics live in the milter process; a worker's blocks, alerts and counting
    times reach them with its next answer (:meth:`IncidentResponse.replay`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, tuple[str | float, ...]]] = []

    def block_created(self, kind: str, origin: str) -> None:
        self._add("block_created", (kind, origin))

    def failed_login(self) -> None:
        self._add("failed_login", ())

    def stage(self, name: str, seconds: float) -> None:
        self._add("stage", (name, seconds))

    def alert(self, what: str, label: str, result: str) -> None:
        self._add("alert", (what, label, result))

    def _add(self, name: str, args: tuple[str | float, ...]) -> None:
        with self._lock:
            self._events.append((name, args))

    def drain(self) -> Relayed:
        """What was recorded since the last drain."""
        with self._lock:
            events, self._events = tuple(self._events), []
        return events


_RELAYED = frozenset({"block_created", "failed_login", "stage", "alert"})


@dataclass(frozen=True)
class Subject:
    """Whose counters one message adds to, with the limits that apply."""

    counter: Counter
    kind: SubjectKind
    value: str
    limits: CounterLimits

    @property
    def label(self) -> str:
        return f"{self.kind.value} {self.value}"


def block_finding(block: Block) -> Finding:
    """A block as evidence: the policy's ``blocked_action`` decides what happens to the mail."""
    return Finding(
        Category.BLOCKED,
        f"{block.origin.value}:{block.kind.value}",
        Severity.CRITICAL,
        "incidents",
        f"{block.kind.value} {block.value}",
        block.reason,
    )


class IncidentResponse:
    def __init__(
        self,
        settings: Settings,
        store: IncidentStore,
        alerts: AlertDispatcher,
        metrics: MetricsSink | None = None,
        clock: Callable[[], float] = time.time,
        actor: Actor | None = None,
        notices: VirusNotices | None = None,
    ):
        self.settings = settings
        self.store = store
        self.alerts = alerts
        self.notices = notices
        self.metrics = metrics
        self._clock = clock
        self._actor = actor or Actor.service()
        self._config = settings.incidents
        try:
            self._exempt = tuple(ipaddress.ip_network(n, strict=False) for n in self._config.exempt_networks)
        except ValueError as exc:
            raise ConfigError(settings.source, "incidents.exempt_networks", str(exc)) from None
        self.blocklist = BlockList(store.active_blocks, self._config.refresh, clock)
        self.sender_lists = SenderLists(store.sender_entries, self._config.refresh, clock)
        self._pruned_at = clock()
        self._subjects = {
            Counter.ACCOUNT: (SubjectKind.ACCOUNT, self._config.account),
            Counter.OUTBOUND_HOST: (SubjectKind.ADDRESS, self._config.outbound_host),
            Counter.INBOUND_HOST: (SubjectKind.ADDRESS, self._config.inbound_host),
        }
        # The limits that are on, per counter: looked up for every message, so worked out once.
        self._on = {counter: _checked(limits) for counter, (_, limits) in self._subjects.items()}
        windows = {counter: self._subjects[counter][1].window for counter, on in self._on.items() if on}
        self.counts = WindowCounts(store, windows, clock)
        self._flusher = Flusher(self.counts, self._config.flush_interval, self._check_flushed, self._prune_now_and_then)

    def close(self) -> None:
        """Flush the counters (a clean stop or reload drops none), then close the channels and the store."""
        self._flusher.close(self.store.timeout)
        self.alerts.close()
        if self.notices is not None:
            self.notices.close()
        self.store.close()

    # -- checks the milter makes ------------------------------------------------------------------

    def client_block(self, address: str) -> Block | None:
        return self.blocklist.for_client(address)

    def sender_block(self, account: str, mail_from: str) -> Block | None:
        return self.blocklist.for_sender(account, mail_from)

    def listed(self, envelope: Envelope, recipient: str, authenticated: tuple[str, ...]) -> Listed | None:
        """The sender list entry honoured for this recipient (see :mod:`.senderlists`)."""
        return self.sender_lists.listed(envelope, recipient, authenticated)

    # -- what happened ------------------------------------------------------------------------------

    def replay(self, events: Relayed) -> None:
        """Report what a worker's incident response did: into this process's metrics, and a block it
        created into the block list at once, so the next connection of a suspended host is refused
        here without waiting for ``incidents.refresh``."""
        for name, args in events:
            if name == "block_created":
                self._refresh()
            if self.metrics is not None and name in _RELAYED:
                getattr(self.metrics, name)(*args)

    def observe(self, outcome: Outcome) -> Block | None:
        """Alert on malware and store errors, count the message, suspend on a limit; the new block if any."""
        settle = self.triage(outcome)
        return settle() if settle is not None else None

    def triage(self, outcome: Outcome) -> Callable[[], Block | None] | None:
        """Alert on malware and store errors and count the message, in memory; what is left, if anything.

        What is left (a limit reached: settle the sums with the store, suspend)
        waits on the database; the screener runs it on a watcher thread with a bounded wait.
        """
        env, evidence = outcome.envelope, outcome.evidence
        if outcome.alert_of:  # our own alert quotes what it reports: no alert about it, no counting
            return None
        # What counted is what the policy acted on: the verdict says so, thresholds are not re-applied here.
        malware = evidence.of(Category.MALWARE) if outcome.acted_on(Category.MALWARE) else ()
        if malware:
            self._alert_malware(outcome, malware)
            if self.notices is not None:
                self.notices.notify(outcome)
        if outcome.quarantine_failed:
            self.alerts.raise_alert(
                Alert(
                    AlertKind.STORE_ERROR,
                    outcome.verdict.incident_id,
                    "Quarantine store failed: a message was tempfailed instead of quarantined",
                    severity="critical",
                    dedup_key="store-error",
                    details=(("direction", env.direction.value), ("queue_id", env.queue_id)),
                    remedy="check the quarantine store (disk, database) on this host; see the Mailward log",
                )
            )
        subject = self._subject(outcome)
        if not self._config.enabled or subject is None:
            return None
        added = Totals(
            messages=1,
            recipients=len(env.recipients),
            spam=int(outcome.acted_on(Category.SPAM)),
            malware=int(bool(malware)),
        )
        started = time.perf_counter()
        try:
            if not self._count(subject, added):
                return None
        finally:
            if self.metrics is not None:
                self.metrics.stage("incidents", time.perf_counter() - started)
        incident_id = outcome.verdict.incident_id
        return lambda: self._settle(subject, incident_id)

    def failed_login(self, address: str) -> Block | None:
        """One failed SMTP AUTH from ``address``; blocks its guesser at ``incidents.auth_failures`` within the
        window. An IPv6 guesser is its /64 (:func:`_guesser`)."""
        ip = client_ip(address)
        if ip is None:
            return None
        if self.metrics is not None:
            self.metrics.failed_login()
        config = self._config
        if not config.enabled or config.auth_failures <= 0:
            return None
        kind, guesser = self._guesser(ip)
        totals = self.store.record(
            Counter.FAILED_LOGINS, guesser, Totals(auth_failures=1), self._clock() - config.auth_window
        )
        self._prune_now_and_then()
        if totals.auth_failures < config.auth_failures or self._exempt_address(str(ip)):
            return None
        if self.blocklist.for_client(str(ip)) is not None:
            return None
        reason = (
            f"{totals.auth_failures} failed SMTP logins in {_span(config.auth_window)} (limit {config.auth_failures})"
        )
        block, created = self._add(
            kind,
            guesser,
            Origin.AUTH_FAILURES,
            reason,
            new_incident_id(self._clock()),
            config.auth_block_for or None,
        )
        if created:
            self.alerts.raise_alert(
                Alert(
                    AlertKind.BLOCK,
                    block.incident_id,
                    f"{kind.value.capitalize()} {guesser} blocked after repeated failed logins",
                    subject=f"{kind.value} {guesser}",
                    details=(("reason", reason), ("expires", _expiry(block))),
                    remedy=f"mailward block remove {kind.value} {guesser}",
                )
            )
        return block if created else None

    def _guesser(self, ip: IPAddress) -> tuple[SubjectKind, str]:
        """Who a failed login is counted against and blocked as: an IPv4 address, or the /64 of an IPv6 one.

        One IPv6 host holds a whole /64 (an end site gets a /48 to /64), so counting
        per address would let it guess from a fresh address each time. A /64 that
        holds an exempt network is the address alone: a block never covers an exempt host.
        """
        if ip.version == 4:
            return SubjectKind.ADDRESS, str(ip)
        network = ipaddress.ip_network(f"{ip}/{GUESSER_PREFIX_V6}", strict=False)
        if any(net.version == 6 and net.overlaps(network) for net in self._exempt):
            return SubjectKind.ADDRESS, str(ip)
        return SubjectKind.NETWORK, str(network)

    # -- analyst actions ------------------------------------------------------------------------------

    def block(
        self, kind: SubjectKind, value: str, reason: str, actor: Actor, duration: float | None = None
    ) -> tuple[Block, bool]:
        """An analyst's block (``duration`` in seconds, None = until lifted); alerts when it is new.
        ValueError for a value no message can have, or a duration of nothing or past ten years."""
        value, duration = new_subject(kind, value), block_duration(duration)
        block, created = self._add(kind, value, Origin.ANALYST, reason, new_incident_id(self._clock()), duration, actor)
        if created:
            self.alerts.raise_alert(
                Alert(
                    AlertKind.BLOCK,
                    block.incident_id,
                    f"{kind.value.capitalize()} {value} blocked by {actor.name}",
                    subject=f"{kind.value} {value}",
                    severity="medium",
                    details=(("reason", reason), ("expires", _expiry(block))),
                    remedy=f"mailward block remove {kind.value} {value}",
                )
            )
        return block, created

    def lift(self, kind: SubjectKind, value: str, actor: Actor, detail: str = "") -> Block | None:
        block = self.store.lift(kind, normalise(kind, value), actor.name, actor.host, actor.origin, detail)
        self._refresh()
        return block

    # -- sender lists: the one service layer under the CLI and the web page -----------------------

    def list_sender(
        self, listed: Listed, sender: str, scope: str, reason: str, actor: Actor
    ) -> tuple[SenderEntry, bool]:
        """Allow or block ``sender`` (address or domain) for ``scope`` ("" = everyone, or a recipient domain
        or address); audited. Returns the active entry and whether this call made it (an existing entry,
        allow or block, is left as it is: remove it first). ValueError for a malformed sender or scope."""
        sender, scope = policy_subject(sender), policy_subject(scope) if scope else ""
        entry, created = self.store.add_sender_entry(
            listed, scope, sender, reason, actor.name, actor.host, actor.origin
        )
        self._refresh()
        return entry, created

    def unlist_sender(self, sender: str, scope: str, actor: Actor, detail: str = "") -> SenderEntry | None:
        """Remove the allow or block entry of ``sender`` for ``scope``; audited. None when there was none."""
        entry = self.store.remove_sender_entry(
            policy_subject(scope) if scope else "", policy_subject(sender), actor.name, actor.host, actor.origin, detail
        )
        self._refresh()
        return entry

    def sender_entries(self, scope: str | None = None) -> list[SenderEntry]:
        """Active allow and block entries; only ``scope``'s when given ("" = the global list)."""
        return self.store.sender_entries(policy_subject(scope) if scope else scope)

    # -- internals ----------------------------------------------------------------------------------------

    def _subject(self, outcome: Outcome) -> Subject | None:
        env, config = outcome.envelope, self._config
        if env.direction is Direction.OUTBOUND and env.auth_user:
            return Subject(Counter.ACCOUNT, SubjectKind.ACCOUNT, env.auth_user, config.account)
        try:
            address = normalise(SubjectKind.ADDRESS, env.client_address)
        except ValueError:
            return None  # e.g. the local sendmail command: no client address
        if env.direction is Direction.OUTBOUND:
            return Subject(Counter.OUTBOUND_HOST, SubjectKind.ADDRESS, address, config.outbound_host)
        return Subject(Counter.INBOUND_HOST, SubjectKind.ADDRESS, address, config.inbound_host)

    def _count(self, subject: Subject, added: Totals) -> bool:
        """Count in memory; True when a limit may be reached (worth settling with the store)."""
        self._flusher.start()
        since = self._clock() - subject.limits.window if self._on[subject.counter] else None
        totals = self.counts.add(subject.counter, subject.value, added, since)
        return bool(self._exceeded(subject, totals)) and self._suspendable(subject)

    def _exceeded(self, subject: Subject, totals: Totals) -> list[tuple[Metric, int, int]]:
        return [(m, totals.get(m), limit) for m, limit in self._on[subject.counter].items() if totals.get(m) >= limit]

    def _suspendable(self, subject: Subject) -> bool:
        """Not exempt and not suspended already (this message was in flight when it happened)."""
        if subject.kind is SubjectKind.ADDRESS and self._exempt_address(subject.value):
            return False
        existing = (
            self.blocklist.for_client(subject.value)
            if subject.kind is SubjectKind.ADDRESS
            else self.blocklist.for_sender(subject.value, "")
        )
        return existing is None

    def _settle(self, subject: Subject, incident_id: str) -> Block | None:
        """A limit reached in memory: suspend if the store's sums (every host's) say so too."""
        try:
            return self._suspend_if_over(subject, self.counts.settle(subject.counter, subject.value), incident_id)
        except IncidentStoreError:
            log.exception("cannot update the counters of %s", subject.label)
            return None

    def _check_flushed(self, sums: dict[CountKey, Totals]) -> None:
        """After a flush: suspend what several hosts together took over a limit."""
        for (counter, value), totals in sums.items():
            kind, limits = self._subjects[counter]
            self._suspend_if_over(Subject(counter, kind, value, limits), totals, new_incident_id(self._clock()))

    def _suspend_if_over(self, subject: Subject, totals: Totals, incident_id: str) -> Block | None:
        """Suspend ``subject`` when ``totals`` (the store's) reach a limit; the new block if this call made it."""
        exceeded = self._exceeded(subject, totals)
        if not exceeded or not self._suspendable(subject):
            return None
        limits = subject.limits
        direction = "inbound" if subject.counter is Counter.INBOUND_HOST else "outbound"
        reason = "; ".join(
            f"{direction} {_SYMPTOM[m]}: {total} {m.value} in {_span(limits.window)} (limit {limit})"
            for m, total, limit in exceeded
        )
        block, created = self._add(
            subject.kind, subject.value, Origin.SUSPENSION, reason, incident_id, self._config.suspend_for or None
        )
        if not created:
            return None
        what = "Account" if subject.kind is SubjectKind.ACCOUNT else "Host"
        self.alerts.raise_alert(
            Alert(
                AlertKind.SUSPENSION,
                block.incident_id,
                f"{what} {subject.value} suspended: {exceeded[0][0].value} limit reached ({direction})",
                subject=subject.label,
                severity="critical",
                details=(
                    ("reason", reason),
                    ("expires", _expiry(block)),
                    (
                        "window_totals",
                        f"messages={totals.messages} recipients={totals.recipients} "
                        f"spam={totals.spam} malware={totals.malware}",
                    ),
                ),
                remedy=(
                    f"check the {subject.kind.value} (reset its password, clean the host), then "
                    f"mailward block remove {subject.kind.value} {subject.value}"
                ),
            )
        )
        return block

    def _add(
        self,
        kind: SubjectKind,
        value: str,
        origin: Origin,
        reason: str,
        incident_id: str,
        duration: float | None,
        actor: Actor | None = None,
    ) -> tuple[Block, bool]:
        actor = actor or self._actor
        expires = None if not duration else self._clock() + duration
        block, created = self.store.add_block(
            kind, value, origin, reason, incident_id, actor.name, actor.host, actor.origin, expires
        )
        if created:
            log.warning("%s %s %s: %s", origin.value, kind.value, value, reason, extra={"event": _block_event(block)})
            if self.metrics is not None:
                self.metrics.block_created(kind.value, origin.value)
        self._refresh()
        return block, created

    def _refresh(self) -> None:
        try:
            self.blocklist.reload()
            self.sender_lists.reload()
        except IncidentStoreError:
            log.exception("cannot reload the block list")

    def _exempt_address(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in self._exempt)

    def _prune_now_and_then(self) -> None:
        now = self._clock()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        config = self._config
        longest = max(
            config.account.window, config.outbound_host.window, config.inbound_host.window, config.auth_window
        )
        try:
            self.store.prune(now - longest)
        except IncidentStoreError:
            log.exception("cannot prune old counter events")

    def _alert_malware(self, outcome: Outcome, malware: tuple[Finding, ...]) -> None:
        env, verdict = outcome.envelope, outcome.verdict
        who = env.auth_user or env.mail_from or env.client_address or "unknown sender"
        names = sorted({f.name for f in malware})
        self.alerts.raise_alert(
            Alert(
                AlertKind.MALWARE,
                verdict.incident_id,
                f"Malware in {env.direction.value} mail from {who}: {verdict.action.value}",
                subject=(f"account {env.auth_user}" if env.auth_user else f"sender {env.mail_from}"),
                severity="critical" if env.direction is Direction.OUTBOUND else "high",
                dedup_key=f"malware:{env.direction.value}:{who}:{','.join(names)}",
                details=(
                    ("direction", env.direction.value),
                    ("action", verdict.action.value),
                    ("signatures", ", ".join(names)),
                    ("objects", ", ".join(sorted({f.location for f in malware if f.location}))[:500]),
                    ("sender", env.mail_from),
                    ("client", env.client_address),
                    ("recipients", str(len(env.recipients))),
                    ("queue_id", env.queue_id),
                    ("quarantine_id", outcome.quarantine_id),
                ),
                remedy=(
                    f"mailward quarantine show {outcome.quarantine_id}"
                    if outcome.quarantine_id
                    else "see the Mailward log for the incident"
                ),
            )
        )


def _checked(limits: CounterLimits) -> dict[Metric, int]:
    """The limits that are on (0 = off)."""
    return {m: getattr(limits, m.value) for m in _SYMPTOM if getattr(limits, m.value) > 0}


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _expiry(block: Block) -> str:
    if block.expires_at is None:
        return "until lifted"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(block.expires_at))


def _block_event(block: Block) -> dict[str, object]:
    record = block.as_dict()
    for key in ("created_at", "expires_at", "lifted_at"):  # ISO 8601, as Elastic's date type expects
        if record[key] is not None:
            record[key] = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record[key])) + f".{int(record[key] * 1000) % 1000:03d}Z"
            )
    doc = {
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection"],
            "type": ["denied"],
            "action": block.origin.value,
            "id": block.incident_id,
        },
        "mailward": {"incident_id": block.incident_id, "block": record},
    }
    if block.kind is SubjectKind.ACCOUNT:
        doc["user"] = {"name": block.value}
    elif block.kind is SubjectKind.ADDRESS:
        doc["source"] = {"ip": block.value}
    return doc
