"""The pymilter side: collect what the MTA sends, call the screener, apply the verdict.

No detection happens here. Every callback catches everything: an exception in a
reply callback would send pymilter's own text (naming internals) to the client,
and one in a ``noreply`` callback would leave Postfix waiting for its content
timeout. A failure is remembered and answered at end of message with the
direction's ``on_error`` action and a generic reply: a failure at connect or
HELO for every message of the connection (:class:`Connection`), a later one for
that message (:class:`Transaction`, fresh per message). Nothing fails open.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import secrets
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import Milter

from ..envelope import DirectionRules, Envelope
from ..evidence import Evidence, Finding
from ..incidents import Block, block_finding
from ..policy import decide, decide_failure
from ..reputation import claims_our_id
from ..screening import Outcome, Screener, event_of
from ..verdict import Action, Verdict, new_incident_id
from .buffer import MessageBuffer

if TYPE_CHECKING:
    from ..incidents import IncidentResponse
    from ..metrics import Metrics

log = logging.getLogger(__name__)

OUR_HEADER_PREFIX = "x-mailward-"
AUTH_RESULTS = "authentication-results"
SPAM_FLAG = "x-spam-flag"
SPAM_REASONS = frozenset({"spam", "phishing"})    # what X-Spam-Flag and the subject tag mark


@dataclass(frozen=True)
class Runtime:
    """What one message needs; the daemon swaps in a new one on reload."""

    screener: Screener
    direction: DirectionRules
    spool_dir: Path
    spool_threshold: int
    incidents: IncidentResponse | None = None    # blocks and suspensions; None = none apply
    metrics: Metrics | None = None
    authserv_id: str = ""                         # our Authentication-Results id; forged ones are removed
    owned: tuple = ()                             # stores opened for this runtime, closed when it retires

    def close(self) -> None:
        """Close what this runtime opened; called once no message uses it any more."""
        for resource in self.owned:
            try:
                resource.close()
            except Exception:
                log.exception("could not close %s", type(resource).__name__)


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


@dataclass
class Connection:
    """Facts about the SMTP client, for every message of the connection.

    ``failure`` set by the connect or HELO callback makes every message of
    the connection end in its direction's ``on_error`` verdict.
    """

    id: str
    address: str = ""
    name: str = ""
    helo: str = ""
    daemon: str = ""
    local_submission: bool = False          # the local sendmail command, not an SMTP client
    findings: tuple[Finding, ...] = ()      # a client block whose policy is not to refuse
    failure: str = ""


@dataclass
class Transaction:
    """One message, MAIL FROM to end of message; a fresh one per message so nothing leaks across."""

    runtime: Runtime
    mail_from: str = ""
    auth_user: str = ""
    queue_id: str = ""
    recipients: list[str] = field(default_factory=list)
    findings: tuple[Finding, ...] = ()      # a sender block whose policy is not to refuse
    watched_headers: dict[str, list[str]] = field(default_factory=dict)   # lower-case name -> values
    subject: bytes | None = None            # the first Subject value, as received (for the subject tag)
    buffer: MessageBuffer | None = None
    in_body: bool = False
    failure: str = ""


CONNECTION_CALLBACKS = ("connect", "hello")


def _continue_on_error(callback):
    """Run a callback so it never raises: the error is remembered and answered at end of message."""
    @functools.wraps(callback)
    def guarded(self, *args):
        try:
            return callback(self, *args)
        except Exception:
            self._fail(callback.__name__)
            return Milter.CONTINUE
    return guarded


def _addr(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">")


def _is_local_submission(hostaddr) -> bool:
    """Postfix's non_smtpd_milters announce the sendmail command as a loopback "client" on port 0
    (no TCP connection exists); a real client always has a port. No address at all counts too."""
    if hostaddr is None or hostaddr == "":
        return True
    if not isinstance(hostaddr, tuple) or len(hostaddr) < 2:
        return False
    try:
        return hostaddr[1] == 0 and ipaddress.ip_address(str(hostaddr[0])).is_loopback
    except ValueError:
        return False


@Milter.header_leading_space
class MailwardMilter(Milter.Base):
    def __init__(self, live: LiveRuntime | Runtime):
        self._live = live if isinstance(live, LiveRuntime) else LiveRuntime(live)
        self._connection = Connection(secrets.token_hex(4))
        self._message: Transaction | None = None

    # --- helpers -------------------------------------------------------
    def _begin(self) -> Transaction:
        self._end()
        self._message = Transaction(self._live.acquire())
        return self._message

    def _end(self) -> None:
        """Discard the message's spool and return its runtime lease."""
        message, self._message = self._message, None
        if message is None:
            return
        try:
            if message.buffer is not None:
                message.buffer.discard()
        finally:
            self._live.release(message.runtime)

    @property
    def _runtime(self) -> Runtime:
        return self._message.runtime if self._message is not None else self._live.current

    def _extra(self) -> dict:
        queue_id = self._message.queue_id if self._message is not None else ""
        return {"queue_id": queue_id, "connection_id": self._connection.id}

    def _fail(self, where: str) -> None:
        """Remember an internal error: for the connection (connect, HELO) or this message."""
        log.exception("internal error in %s callback", where, extra=self._extra())
        if where in CONNECTION_CALLBACKS:
            holder = self._connection
        else:
            holder = self._message if self._message is not None else self._begin()
        if not holder.failure:
            holder.failure = f"error in {where}"

    def _macro(self, name: str) -> str:
        try:
            return self.getsymval(name) or ""
        except Exception:
            return ""

    def _refusal(self, block: Block) -> Verdict | None:
        """The verdict if the policy's ``blocked_action`` refuses now (reject, tempfail), else None."""
        envelope = self._envelope()
        evidence = Evidence(findings=(block_finding(block),))
        verdict = decide(evidence, self._runtime.screener.settings.policy.for_direction(envelope.direction),
                         block.incident_id)
        if verdict.action not in (Action.REJECT, Action.TEMPFAIL):
            return None
        self._report(Outcome(envelope, verdict, evidence, 0))
        return verdict

    def _report(self, outcome: Outcome) -> None:
        """The one summary line per message (or refused transaction) and its metrics."""
        log.info("%s %s", outcome.verdict.action.value, outcome.verdict.incident_id,
                 extra={**self._extra(), "event": event_of(outcome)})
        if self._runtime.metrics is not None:
            try:
                self._runtime.metrics.observe(outcome)
            except Exception:
                log.exception("could not update the metrics", extra=self._extra())

    # --- callbacks -----------------------------------------------------
    @_continue_on_error
    def connect(self, hostname, family, hostaddr):
        """A blocked client is refused here, before it can even try AUTH.

        libmilter ignores a custom reply at connect: Postfix answers its own
        generic "554 ... not accepting connections"; our log line has the incident ID.
        """
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else (hostaddr or "")
        client = self._connection
        client.address, client.name, client.daemon = str(address), str(hostname or ""), self._macro("{daemon_name}")
        client.local_submission = _is_local_submission(hostaddr)
        incidents = self._runtime.incidents
        block = incidents.client_block(client.address) if incidents is not None else None
        if block is not None:
            verdict = self._refusal(block)
            if verdict is not None:
                return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
            client.findings = (block_finding(block),)
        return Milter.CONTINUE

    @Milter.noreply
    @_continue_on_error
    def hello(self, hostname):
        self._connection.helo = str(hostname)
        return Milter.CONTINUE

    @_continue_on_error
    def envfrom(self, mailfrom, *params):
        message = self._begin()
        message.mail_from = _addr(mailfrom)
        message.auth_user = self._macro("{auth_authen}")
        message.queue_id = self._macro("i")
        rt = message.runtime
        block = rt.incidents.sender_block(message.auth_user, message.mail_from) if rt.incidents is not None else None
        if block is not None:
            verdict = self._refusal(block)
            if verdict is not None:
                reply = verdict.reply
                self.setreply(reply.code, reply.xcode, reply.text)
                self._end()
                return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
            message.findings = (block_finding(block),)
        message.buffer = MessageBuffer(rt.spool_threshold, rt.spool_dir)
        return Milter.CONTINUE

    @Milter.noreply
    @_continue_on_error
    def envrcpt(self, to, *params):
        self._message.recipients.append(_addr(to))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    @_continue_on_error
    def header(self, name, value):
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        value = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        message = self._message
        if self._connection.failure or message.failure:
            return Milter.CONTINUE          # answered with on_error at end of message; nothing to keep
        message.buffer.add_header(name, value)
        lower = name.lower()
        if lower == "subject" and message.subject is None:
            message.subject = value
        if lower.startswith(OUR_HEADER_PREFIX) or lower in (AUTH_RESULTS, SPAM_FLAG):
            message.watched_headers.setdefault(lower, []).append(value.decode("utf-8", "replace"))
        return Milter.CONTINUE

    @Milter.noreply
    @_continue_on_error
    def body(self, chunk):
        message = self._message
        if self._connection.failure or message.failure:
            return Milter.CONTINUE
        if not message.in_body:
            message.buffer.end_headers()
            message.in_body = True
        message.buffer.add_body(chunk)
        return Milter.CONTINUE

    def eom(self):
        outcome: Outcome | None = None
        try:
            try:
                message = self._message if self._message is not None else self._begin()
                message.queue_id = self._macro("i") or message.queue_id
                failure = self._connection.failure or message.failure
                if failure:
                    outcome = self._failure_outcome(failure)
                else:
                    if not message.in_body:
                        message.buffer.end_headers()
                    outcome = self._screen()
            except Exception:
                self._fail("eom")
                outcome = self._failure_outcome(self._connection.failure or self._message.failure)
            return self._apply(outcome)
        except Exception:
            log.exception("could not apply the verdict", extra=self._extra())
            return self._apply_failure()
        finally:
            try:
                if outcome is not None:
                    self._report(outcome)
            finally:
                self._end()

    def abort(self):
        try:
            self._end()
        except Exception:
            log.exception("abort cleanup failed", extra=self._extra())
        return Milter.CONTINUE

    def close(self):
        try:
            self._end()
        except Exception:
            log.exception("close cleanup failed", extra=self._extra())
        return Milter.CONTINUE

    # --- decision ------------------------------------------------------
    def _envelope(self) -> Envelope:
        client, message = self._connection, self._message
        envelope = Envelope(client_address=client.address, client_name=client.name, helo=client.helo,
                            daemon=client.daemon, connection_id=client.id, local_submission=client.local_submission)
        if message is not None:
            envelope = replace(envelope, mail_from=message.mail_from, recipients=tuple(message.recipients),
                               auth_user=message.auth_user, queue_id=message.queue_id)
        return envelope.with_direction(self._runtime.direction.classify(envelope))

    def _screen(self) -> Outcome:
        message = self._message
        known = Evidence(findings=self._connection.findings + message.findings)
        return message.runtime.screener.screen(message.buffer.source(), message.buffer.size, self._envelope(), known)

    def _failure_outcome(self, failure: str) -> Outcome:
        """The direction's on_error verdict for a message whose callbacks (or connection) failed."""
        envelope = self._envelope()
        policy = self._runtime.screener.settings.policy.for_direction(envelope.direction)
        buffer = self._message.buffer if self._message is not None else None
        return Outcome(envelope, decide_failure(policy, new_incident_id()), Evidence(),
                       buffer.size if buffer is not None else 0, error=failure)

    def _apply(self, outcome: Outcome) -> int:
        verdict = outcome.verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            reply = verdict.reply
            self.setreply(reply.code, reply.xcode, reply.text)
            return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
        for recipient in outcome.held:          # quarantined for them; the others get the message
            self.delrcpt(f"<{recipient}>")
        self._replace_our_headers(verdict)
        for name, value in outcome.evidence.headers:      # trace fields such as Authentication-Results
            self.addheader(name, " " + value, 0)
        if verdict.action is Action.QUARANTINE:
            if verdict.hold:
                self.quarantine(f"Mailward incident {verdict.incident_id}")
                return Milter.ACCEPT
            return Milter.DISCARD        # stored in our quarantine: nothing is lost
        return Milter.ACCEPT

    def _replace_our_headers(self, verdict: Verdict) -> None:
        """Drop what the sender forged in our name (X-Mailward-*, our Authentication-Results), then add ours.

        The MTA numbers a header's occurrences per name, case-insensitively,
        so deleting from the last occurrence backwards keeps indexes valid.
        """
        authserv_id = self._runtime.authserv_id
        marks = self._runtime.screener.settings.headers
        for name, values in self._message.watched_headers.items():
            if name == SPAM_FLAG and not marks.spam_flag:
                continue                  # not ours to vouch for: left as the sender wrote it
            for index in range(len(values), 0, -1):
                if name != AUTH_RESULTS or (authserv_id and claims_our_id(values[index - 1], authserv_id)):
                    self.chgheader(name, index, "")
        self._add_header("X-Mailward-Verdict", verdict.action.value)
        if verdict.spam_score is not None:
            self._add_header("X-Mailward-Spam-Score", f"{verdict.spam_score:.3f}")
        if verdict.reasons:
            self._add_header("X-Mailward-Reasons", ", ".join(verdict.reasons))
        self._add_header("X-Mailward-Incident", verdict.incident_id)
        if verdict.action is Action.TAG and SPAM_REASONS.intersection(verdict.reasons):
            if marks.spam_flag:
                self._add_header("X-Spam-Flag", "YES")
            if marks.subject_tag:
                self._tag_subject(marks.subject_tag)

    def _add_header(self, name: str, value: str) -> None:
        """Add ``Name: value``: with leading-space headers negotiated, the MTA writes the value as given."""
        self.addheader(name, " " + value)

    def _tag_subject(self, tag: str) -> None:
        """Put ``tag`` before the Subject (or add one); a subject already tagged is left alone.

        A Subject that is not UTF-8 (raw 8-bit) cannot be handed back unchanged
        through pymilter's text interface, so it keeps its bytes and only the
        headers mark the message.
        """
        raw = self._message.subject
        if raw is None:
            self._add_header("Subject", tag.strip())
            return
        try:
            subject = raw.decode("utf-8").lstrip(" \t")
        except UnicodeDecodeError:
            log.warning("subject not tagged: it is not UTF-8", extra=self._extra())
            return
        if not subject.startswith(tag.strip()):
            self.chgheader("Subject", 1, " " + tag + subject)

    def _apply_failure(self) -> int:
        """Last resort when even applying a verdict failed: tempfail generically."""
        try:
            reply = Verdict(Action.TEMPFAIL, ("error",), new_incident_id()).reply
            self.setreply(reply.code, reply.xcode, reply.text)
        except Exception:
            log.exception("could not set the tempfail reply", extra=self._extra())
        return Milter.TEMPFAIL
