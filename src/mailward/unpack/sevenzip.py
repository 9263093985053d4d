"""7z members through py7zr, streamed into metered sinks; AES with password candidates.

A wrong password shows up in many ways in py7zr (garbage headers raise
TypeError, garbage data a CRC or LZMA error), so every failure with a candidate
simply moves on to the next candidate. Each try derives the key anew, 2^19
SHA-256 rounds by default (~65 ms) and as many as the archive asks for, so the
tries are bounded by :class:`~.model.Trials`.
"""

from __future__ import annotations

import io
import time

import py7zr
from py7zr.io import Py7zIO, WriterFactory

from .meter import Meter
from .model import (
    Allowance,
    Collector,
    Fact,
    Incomplete,
    Member,
    MemberState,
    Observation,
    Stop,
    Trials,
    Unpacked,
    stopped,
)

_FAILURES = (
    py7zr.Bad7zFile,
    py7zr.exceptions.CrcError,
    py7zr.exceptions.UnsupportedCompressionMethodError,
    py7zr.exceptions.DecompressionError,
    ValueError,
    OSError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    LookupError,
    AttributeError,
)


class _LimitReached(Exception):
    """Raised inside py7zr's write loop: stops decompression at the first limit."""


class _Sinks(WriterFactory):
    """Creates one metered sink per member, in extraction order."""

    def __init__(self, meter: Meter):
        self.meter = meter
        self.sinks: dict[str, _Sink] = {}
        self.problem: Incomplete | None = None
        self.cut = ""

    def create(self, filename: str) -> Py7zIO:
        sink = self.sinks[filename] = _Sink(filename, self)
        return sink


class _Sink(Py7zIO):
    def __init__(self, filename: str, owner: _Sinks):
        self.filename = filename
        self._owner = owner
        self.data = bytearray()

    def write(self, s: bytes | bytearray) -> int:
        self.data += s
        meter = self._owner.meter
        problem = meter.charge(len(self.data), len(s))
        if problem is not None:
            if problem.stop is Stop.BUDGET:
                del self.data[len(self.data) - (meter.produced - meter.allowance.bytes) :]
            self._owner.problem, self._owner.cut = problem, self.filename
            raise _LimitReached(problem.stop.value)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return len(self.data)

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return len(self.data)


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    trials = Trials(allowance)
    names: list[str] = []
    for password in (None, *allowance.passwords):
        if password is not None and trials.exhausted:
            return trials.charged(Unpacked(_locked(names, allowance), incomplete=(trials.untried("the archive"),)))
        began = time.monotonic()
        try:
            with py7zr.SevenZipFile(io.BytesIO(data), password=password) as archive:
                names = [f.filename for f in archive.list() if not f.is_directory]
                if password is None and archive.needs_password():
                    continue
                result = _extract(archive, names, allowance, len(data))
        except py7zr.PasswordRequired:  # the header itself is encrypted: no names either
            continue
        except _FAILURES as exc:
            if password is None:
                return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
            trials.wrong(began)
            continue
        if password is None:
            return result
        opened = result.observations + (Observation(Fact.ENCRYPTED_OPENED, "7z"),)
        return trials.charged(Unpacked(result.members, opened, result.incomplete))
    fits = "no password candidate fits" if allowance.passwords else "no password"
    return trials.charged(stopped(Stop.ENCRYPTED, fits, _locked(names, allowance)))


def _locked(names: list[str], allowance: Allowance) -> tuple[Member, ...]:
    return tuple(Member(n, state=MemberState.ENCRYPTED) for n in names[: allowance.members])


def _extract(archive: py7zr.SevenZipFile, names: list[str], allowance: Allowance, size: int) -> Unpacked:
    out = Collector()
    targets = names
    if len(names) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(names)} members")
        targets = names[: allowance.members]
    sinks = _Sinks(Meter(allowance, size))
    try:
        archive.extract(targets=targets if targets is not names else None, factory=sinks)
    except _LimitReached:
        if sinks.problem is not None:  # set before _LimitReached is raised
            out.incomplete.append(sinks.problem)
    for filename in targets:
        sink = sinks.sinks.get(filename)
        if sink is None:
            out.members.append(Member(filename, state=MemberState.UNREAD))
        else:
            state = MemberState.TRUNCATED if filename == sinks.cut else MemberState.COMPLETE
            out.members.append(Member(filename, bytes(sink.data), state))
    return out.result()
