"""RAR members through rarfile: headers parsed in Python, data through unar/bsdtar.

rarfile reads stored members itself and pipes compressed ones through the
first tool it finds (Debian: ``unar``, which also decrypts). Runs in the
sandbox: the tool subprocesses die with it on a timeout.
"""

from __future__ import annotations

import io

import rarfile

from .meter import Meter
from .model import Allowance, Collector, Fact, Incomplete, Member, MemberState, Stop, Unpacked, stopped

_FAILURES = (rarfile.Error, ValueError, OSError, EOFError, KeyError, IndexError, TypeError, LookupError)


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    try:
        archive = rarfile.RarFile(io.BytesIO(data))
    except rarfile.NeedFirstVolume:
        return stopped(Stop.UNSUPPORTED, "a later volume of a multi-volume archive")
    except _FAILURES as exc:
        return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    opened_with = ""
    if archive.needs_password() and not archive.infolist():  # encrypted headers: even names are hidden
        for password in allowance.passwords:
            try:
                archive.setpassword(password)
                if archive.infolist():
                    opened_with = password
                    break
            except _FAILURES:
                continue
        else:
            return stopped(Stop.ENCRYPTED, "encrypted headers, no password candidate fits")
    out = Collector()
    meter = Meter(allowance, len(data))
    files = [i for i in archive.infolist() if not i.is_dir()]
    if len(files) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(files)} members")
        files = files[: allowance.members]
    locked = 0
    for info in files:
        candidates = (
            (opened_with or None,)
            if not info.needs_password()
            else tuple(dict.fromkeys(p for p in (opened_with, *allowance.passwords) if p))
        )
        content: bytes | None = None
        problem: Incomplete | None = None
        used: str | None = None
        for candidate in candidates:
            start = meter.produced
            try:
                with archive.open(info, pwd=candidate) as stream:
                    content, problem = meter.read(stream, info.compress_size)
                used = candidate
                break
            except _FAILURES as exc:
                meter.produced = start
                problem = Incomplete(Stop.CORRUPT, f"{info.filename}: {type(exc).__name__}")
        if content is None:
            if info.needs_password():
                locked += 1
                out.members.append(Member(info.filename, state=MemberState.ENCRYPTED))
            else:
                out.members.append(Member(info.filename, state=MemberState.UNREAD))
                if problem is not None:
                    out.incomplete.append(problem)
            continue
        if used and info.needs_password():
            opened_with = used
        state = MemberState.COMPLETE if problem is None else MemberState.TRUNCATED
        out.members.append(Member(info.filename, content, state))
        if problem is not None:
            out.incomplete.append(problem)
            if problem.stop in (Stop.BUDGET, Stop.RATIO, Stop.TIMEOUT):
                break
    if locked:
        out.stop(Stop.ENCRYPTED, f"{locked} encrypted member(s), no password candidate fits")
    if opened_with:
        out.observe(Fact.ENCRYPTED_OPENED, "rar")
    return out.result()
