"""The decision for one message, the SMTP reply that goes with it, and the outcome of screening it."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import Enum

from .envelope import Envelope
from .evidence import Category, Evidence, Finding, Severity, SpamAssessment


class Action(str, Enum):
    ACCEPT = "accept"
    TAG = "tag"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"

    @property
    def rank(self) -> int:
        """Severity order used when several rules fire: the strongest wins."""
        return _RANK[self]


_RANK = {
    Action.ACCEPT: 0,
    Action.TAG: 1,
    Action.QUARANTINE: 2,
    Action.TEMPFAIL: 3,
    Action.REJECT: 4,
}

# Generic reasons are the only words about detection a sender ever sees.
PUBLIC_REASONS = {
    "malware": "Message content rejected by security policy",
    "spam": "Message classified as spam",
    "phishing": "Message content rejected by security policy",
    "filetype": "Attachment type not accepted",
    "macro": "Message content rejected by security policy",
    "unchecked": "Message could not be checked",
    "reputation": "Sender reputation check failed",
    "authentication": "Sender authentication failed",
    "blocked": "Sender not accepted",  # an analyst's block, or the recipient's sender block list
    "error": "Temporary problem checking message",
}


def new_incident_id(now: float | None = None) -> str:
    """A short, unique, non-guessable ID a sender can quote to the postmaster.

    Time first so IDs sort by creation; 6 random bytes keep them unique across
    milter hosts without coordination (4 gave a duplicate in 200,000 a second).
    """
    t = int(now if now is not None else time.time())
    return f"MW-{t:08X}-{secrets.token_hex(6).upper()}"


@dataclass(frozen=True)
class SmtpReply:
    code: str  # "550"
    xcode: str  # "5.7.1"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.xcode} {self.text}"


@dataclass(frozen=True)
class Verdict:
    """What to do with a message, and why (``reasons`` are categories, not rule names)."""

    action: Action
    reasons: tuple[str, ...]
    incident_id: str
    spam_score: float | None = None
    hold: bool = False  # also put the message in the MTA's hold queue
    # Categories whose own action the policy applied (a spam score over the threshold, malware at
    # min_severity...): what incident response counts, so it never re-applies the thresholds.
    acted_on: tuple[Category, ...] = ()

    @property
    def public_reason(self) -> str:
        key = self.reasons[0] if self.reasons else "error"
        return PUBLIC_REASONS.get(key, PUBLIC_REASONS["error"])

    @property
    def reply(self) -> SmtpReply | None:
        """The SMTP reply for reject and tempfail; ``None`` for the others."""
        if self.action is Action.REJECT:
            return SmtpReply("550", "5.7.1", f"{self.public_reason} (incident {self.incident_id})")
        if self.action is Action.TEMPFAIL:
            xcode = "4.7.1" if self.reasons and self.reasons[0] != "error" else "4.3.0"
            return SmtpReply("451", xcode, f"{self.public_reason}, try again later (incident {self.incident_id})")
        return None

    def refusal_reply(self) -> SmtpReply:
        """The reply of a verdict that refuses (reject, tempfail). Raises for any other, so a
        caller about to refuse fails (to its on_error answer) rather than send no reply."""
        if (reply := self.reply) is None:
            raise ValueError(f"a {self.action.value} verdict has no SMTP reply")
        return reply


# Outcome.slim: plain values only (action, reasons, incident ID, spam score, hold, acted-on categories) ...
SlimVerdict = tuple[str, tuple[str, ...], str, float | None, bool, tuple[str, ...]]
# ... (verdict, size, quarantine ID, error, seconds, store failed, released from, alert of, held recipients,
# their verdict, findings as (category, name, severity, detector), spam (score, model, regime, floor),
# timings, headers)
Slim = tuple[
    SlimVerdict,
    int,
    str,
    str,
    float,
    bool,
    str,
    str,
    tuple[str, ...],
    SlimVerdict | None,
    tuple[tuple[str, str, int, str], ...],
    tuple[float, str, str, float] | None,
    tuple[tuple[str, float], ...],
    tuple[tuple[str, str], ...],
]


# What a worker's incident response did that the milter reports (incidents.response.Relay): the
# MetricsSink method called and its arguments, e.g. ("block_created", ("address", "suspension")).
Relayed = tuple[tuple[str, tuple[str | float, ...]], ...]


@dataclass(frozen=True)
class Outcome:
    """What happened to one message: the one value incidents, metrics and the summary log line observe."""

    envelope: Envelope
    verdict: Verdict
    evidence: Evidence
    size: int
    quarantine_id: str = ""
    error: str = ""  # internal cause of a failure verdict, for the log only
    seconds: float = 0.0
    quarantine_failed: bool = False  # the store refused a message the policy quarantined
    released_from: str = ""  # quarantine ID when an analyst released this very message
    alert_of: str = ""  # incident ID when this is Mailward's own (marked) alert about it
    # Recipients whose policy quarantined the message while others' delivered it: removed from the
    # delivered message (delrcpt) and kept in the quarantine under ``quarantine_id`` with ``held_verdict``.
    held: tuple[str, ...] = ()
    held_verdict: Verdict | None = None

    def slim(self) -> Slim:
        """What a worker answers the milter with, in plain values (cheap to pickle; no dataclass or enum
        rebuilt by name on the way back): the verdicts and held recipients the milter applies, the headers
        it adds, and what its metrics count (timings, findings, model version). Not the envelope (the
        milter has it), nor what only the log line and the store needed (clues, message facts, marks)."""
        evidence, spam = self.evidence, self.evidence.spam
        return (
            _verdict_values(self.verdict),
            self.size,
            self.quarantine_id,
            self.error,
            self.seconds,
            self.quarantine_failed,
            self.released_from,
            self.alert_of,
            self.held,
            _verdict_values(self.held_verdict) if self.held_verdict is not None else None,
            tuple((f.category.value, f.name, int(f.severity), f.detector) for f in evidence.findings),
            (spam.score, spam.model_version, spam.regime, spam.spam_floor) if spam is not None else None,
            evidence.timings,
            evidence.headers,
        )

    @classmethod
    def from_slim(cls, values: Slim, envelope: Envelope) -> Outcome:
        """The outcome :meth:`slim` describes, for ``envelope``."""
        (verdict, size, quarantine_id, error, seconds, failed, released_from, alert_of, held, held_verdict,
         findings, spam, timings, headers) = values  # fmt: skip
        return cls(
            envelope,
            _verdict_of(verdict),
            Evidence(
                findings=tuple(
                    Finding(_CATEGORIES[c], name, Severity(severity), detector)
                    for c, name, severity, detector in findings
                ),
                spam=SpamAssessment(spam[0], (), spam[1], spam[2], spam[3]) if spam is not None else None,
                timings=timings,
                headers=headers,
            ),
            size,
            quarantine_id,
            error,
            seconds,
            failed,
            released_from,
            alert_of,
            held,
            _verdict_of(held_verdict) if held_verdict is not None else None,
        )

    def acted_on(self, category: Category) -> bool:
        """Whether the policy applied ``category``'s own action for any recipient (what incidents count)."""
        verdicts = (self.verdict,) if self.held_verdict is None else (self.verdict, self.held_verdict)
        return any(category in v.acted_on for v in verdicts)


_ACTIONS = {action.value: action for action in Action}
_CATEGORIES = {category.value: category for category in Category}


def _verdict_values(verdict: Verdict) -> SlimVerdict:
    return (
        verdict.action.value,
        verdict.reasons,
        verdict.incident_id,
        verdict.spam_score,
        verdict.hold,
        tuple(c.value for c in verdict.acted_on),
    )


def _verdict_of(values: SlimVerdict) -> Verdict:
    action, reasons, incident_id, spam_score, hold, acted_on = values
    return Verdict(_ACTIONS[action], reasons, incident_id, spam_score, hold, tuple(_CATEGORIES[c] for c in acted_on))
