"""A minimal MTA side of the milter protocol (version 6), to talk to `mailward-milter` without Postfix.

Used by tests that look at what the milter negotiates and by bench/milter_load.py,
which measures the milter process's own ceiling. It sends what Postfix sends
(macros before commands, headers one by one, the body in 64 KiB chunks) and
waits for a reply only where the negotiation says one comes.
"""

from __future__ import annotations

import socket
import struct
from email.parser import BytesHeaderParser

# Protocol flags (libmilter mfapi.h): commands the milter skips or leaves unanswered.
NOCONNECT, NOHELO, NOMAIL, NORCPT, NOBODY, NOHDRS, NOEOH = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40
NR_HDR, NODATA = 0x80, 0x200
NR_CONN, NR_HELO, NR_MAIL, NR_RCPT, NR_DATA, NR_EOH, NR_BODY = 0x1000, 0x2000, 0x4000, 0x8000, 0x10000, 0x40000, 0x80000
HDR_LEADSPC = 0x100000
ALL_PROTOCOL = 0x1FFFFF
ALL_ACTIONS = 0x1FF
FINAL = set(b"acdrty")  # accept, continue, discard, reject, tempfail, reply code
CHUNK = 65535


class MilterSession:
    """One MTA connection to a milter; several messages may follow one another on it."""

    def __init__(self, address: str | tuple[str, int], timeout: float = 60.0):
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        if family == socket.AF_INET:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.protocol = 0
        self.actions = 0

    def close(self) -> None:
        try:
            self._send(b"Q")
        except OSError:
            pass
        self.file.close()
        self.sock.close()

    def __enter__(self) -> MilterSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- wire -----------------------------------------------------------------------------------
    def _send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">I", len(data) + 1) + command + data)

    def _packet(self) -> tuple[bytes, bytes]:
        head = self.file.read(4)
        if len(head) < 4:
            raise ConnectionError("the milter closed the connection")
        (length,) = struct.unpack(">I", head)
        body = self.file.read(length)
        return body[:1], body[1:]

    def _reply(self) -> tuple[bytes, bytes]:
        """The final reply to a command, skipping progress packets."""
        while True:
            command, data = self._packet()
            if command != b"p":
                return command, data

    def _command(self, command: bytes, data: bytes, no_reply: int, macros: dict[str, str] | None = None) -> bytes:
        """Send ``command`` (with its macros); its reply code, or b"" when the milter negotiated none."""
        if macros:
            self._send(b"D", command + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in macros.items()))
        self._send(command, data)
        if self.protocol & no_reply:
            return b""
        return self._reply()[0]

    # --- protocol -----------------------------------------------------------------------------------
    def negotiate(self, protocol: int = ALL_PROTOCOL, actions: int = ALL_ACTIONS) -> int:
        """Offer ``protocol`` and ``actions``; returns (and keeps) the protocol flags the milter chose."""
        self._send(b"O", struct.pack(">III", 6, actions, protocol))
        command, data = self._packet()
        if command != b"O":
            raise ConnectionError(f"negotiation answered with {command!r}")
        _version, self.actions, self.protocol = struct.unpack(">III", data[:12])
        return self.protocol

    def connect(self, hostname: str = "client.example.org", address: str = "192.0.2.10", port: int = 40000) -> bytes:
        data = hostname.encode() + b"\0" + b"4" + struct.pack(">H", port) + address.encode() + b"\0"
        return self._command(b"C", data, NR_CONN, {"{daemon_name}": "bench", "j": "mx.example.test"})

    def helo(self, name: str = "client.example.org") -> bytes:
        return self._command(b"H", name.encode() + b"\0", NR_HELO)

    def message(
        self,
        raw: bytes,
        mail_from: str = "sender@example.org",
        recipients: tuple[str, ...] = ("user@example.test",),
        queue_id: str = "4ABCDEF",
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """One transaction; (final reply code, modification packets such as added headers)."""
        if not self.protocol & NOMAIL:
            self._command(b"M", f"<{mail_from}>".encode() + b"\0", NR_MAIL, {"i": queue_id})
        for rcpt in recipients:
            if not self.protocol & NORCPT:
                self._command(b"R", f"<{rcpt}>".encode() + b"\0", NR_RCPT)
        if not self.protocol & NODATA:
            self._command(b"T", b"", NR_DATA, {"i": queue_id})
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        if not self.protocol & NOHDRS:
            for name, value in BytesHeaderParser().parsebytes(head + b"\n\n").raw_items():
                text = value if isinstance(value, str) else str(value)
                text = text.replace("\r\n", "\n")
                if not self.protocol & HDR_LEADSPC:
                    text = text.lstrip(" ")
                self._command(b"L", name.encode() + b"\0" + text.encode("utf-8", "surrogateescape") + b"\0", NR_HDR)
        if not self.protocol & NOEOH:
            self._command(b"N", b"", NR_EOH)
        body = body.replace(b"\n", b"\r\n")
        if not self.protocol & NOBODY:
            for start in range(0, len(body), CHUNK):
                self._command(b"B", body[start : start + CHUNK], NR_BODY)
        self._send(b"D", b"Ei\0" + queue_id.encode() + b"\0")
        self._send(b"E")
        changes: list[tuple[bytes, bytes]] = []
        while True:
            command, data = self._packet()
            if command in (b"p",):
                continue
            if command[0] in FINAL:
                return command, changes
            changes.append((command, data))
