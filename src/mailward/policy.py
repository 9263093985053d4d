"""Turn evidence into a verdict, per direction and recipient, from configured thresholds.

Pure: no I/O, no clock, no randomness (the incident ID is passed in), so every
rule here is a unit test away from being checked. Everything that changes what
happens to a message is an input here, decided in one place: the findings, the
spam score, a sender list entry, a valid release or alert mark, the hold flag.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from .config import DirectionPolicy
from .evidence import Category, Evidence, Severity
from .verdict import Action, Verdict

# Findings whose action is their own, per direction, whatever their category and severity:
# a macro's danger depends on whether it runs by itself, not on a severity threshold, and
# an unreachable clamd is an outage the admin may want handled apart from other limits.
NAMED_ACTIONS: Mapping[str, Callable[[DirectionPolicy], Action]] = MappingProxyType(
    {
        "vba-macros": lambda p: p.macro_action_plain,
        "vba-autoexec": lambda p: p.macro_action_autoexec,
        "xlm-macros": lambda p: p.macro_action_autoexec,
        "vba-autoexec-suspicious": lambda p: p.macro_action_malicious,
        "xlm-autoexec-suspicious": lambda p: p.macro_action_malicious,
        "clamav-unavailable": lambda p: p.clamav_unavailable_action,
    }
)

# What an allow-listed (and authenticated) sender skips: opinions about the sender and the
# text. Never malware, banned file types, macros, unchecked content or an analyst's block.
ALLOW_SKIPS = frozenset({Category.SPAM, Category.REPUTATION, Category.AUTHENTICATION})


class Listed(str, Enum):
    """A sender list entry that applies to the recipient (incidents.senderlists)."""

    ALLOW = "allow"
    BLOCK = "block"


class Mark(str, Enum):
    """A valid mark the message carries (quarantine.release): it is delivered, tagged, instead of stopped."""

    RELEASE = "released"  # an analyst released this very message to these recipients
    ALERT = "alert"  # Mailward's own alert quoting what it reports


@dataclass(frozen=True)
class Inputs:
    """What the policy weighs besides the evidence."""

    listed: Listed | None = None
    mark: Mark | None = None
    hold: bool = False  # quarantine.hold: a quarantined message also goes to the MTA's hold queue


def decide(evidence: Evidence, policy: DirectionPolicy, incident_id: str, inputs: Inputs = Inputs()) -> Verdict:
    """The strongest action any finding, the spam score or a sender list entry calls for wins.

    Findings named in :data:`NAMED_ACTIONS` get their own action; others at or
    above ``min_severity`` get their category's action; weaker ones (but above
    INFO) only tag. A failed check applies ``on_error``, a crashed detector
    ``unchecked_action``, unless it is listed in ``accept_errors_from``. An
    allowed sender skips :data:`ALLOW_SKIPS`; a blocked one counts as certain
    spam. A valid mark turns quarantine or reject into tag.
    """
    allowed = inputs.listed is Listed.ALLOW
    votes: list[tuple[Action, str]] = []
    acted_on: set[Category] = set()
    for finding in evidence.findings:
        if allowed and finding.category in ALLOW_SKIPS:
            continue
        if finding.category is Category.ERROR:
            accept = finding.detector in policy.accept_errors_from
            votes.append((Action.ACCEPT if accept else policy.on_error, "error"))
        elif finding.name == "detector-error" and finding.detector in policy.accept_errors_from:
            votes.append((Action.ACCEPT, "error"))  # the admin chose to accept this detector's failures
        elif finding.name in NAMED_ACTIONS:
            votes.append((NAMED_ACTIONS[finding.name](policy), finding.category.value))
        elif finding.severity >= policy.min_severity:
            votes.append((policy.actions[finding.category], finding.category.value))
            acted_on.add(finding.category)
        elif finding.severity > Severity.INFO:
            votes.append((Action.TAG, finding.category.value))

    score = evidence.spam_score
    if score is not None and not allowed:
        # A cold-start model may tag, but its spam action waits for its own, higher floor.
        floor = evidence.spam.spam_floor if evidence.spam is not None else 0.0
        if score >= max(policy.spam_threshold, floor):
            votes.append((policy.actions[Category.SPAM], "spam"))
            acted_on.add(Category.SPAM)
        elif score >= policy.tag_threshold:
            votes.append((Action.TAG, "spam"))
    if inputs.listed is Listed.BLOCK:
        votes.append((policy.actions[Category.SPAM], "blocked"))

    action = max((a for a, _ in votes), key=lambda a: a.rank, default=Action.ACCEPT)
    # Reasons of the winning action first: the first one becomes the public reason.
    ordered = sorted(votes, key=lambda v: -v[0].rank)
    reasons = tuple(dict.fromkeys(r for a, r in ordered if a is not Action.ACCEPT))
    if allowed:
        reasons += ("allowed",)
    if inputs.mark is not None and action in (Action.QUARANTINE, Action.REJECT):
        action, reasons = Action.TAG, reasons + (inputs.mark.value,)
    return Verdict(
        action=action,
        reasons=reasons,
        incident_id=incident_id,
        spam_score=score,
        hold=inputs.hold and action is Action.QUARANTINE,
        acted_on=tuple(c for c in Category if c in acted_on),
    )


def stops(verdict: Verdict) -> bool:
    """Whether the verdict keeps the message from its recipients (what a release mark can undo)."""
    return verdict.action in (Action.QUARANTINE, Action.REJECT)


def decide_failure(policy: DirectionPolicy, incident_id: str) -> Verdict:
    """The verdict when the scan itself could not run (worker crash, deadline)."""
    return Verdict(action=policy.on_error, reasons=("error",), incident_id=incident_id)


@dataclass(frozen=True)
class Share:
    """The recipients of one message that get the same verdict."""

    recipients: tuple[str, ...]
    verdict: Verdict


@dataclass(frozen=True)
class Split:
    """One message's verdicts when its recipients' policies differ.

    ``delivered`` is what the MTA does with the message (for the recipients
    left on it); ``held`` the recipients removed from it and quarantined
    instead (``None`` when nobody is). Nothing is duplicated: each recipient is
    in exactly one of them.
    """

    delivered: Share
    held: Share | None = None


def split(shares: Sequence[Share]) -> Split:
    """Per recipient where the milter protocol allows it, else the strictest.

    After DATA the MTA can only refuse the whole message, and the copy it
    delivers carries one set of headers. So: any reject or tempfail refuses
    it for everyone (the strictest of those wins); otherwise the quarantining
    recipients are removed and kept in the quarantine, and the others get the
    message with the strictest of their verdicts (tag over accept). A
    recipient that arrived in bytes that are not UTF-8 (read with U+FFFD)
    cannot be named back to the MTA to be removed: then the strictest verdict
    holds for everyone.
    """

    def strongest(group: Sequence[Share]) -> Share:
        top = max(group, key=lambda s: s.verdict.action.rank)
        return Share(tuple(r for s in group for r in s.recipients), top.verdict)

    refused = [s for s in shares if s.verdict.action in (Action.REJECT, Action.TEMPFAIL)]
    if refused:
        return Split(Share(tuple(r for s in shares for r in s.recipients), strongest(refused).verdict))
    held = [s for s in shares if s.verdict.action is Action.QUARANTINE]
    passed = [s for s in shares if s.verdict.action is not Action.QUARANTINE]
    if not held or not passed or any("\ufffd" in r for s in held for r in s.recipients):
        return Split(strongest(shares))
    return Split(strongest(passed), strongest(held))
