"""Release: hand a quarantined message to the SMTP relay, exactly once, marked so it is not caught again.

The relay (Postfix on loopback) passes the message through the milter again.
So that Mailward does not quarantine it a second time for the same reason,
the release prepends ``X-Mailward-Release: <id> <unix time> <hmac>``; the HMAC
(SHA-256, key in ``release.key``, shared by all milter hosts) covers the ID, the
time, a digest of the body and the recipients the release was for, so the mark
cannot be forged, moved to other content or replayed to other recipients. The
milter honours a mark once: the store records its use (:meth:`QuarantineStore.use_release_mark`).
The key and the HMAC itself are in :mod:`mailward.marks`, shared with incident response's alert mail.

The body digest ignores line breaks (``CR``/``LF``): SMTP clients and MTAs
legitimately rewrite line endings on the way (smtplib turns a bare CR into
CRLF, Postfix may fold over-long lines), and none of that should void a mark.

The digest is computed where the message already is, in the scanning worker
(:func:`mailward.pipeline.mark_proof`); the milter process, which holds every SMTP connection,
only checks short strings (:meth:`ReleaseVerifier.accept`) and never reads a
message body.

Alert e-mail carries the same kind of mark (``X-Mailward-Alert-Mark``, its own
HMAC domain, same key): an alert quoting a malware finding is delivered tagged
instead of being caught by the rule it reports.

Exactly once: the store's claim makes one releaser the only one; a delivery
failure hands the message back (``held``); a crash after the relay accepted
but before the store noted it leaves the claim in place (``releasing``), which
only an explicit ``--reclaim`` after the SMTP timeout can take over — a
duplicate is then a decision an analyst made, never an accident. With
``quarantine.hold`` the milter also left a copy in Postfix's hold queue; that
copy is deleted (``postsuper -d``) *before* ours goes out, so a failure in
between loses nothing (our copy stays held) and no second copy can appear.
A held copy that is not there (and was not deleted by an earlier attempt of
ours) may have been released with ``postsuper -H``: ours then stays held
unless the analyst says to deliver it anyway.
"""

from __future__ import annotations

import hmac
import logging
import re
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from ..actor import Actor
from ..config import Settings
from ..envelope import Envelope
from ..errors import MailwardError, StoreError
from ..evidence import RELEASE_HEADER, MarkProof, content_digest
from ..marks import (
    key_path,
    load_release_key,
    marked,
    parse_mark,
    recipients_digest,
    release_mark,
    signature,
)
from ..message import split_message
from ..privileges import as_root
from .records import ReleaseClaim, check_id
from .store import QuarantineStore

log = logging.getLogger(__name__)

ALERT_MAX_AGE = 3600.0  # an alert goes out at once; its mark needs to live only through the relay
_HELD_DELETED = re.compile(r"Deleted: (\d+) message")
HELD_COPY_DELETED = "held-copy-deleted"  # audit action: a release deleted Postfix's held copy (detail: queue ID)


class ReleaseOutcome(str, Enum):
    RELEASED = "released"
    FAILED = "failed"  # the relay refused or was unreachable; the message stays held
    NOT_FOUND = "not-found"
    ALREADY_RELEASED = "already-released"
    IN_PROGRESS = "in-progress"
    NEEDS_FORCE = "needs-force"
    NO_HELD_COPY = "no-held-copy"  # quarantine.hold: Postfix's copy is gone, maybe delivered; ours stays held


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
    refused: tuple[str, ...] = ()  # recipients the relay refused (the others got it)


@dataclass(frozen=True)
class ReleaseMark:
    """A verified mark: which quarantined message (or alert incident), released when."""

    quarantine_id: str
    released_at: float
    kind: str = "release"  # "release" | "alert"


@dataclass(frozen=True)
class Relay:
    host: str = "127.0.0.1"
    port: int = 25
    timeout: float = 60.0
    hold_queue: bool = False  # the milter also put quarantined mail in Postfix's hold queue

    @classmethod
    def from_settings(cls, settings: Settings) -> Relay:
        q = settings.quarantine
        return cls(q.relay_host, q.relay_port, q.relay_timeout, q.hold)


