"""What the quarantine keeps about one message, who touched it, and the outcomes of doing so.

Everything that crosses the store boundary is a frozen dataclass or an enum;
the JSON shapes here are the stable ``--json`` output of the CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..actor import Actor
from ..envelope import Direction, Envelope
from ..errors import StoreError
from ..evidence import Category, Evidence, Label

# Incident IDs look like MW-65F0A1B2-1A2B3C4D5E6F; anything path-like is refused before it reaches a file name.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_id(quarantine_id: str) -> str:
    """Return ``quarantine_id`` if it is safe as a file name and a key, else raise StoreError."""
    if not _ID.match(quarantine_id or ""):
        raise StoreError(f"not a valid quarantine ID: {quarantine_id!r}")
    return quarantine_id


class Status(str, Enum):
    HELD = "held"  # in quarantine, waiting for an analyst
    RELEASING = "releasing"  # claimed by one releaser; nobody else may deliver it
    RELEASED = "released"  # handed to the relay
    REJECTED = "rejected"  # malware the sender got a 5xx for, kept as a sample (release needs --force)


class ReleaseClaim(str, Enum):
    """Outcome of trying to become the one process that delivers a message."""

    CLAIMED = "claimed"
    NOT_FOUND = "not-found"
    ALREADY_RELEASED = "already-released"
    IN_PROGRESS = "in-progress"  # another releaser holds the claim
    NEEDS_FORCE = "needs-force"  # malware verdict without --force


class Removal(str, Enum):
    DELETED = "deleted"
    NOT_FOUND = "not-found"
    IN_PROGRESS = "in-progress"  # a release is delivering it right now


@dataclass(frozen=True)
class QuarantineRecord:
    """The metadata row of one quarantined message (the bytes are read separately)."""

    id: str
    received_at: float
    envelope: Envelope
    action: str
    reasons: tuple[str, ...]
    evidence: Evidence
    size: int
    sha256: str
    subject: str = ""
    header_from: str = ""
    status: Status = Status.HELD
    released_at: float | None = None
    label: Label | None = None

    @property
    def direction(self) -> Direction:
        return self.envelope.direction

    @property
    def spam_score(self) -> float | None:
        return self.evidence.spam_score

    @property
    def is_malware(self) -> bool:
        return "malware" in self.reasons or bool(self.evidence.of(Category.MALWARE))

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "direction": self.direction.value,
            "envelope": self.envelope.as_dict(),
            "action": self.action,
            "reasons": list(self.reasons),
            "subject": self.subject,
            "from": self.header_from,
            "size": self.size,
            "sha256": self.sha256,
            "status": self.status.value,
            "released_at": self.released_at,
            "label": self.label.value if self.label else None,
            "spam_score": self.spam_score,
            **self.evidence.as_dict(),
        }


@dataclass(frozen=True)
class AuditEvent:
    quarantine_id: str
    at: float
    action: str  # quarantine, release, release-failed, delete, label, export, purge, ...
    actor: Actor
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.quarantine_id,
            "at": self.at,
            "action": self.action,
            "actor": self.actor.name,
            "host": self.actor.host,
            "origin": self.actor.origin,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class LabelRecord:
    """One analyst label, as the training ledger reads them (``seq`` orders and resumes)."""

    seq: int
    quarantine_id: str
    label: Label
    sha256: str
    at: float
    actor: str


@dataclass(frozen=True)
class ListFilter:
    """``mailward quarantine list`` filters; text filters are case-insensitive substrings."""

    direction: Direction | None = None
    action: str = ""
    reason: str = ""
    sender: str = ""
    recipient: str = ""
    subject: str = ""
    since: float | None = None
    until: float | None = None
    status: Status | None = None
    limit: int = 1000
