"""The bytes of one message as they travel: in memory when small, a private spool file when large.

One value type, so no part branches on ``bytes | Path``: the milter buffer makes
one, the worker reads it, the quarantine streams it in chunks. It pickles as
its bytes or its path, never as an open file, so it crosses the pipe to a
scanning process cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1024 * 1024  # bytes per chunk when a message is streamed (quarantine writes)
HEAD_BYTES = 64 * 1024  # enough for the header block of any sane message


@dataclass(frozen=True)
class MessageSource:
    """One message's bytes: ``data`` in memory, or the spool file at ``path`` holding ``size`` bytes.

    A spool file belongs to the message in transit (the milter removes it at
    the end of the message); readers only read it.
    """

    data: bytes = b""
    path: Path | None = None
    size: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.path is None:
            object.__setattr__(self, "size", len(self.data))

    @classmethod
    def of(cls, data: bytes | bytearray) -> MessageSource:
        """Bytes kept as they are; a bytearray (the milter's buffer) copied once into immutable bytes."""
        return cls(data=bytes(data))

    @classmethod
    def spooled(cls, path: Path, size: int) -> MessageSource:
        return cls(path=path, size=size)

    @property
    def is_spooled(self) -> bool:
        return self.path is not None

    def read(self) -> bytes:
        """The whole message (the parser needs it whole)."""
        return self.path.read_bytes() if self.path is not None else self.data

    def head(self, limit: int = HEAD_BYTES) -> bytes:
        """The first ``limit`` bytes: the header block of any sane message, without reading the rest."""
        if self.path is None:
            return self.data[:limit]
        with open(self.path, "rb") as fh:
            return fh.read(limit)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """The message in pieces of at most ``size`` bytes, so a large one is never held whole."""
        if self.path is not None:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(size):
                    yield chunk
        else:
            view = memoryview(self.data)
            for start in range(0, len(view), size):
                yield bytes(view[start : start + size])