class ReleaseVerifier:
    """What the milter uses to recognise mail an analyst released, and Mailward's own alerts.

    ``store`` is the quarantine: a release mark counts only for a record being
    or already released, for (a subset of) its recipients, and only once.
    """

    def __init__(
        self, key: bytes, max_age: float, store: QuarantineStore | None = None, clock: Callable[[], float] = time.time
    ):
        self._key = key
        self._max_age = max_age
        self._store = store
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, store: QuarantineStore | None = None) -> ReleaseVerifier:
        return cls(load_release_key(key_path(settings)), settings.quarantine.release_max_age_days * 86400.0, store)

    def _valid(
        self, domain: str, value: str, digest: str, recipients: Iterable[str], max_age: float
    ) -> tuple[str, int] | None:
        parsed = parse_mark(value)
        if parsed is None:
            return None
        ident, stamp, given = parsed
        expected = signature(self._key, domain, ident, stamp, digest, recipients_digest(recipients))
        if not hmac.compare_digest(given, expected):
            return None
        age = self._clock() - stamp
        if age > max_age or age < -300:  # five minutes of clock skew between hosts
            return None
        return ident, stamp

    def verify(self, header_value: str, raw: bytes, recipients: Iterable[str]) -> ReleaseMark | None:
        """The mark if ``header_value`` is a valid, unexpired release of the message ``raw`` to ``recipients``."""
        valid = self._valid("release", header_value, content_digest(*split_message(raw)), recipients, self._max_age)
        return ReleaseMark(valid[0], float(valid[1])) if valid else None

    def accept(self, proof: MarkProof, envelope: Envelope) -> ReleaseMark | None:
        """The first mark of ``proof`` that holds for this envelope; a release mark is used up by it.

        Reads only short strings and one store row: safe in the milter process.
        """
        for value in proof.alert:
            valid = self._valid("alert", value, proof.content_digest, envelope.recipients, ALERT_MAX_AGE)
            if valid:
                return ReleaseMark(valid[0], float(valid[1]), "alert")
        if self._store is None:
            return None
        for value in proof.release:
            mark = self._use(value, proof.content_digest, envelope)
            if mark is not None:
                return mark
        return None

    def _use(self, value: str, digest: str, envelope: Envelope) -> ReleaseMark | None:
        parsed = parse_mark(value)
        store = self._store
        if parsed is None or store is None:
            return None
        try:
            check_id(parsed[0])
            record = store.get(parsed[0])
            if record is None or not set(envelope.recipients) <= set(record.envelope.recipients):
                return None
            valid = self._valid("release", value, digest, record.envelope.recipients, self._max_age)
            if valid is None or not store.use_release_mark(valid[0], valid[1]):
                return None
        except StoreError as exc:  # unverifiable counts as unmarked: screened as usual, never let through unchecked
            log.warning(
                "release mark of %s not checked, the copy is screened as usual (it may be quarantined again): %s",
                parsed[0],
                exc,
            )
            return None
        return ReleaseMark(valid[0], float(valid[1]))


def release(
    store: QuarantineStore,
    quarantine_id: str,
    actor: Actor,
    relay: Relay,
    key: bytes,
    force: bool = False,
    reclaim_after: float | None = None,
    clock: Callable[[], float] = time.time,
    without_held_copy: bool = False,
) -> ReleaseResult:
    """Deliver ``quarantine_id`` to its original recipients through ``relay``, at most once.

    ``without_held_copy``: deliver even though Postfix's held copy is gone (see :func:`_clear_hold_queue`).
    """
    check_id(quarantine_id)
    claim = store.claim_release(quarantine_id, actor, force=force, reclaim_after=reclaim_after)
    if claim is not ReleaseClaim.CLAIMED:
        return ReleaseResult(_CLAIM_OUTCOME[claim])
    held = ""
    try:
        record = store.get(quarantine_id)
        raw = store.read(quarantine_id)
        recipients = list(record.envelope.recipients) if record else []
        if record is None or not recipients:
            raise StoreError("the record has no recipients")
        if relay.hold_queue and record.envelope.queue_id:
            held = _clear_hold_queue(store, quarantine_id, record.envelope.queue_id, actor, without_held_copy)
        mark = release_mark(key, quarantine_id, raw, recipients, clock())
        refused = _deliver(relay, record.envelope.mail_from, recipients, marked(raw, RELEASE_HEADER, mark))
    except NoHeldCopy as exc:
        log.warning("release of %s refused: %s", quarantine_id, exc)
        store.finish_release(quarantine_id, actor, delivered=False, detail=str(exc))
        return ReleaseResult(ReleaseOutcome.NO_HELD_COPY, str(exc))
    except (OSError, smtplib.SMTPException, StoreError) as exc:
        detail = f"via {relay.host}:{relay.port}: {_describe(exc)}{held}"
        log.warning("release of %s failed %s", quarantine_id, detail)
        store.finish_release(quarantine_id, actor, delivered=False, detail=detail)
        return ReleaseResult(ReleaseOutcome.FAILED, detail)
    except BaseException:
        store.finish_release(quarantine_id, actor, delivered=False, detail="interrupted" + held)
        raise
    delivered = [r for r in recipients if r not in refused]
    detail = f"to {', '.join(delivered)} via {relay.host}:{relay.port}"
    if refused:
        detail += f"; refused: {', '.join(sorted(refused))}"
    store.finish_release(quarantine_id, actor, delivered=True, detail=detail + held)
    return ReleaseResult(ReleaseOutcome.RELEASED, detail + held, tuple(sorted(refused)))


