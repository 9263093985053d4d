"""Typed findings that detectors produce and the policy weighs.

Detectors never choose an action: they describe what they saw, where, and how
bad it is. Only :mod:`mailward.policy` turns evidence into a verdict.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Protocol


class Category(str, Enum):
    """What kind of problem a finding is; policy rules are keyed on it."""

    MALWARE = "malware"  # a signature or hash list says the content is malicious
    SPAM = "spam"  # spam test patterns (GTUBE) and spam-model findings
    PHISHING = "phishing"
    FILETYPE = "filetype"  # banned/double extensions, type mismatch, risky containers
    MACRO = "macro"  # active document content
    UNCHECKED = "unchecked"  # a limit, timeout, crash or encryption stopped inspection
    REPUTATION = "reputation"  # DNS blocklists
    AUTHENTICATION = "authentication"  # SPF, DKIM, DMARC
    BLOCKED = "blocked"  # an analyst blocked or suspended the source
    ERROR = "error"  # a detector failed; policy applies on_error, not a category action


class Label(str, Enum):
    """What a person (or autolearn) says a message is; the quarantine, the ledger and training share it."""

    HAM = "ham"
    SPAM = "spam"
    PHISH = "phish"  # kept apart in the quarantine and its audit; trains as spam

    @property
    def training_class(self) -> str:
        """The Naive Bayes class this label teaches: the model has two, ham and spam."""
        return "ham" if self is Label.HAM else "spam"


# The spam model's two classes, in the column order of its counts: phish trains as spam.
TRAINING_CLASSES = (Label.HAM.value, Label.SPAM.value)


class Severity(IntEnum):
    """How much a finding weighs; policy thresholds compare against it."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4


@dataclass(frozen=True)
class Finding:
    """One observation by one detector.

    ``name`` is internal (a rule or check name): it goes to logs and the
    quarantine record, never into an SMTP reply. ``location`` is the object
    path inside the message, e.g. ``invoice.zip > docs/a.docm``.
    """

    category: Category
    name: str
    severity: Severity
    detector: str
    location: str = ""
    detail: str = ""
    # The object at ``location``, so an analyst can pivot on it (hash lookups, other messages).
    sha256: str = ""
    file_name: str = ""
    mime_type: str = ""  # the real (sniffed) type

    def as_dict(self) -> dict[str, str]:
        doc = {
            "category": self.category.value,
            "name": self.name,
            "severity": self.severity.name.lower(),
            "detector": self.detector,
            "location": self.location,
            "detail": self.detail,
        }
        if self.sha256:
            doc.update(sha256=self.sha256, file_name=self.file_name, mime_type=self.mime_type)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Finding:
        """The finding :meth:`as_dict` described (a stored quarantine record)."""
        return cls(
            Category(doc["category"]),
            doc["name"],
            Severity[str(doc["severity"]).upper()],
            doc["detector"],
            doc.get("location", ""),
            doc.get("detail", ""),
            doc.get("sha256", ""),
            doc.get("file_name", ""),
            doc.get("mime_type", ""),
        )


@dataclass(frozen=True)
class Clue:
    """A token and how strongly it pushed the spam score (log-odds, + is spammy)."""

    token: str
    weight: float

    def as_dict(self) -> dict[str, object]:
        return {"token": self.token, "weight": self.weight}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Clue:
        return cls(str(doc["token"]), float(doc["weight"]))


