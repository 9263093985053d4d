"""What a container or document handler hands back: members, observations, early stops.

Handlers see only bytes and an :class:`Allowance`; they know nothing of MIME or
of the object tree. Everything here is plain data so it can cross the sandbox
pipe unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class Stop(str, Enum):
    """Why a handler did not deliver everything; each becomes an ``unchecked`` finding."""

    BUDGET = "unpack-budget"  # the per-message output budget ran out
    RATIO = "compression-ratio"  # a member or container expands beyond the ratio limit
    TOO_MANY = "too-many-members"  # more members than objects left for the message
    ENCRYPTED = "encrypted"  # no password candidate opened it
    PASSWORD_TRIALS = "password-trials"  # encrypted members left untried: too many wrong passwords already
    CORRUPT = "corrupt"  # the parser rejected the data
    OVERLAP = "overlapping-entries"  # zip entries share bytes: a bomb construction
    TIMEOUT = "parser-timeout"  # a parser ran past its time (sandbox) or CPU (meter) limit
    CRASH = "parser-crash"  # the sandboxed parser died (signal, memory limit)
    UNSUPPORTED = "unsupported"  # a format or method we cannot open


class MemberState(str, Enum):
    COMPLETE = "complete"
    TRUNCATED = "truncated"  # cut by a limit: ``data`` is a prefix
    ENCRYPTED = "encrypted"  # only the name could be read
    UNREAD = "unread"  # named, but not extracted (limit or unsupported method)


class Fact(str, Enum):
    """Active content a document handler saw; signatures decide how much it weighs."""

    VBA_MACROS = "vba-macros"
    VBA_AUTOEXEC = "vba-autoexec"
    VBA_SUSPICIOUS = "vba-suspicious"  # auto-exec plus execute/download/CreateObject... or an IOC
    XLM_MACROS = "xlm-macros"  # Excel 4 macros (they run from Auto_Open names)
    XLM_SUSPICIOUS = "xlm-suspicious"  # XLM that calls EXEC, CALL, REGISTER, downloads...
    DDE_LINK = "dde-link"
    REMOTE_TEMPLATE = "remote-template"
    OLE_OBJECT = "ole-object"  # an embedded OLE object in an RTF/OLE document
    PDF_JAVASCRIPT = "pdf-javascript"
    PDF_AUTO_ACTION = "pdf-auto-action"  # /OpenAction or /AA that runs JavaScript
    PDF_LAUNCH = "pdf-launch"
    PDF_EMBEDDED_FILE = "pdf-embedded-file"
    ENCRYPTED_OPENED = "encrypted-opened"  # a default password or one from the message opened it
    POLYGLOT = "polyglot"  # valid as two formats (a PDF carrying a raw zip)


@dataclass(frozen=True)
class Observation:
    fact: Fact
    detail: str = ""


@dataclass(frozen=True)
class Incomplete:
    stop: Stop
    detail: str = ""


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes = b""
    state: MemberState = MemberState.COMPLETE
    declared_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Allowance:
    """What one handler call may still produce; the caller charges what it really got."""

    bytes: int
    members: int
    max_ratio: int = 200
    ratio_floor: int = 1024 * 1024
    passwords: tuple[str, ...] = ()
    seconds: float = 10.0  # CPU time of this call, far below the message deadline
    password_trials: int = 32  # wrong passwords this call may try: each costs a key derivation (AES: ~1 ms)
    password_seconds: float = 2.0  # and the time they may take: a 7z, RAR or Office file prices its own


@dataclass(frozen=True)
class Unpacked:
    members: tuple[Member, ...] = ()
    observations: tuple[Observation, ...] = ()
    incomplete: tuple[Incomplete, ...] = ()
    password_trials: int = 0  # wrong passwords tried
    password_seconds: float = 0.0  # and the time they took

    @property
    def produced(self) -> int:
        return sum(len(m.data) for m in self.members)

    def as_dict(self) -> dict[str, Any]:
        """Structure without the bytes (they travel separately): see :mod:`.sandbox`."""
        return {
            "members": [
                {"name": m.name, "size": len(m.data), "state": m.state.value, "declared_type": m.declared_type}
                for m in self.members
            ],
            "observations": [[o.fact.value, o.detail] for o in self.observations],
            "incomplete": [[i.stop.value, i.detail] for i in self.incomplete],
            "password_trials": self.password_trials,
            "password_seconds": self.password_seconds,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], blobs: list[bytes]) -> Unpacked:
        members = tuple(
            Member(m["name"], blob, MemberState(m["state"]), m["declared_type"])
            for m, blob in zip(doc["members"], blobs, strict=True)
        )
        return cls(
            members,
            tuple(Observation(Fact(f), d) for f, d in doc["observations"]),
            tuple(Incomplete(Stop(s), d) for s, d in doc["incomplete"]),
            int(doc.get("password_trials", 0)),
            float(doc.get("password_seconds", 0.0)),
        )


def stopped(stop: Stop, detail: str = "", members: tuple[Member, ...] = ()) -> Unpacked:
    return Unpacked(members=members, incomplete=(Incomplete(stop, detail),))


class Trials:
    """The wrong passwords one call may still try, counted and timed.

    Each costs a key derivation whose price the file sets: a zip's AES is ~1 ms,
    while a 7z, RAR or Office file names its own iteration count (tens of ms by
    default, seconds if it likes). So a count alone would not bound the time;
    only wrong tries are charged, the one that opens is the work asked for.
    """

    def __init__(self, allowance: Allowance):
        self._allowed, self._seconds = allowance.password_trials, allowance.password_seconds
        self.tried = 0
        self.spent = 0.0

    @property
    def exhausted(self) -> bool:
        return self.tried >= self._allowed or self.spent >= self._seconds

    def wrong(self, began: float) -> None:
        """One more wrong password, tried since ``began`` (:func:`time.monotonic`)."""
        self.tried += 1
        self.spent += time.monotonic() - began

    def untried(self, what: str) -> Incomplete:
        return Incomplete(Stop.PASSWORD_TRIALS, f"{what} not tried: {self.tried} wrong passwords already")

    def charged(self, result: Unpacked) -> Unpacked:
        """``result`` carrying what the tries cost, for the message's own budget."""
        return replace(result, password_trials=self.tried, password_seconds=self.spent)


@dataclass
class Collector:
    """Mutable accumulator a handler fills while it reads; frozen into :class:`Unpacked`."""

    members: list[Member] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    incomplete: list[Incomplete] = field(default_factory=list)

    def stop(self, stop: Stop, detail: str = "") -> None:
        self.incomplete.append(Incomplete(stop, detail))

    def observe(self, fact: Fact, detail: str = "") -> None:
        self.observations.append(Observation(fact, detail))

    def result(self) -> Unpacked:
        return Unpacked(tuple(self.members), tuple(self.observations), tuple(self.incomplete))