class NoHeldCopy(MailwardError):
    """Postfix's held copy is gone and no release of ours deleted it: ours could be a second copy."""


def _clear_hold_queue(store: QuarantineStore, quarantine_id: str, queue_id: str, actor: Actor, anyway: bool) -> str:
    """Delete Postfix's held copy before ours goes out; a note for the audit trail.

    Finding none is expected only when an earlier attempt of ours deleted it
    (recorded as HELD_COPY_DELETED) and then failed to deliver. Otherwise it was
    released (``postsuper -H``) or deleted behind our back, and delivering ours
    could deliver twice: NoHeldCopy, unless ``anyway``.
    """
    if _delete_held_copy(queue_id):
        store.record_event(quarantine_id, HELD_COPY_DELETED, actor, queue_id)
        return f"; held copy {queue_id} deleted from Postfix's hold queue"
    if any(e.action == HELD_COPY_DELETED and e.detail == queue_id for e in store.history(quarantine_id)):
        return f"; held copy {queue_id} already deleted by an earlier attempt"
    if anyway:
        return f"; no held copy {queue_id} in Postfix's hold queue, delivered anyway as asked"
    raise NoHeldCopy(
        f"no held copy {queue_id} in Postfix's hold queue (released with postsuper -H, or deleted?): "
        "not delivered, so that nobody gets it twice"
    )


def _delete_held_copy(queue_id: str) -> int:
    """Delete the milter's copy of ``queue_id`` from Postfix's hold queue; how many postsuper deleted.

    Needs root (or Postfix's mail owner). Raises StoreError when postsuper
    cannot run, so the release stops before anything is delivered.
    ``MAIL_CONFIG`` selects a non-default Postfix instance, as for postsuper itself.
    """
    if not re.fullmatch(r"[0-9A-Za-z]+", queue_id):
        raise StoreError(f"not a Postfix queue ID: {queue_id!r}")
    try:
        done = subprocess.run(
            ["postsuper", "-d", queue_id, "hold"], capture_output=True, text=True, timeout=60, **as_root()
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"cannot delete the held copy {queue_id}: {exc}") from exc
    if done.returncode != 0:
        raise StoreError(f"cannot delete the held copy {queue_id}: {done.stderr.strip()[-300:]}")
    deleted = _HELD_DELETED.search(done.stderr)  # "Deleted: 0 messages" when there was none
    return int(deleted.group(1)) if deleted else 0


def _deliver(relay: Relay, sender: str, recipients: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    """One SMTP transaction; returns the refused recipients (all refused raises)."""
    addresses = [sender, *recipients]
    options = ["SMTPUTF8"] if any(not a.isascii() for a in addresses) else []
    with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
        return smtp.sendmail(sender, recipients, data, mail_options=options)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "all recipients refused: " + ", ".join(f"{r} ({c})" for r, (c, _) in sorted(exc.recipients.items()))
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error
        return f"{exc.smtp_code} {error.decode(errors='replace') if isinstance(error, bytes) else error}"
    return str(exc) or type(exc).__name__
