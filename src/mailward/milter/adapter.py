"""The pymilter side: collect what the MTA sends, call the screener, apply the verdict.

No detection happens here. Every callback catches everything: an exception in a
reply callback would send pymilter's own text (naming internals) to the client,
and one in a ``noreply`` callback would leave Postfix waiting for its content
timeout. A failure is remembered and answered at end of message with the
direction's ``on_error`` action and a generic reply.
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import Milter

from ..envelope import DirectionRules, Envelope
from ..reputation import claims_our_id
from ..evidence import Evidence, Finding
from ..incidents import Block, block_finding
from ..policy import decide, decide_failure
from ..screening import Outcome, Screener, event_of
from ..verdict import Action, Verdict, new_incident_id
from .buffer import MessageBuffer

if TYPE_CHECKING:
    from ..incidents import IncidentResponse
    from ..metrics import Metrics

log = logging.getLogger(__name__)

OUR_HEADER_PREFIX = "x-mailward-"
AUTH_RESULTS = "authentication-results"


@dataclass(frozen=True)
class Runtime:
    """What one connection needs; the daemon swaps in a new one on reload."""

    screener: Screener
    direction: DirectionRules
    spool_dir: Path
    spool_threshold: int
    incidents: IncidentResponse | None = None    # blocks and suspensions; None = none apply
    metrics: Metrics | None = None
    authserv_id: str = ""                         # our Authentication-Results id; forged ones are removed


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


@Milter.header_leading_space
class MailwardMilter(Milter.Base):
    def __init__(self, runtime: Runtime):
        self._runtime = runtime
        self._connection_id = secrets.token_hex(4)
        self._client = ("", "", "", "")          # address, name, helo, daemon
        self._client_findings: tuple[Finding, ...] = ()   # a client block whose policy is not to refuse
        self._buffer: MessageBuffer | None = None
        self._reset_message()

    # --- helpers -------------------------------------------------------
    def _reset_message(self) -> None:
        if getattr(self, "_buffer", None) is not None:
            self._buffer.discard()
        self._buffer = None
        self._mail_from = ""
        self._auth_user = ""
        self._recipients: list[str] = []
        self._blocked_findings: tuple[Finding, ...] = ()
        self._watched_headers: dict[str, list[str]] = {}   # lower-case name -> values, in order
        self._in_body = False
        self._failure = ""
        self._queue_id = ""

    def _extra(self) -> dict:
        return {"queue_id": self._queue_id, "connection_id": self._connection_id}

    def _fail(self, where: str) -> None:
        """Remember an internal error in a callback; answered at end of message."""
        log.exception("internal error in %s callback", where, extra=self._extra())
        if not self._failure:
            self._failure = f"error in {where}"

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
        self._client = (str(address), str(hostname or ""), "", self._macro("{daemon_name}"))
        incidents = self._runtime.incidents
        block = incidents.client_block(self._client[0]) if incidents is not None else None
        if block is not None:
            verdict = self._refusal(block)
            if verdict is not None:
                return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
            self._client_findings = (block_finding(block),)
        return Milter.CONTINUE

    @Milter.noreply
    @_continue_on_error
    def hello(self, hostname):
        self._client = (self._client[0], self._client[1], str(hostname), self._client[3])
        return Milter.CONTINUE

    @_continue_on_error
    def envfrom(self, mailfrom, *params):
        self._reset_message()
        self._mail_from = _addr(mailfrom)
        self._auth_user = self._macro("{auth_authen}")
        self._queue_id = self._macro("i")
        rt = self._runtime
        block = rt.incidents.sender_block(self._auth_user, self._mail_from) if rt.incidents is not None else None
        if block is not None:
            verdict = self._refusal(block)
            if verdict is not None:
                reply = verdict.reply
                self.setreply(reply.code, reply.xcode, reply.text)
                return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
            self._blocked_findings = (block_finding(block),)
        self._buffer = MessageBuffer(rt.spool_threshold, rt.spool_dir)
        return Milter.CONTINUE

    @Milter.noreply
    @_continue_on_error
    def envrcpt(self, to, *params):
        self._recipients.append(_addr(to))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    @_continue_on_error
    def header(self, name, value):
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        value = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        self._buffer.add_header(name, value)
        lower = name.lower()
        if lower.startswith(OUR_HEADER_PREFIX) or lower == AUTH_RESULTS:
            self._watched_headers.setdefault(lower, []).append(value.decode("utf-8", "replace"))
        return Milter.CONTINUE

    @Milter.noreply
    @_continue_on_error
    def body(self, chunk):
        if not self._in_body:
            self._buffer.end_headers()
            self._in_body = True
        self._buffer.add_body(chunk)
        return Milter.CONTINUE

    def eom(self):
        outcome: Outcome | None = None
        try:
            try:
                self._queue_id = self._macro("i") or self._queue_id
                if not self._in_body and self._buffer is not None:
                    self._buffer.end_headers()
                outcome = self._screen() if not self._failure else self._failure_outcome()
            except Exception:
                self._fail("eom")
                outcome = self._failure_outcome()
            return self._apply(outcome)
        except Exception:
            log.exception("could not apply the verdict", extra=self._extra())
            return self._apply_failure()
        finally:
            if outcome is not None:
                self._report(outcome)
            self._reset_message()

    def abort(self):
        try:
            self._reset_message()
        except Exception:
            log.exception("abort cleanup failed", extra=self._extra())
        return Milter.CONTINUE

    def close(self):
        try:
            self._reset_message()
        except Exception:
            log.exception("close cleanup failed", extra=self._extra())
        return Milter.CONTINUE

    # --- decision ------------------------------------------------------
    def _envelope(self) -> Envelope:
        address, name, helo, daemon = self._client
        envelope = Envelope(mail_from=self._mail_from, recipients=tuple(self._recipients), client_address=address,
                            client_name=name, helo=helo, auth_user=self._auth_user, daemon=daemon,
                            queue_id=self._queue_id, connection_id=self._connection_id)
        return envelope.with_direction(self._runtime.direction.classify(envelope))

    def _screen(self) -> Outcome:
        known = Evidence(findings=self._client_findings + self._blocked_findings)
        return self._runtime.screener.screen(self._buffer.source(), self._buffer.size, self._envelope(), known)

    def _failure_outcome(self) -> Outcome:
        """The direction's on_error verdict for a message whose callbacks failed."""
        envelope = self._envelope()
        policy = self._runtime.screener.settings.policy.for_direction(envelope.direction)
        return Outcome(envelope, decide_failure(policy, new_incident_id()), Evidence(),
                       self._buffer.size if self._buffer else 0, error=self._failure)

    def _apply(self, outcome: Outcome) -> int:
        verdict = outcome.verdict
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            reply = verdict.reply
            self.setreply(reply.code, reply.xcode, reply.text)
            return Milter.REJECT if verdict.action is Action.REJECT else Milter.TEMPFAIL
        self._replace_our_headers(verdict)
        for name, value in outcome.evidence.headers:      # trace fields such as Authentication-Results
            self.addheader(name, value, 0)
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
        for name, values in self._watched_headers.items():
            for index in range(len(values), 0, -1):
                if name != AUTH_RESULTS or (authserv_id and claims_our_id(values[index - 1], authserv_id)):
                    self.chgheader(name, index, "")
        self.addheader("X-Mailward-Verdict", verdict.action.value)
        if verdict.spam_score is not None:
            self.addheader("X-Mailward-Spam-Score", f"{verdict.spam_score:.3f}")
        if verdict.reasons:
            self.addheader("X-Mailward-Reasons", ", ".join(verdict.reasons))
        self.addheader("X-Mailward-Incident", verdict.incident_id)

    def _apply_failure(self) -> int:
        """Last resort when even applying a verdict failed: tempfail generically."""
        try:
            reply = Verdict(Action.TEMPFAIL, ("error",), new_incident_id()).reply
            self.setreply(reply.code, reply.xcode, reply.text)
        except Exception:
            log.exception("could not set the tempfail reply", extra=self._extra())
        return Milter.TEMPFAIL
