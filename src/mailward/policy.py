"""Turn evidence into a verdict, per direction, from configured thresholds.

Pure: no I/O, no clock, no randomness (the incident ID is passed in), so every
rule here is a unit test away from being checked.
"""

from __future__ import annotations

from .config import DirectionPolicy
from .evidence import Category, Evidence, Severity
from .verdict import Action, Verdict

_CATEGORY_ACTION = {
    Category.MALWARE: "malware_action",
    Category.SPAM: "spam_action",
    Category.PHISHING: "phishing_action",
    Category.FILETYPE: "filetype_action",
    Category.MACRO: "macro_action",
    Category.UNCHECKED: "unchecked_action",
    Category.REPUTATION: "reputation_action",
    Category.AUTHENTICATION: "authentication_action",
    Category.BLOCKED: "blocked_action",
}

# Findings whose action is their own, per direction, whatever their category and severity:
# a macro's danger depends on whether it runs by itself, not on a severity threshold, and
# an unreachable clamd is an outage the admin may want handled apart from other limits.
NAMED_ACTIONS = {
    "vba-macros": "macro_action_plain",
    "vba-autoexec": "macro_action_autoexec",
    "xlm-macros": "macro_action_autoexec",
    "vba-autoexec-suspicious": "macro_action_malicious",
    "xlm-autoexec-suspicious": "macro_action_malicious",
    "clamav-unavailable": "clamav_unavailable_action",
}


def decide(evidence: Evidence, policy: DirectionPolicy, incident_id: str) -> Verdict:
    """The strongest action any finding or the spam score calls for wins.

    Findings named in :data:`NAMED_ACTIONS` get their own action; others at or
    above ``min_severity`` get their category's action; weaker ones (but above
    INFO) only tag. A failed check applies ``on_error``, a crashed detector
    ``unchecked_action``, unless it is listed in ``accept_errors_from``.
    """
    votes: list[tuple[Action, str]] = []
    for finding in evidence.findings:
        if finding.category is Category.ERROR:
            accept = finding.detector in policy.accept_errors_from
            votes.append((Action.ACCEPT if accept else policy.on_error, "error"))
        elif finding.name == "detector-error" and finding.detector in policy.accept_errors_from:
            votes.append((Action.ACCEPT, "error"))     # the admin chose to accept this detector's failures
        elif finding.name in NAMED_ACTIONS:
            votes.append((getattr(policy, NAMED_ACTIONS[finding.name]), finding.category.value))
        elif finding.severity >= policy.min_severity:
            votes.append((getattr(policy, _CATEGORY_ACTION[finding.category]), finding.category.value))
        elif finding.severity > Severity.INFO:
            votes.append((Action.TAG, finding.category.value))

    score = evidence.spam_score
    if score is not None:
        # A cold-start model may tag, but its spam action waits for its own, higher floor.
        floor = evidence.spam.spam_floor if evidence.spam is not None else 0.0
        if score >= max(policy.spam_threshold, floor):
            votes.append((policy.spam_action, "spam"))
        elif score >= policy.tag_threshold:
            votes.append((Action.TAG, "spam"))

    action = max((a for a, _ in votes), key=lambda a: a.rank, default=Action.ACCEPT)
    # Reasons of the winning action first: the first one becomes the public reason.
    ordered = sorted(votes, key=lambda v: -v[0].rank)
    reasons = tuple(dict.fromkeys(r for a, r in ordered if a is not Action.ACCEPT))
    return Verdict(action=action, reasons=reasons, incident_id=incident_id, spam_score=score)


def decide_failure(policy: DirectionPolicy, incident_id: str) -> Verdict:
    """The verdict when the scan itself could not run (worker crash, deadline)."""
    return Verdict(action=policy.on_error, reasons=("error",), incident_id=incident_id)
