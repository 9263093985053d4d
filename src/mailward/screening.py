"""Screen one message: inspect, decide, quarantine. Shared by the milter, its workers and `mailward scan`.

Knows nothing of pymilter: the milter adapter hands it an envelope and the
message bytes and turns the returned :class:`Outcome` into milter actions. The
one promise kept here: a message the policy quarantines is either stored or
tempfailed, never accepted.

With worker processes the whole of :meth:`Screener.screen` (scan, decide,
store, count, log) runs in a worker, on a screener of the worker's own built
from the same settings; the milter's screener hands the message over and only
decides itself what no worker finished (the fallback), with the same policy.
"""

from __future__ import annotations

import contextvars
import ipaddress
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from .config import DirectionPolicy, Settings
from .envelope import Envelope
from .errors import ScanFailed, StoreError
from .evidence import NOTHING_KNOWN, Category, Evidence, Finding, MarkProof, retry_key
from .logs import log_context
from .message import split_message
from .policy import Inputs, Listed, Mark, Share, decide, decide_failure, split, stops
from .source import MessageSource
from .verdict import Action, Outcome, Relayed, Verdict, new_incident_id

log = logging.getLogger(__name__)


class Scanner(Protocol):
    """Parses one message and runs the detectors over it: in process, or in a worker (the pool).

    A deadline or CPU overrun comes back as evidence; a scanner that cannot
    answer at all raises :class:`ScanFailed`, and the policy's ``on_error`` applies.
    """

    def scan(self, source: MessageSource, envelope: Envelope) -> Evidence: ...


class Quarantine(Protocol):
    def put(self, raw: MessageSource, envelope: Envelope, verdict: Verdict, evidence: Evidence) -> str: ...

    def withdraw(self, quarantine_id: str) -> None:
        """Remove ``quarantine_id`` if it was stored and answered no retry (in the background)."""
        ...


class Workers(Protocol):
    """Screens whole messages in worker processes (workers.ScanPool), each with a screener of its own.

    Returns the worker's outcome (stored, counted and logged there) with what
    its incident response did, or, when no worker finished (deadline,
    CPU limit), the unchecked evidence to decide on here. Raises
    :class:`ScanFailed` when the worker died or failed, :class:`StoreError` when
    it scanned but did not answer in time after (its store or response stalled).
    """

    def screen(
        self, source: MessageSource, envelope: Envelope, known: Evidence, incident: str, started: float
    ) -> tuple[Outcome, Relayed] | Evidence: ...


class ReleaseMark(Protocol):
    """What screening reads of a valid mark (quarantine.release.ReleaseMark)."""

    @property
    def kind(self) -> str: ...  # "release" or "alert"

    @property
    def quarantine_id(self) -> str: ...


# The valid mark among those a worker found, if any (quarantine.release.ReleaseVerifier.accept); a release
# mark is used up by it.
Release = Callable[[MarkProof, Envelope], ReleaseMark | None]


class SenderLists(Protocol):
    """The allow or block entry for this sender and recipient, if any (incidents.senderlists)."""

    def listed(self, envelope: Envelope, recipient: str, authenticated: tuple[str, ...]) -> Listed | None: ...


class Watch(Protocol):
    """Sees every outcome after the decision (incident response: counters, suspensions, alerts)."""

    def triage(self, outcome: Outcome) -> Callable[[], object] | None:
        """Does the cheap part at once (in memory); returns the part that may wait on a database, or None."""
        ...

    def replay(self, events: Relayed) -> None:
        """Report what a worker's incident response did (metrics, blocks it created)."""
        ...


WATCH_BUDGET = 1.0  # seconds the reply waits for incident response (counters, alerts)
WATCHERS = 4  # threads that run incident response; more outcomes queue for them
WATCHER_IDLE = 30.0  # seconds a watcher thread waits for work before it ends


