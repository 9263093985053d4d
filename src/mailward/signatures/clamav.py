"""ClamAV beside YARA: objects streamed to the admin's clamd with INSTREAM.

The clamd protocol is small enough to speak directly (``z``-prefixed commands,
NUL-terminated replies; INSTREAM sends 4-byte big-endian chunk lengths and a
zero-length terminator), which keeps a stale third-party client out of the mail
path. Every failure (refused connection, timeout, an ``ERROR`` reply) is
``unchecked: clamav-unavailable``, never clean: a dead antivirus must not look
like a clean message. When clamd is down (it refuses the connection, or
``DOWN_AFTER`` messages in a row got no answer from it) it is left alone for
``retry_after`` seconds, so an outage costs each message nothing but the
finding. One object clamd is slow on is unchecked for its own message only: it
says nothing about clamd, and must not make everyone's mail unchecked.

clamd skips a file above its own ``MaxFileSize`` (inside a stream too) and
answers ``OK``; with ``AlertExceedsMax`` it answers
``Heuristics.Limits.Exceeded.* FOUND`` instead. Neither is a verdict on the
content: an object larger than ``max_file_size`` is ``unchecked:
clamav-too-large`` before clamd is asked, and a limit clamd reports is
``unchecked: clamav-limit``, never malware and never clean.

Calls run on a small thread pool owned by the detector, started before the
other detectors run (:meth:`ClamavDetector.begin`), so clamd works in parallel
with YARA and the spam model.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass

from ..config import ClamavSettings, clamd_address
from ..envelope import Envelope
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ParsedMessage
from .hashes import HashList

CHUNK = 64 * 1024
_REPLY_MAX = 4096
_SIGNATURE = re.compile(r"[^A-Za-z0-9._:/+\-]")  # names go to logs and headers: keep them plain
UNAVAILABLE = "clamav-unavailable"
LIMIT = "clamav-limit"
DOWN_AFTER = 3  # messages in a row with no answer from a clamd that accepts connections: it is hung
_LIMIT_PREFIX = "Heuristics.Limits.Exceeded."  # AlertExceedsMax: clamd stopped at a limit, not a hit


class ClamdError(Exception):
    """clamd could not be reached, was too slow, or answered with an error."""


class ClamdUnreachable(ClamdError):
    """clamd did not accept the connection: it is down, whatever the object."""


class ClamdTimeout(ClamdError):
    """clamd did not answer within the time the call was given."""


class StreamTooLong(ClamdError):
    """clamd refused the stream as longer than its StreamMaxLength: unchecked, but clamd is fine."""


class LimitExceeded(ClamdError):
    """clamd stopped at one of its limits (MaxScanSize, MaxFiles...): unchecked, but clamd is fine."""


@dataclass(frozen=True)
class Clamd:
    """One clamd; every call opens its own connection (clamd serves each on a thread)."""

    address: str | tuple[str, int]
    timeout: float = 10.0

    @classmethod
    def from_socket(cls, spec: str, timeout: float) -> Clamd:
        return cls(clamd_address(spec), timeout)

    def ping(self) -> bool:
        return self._command(b"zPING\0") == "PONG"

    def version(self) -> str:
        return self._command(b"zVERSION\0")

    def instream(self, data: bytes, timeout: float | None = None) -> str | None:
        """The signature name clamd found in ``data``, or None when clean; a limit clamd hit raises."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._connect(deadline) as conn:
            unsent: OSError | None = None
            try:
                conn.sendall(b"zINSTREAM\0")
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    _budget(conn, deadline)
                    piece = view[start : start + CHUNK]
                    conn.sendall(struct.pack(">I", len(piece)) + piece)
                _budget(conn, deadline)
                conn.sendall(struct.pack(">I", 0))
            except TimeoutError:
                raise ClamdTimeout("clamd timed out") from None
            except OSError as exc:  # clamd stops reading a stream beyond StreamMaxLength: its reply says so
                unsent = exc
            try:
                reply = _reply(conn, deadline)
            except ClamdError:
                if unsent is not None:
                    raise ClamdError(f"sending to clamd: {unsent}") from None
                raise
        if "size limit exceeded" in reply:
            raise StreamTooLong(reply[:200])
        if reply.endswith(" FOUND"):
            name = reply.removeprefix("stream: ").removesuffix(" FOUND").strip()
            if name.startswith(_LIMIT_PREFIX):
                raise LimitExceeded(_SIGNATURE.sub("_", name)[:200])
            return _SIGNATURE.sub("_", name)[:200] or "unnamed"
        if reply == "stream: OK":
            return None
        raise ClamdError(f"clamd answered {reply[:200]!r}")

    def _command(self, command: bytes) -> str:
        deadline = time.monotonic() + self.timeout
        with self._connect(deadline) as conn:
            try:
                conn.sendall(command)
            except OSError as exc:
                raise ClamdError(f"sending to clamd: {exc}") from None
            return _reply(conn, deadline)

    def _connect(self, deadline: float) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self.address, str) else socket.AF_INET
        if family is socket.AF_INET and ":" in self.address[0]:
            family = socket.AF_INET6
        conn = socket.socket(family, socket.SOCK_STREAM)
        try:
            _budget(conn, deadline)
            conn.connect(self.address)
        except OSError as exc:
            conn.close()
            raise ClamdUnreachable(f"connecting to clamd: {exc}") from None
        return conn


