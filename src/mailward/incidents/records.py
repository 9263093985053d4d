"""What the incident store keeps: blocks (suspensions included), their audit trail, counter totals."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..addresses import canonical_address, client_ip, policy_subject
from ..policy import Listed


class SubjectKind(str, Enum):
    """What a block applies to; the milter checks each at the first point it is known."""

    ACCOUNT = "account"  # SASL login name ({auth_authen}), checked at MAIL FROM
    ADDRESS = "address"  # client IP address, checked at connect
    NETWORK = "network"  # client network (CIDR), checked at connect
    SENDER = "sender"  # envelope sender address, checked at MAIL FROM
    DOMAIN = "domain"  # envelope sender domain and its subdomains, checked at MAIL FROM


class Origin(str, Enum):
    """Why a block exists: analysts lift all kinds alike, alerts and metrics tell them apart."""

    ANALYST = "analyst"  # `mailward block add`
    SUSPENSION = "suspension"  # counters said the account or host looks compromised or abusive
    AUTH_FAILURES = "auth-failures"  # too many failed SMTP AUTH attempts from one address


class Counter(str, Enum):
    """Whose events a counter row belongs to: limits differ by direction and kind of sender."""

    ACCOUNT = "account"  # outbound, per authenticated account
    OUTBOUND_HOST = "outbound-host"  # outbound without authentication, per client address
    INBOUND_HOST = "inbound-host"  # inbound, per client address
    FAILED_LOGINS = "failed-logins"  # per client address, from Postfix's log


# The counters a block starts afresh (events before it never count again, lifted or expired): otherwise
# the burst that caused it would trigger it again.
# An IPv6 guesser's failed logins are counted and blocked as its /64 (a NETWORK subject).
COUNTERS_OF = {
    SubjectKind.ACCOUNT: (Counter.ACCOUNT,),
    SubjectKind.ADDRESS: (Counter.OUTBOUND_HOST, Counter.INBOUND_HOST, Counter.FAILED_LOGINS),
    SubjectKind.NETWORK: (Counter.FAILED_LOGINS,),
}
BLOCKED_AS = {
    counter: tuple(kind for kind, counters in COUNTERS_OF.items() if counter in counters)
    for counter in {c for counters in COUNTERS_OF.values() for c in counters}
}


class Metric(str, Enum):
    """Counter columns; one event row carries all of them."""

    MESSAGES = "messages"
    RECIPIENTS = "recipients"
    SPAM = "spam"
    MALWARE = "malware"
    AUTH_FAILURES = "auth_failures"


def normalise(kind: SubjectKind, value: str) -> str:
    """The canonical spelling of a subject; ValueError for one that cannot be a subject of that kind."""
    value = value.strip()
    if not value:
        raise ValueError(f"empty {kind.value}")
    if kind is SubjectKind.ADDRESS:  # ::ffff:192.0.2.1 is 192.0.2.1, as a block on either must hold
        ip = client_ip(value)
        if ip is None:
            raise ValueError(f"{value!r} is not an IP address")
        return str(ip)
    if kind is SubjectKind.NETWORK:
        return str(ipaddress.ip_network(value, strict=False))
    if kind is SubjectKind.SENDER:
        value = canonical_address(value)
        if "@" not in value:
            raise ValueError(f"{value!r} is not an address")
        return value
    if kind is SubjectKind.DOMAIN:
        value = canonical_address(value.lstrip().lstrip("@"))
        if "@" in value or "." not in value:
            raise ValueError(f"{value!r} is not a domain")
        return value
    return value  # account names are compared exactly, as the SASL layer does


MAX_BLOCK_FOR = 10 * 365 * 86400.0  # seconds; longer is "until lifted", which leaving the duration out says


def new_subject(kind: SubjectKind, value: str) -> str:
    """:func:`normalise` for a block an analyst adds: stricter, because what is stored here is matched,
    listed and alerted on. No control or invisible characters, and a sender or domain that mail can have
    (``a@``, ``@b.c`` and ``exa mple.com`` never match a message). ValueError otherwise."""
    canonical = normalise(kind, value)
    if not canonical.isprintable():
        raise ValueError(f"{value!r} has control or invisible characters")
    if kind in (SubjectKind.SENDER, SubjectKind.DOMAIN):
        checked = policy_subject(canonical)  # the sender lists' own check of an address or domain
        if ("@" in checked) != (kind is SubjectKind.SENDER):
            raise ValueError(f"{value!r} is not {'an address' if kind is SubjectKind.SENDER else 'a domain'}")
    return canonical


def block_duration(seconds: float | None) -> float | None:
    """A block's duration as given (None: until lifted); ValueError for none at all or over ten years."""
    if seconds is not None and not 0 < seconds <= MAX_BLOCK_FOR:
        raise ValueError(
            "a block lasts more than 0 s and at most 10 years; leave the duration out for one until lifted"
        )
    return seconds


@dataclass(frozen=True)
class Block:
    """One block or suspension; active until lifted or expired."""

    id: int
    kind: SubjectKind
    value: str
    origin: Origin
    reason: str  # for analysts; never in an SMTP reply
    incident_id: str  # quoted in every rejection and alert it causes
    created_at: float
    created_by: str
    expires_at: float | None = None
    lifted_at: float | None = None
    lifted_by: str = ""

    def active(self, now: float) -> bool:
        return self.lifted_at is None and (self.expires_at is None or self.expires_at > now)

    def expired(self, now: float) -> bool:
        """Ended by its expiry, not lifted by anyone (the store marks it lifted at its expiry only
        when a new block of the subject takes its place)."""
        return (
            self.expires_at is not None
            and self.expires_at <= now
            and (self.lifted_at is None or self.lifted_at >= self.expires_at)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "value": self.value,
            "origin": self.origin.value,
            "reason": self.reason,
            "incident_id": self.incident_id,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "lifted_at": self.lifted_at,
            "lifted_by": self.lifted_by,
        }


@dataclass(frozen=True)
class AuditEntry:
    """One change to the block list: who, when, from where, what."""

    seq: int
    at: float
    action: str  # add | remove | expire-change
    kind: SubjectKind
    value: str
    incident_id: str
    actor: str
    host: str
    origin: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "action": self.action,
            "kind": self.kind.value,
            "value": self.value,
            "incident_id": self.incident_id,
            "actor": self.actor,
            "host": self.host,
            "origin": self.origin,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Totals:
    """Counter sums for one subject over one window."""

    messages: int = 0
    recipients: int = 0
    spam: int = 0
    malware: int = 0
    auth_failures: int = 0

    def get(self, metric: Metric) -> int:
        count: int = getattr(self, metric.value)
        return count


@dataclass(frozen=True)
class SenderEntry:
    """One sender allow or block list entry: for everyone (``scope`` empty), a recipient domain or address.

    ``sender`` is an address or a domain (which covers its subdomains).
    """

    id: int
    listed: Listed
    scope: str
    sender: str
    reason: str
    created_at: float
    created_by: str
    removed_at: float | None = None
    removed_by: str = ""

    @property
    def kind(self) -> SubjectKind:
        """How the audit trail files it: a sender address or a sender domain."""
        return SubjectKind.SENDER if "@" in self.sender else SubjectKind.DOMAIN

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "list": self.listed.value,
            "scope": self.scope,
            "sender": self.sender,
            "reason": self.reason,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "removed_at": self.removed_at,
            "removed_by": self.removed_by,
        }
