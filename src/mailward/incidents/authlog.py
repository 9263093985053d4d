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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

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


class LogFollower:
    """Yields the complete lines appended to a log file, across rotation (rename + new file) and truncation.

    Starts at the end of the file (old failures are not news), or at ``offset``
    (0: from the start). A rotated file is read to its end before the new one is opened.
    Truncation in place (logrotate's ``copytruncate``) is noticed when the file is
    shorter than what was read; lines written in between can be missed, as with
    ``tail -F``, so prefer rotation by rename (Debian's default for mail.log).
    """

    def __init__(self, path: str | Path, offset: int | None = None, poll: float = 0.5):
        self.path = Path(path)
        self.poll = poll
        self._offset = offset

    def lines(self, stop: threading.Event, until_eof: bool = False) -> Iterator[str]:
        """Lines as they are appended; with ``until_eof``, only what is there now."""
        handle, inode = self._open(self._offset)
        pending = b""
        while not stop.is_set():
            if handle is None:
                handle, inode = self._open(0)
                if handle is None:
                    stop.wait(self.poll)
                    continue
            chunk = handle.read(65536)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace")
                continue
            if inode is not None and self._replaced(handle, inode):  # inode is set with the handle
                handle.close()  # the rotated file was read to its end above
                handle, inode, pending = None, None, b""
                continue
            if until_eof:
                break
            stop.wait(self.poll)
        if handle is not None:
            handle.close()

    def _open(self, offset: int | None) -> tuple[BinaryIO, int] | tuple[None, None]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            log.error("cannot read %s: %s", self.path, exc.strerror)
            return None, None
        if offset is None:
            handle.seek(0, os.SEEK_END)
        else:
            handle.seek(offset)
        return handle, os.fstat(handle.fileno()).st_ino

    def _replaced(self, handle: BinaryIO, inode: int) -> bool:
        """True when the path now names another file, or ours was truncated (copytruncate)."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False  # between rename and create: keep the old one for now
        if current.st_ino != inode:
            return True
        if current.st_size < handle.tell():
            handle.seek(0)
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