@dataclass(frozen=True)
class SpamAssessment:
    """The spam model's opinion of one message."""

    score: float  # probability-like, 0 = ham .. 1 = spam
    clues: tuple[Clue, ...] = ()
    model_version: str = ""
    regime: str = ""  # "site", or "cold-start" while the model knows too little site mail
    spam_floor: float = 0.0  # the spam action needs at least this score, whatever the policy says

    def as_dict(self) -> dict[str, object]:
        """What a quarantine record keeps of it: the score, the model and the clues."""
        return {"score": self.score, "model_version": self.model_version, "clues": [c.as_dict() for c in self.clues]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> SpamAssessment:
        return cls(
            score=doc["score"],
            model_version=doc.get("model_version", ""),
            clues=tuple(Clue.from_dict(c) for c in doc.get("clues", ())),
        )


class HeaderSource(Protocol):
    """A parsed message's decoded header fields (mailward.message.ParsedMessage)."""

    def header(self, name: str, default: str = "") -> str: ...


@dataclass(frozen=True)
class MessageFacts:
    """What identifies the message itself, taken in the worker while it is parsed.

    The milter process uses these for the log (ECS ``email.*``) and the
    quarantine listing instead of parsing the message again.
    """

    subject: str = ""
    message_id: str = ""
    header_from: str = ""
    # Names this delivery attempt's message as the sender sent it (see :func:`retry_key`): the
    # quarantine answers a retry of a stored message with the stored copy. Taken by the screener
    # only for a message it stores; empty on a put: no deduplication.
    retry_key: str = ""

    @classmethod
    def of(cls, message: HeaderSource) -> MessageFacts:
        """From a parsed message (RFC 2047 decoded; control characters removed: these go to logs)."""
        return cls(
            _printable(message.header("subject"))[:998],
            _printable(message.header("message-id")).strip()[:998],
            _printable(message.header("from")).strip()[:998],
        )


# Fields an MTA adds at the end of a header block that lacks them (Postfix's cleanup for local clients or
# with always_add_missing_headers): a Message-ID naming the queue ID, the arrival time as Date, and From
# and To made from the envelope. The first two change on every attempt, the others do not.
_ADDED_FIELDS = frozenset(
    (b"message-id", b"resent-message-id", b"date", b"resent-date", b"from", b"to", b"resent-from", b"resent-to")
)
# An arrival date as MTAs write it (Postfix: "Mon,  7 Dec 2026 03:54:06 +0000 (UTC)"): weekday, numeric zone.
_MTA_DATE = re.compile(
    rb"\s*[A-Z][a-z]{2}, {1,2}\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}(?: \([^()]*\))?\s*"
)


def retry_key(raw: bytes, header_end: int, queue_id: str, mail_from: str, recipients: Sequence[str]) -> str:
    """SHA-256 of a delivery as its sender made it: envelope sender, sorted recipients, and the bytes.

    ``raw[:header_end]`` is the header block. What our MTA writes anew on
    every attempt is left out, so a sender's retry of the same message has
    the same key: the Received fields at the top that name ``queue_id``, and
    at the bottom the fields it adds to a message that lacks them (a
    Message-ID naming ``queue_id``, a Date in the MTA's format). Left out
    whoever wrote them: two deliveries alike in everything else are one
    message. Without a queue ID nothing is left out.
    """
    digest = hashlib.sha256(b"mailward-retry-1\0")
    digest.update(mail_from.encode("utf-8", "surrogateescape") + b"\0")
    digest.update("\n".join(sorted(recipients)).encode("utf-8", "surrogateescape") + b"\0")
    if not queue_id:
        digest.update(raw)
        return digest.hexdigest()
    qid = re.escape(queue_id.encode("ascii", "replace"))
    ours, made_id = re.compile(rb"\bid\s+" + qid + rb"\b"), re.compile(rb"[<.]" + qid + rb"@")
    fields: list[bytes] = []
    for line in raw[:header_end].splitlines(keepends=True):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        else:
            fields.append(line)
    skip = 0
    while skip < len(fields):
        name, _, value = fields[skip].partition(b":")
        if name.strip().lower() != b"received" or not ours.search(value):
            break
        skip += 1
    kept = fields[skip:]
    end = len(kept)
    while end:
        name, _, value = kept[end - 1].partition(b":")
        name = name.strip().lower()
        if name not in _ADDED_FIELDS:
            break
        end -= 1
        if (name.endswith(b"message-id") and made_id.search(value)) or (
            name.endswith(b"date") and _MTA_DATE.fullmatch(value)
        ):
            kept[end] = b""
    for part in kept:
        digest.update(part)
    digest.update(raw[header_end:])
    return digest.hexdigest()


RELEASE_HEADER = "X-Mailward-Release"  # on a message an analyst released from the quarantine
ALERT_HEADER = "X-Mailward-Alert-Mark"  # on Mailward's own alert mail
_LINE_END = re.compile(rb"\r\n?")
# The fields that decide how a body is read, each with its continuation lines.
_STRUCTURE_FIELD = re.compile(
    rb"^(content-type|content-transfer-encoding|mime-version)[ \t]*:(.*(?:\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True)
class MarkProof:
    """What a scanning worker saw of a message's marks: their header values and the body digest.

    Small and picklable: it travels with the evidence to the milter process,
    which checks the HMACs (quarantine.release) without ever holding the message.
    """

    release: tuple[str, ...] = ()
    alert: tuple[str, ...] = ()
    content_digest: str = ""


def content_digest(head: bytes, body: bytes) -> str:
    """SHA-256 of what a mark vouches for: the body's lines and every field that decides how they
    are read (Content-Type, Content-Transfer-Encoding, MIME-Version), unfolded.

    Line endings, folding and the fields an MTA adds may change in transit and void nothing. A line
    break added or removed, or a field that reads the same lines as other parts, voids the mark: a
    digest of the body without its line breaks let a sender re-cut a marked alert, quoting their
    subject, into a part holding malware, delivered as the alert.
    """
    fields = b"\n".join(
        name.lower() + b":" + b" ".join(value.split())
        for name, value in _STRUCTURE_FIELD.findall(_LINE_END.sub(b"\n", head))
    )
    return hashlib.sha256(fields + b"\n\n" + _LINE_END.sub(b"\n", body).rstrip(b"\n")).hexdigest()


def _printable(text: str) -> str:
    if text.isprintable():  # nearly always: one scan in C instead of a Python step per character
        return text
    return "".join(c if c.isprintable() else " " for c in text)


@dataclass(frozen=True)
class Evidence:
    """Everything the detectors found in one message, plus where time went."""

    findings: tuple[Finding, ...] = ()
    spam: SpamAssessment | None = None
    timings: tuple[tuple[str, float], ...] = field(default=())  # (stage, seconds)
    # Trace header fields (name, value) for the milter to add, e.g. Authentication-Results.
    headers: tuple[tuple[str, str], ...] = ()
    message: MessageFacts = MessageFacts()
    # The release or alert marks the message claims, checked by the milter process (quarantine.release).
    marks: MarkProof | None = None
    # Domains that passed SPF (envelope sender), DKIM (d=) or DMARC (From:) for this message: the
    # identities a sender allow list entry may be honoured for (anti-spoofing).
    authenticated: tuple[str, ...] = ()

    @property
    def spam_score(self) -> float | None:
        return None if self.spam is None else self.spam.score

    def of(self, category: Category) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.category is category)

    def as_dict(self) -> dict[str, object]:
        """What a quarantine record keeps: the findings and the spam assessment (not timings or headers)."""
        return {
            "findings": [f.as_dict() for f in self.findings],
            "spam": None if self.spam is None else self.spam.as_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Evidence:
        spam = doc.get("spam")
        return cls(
            findings=tuple(Finding.from_dict(f) for f in doc.get("findings", ())),
            spam=None if spam is None else SpamAssessment.from_dict(spam),
        )

    def merged(self, other: Evidence) -> Evidence:
        """Combine evidence from two sources (e.g. worker and in-process checks)."""
        return Evidence(
            findings=self.findings + other.findings,
            spam=other.spam if other.spam is not None else self.spam,
            timings=self.timings + other.timings,
            headers=self.headers + other.headers,
            message=other.message if other.message != MessageFacts() else self.message,
            marks=other.marks if other.marks is not None else self.marks,
            authenticated=tuple(dict.fromkeys(self.authenticated + other.authenticated)),
        )


NOTHING_KNOWN = Evidence()  # what is known of most messages before their content: nothing (compared by identity)
