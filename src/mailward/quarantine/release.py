"""Release: hand a quarantined message to the SMTP relay, exactly once, marked so it is not caught again.

The relay (Postfix on loopback) passes the message through the milter again.
So that Mailward does not quarantine it a second time for the same reason,
the release prepends ``X-Mailward-Release: <id> <unix time> <hmac>``; the HMAC
(SHA-256, key in ``release.key``, shared by all milter hosts) covers the ID, the
time and a digest of the body, so the mark cannot be forged nor moved to other
content. The milter checks it with :meth:`ReleaseVerifier.check`.

The body digest ignores line breaks (``CR``/``LF``): SMTP clients and MTAs
legitimately rewrite line endings on the way (smtplib turns a bare CR into
CRLF, Postfix may fold over-long lines), and none of that should void a mark.

Exactly once: the store's claim makes one releaser the only one; a delivery
failure hands the message back (``held``); a crash after the relay accepted
but before the store noted it leaves the claim in place (``releasing``), which
only an explicit ``--reclaim`` after the SMTP timeout can take over — a
duplicate is then a decision an analyst made, never an accident.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import smtplib
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import Enum
from pathlib import Path

from ..config import Settings
from ..errors import StoreError
from .files import HEAD_BYTES, adopt
from .records import Actor, ReleaseClaim, check_id
from .store import QuarantineStore

log = logging.getLogger(__name__)

RELEASE_HEADER = "X-Mailward-Release"
_KEY_BYTES = 32
_LINE_BREAKS = re.compile(rb"[\r\n]")
_BODY_START = re.compile(rb"\r?\n\r?\n")


class ReleaseOutcome(str, Enum):
    RELEASED = "released"
    FAILED = "failed"                      # the relay refused or was unreachable; the message stays held
    NOT_FOUND = "not-found"
    ALREADY_RELEASED = "already-released"
    IN_PROGRESS = "in-progress"
    NEEDS_FORCE = "needs-force"


_CLAIM_OUTCOME = {
    ReleaseClaim.NOT_FOUND: ReleaseOutcome.NOT_FOUND,
    ReleaseClaim.ALREADY_RELEASED: ReleaseOutcome.ALREADY_RELEASED,
    ReleaseClaim.IN_PROGRESS: ReleaseOutcome.IN_PROGRESS,
    ReleaseClaim.NEEDS_FORCE: ReleaseOutcome.NEEDS_FORCE,
}


@dataclass(frozen=True)
class ReleaseResult:
    outcome: ReleaseOutcome
    detail: str = ""
    refused: tuple[str, ...] = ()          # recipients the relay refused (the others got it)


@dataclass(frozen=True)
class ReleaseMark:
    """A verified release header: which quarantined message, released when."""

    quarantine_id: str
    released_at: float


@dataclass(frozen=True)
class Relay:
    host: str = "127.0.0.1"
    port: int = 25
    timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "Relay":
        q = settings.quarantine
        return cls(q.relay_host, q.relay_port, q.relay_timeout)


def key_path(settings: Settings) -> Path:
    return settings.state_path(settings.quarantine.release_key_file, "release.key")


def load_release_key(path: Path) -> bytes:
    """Read the release key, creating it (random, mode 0600) the first time."""
    try:
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create release key {path}: {exc.strerror}") from exc
    else:
        try:
            os.write(fd, secrets.token_bytes(_KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        adopt(path)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read release key {path}: {exc.strerror}") from exc
    if len(key) < 16:
        raise StoreError(f"release key {path} is shorter than 16 bytes")
    return key


def message_body(raw: bytes) -> bytes:
    """Everything after the header block (empty if there is none)."""
    match = _BODY_START.search(raw)
    return raw[match.end():] if match else b""


def _signature(key: bytes, quarantine_id: str, stamp: int, body: bytes) -> str:
    digest = hashlib.sha256(_LINE_BREAKS.sub(b"", body)).hexdigest()
    return hmac.new(key, f"{quarantine_id} {stamp} {digest}".encode(), hashlib.sha256).hexdigest()


def release_mark(key: bytes, quarantine_id: str, body: bytes, now: float) -> str:
    """The value of the ``X-Mailward-Release`` header for ``body``."""
    stamp = int(now)
    return f"{quarantine_id} {stamp} {_signature(key, quarantine_id, stamp, body)}"


class ReleaseVerifier:
    """What the milter uses to recognise mail an analyst released (load once; cheap per message)."""

    def __init__(self, key: bytes, max_age: float, clock=time.time):
        self._key = key
        self._max_age = max_age
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> "ReleaseVerifier":
        return cls(load_release_key(key_path(settings)), settings.quarantine.release_max_age_days * 86400.0)

    def verify(self, header_value: str, body: bytes) -> ReleaseMark | None:
        """The mark if ``header_value`` is a valid, unexpired release of this ``body``, else None."""
        parts = header_value.split()
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        quarantine_id, stamp, signature = parts[0], int(parts[1]), parts[2]
        if not hmac.compare_digest(signature, _signature(self._key, quarantine_id, stamp, body)):
            return None
        age = self._clock() - stamp
        if age > self._max_age or age < -300:      # five minutes of clock skew between hosts
            return None
        return ReleaseMark(quarantine_id, float(stamp))

    def verify_message(self, header_values: list[str], body: bytes) -> ReleaseMark | None:
        """The first valid mark among all ``X-Mailward-Release`` values (senders can add fake ones)."""
        for value in header_values:
            mark = self.verify(value, body)
            if mark is not None:
                return mark
        return None

    def check(self, raw: bytes | Path) -> ReleaseMark | None:
        """The valid release mark of a whole message (in memory or spooled), if it has one.

        Only the header block is read unless a release header is present, so
        ordinary mail costs one small parse.
        """
        head = raw[:HEAD_BYTES] if isinstance(raw, bytes) else _read_head(raw)
        match = _BODY_START.search(head)
        block = head[: match.start()] if match else head
        values = BytesHeaderParser(policy=compat32).parsebytes(block + b"\n\n").get_all(RELEASE_HEADER) or []
        if not values:
            return None
        data = raw if isinstance(raw, bytes) else raw.read_bytes()
        return self.verify_message([" ".join(str(v).split()) for v in values], message_body(data))


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(HEAD_BYTES)


def marked(raw: bytes, header_value: str) -> bytes:
    """``raw`` with the release header prepended, in the message's own line-ending style."""
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    return f"{RELEASE_HEADER}: {header_value}".encode("ascii") + eol + raw


