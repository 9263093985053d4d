"""Failed SMTP logins from Postfix's log: the line format, and a follower that survives log rotation.

Postfix logs each failed SASL attempt as, e.g.::

    Nov 22 19:20:01 mx postfix/smtpd[1234]: warning: unknown[192.0.2.5]: SASL LOGIN authentication failed: UGFzc3dvcmQ6

A log line can carry text a client chose anywhere past its syslog header (a HELO
name, an address, a login name another daemon logs), so the pattern is anchored to
the whole header: a timestamp (``Nov 22 19:20:01``, or ISO 8601 as rsyslog's file
format and ``journalctl -o short-iso`` write it), the host name, then the program
tag ``postfix[-instance][/service...]/smtpd[pid]:``. Only Postfix's smtpd writes
that tag, and nothing before the client's ``[address]`` is the client's.

Only wrong credentials count: a failure whose reason is an outage (``Connection
lost to authentication server``, ``Can't connect to authentication server``, a
temporary failure) would otherwise block every client that retries meanwhile,
the office's NAT address first. What Postfix logs as the reason (before
``, sasl_username=...``, the client's own text) counts only when it is one of:

- ``authentication failure``: Cyrus SASL, wrong password or unknown user;
- ``(reason unavailable)`` or nothing: Dovecot refused without a reason, as it
  does for a wrong password;
- a base64 challenge (``UGFzc3dvcmQ6``, "Password:"): Postfix before 3.9 echoed
  the last challenge when Dovecot refused without a reason.

Any other reason is not a password guess and is not counted: Cyrus's ``generic
failure`` (an unreadable sasldb or saslauthd away; Postfix answers it with 454
even for the right password), ``transient failure``, ``remote authentication
server unavailable``, ``Authentication backend error``, the protocol errors
``Invalid base64 data...`` and ``Invalid authentication mechanism``, an expired or
disabled account. Postfix drops the ``code=temp_fail`` of a Dovecot whose own
password database is down, so such a failure reads as a wrong password here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import MailwardError

log = logging.getLogger(__name__)

_TIMESTAMP = (
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?"  # syslog: Nov  2 19:20:01[.123456]
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"  # ISO 8601 / RFC 3339
)
_FAILED = re.compile(
    rf"^{_TIMESTAMP} \S+ postfix[\w.-]*(?:/[\w.-]+)*/smtpd\[\d+\]: warning: "
    r"(?P<name>[^\[\]\s]*)\[(?P<address>[0-9A-Fa-f.:]+)\](?::\d+)?: "
    r"SASL (?P<mechanism>[\w-]+) authentication failed(?::(?: (?P<reason>.*?))?)?(?:, sasl_username=.*)?$"
)
_WRONG_CREDENTIALS = re.compile(
    r"|\(reason unavailable\)|authentication failure"
    r"|(?:[A-Za-z0-9+/]{4}){2,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"  # a base64 challenge
)


def failed_login_address(line: str) -> str | None:
    """The client address of a login that failed on its credentials, or None for any other line."""
    match = _FAILED.match(line)
    if match is None or not _WRONG_CREDENTIALS.fullmatch(match.group("reason") or ""):
        return None
    return match.group("address")


class AuthLogError(MailwardError):
    """The log cannot be read where reading it once is all that was asked (``watch-auth --once``)."""


class _OpenLog:
    """One opened log file and the start of a line its writer has not finished yet."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.inode = os.fstat(handle.fileno()).st_ino
        self._pending = b""

    def read(self, stop: threading.Event) -> Iterator[str]:
        """The complete lines appended since the last read, up to the end of the file."""
        while not stop.is_set():
            chunk = self.handle.read(65536)
            if not chunk:
                return
            self._pending += chunk
            *complete, self._pending = self._pending.split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", "replace")

    def grown(self) -> bool:
        """True when there is more to read."""
        return os.fstat(self.handle.fileno()).st_size > self.handle.tell()

    def close(self) -> None:
        self.handle.close()


class LogFollower:
    """Yields the complete lines appended to a log file, across rotation (rename + new file) and truncation.

    Starts at the end of the file (old failures are not news), or at ``offset``
    (0: from the start). After a rotation the writer goes on appending to the
    renamed file until it is told to reopen (logrotate's ``create``, then
    ``postrotate``), so the renamed file is read on, before the new one, until the
    new one has data or for ``rotation_grace`` seconds. Truncation in place
    (logrotate's ``copytruncate``) is noticed when the file is shorter than what
    was read; lines written in between can be missed, as with ``tail -F``, so
    prefer rotation by rename (Debian's default for mail.log).
    """

    def __init__(self, path: str | Path, offset: int | None = None, poll: float = 0.5, rotation_grace: float = 60.0):
        self.path = Path(path)
        self.poll = poll
        self.rotation_grace = rotation_grace
        self._offset = offset
        self._problem = ""  # why the file cannot be opened, logged once until it can be again

    def lines(self, stop: threading.Event, until_eof: bool = False) -> Iterator[str]:
        """Lines as they are appended; with ``until_eof``, only what is there now (AuthLogError if unreadable)."""
        current = self._open(self._offset, until_eof)
        rotated: _OpenLog | None = None  # renamed, its writer may not have reopened by name yet
        rotated_until = 0.0
        try:
            while not stop.is_set():
                if current is None:
                    current = self._open(0, until_eof)
                if rotated is not None:
                    # Once the new file has data, every line of the old one was written before it.
                    reopened = current is not None and current.grown()
                    yield from rotated.read(stop)
                    if reopened or until_eof or time.monotonic() >= rotated_until:
                        rotated.close()
                        rotated = None
                if current is None or rotated is not None:  # the new file's lines wait for the old one's
                    stop.wait(self.poll)
                    continue
                yield from current.read(stop)
                if self._replaced(current):
                    rotated, current = current, None
                    rotated_until = time.monotonic() + self.rotation_grace
                    continue
                if until_eof:
                    break
                stop.wait(self.poll)
        finally:
            for log_file in (current, rotated):
                if log_file is not None:
                    log_file.close()

    def _open(self, offset: int | None, until_eof: bool) -> _OpenLog | None:
        """The file, or None while it is missing or unreadable (said once, not at every poll)."""
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            problem = f"cannot read {self.path}: {exc.strerror}"
            if until_eof:
                raise AuthLogError(problem) from None
            if problem != self._problem:
                log.error("%s; trying again every %g s", problem, self.poll)
                self._problem = problem
            return None
        if self._problem:
            log.info("can read %s again", self.path)
            self._problem = ""
        if offset is None:
            handle.seek(0, os.SEEK_END)
        else:
            handle.seek(offset)
        return _OpenLog(handle)

    def _replaced(self, current: _OpenLog) -> bool:
        """True when the path now names another file, or ours was truncated (copytruncate)."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return False  # between rename and create: keep the old one for now
        if found.st_ino != current.inode:
            return True
        if found.st_size < current.handle.tell():
            current.handle.seek(0)
        return False


def watch(
    follower: LogFollower, failed_login: Callable[[str], object], stop: threading.Event, until_eof: bool = False
) -> int:
    """Feed every failed login in the followed log to ``failed_login`` until ``stop``; returns how many."""
    log.info("following %s for failed SMTP logins", follower.path)
    seen = 0
    for line in follower.lines(stop, until_eof):
        address = failed_login_address(line)
        if address is None:
            continue
        seen += 1
        try:
            failed_login(address)
        except Exception:  # one bad write (database away) must not end the watch
            log.exception("cannot count a failed login from %s", address)
    return seen
