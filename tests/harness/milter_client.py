"""A minimal MTA side of the milter protocol (version 6), to talk to `mailward-milter` without Postfix.

Used by tests that look at what the milter negotiates and by bench/milter_load.py,
which measures the milter process's own ceiling. It sends what Postfix 3.7 sends with its
default macro lists (seen with strace on a milter behind the benchmark's Postfix): a macro
packet before every command, even an empty one and even for a command the milter skips (DATA),
one before each header field and each body chunk too; headers one by one, the body in 64 KiB
chunks; an ABORT once a transaction is over. Like Postfix's stream it writes what needs no
reply into a buffer, sent when a reply is awaited or 4 KiB have gathered, and it waits for a
reply only where the negotiation says one comes.
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
STREAM_BUFFER = 4096  # Postfix's VSTREAM buffer: what needs no reply goes out when this fills


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
        self._out = bytearray()
        self._in_transaction = False

    def close(self) -> None:
        try:
            self._send(b"Q")
            self._flush()
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
        self._out += struct.pack(">I", len(data) + 1) + command + data
        if len(self._out) >= STREAM_BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            self.sock.sendall(self._out)
            self._out.clear()

    def _packet(self) -> tuple[bytes, bytes]:
        self._flush()
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
        """Send ``command`` after its macro packet; its reply code, or b"" when the milter negotiated none."""
        self._macros(command, macros or {})
        self._send(command, data)
        if self.protocol & no_reply:
            return b""
        return self._reply()[0]

    def _macros(self, command: bytes, macros: dict[str, str]) -> None:
        """The macro packet Postfix sends before ``command``: sent even when empty."""
        self._send(b"D", command + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in macros.items()))

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
        macros = {
            "j": "mx.example.test",
            "{daemon_name}": "bench",
            "{daemon_addr}": "127.0.0.1",
            "v": "Postfix 3.7.11",
            "_": f"{hostname} [{address}]",
        }
        return self._command(b"C", data, NR_CONN, macros)

    def helo(self, name: str = "client.example.org") -> bytes:
        self._macros(b"H", {})  # the TLS macros, unset without TLS
        if self.protocol & NOHELO:
            return b""
        return self._command_only(b"H", name.encode() + b"\0", NR_HELO)

    def _command_only(self, command: bytes, data: bytes, no_reply: int) -> bytes:
        self._send(command, data)
        if self.protocol & no_reply:
            return b""
        return self._reply()[0]

    def _envelope_command(self, command: bytes, data: bytes, skip: int, no_reply: int, macros: dict[str, str]) -> None:
        """MAIL, RCPT, DATA: Postfix sends their macros even when the milter skips the command."""
        self._macros(command, macros)
        if not self.protocol & skip:
            self._command_only(command, data, no_reply)

    def message(
        self,
        raw: bytes,
        mail_from: str = "sender@example.org",
        recipients: tuple[str, ...] = ("user@example.test",),
        queue_id: str = "4ABCDEF",
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """One transaction; (final reply code, modification packets such as added headers).

        The queue ID is known from DATA on (Postfix opens the queue file after the first
        recipient); the ABORT that ends the transaction goes out with the next command.
        """
        domain = mail_from.rpartition("@")[2]
        self._envelope_command(
            b"M",
            f"<{mail_from}>".encode() + b"\0",
            NOMAIL,
            NR_MAIL,
            {"{mail_addr}": mail_from, "{mail_host}": domain, "{mail_mailer}": "smtp"},
        )
        for rcpt in recipients:
            macros = {"{rcpt_addr}": rcpt, "{rcpt_host}": rcpt.rpartition("@")[2], "{rcpt_mailer}": "smtp"}
            self._envelope_command(b"R", f"<{rcpt}>".encode() + b"\0", NORCPT, NR_RCPT, macros)
        self._envelope_command(b"T", b"", NODATA, NR_DATA, {"i": queue_id})
        head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
        end_macros = {"i": queue_id}  # milter_end_of_header_macros and milter_end_of_data_macros
        if not self.protocol & NOHDRS:
            for name, value in BytesHeaderParser().parsebytes(head + b"\n\n").raw_items():
                text = value if isinstance(value, str) else str(value)
                text = text.replace("\r\n", "\n")
                if not self.protocol & HDR_LEADSPC:
                    text = text.lstrip(" ")
                field = name.encode() + b"\0" + text.encode("utf-8", "surrogateescape") + b"\0"
                self._command(b"L", field, NR_HDR, end_macros)
        if not self.protocol & NOEOH:
            self._command(b"N", b"", NR_EOH, end_macros)
        body = body.replace(b"\n", b"\r\n")
        if not self.protocol & NOBODY:
            for start in range(0, len(body), CHUNK):
                self._command(b"B", body[start : start + CHUNK], NR_BODY, end_macros)
        self._macros(b"E", end_macros)
        self._send(b"E")
        changes: list[tuple[bytes, bytes]] = []
        while True:
            command, data = self._packet()
            if command in (b"p",):
                continue
            if command[0] in FINAL:
                self._send(b"A")  # Postfix resets the transaction: sent with what comes next
                return command, changes
            changes.append((command, data))