def release(store: QuarantineStore, quarantine_id: str, actor: Actor, relay: Relay, key: bytes,
            force: bool = False, reclaim_after: float | None = None, clock=time.time) -> ReleaseResult:
    """Deliver ``quarantine_id`` to its original recipients through ``relay``, at most once."""
    check_id(quarantine_id)
    claim = store.claim_release(quarantine_id, actor, force=force, reclaim_after=reclaim_after)
    if claim is not ReleaseClaim.CLAIMED:
        return ReleaseResult(_CLAIM_OUTCOME[claim])
    try:
        record = store.get(quarantine_id)
        raw = store.read(quarantine_id)
        recipients = list(record.envelope.recipients) if record else []
        if not recipients:
            raise StoreError("the record has no recipients")
        data = marked(raw, release_mark(key, quarantine_id, message_body(raw), clock()))
        refused = _deliver(relay, record.envelope.mail_from, recipients, data)
    except (OSError, smtplib.SMTPException, StoreError) as exc:
        detail = f"via {relay.host}:{relay.port}: {_describe(exc)}"
        log.warning("release of %s failed %s", quarantine_id, detail)
        store.finish_release(quarantine_id, actor, delivered=False, detail=detail)
        return ReleaseResult(ReleaseOutcome.FAILED, detail)
    except BaseException:
        store.finish_release(quarantine_id, actor, delivered=False, detail="interrupted")
        raise
    delivered = [r for r in recipients if r not in refused]
    detail = f"to {', '.join(delivered)} via {relay.host}:{relay.port}"
    if refused:
        detail += f"; refused: {', '.join(sorted(refused))}"
    store.finish_release(quarantine_id, actor, delivered=True, detail=detail)
    return ReleaseResult(ReleaseOutcome.RELEASED, detail, tuple(sorted(refused)))


def _deliver(relay: Relay, sender: str, recipients: list[str], data: bytes) -> dict:
    """One SMTP transaction; returns the refused recipients (all refused raises)."""
    addresses = [sender, *recipients]
    options = ["SMTPUTF8"] if any(not a.isascii() for a in addresses) else []
    with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
        return smtp.sendmail(sender, recipients, data, mail_options=options)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "all recipients refused: " + ", ".join(f"{r} ({c})" for r, (c, _) in sorted(exc.recipients.items()))
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
    return str(exc) or type(exc).__name__
