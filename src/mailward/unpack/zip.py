"""Zip members (and OOXML, ODF, JAR), read through the meter; AES and ZipCrypto with candidates.

``zipfile`` before Python 3.11.8 does not notice overlapping entries (many
headers sharing one compressed stream: the "better zip bomb"), so every entry's
local header and data span is checked against its neighbours before reading.
Encrypted members are opened with :mod:`pyzipper` (AES); the rest with the stdlib.
Every wrong password costs a key derivation (AES: ~1 ms), so a call tries at most
the allowance's wrong passwords (:class:`~.model.Trials`); members left untried are
named, and reported ``password-trials``.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib

import pyzipper

from . import ooxml
from .meter import Meter
from .model import Allowance, Collector, Fact, Incomplete, Member, MemberState, Stop, Trials, Unpacked, stopped

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_READABLE = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA, 99}  # 99 = WinZip AES
_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    RuntimeError,
    ValueError,
    OSError,
    EOFError,
    zlib.error,
    NotImplementedError,
    KeyError,
    struct.error,
)


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except _ERRORS as exc:
        return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    overlap = overlapping_entry(data, infos, archive.start_dir)
    if overlap:
        return stopped(Stop.OVERLAP, overlap)
    out = Collector()
    meter = Meter(allowance, len(data))
    files = [i for i in infos if not i.is_dir()]
    if len(files) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(files)} members")
        files = files[: allowance.members]
    trials = Trials(allowance)
    encrypted = _Passwords(data, allowance.passwords, trials)
    for info in files:
        if info.compress_type not in _READABLE:
            out.members.append(Member(info.filename, state=MemberState.UNREAD))
            out.stop(Stop.UNSUPPORTED, f"{info.filename}: compression method {info.compress_type}")
            continue
        if info.flag_bits & 0x1:
            content, problem = encrypted.read(info, meter)
            if content is None:
                out.members.append(Member(info.filename, state=MemberState.ENCRYPTED))
                if problem is None:
                    continue
                out.incomplete.append(problem)  # out of CPU time while trying passwords
                break
        else:
            content, problem = _read(archive, info, meter)
        if problem is None:
            out.members.append(Member(info.filename, content))
            continue
        out.members.append(Member(info.filename, content, MemberState.TRUNCATED))
        out.incomplete.append(problem)
        if problem.stop in (Stop.BUDGET, Stop.RATIO, Stop.TIMEOUT):
            break
    if encrypted.locked:
        out.stop(Stop.ENCRYPTED, f"{encrypted.locked} encrypted member(s), no password candidate fits")
    if encrypted.untried:
        out.incomplete.append(trials.untried(f"{encrypted.untried} encrypted member(s)"))
    if encrypted.opened:
        out.observe(Fact.ENCRYPTED_OPENED, f"{encrypted.opened} member(s)")
    out.observations.extend(ooxml.observe(out.members))
    return trials.charged(ooxml.typed(out.result()))


def overlapping_entry(data: bytes, infos: list[zipfile.ZipInfo], directory_start: int) -> str:
    """Name the first entry whose header or data runs into the next one ('' when none do)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for info, following in zip(ordered, ordered[1:] + [None]):
        start = info.header_offset
        header = data[start : start + _LOCAL_HEADER.size]
        if len(header) < _LOCAL_HEADER.size:
            return f"{info.filename}: local header past the end"
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != b"PK\x03\x04":
            return f"{info.filename}: no local header at offset {start}"
        end = start + _LOCAL_HEADER.size + fields[-2] + fields[-1] + info.compress_size
        limit = following.header_offset if following is not None else directory_start
        if end > limit:
            return f"{info.filename} overlaps {following.filename if following else 'the central directory'}"
    return ""


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, meter: Meter) -> tuple[bytes, Incomplete | None]:
    try:
        with archive.open(info) as stream:
            return meter.read(stream, info.compress_size)
    except _ERRORS as exc:
        return b"", Incomplete(Stop.CORRUPT, f"{info.filename}: {type(exc).__name__}")


class _Passwords:
    """Tries the message's password candidates on encrypted members, best-known first, within a trial budget.

    The last password that worked is tried first, so members sharing a password
    cost one key derivation each; members whose passwords alternate cost up to
    one per candidate, which the budget (and the call's CPU time) bounds.
    """

    def __init__(self, data: bytes, candidates: tuple[str, ...], trials: Trials):
        self._data = data
        self._candidates = list(candidates)
        self._archive: pyzipper.AESZipFile | None = None
        self._trials = trials
        self.locked = 0  # every candidate tried, none fits
        self.untried = 0  # left encrypted: the trial budget was spent
        self.opened = 0

    def read(self, info: zipfile.ZipInfo, meter: Meter) -> tuple[bytes | None, Incomplete | None]:
        """The member's content and what cut it; ``None`` content when no candidate opened it."""
        if self._candidates and self._archive is None:
            try:
                self._archive = pyzipper.AESZipFile(io.BytesIO(self._data))
            except _ERRORS:
                self._candidates = []
        archive = self._archive
        for password in list(self._candidates):
            if archive is None:  # not opened: no candidates left
                break
            if self._trials.exhausted:
                self.untried += 1
                return None, None
            start, began = meter.produced, time.monotonic()
            try:
                with archive.open(info.filename, pwd=password.encode("utf-8")) as stream:
                    content, problem = meter.read(stream, info.compress_size)
            except _ERRORS:
                meter.produced = start  # a wrong password's garbage is not charged, its time is
                self._trials.wrong(began)
                overtime = meter.overtime()
                if overtime is not None:
                    return None, overtime
                continue
            self._candidates.remove(password)
            self._candidates.insert(0, password)
            self.opened += 1
            return content, problem
        self.locked += 1
        return None, None