def _budget(conn: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ClamdTimeout("clamd timed out")
    conn.settimeout(left)


def _reply(conn: socket.socket, deadline: float) -> str:
    """One NUL-terminated reply, within the call's deadline and a size a reply never needs."""
    buf = b""
    try:
        while b"\0" not in buf and len(buf) < _REPLY_MAX:
            _budget(conn, deadline)
            got = conn.recv(_REPLY_MAX)
            if not got:
                break
            buf += got
    except TimeoutError:
        raise ClamdTimeout("clamd timed out") from None
    except OSError as exc:
        raise ClamdError(f"reading from clamd: {exc}") from None
    if b"\0" not in buf:
        raise ClamdError("clamd closed the connection without an answer" if not buf else "clamd reply not terminated")
    return buf.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class _Target:
    location: str
    data: bytes


class ClamavDetector:
    """Every decoded object (or the raw message) through clamd, within the message deadline."""

    name = "clamav"

    def __init__(
        self, settings: ClamavSettings, allow: HashList, deadline: float, clock: Callable[[], float] = time.monotonic
    ):
        self.settings = settings
        self.clamd = Clamd.from_socket(settings.socket, settings.timeout)
        self.allow = allow
        self.deadline = deadline
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._unanswered = 0  # messages in a row whose calls all failed
        self._pool: ThreadPoolExecutor | None = None

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        return self.begin(message, envelope)()

    def begin(self, message: ParsedMessage, envelope: Envelope) -> Callable[[], Evidence]:
        """Start the clamd calls now; the returned function waits for them and reports."""
        findings, targets = self._targets(message)
        down = self._down()
        if down and targets:
            return lambda: Evidence(findings=tuple(findings) + (self._unavailable(targets[0].location, down),))
        started = self._clock()
        pool = self._executor()
        calls = [
            (t, pool.submit(self.clamd.instream, t.data, min(self.settings.timeout, self.deadline))) for t in targets
        ]
        return lambda: Evidence(findings=tuple(findings) + tuple(self._collect(calls, started)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _targets(self, message: ParsedMessage) -> tuple[list[Finding], list[_Target]]:
        """What to stream, and a finding for each object clamd would not scan (too long to send, or
        above MaxFileSize, which clamd also applies to what it unpacks from the raw message)."""
        stream_max, file_max = self.settings.stream_max_length, self.settings.max_file_size
        exempt = self.allow.exempt(message.objects)
        objects = [o for o in message.objects if o.has_content and o.data and o.path not in exempt]
        findings, targets = [], []
        if self.settings.scan == "message":
            for obj in objects:
                if len(obj.data) > file_max:
                    findings.append(self._too_large(obj.path, f"{len(obj.data)} bytes > clamd MaxFileSize {file_max}"))
            candidates = [("message", message.raw)]
        else:
            seen: set[str] = set()
            candidates = []
            for obj in objects:
                if obj.sha256 not in seen:
                    seen.add(obj.sha256)
                    candidates.append((obj.path, obj.data))
        for location, data in candidates:
            if len(data) > stream_max:
                findings.append(self._too_large(location, f"{len(data)} bytes > clamd StreamMaxLength {stream_max}"))
            elif len(data) > file_max:
                findings.append(self._too_large(location, f"{len(data)} bytes > clamd MaxFileSize {file_max}"))
            else:
                targets.append(_Target(location, data))
        return findings, targets

    def _collect(self, calls: list[tuple[_Target, Future[str | None]]], started: float) -> list[Finding]:
        left = max(self.deadline - (self._clock() - started), 0.0)
        done, late = wait_all([f for _, f in calls], timeout=left)
        findings: list[Finding] = []
        failure: tuple[str, str] | None = None
        answered, unreachable = False, False
        for target, future in calls:
            if future in late:
                future.cancel()
                failure = failure or (target.location, self._deadline_reason())
                continue
            try:
                signature = future.result()
            except ClamdUnreachable as exc:
                unreachable = True
                failure = failure or (target.location, str(exc))
                continue
            except StreamTooLong as exc:
                answered = True
                findings.append(self._too_large(target.location, f"{len(target.data)} bytes: {exc}"))
                continue
            except LimitExceeded as exc:
                answered = True
                findings.append(
                    Finding(Category.UNCHECKED, LIMIT, Severity.HIGH, self.name, target.location, f"clamd: {exc}")
                )
                continue
            except ClamdTimeout as exc:
                # A call given the message deadline as its timeout ran out of the deadline, not of clamd's
                # own timeout: say so, whichever of the two clocks noticed first.
                reason = self._deadline_reason() if self.deadline <= self.settings.timeout else str(exc)
                failure = failure or (target.location, reason)
                continue
            except ClamdError as exc:
                failure = failure or (target.location, str(exc))
                continue
            answered = True
            if signature is not None:
                findings.append(
                    Finding(
                        Category.MALWARE,
                        f"clamav:{signature}",
                        Severity.HIGH,
                        self.name,
                        target.location,
                        "clamd signature",
                    )
                )
        if failure is not None:
            location, reason = failure
            findings.append(self._unavailable(location, reason))
        self._record(answered, unreachable, failure[1] if failure else "")
        return findings

    def _too_large(self, location: str, detail: str) -> Finding:
        """Bigger than clamd takes (our check before sending, or clamd's own refusal): not scanned."""
        return Finding(Category.UNCHECKED, "clamav-too-large", Severity.HIGH, self.name, location, detail)

    def _deadline_reason(self) -> str:
        return f"no answer within the message deadline ({self.deadline:g}s)"

    def _unavailable(self, location: str, reason: str) -> Finding:
        return Finding(Category.UNCHECKED, UNAVAILABLE, Severity.HIGH, self.name, location, reason[:200])

    def _down(self) -> str:
        with self._lock:
            if self._clock() < self._down_until:
                return f"{self._down_reason} (not retried for {self.settings.retry_after:g}s)"
            return ""

    def _record(self, answered: bool, unreachable: bool, reason: str) -> None:
        """Open the circuit only on evidence that clamd is down: a refused connection, or
        ``DOWN_AFTER`` messages in a row without one answer (any answer means clamd works)."""
        with self._lock:
            if answered:
                self._unanswered = 0
            elif reason:
                self._unanswered += 1
            if (unreachable and not answered) or self._unanswered >= DOWN_AFTER:
                self._down_until = self._clock() + self.settings.retry_after
                self._down_reason = reason

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:  # made on first use: a scanning process starts its threads itself
                self._pool = ThreadPoolExecutor(self.settings.connections, thread_name_prefix="clamd")
            return self._pool


def clamd_version(settings: ClamavSettings) -> str:
    """clamd's version after a PING; raises ClamdError when it does not answer."""
    clamd = Clamd.from_socket(settings.socket, settings.timeout)
    if not clamd.ping():
        raise ClamdError("clamd did not answer PONG")
    return clamd.version()
