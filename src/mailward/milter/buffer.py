"""Rebuild a message's bytes from milter callbacks within bounded memory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..source import MessageSource

SPOOL_PREFIX, SPOOL_SUFFIX = "msg-", ".eml"  # the daemon removes such files left by a killed milter


class MessageBuffer:
    """Header block and body chunks in order; past ``threshold`` bytes they go to a private file.

    Header values arrive with their leading space (P_HDR_LEADSPC), so
    ``name + ":" + value`` is the header exactly as sent, folding included.
    """

    def __init__(self, threshold: int, spool_dir: Path):
        self._threshold = threshold
        self._spool_dir = spool_dir
        self._memory = bytearray()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self.size = 0

    def add_headers(self, fields: list[tuple[str, bytes]]) -> None:
        """Header fields as received, in one write (a message has some thirty). Every line ends in
        CRLF, folded ones included, however the MTA ended them."""
        block = b"".join([b"%s:%s\n" % (name.encode("ascii", "replace"), value) for name, value in fields])
        if b"\r" in block:  # some line already ends in CRLF (Postfix folds with a bare LF)
            block = block.replace(b"\r\n", b"\n")
        self._write(block.replace(b"\n", b"\r\n"))

    def end_headers(self) -> None:
        self._write(b"\r\n")

    def add_body(self, chunk: bytes) -> None:
        self._write(chunk)

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None and self.size > self._threshold:
            fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, suffix=SPOOL_SUFFIX, dir=self._spool_dir)  # mode 0600
            self._file, self._path = os.fdopen(fd, "wb"), Path(name)
            self._file.write(self._memory)
            self._memory = bytearray()
        if self._file is not None:
            self._file.write(data)
        else:
            self._memory += data

    def source(self) -> MessageSource:
        """The whole message: in memory when small, else the flushed spool file."""
        if self._file is not None and self._path is not None:  # set together when spooling starts
            self._file.flush()
            return MessageSource.spooled(self._path, self.size)
        return MessageSource.of(self._memory)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
        self._memory = bytearray()
        self.size = 0
