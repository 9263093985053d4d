"""An empty pymilter milter: the floor of a milter process's CPU per message in Python.

Negotiates what Mailward's milter does (the same callbacks, ``noreply`` where Mailward has it,
leading-space headers, the same actions), keeps each message's bytes in a buffer as Mailward
does, and accepts every message with one added header. No screening, no stores, no logging:
what is left is libmilter, pymilter and the Python callbacks themselves.
``bench/milter_load.py --floor`` runs it beside Mailward, measured the same way.

    .venv/bin/python bench/empty_milter.py unix:/tmp/empty.sock
"""

from __future__ import annotations

import sys

import Milter


@Milter.header_leading_space
class EmptyMilter(Milter.Base):
    def __init__(self) -> None:
        self._buffer = bytearray()

    def connect(self, hostname: str, family: int, hostaddr: object) -> int:
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        return Milter.CONTINUE

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._buffer = bytearray()
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *params: str) -> int:
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    def header(self, name: str, value: bytes) -> int:
        self._buffer += name.encode() + b":" + value + b"\r\n"
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self._buffer += chunk
        return Milter.CONTINUE

    def eom(self) -> int:
        self.addheader("X-Empty-Verdict", " accept")
        return Milter.ACCEPT


def main() -> int:
    Milter.factory = EmptyMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE | Milter.DELRCPT)
    Milter.runmilter("empty", sys.argv[1], 240)
    return 0


if __name__ == "__main__":
    sys.exit(main())