class _Watchers:
    """Threads that outlive one message and run incident response, started as needed.

    Starting a thread per message cost more CPU than the counting itself.
    Daemon threads, so a stalled database cannot keep the process alive; an
    idle one ends after :data:`WATCHER_IDLE`, so a screener replaced by a
    reload leaves none behind.
    """

    def __init__(self, size: int = WATCHERS):
        self._size = size
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._waiting = 0

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)
        with self._lock:
            if self._waiting == 0 and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._run, name="observe", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._waiting += 1
            try:
                job = self._jobs.get(timeout=WATCHER_IDLE)
            except queue.Empty:
                with self._lock:
                    self._waiting -= 1
                    if self._jobs.empty():
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._waiting -= 1
            job()


class Screener:
    def __init__(
        self,
        settings: Settings,
        scanner: Scanner | None,
        quarantine: Quarantine | None,
        clock: Callable[[], float] = time.time,
        watch: Watch | None = None,
        release: Release | None = None,
        lists: SenderLists | None = None,
        workers: Workers | None = None,
        report: bool = True,
    ):
        """``workers``: screen in those processes, deciding here only what none finished.
        ``report``: write each outcome's summary line (`mailward scan` prints its own instead)."""
        self.settings = settings
        self._lists = lists
        self._workers = workers
        self._reports = report
        self._release = release
        self._scanner = scanner
        self._quarantine = quarantine
        self._clock = clock
        self._watch = watch
        self._watchers = _Watchers()

    def screen(
        self,
        source: MessageSource,
        envelope: Envelope,
        known: Evidence = NOTHING_KNOWN,
        *,
        incident: str = "",
        started: float | None = None,
    ) -> Outcome:
        """``known``: evidence from before the content, e.g. a block whose action is not a reject.
        ``incident`` and ``started`` (``time.perf_counter()``, one clock for every process of the
        host): the milter's, when a worker screens the message it handed over.

        Every line logged while screening (scan, store, incident response) names the message and its
        incident, and the one summary line of the message is written here, wherever this runs.
        """
        started = time.perf_counter() if started is None else started
        incident = incident or new_incident_id(self._clock())
        if self._workers is not None:  # the worker sets the log context there; the fallback sets its own
            return self._hand_over(self._workers, source, envelope, known, incident, started)
        return self._screen_reported(source, envelope, known, incident, started)

    def _screen_reported(
        self,
        source: MessageSource,
        envelope: Envelope,
        known: Evidence,
        incident: str,
        started: float,
        scanned: Evidence | None = None,
        failed: str = "",
        why: str = "",
    ) -> Outcome:
        """:meth:`_screen` in the message's log context, then its summary line. ``why``: a warning
        logged first in that context (the fallback's reason)."""
        with log_context(
            queue_id=envelope.queue_id,
            connection_id=envelope.connection_id,
            incident_id=incident,
            direction=envelope.direction.value,
        ):
            if why:
                log.warning("%s", why)
            outcome = self._screen(source, envelope, known, incident, started, scanned, failed)
            if self._reports:
                report(outcome)
            return outcome

    def _hand_over(
        self,
        workers: Workers,
        source: MessageSource,
        envelope: Envelope,
        known: Evidence,
        incident: str,
        started: float,
    ) -> Outcome:
        """A worker screens the message; what none finished is decided here, as if scanned here.

        A worker given up on (past the deadline, over its CPU limit, dead) was killed first, so it can
        commit nothing more: what it may have stored under ``incident`` is withdrawn, and the message
        is decided under a new incident ID (the retry key makes a fallback put of the same message
        answer with the worker's record if that one is still there, so it is kept once either way).
        """
        scanned: Evidence | None = None
        error = ""
        try:
            result = workers.screen(source, envelope, known, incident, started)
            if isinstance(result, tuple):
                outcome, relayed = result
                if relayed and self._watch is not None:
                    self._watch.replay(relayed)
                return outcome
            scanned = result
        except ScanFailed as exc:
            error = str(exc)
        except StoreError as exc:
            error = f"stalled after its scan: {exc}"
        except Exception as exc:  # e.g. an answer that does not read: what the worker stored must not stay
            log.exception("could not take the worker's answer")
            error = f"{type(exc).__name__}: {exc}"
        if self._quarantine is not None:
            self._quarantine.withdraw(incident)
        why = f"no worker finished screening incident {incident} ({error or 'unchecked'}); decided here"
        fallback = new_incident_id(self._clock())
        return self._screen_reported(source, envelope, known, fallback, started, scanned, error, why)

    def _screen(
        self,
        source: MessageSource,
        envelope: Envelope,
        known: Evidence,
        incident: str,
        started: float,
        scanned: Evidence | None = None,
        failed: str = "",
    ) -> Outcome:
        """Scan (unless ``scanned`` is given, or ``failed`` says the scan failed), decide, store, watch."""
        policy = self.settings.policy.for_direction(envelope.direction)
        evidence, error = known, ""
        held: Share | None = None
        try:
            if failed:
                raise ScanFailed(failed)
            if scanned is None:
                if self._scanner is None:
                    raise ScanFailed("no scanner")
                scanned = self._scanner.scan(source, envelope)
            evidence = known.merged(scanned)
            shares = self._decide(evidence, envelope, incident, None)
            released_from = alert_of = ""
            if any(stops(s.verdict) for s in shares) and self._release is not None and evidence.marks is not None:
                # An analyst released this exact message to these recipients (HMAC over ID, time, body and
                # recipients; once), or it is our own alert: deliver it, tagged.
                mark = self._release(evidence.marks, envelope)
                if mark is not None:
                    released = mark.kind == "release"
                    released_from, alert_of = (mark.quarantine_id, "") if released else ("", mark.quarantine_id)
                    shares = self._decide(evidence, envelope, incident, Mark.RELEASE if released else Mark.ALERT)
            decision = split(shares)
            verdict, held = decision.delivered.verdict, decision.held
        except ScanFailed as exc:
            verdict, error = decide_failure(policy, incident), str(exc)
            released_from = alert_of = ""
        quarantine_id, store_failed = "", False
        if verdict.action is Action.REJECT and evidence.of(Category.MALWARE) and self._quarantine is not None:
            evidence = _keyed(evidence, source, envelope)
            quarantine_id = self._keep_sample(self._quarantine, source, envelope, verdict, evidence)
        kept = (
            (envelope, verdict)
            if verdict.action is Action.QUARANTINE
            else (replace(envelope, recipients=held.recipients), held.verdict)
            if held is not None
            else None
        )
        if kept is not None and self._quarantine is not None:
            t0 = time.perf_counter()
            evidence = _keyed(evidence, source, envelope)
            try:
                quarantine_id = self._quarantine.put(source, kept[0], kept[1], evidence)
                if quarantine_id != incident:  # a retry answered with its earlier delivery's record: reply with its ID
                    verdict = replace(verdict, incident_id=quarantine_id)
                    held = replace(held, verdict=replace(held.verdict, incident_id=quarantine_id)) if held else None
            except StoreError as exc:
                # Never accept what we were told to quarantine and could not keep.
                # What the policy acted on still counts (incident response: malware alerts, spam counters).
                acted_on = verdict.acted_on + (held.verdict.acted_on if held is not None else ())
                verdict = Verdict(
                    Action.TEMPFAIL, ("error",), incident, verdict.spam_score, acted_on=tuple(dict.fromkeys(acted_on))
                )
                error, store_failed, held = str(exc), True, None
            evidence = replace(evidence, timings=evidence.timings + (("quarantine", time.perf_counter() - t0),))
        outcome = Outcome(
            envelope,
            verdict,
            evidence,
            source.size,
            quarantine_id,
            error,
            time.perf_counter() - started,
            store_failed,
            released_from,
            alert_of,
            held.recipients if held is not None else (),
            held.verdict if held is not None else None,
        )
        if self._watch is not None:
            # The reply is due within message_deadline + write_timeout of the start (the sum the MTA's
            # milter timeout is set above): a slow scan and store leave the watch less, or no, time.
            left = (
                self.settings.milter.message_deadline
                + self.settings.quarantine.write_timeout
                - (time.perf_counter() - started)
            )
            try:
                follow_up = self._watch.triage(outcome)
            except Exception:  # counting and alerting never change what happens to the message
                log.exception("incident response failed")
                follow_up = None
            if follow_up is not None:
                self._observe(follow_up, min(WATCH_BUDGET, max(left, 0.0)))
        return outcome

    def refuse_before_data(self, envelope: Envelope, known: Evidence, incident: str) -> Outcome | None:
        """The outcome if the policy refuses this client or sender now (reject, tempfail), else None.

        ``known`` is what was learnt before the content (a block list entry,
        under its own ``incident``). A policy that tags or quarantines it waits
        for the content: the adapter passes ``known`` on to :meth:`screen`.
        """
        policy = self.settings.policy.for_direction(envelope.direction)
        verdict = decide(known, policy, incident)
        if verdict.action not in (Action.REJECT, Action.TEMPFAIL):
            return None
        return Outcome(envelope, verdict, known, 0)

    def failure(self, envelope: Envelope, error: str, size: int = 0) -> Outcome:
        """The direction's ``on_error`` outcome for a message that could not be screened at all.

        The adapter's callbacks failed (or the MTA's commands came out of
        order): the message was never seen whole, so it is never accepted
        unchecked unless the admin chose ``on_error = "accept"``.
        """
        policy = self.settings.policy.for_direction(envelope.direction)
        verdict = decide_failure(policy, new_incident_id(self._clock()))
        return Outcome(envelope, verdict, Evidence(), size, error=error)

    def _decide(self, evidence: Evidence, envelope: Envelope, incident: str, mark: Mark | None) -> list[Share]:
        """One verdict per group of recipients with the same policy and sender list entry."""
        groups: dict[tuple[DirectionPolicy, Listed | None], list[str]] = {}
        for recipient in envelope.recipients or ("",):
            policy = self.settings.policy.for_recipient(envelope.direction, envelope.mail_from, recipient)
            listed = (
                self._lists.listed(envelope, recipient, evidence.authenticated) if self._lists is not None else None
            )
            groups.setdefault((policy, listed), []).append(recipient)
        hold = self.settings.quarantine.hold
        return [
            Share(tuple(r for r in recipients if r), decide(evidence, policy, incident, Inputs(listed, mark, hold)))
            for (policy, listed), recipients in groups.items()
        ]

    def _observe(self, follow_up: Callable[[], object], wait: float) -> None:
        """Run what incident response left for the database, waiting for it at most ``wait`` (≤ :data:`WATCH_BUDGET`).

        The verdict is final (and a quarantined message stored) before this;
        counting and alerting never change it. A stalled incident database
        must not hold the reply past the MTA's milter timeout either, or the
        MTA would tempfail a message that is already stored and its retry
        would be kept twice: so it runs on a watcher thread and a slow one
        finishes in the background (later ones queue behind it). Most
        messages leave nothing for it (a limit reached, a suspension, does).
        """
        done = threading.Event()

        def observe() -> None:
            try:
                follow_up()
            except Exception:  # counting and alerting never change what happens to the message
                log.exception("incident response failed")
            finally:
                done.set()

        # A watcher thread has its own context: the watch runs in a copy of this one, so its lines name the message.
        context = contextvars.copy_context()
        self._watchers.submit(lambda: context.run(observe))
        if not done.wait(wait):
            log.warning("incident response not done within %.1f s; replying without waiting for it", wait)

    def _keep_sample(
        self, quarantine: Quarantine, source: MessageSource, envelope: Envelope, verdict: Verdict, evidence: Evidence
    ) -> str:
        """Rejected malware stays in the quarantine as a sample (status ``rejected``) for analysts.

        The sender gets the 5xx whatever happens here: a store failure costs the sample, not the verdict.
        """
        try:
            return quarantine.put(source, envelope, verdict, evidence)
        except StoreError:
            log.exception("could not keep the rejected sample")
            return ""


def _keyed(evidence: Evidence, source: MessageSource, envelope: Envelope) -> Evidence:
    """``evidence`` with the message's retry key, taken only for a message about to be stored.

    Most messages are delivered or refused and never need one; a stored one's sender retry
    must find its record (:func:`mailward.evidence.retry_key`), scanned or not.
    """
    if evidence.message.retry_key:
        return evidence
    raw = source.read()
    key = retry_key(raw, len(split_message(raw)[0]), envelope.queue_id, envelope.mail_from, envelope.recipients)
    return replace(evidence, message=replace(evidence.message, retry_key=key))


def report(outcome: Outcome) -> None:
    """The one summary line of a message (or of a transaction refused before its content)."""
    log.info("%s %s", outcome.verdict.action.value, outcome.verdict.incident_id, extra={"event": event_of(outcome)})


def event_of(outcome: Outcome) -> dict[str, Any]:
    """The ECS document fragment of one message's summary log line."""
    env, verdict, evidence = outcome.envelope, outcome.verdict, outcome.evidence
    files = [_ecs_file(f) for f in evidence.findings if f.sha256]
    doc = {
        "event": {
            "kind": "event",
            "category": ["email"],
            "type": ["info"],
            "action": verdict.action.value,
            "outcome": "failure" if outcome.error else "success",
            "duration": int(outcome.seconds * 1e9),
            "id": verdict.incident_id,
        },
        "email": {
            "direction": env.direction.value,
            "from": {"address": [env.mail_from] if env.mail_from else []},
            "to": {"address": list(env.recipients)},
            "local_id": env.queue_id,
            "subject": evidence.message.subject or None,
            "message_id": evidence.message.message_id or None,
        },
        "source": {"ip": env.client_address or None, "domain": source_domain(env.client_name)},
        "host": {"name": socket.gethostname()},
        "user": {"name": env.auth_user} if env.auth_user else {},
        "mailward": {
            "verdict": verdict.action.value,
            "reasons": list(verdict.reasons),
            "incident_id": verdict.incident_id,
            "spam_score": verdict.spam_score,
            "size": outcome.size,
            "quarantine_id": outcome.quarantine_id or None,
            "hold": verdict.hold,
            "released_from": outcome.released_from or None,
            "held_recipients": list(outcome.held) or None,
            "findings": [dict(f.as_dict(), **({"file": _ecs_file(f)} if f.sha256 else {})) for f in evidence.findings],
            "clues": [c.as_dict() for c in (evidence.spam.clues if evidence.spam else ())],
            "timings_ms": {stage: round(sec * 1000, 3) for stage, sec in evidence.timings},
        },
    }
    if files:
        doc["file"] = files[0]  # ECS has one file per event: the first object a finding names
    if outcome.error:
        doc["error"] = {"message": outcome.error}
    return doc


def _ecs_file(finding: Finding) -> dict[str, Any]:
    return {
        "hash": {"sha256": finding.sha256},
        "name": finding.file_name or None,
        "mime_type": finding.mime_type or None,
    }


def source_domain(client_name: str) -> str | None:
    """The client's verified host name; Postfix's ``[1.2.3.4]`` and ``unknown`` are no domain at all."""
    name = client_name.strip().rstrip(".")
    if not name or name.lower() == "unknown" or name.startswith("[") or ":" in name:
        return None
    if not name.replace(".", "").isdigit():  # no IPv4 literal: a name (and no exception raised per message)
        return name.lower()
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.lower()
    return None
