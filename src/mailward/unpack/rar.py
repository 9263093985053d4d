"""RAR members through rarfile: headers parsed in Python, data through unar/bsdtar.

rarfile reads stored members itself and pipes compressed ones through the
first tool it finds (Debian: ``unar``, which also decrypts). Runs in the
sandbox: the tool subprocesses die with it on a timeout. Every wrong password
starts the tool again and derives a key (RAR 3: 2^18 SHA-1 rounds; RAR 5: as
many as the archive asks for), for each member: :class:`~.model.Trials` bounds them.
"""

from __future__ import annotations

import io
import time

import rarfile

from .meter import Meter
from .model import Allowance, Collector, Fact, Incomplete, Member, MemberState, Stop, Trials, Unpacked, stopped

_FAILURES = (rarfile.Error, ValueError, OSError, EOFError, KeyError, IndexError, TypeError, LookupError)


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    try:
        archive = rarfile.RarFile(io.BytesIO(data))
    except rarfile.NeedFirstVolume:
        return stopped(Stop.UNSUPPORTED, "a later volume of a multi-volume archive")
    except _FAILURES as exc:
        return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    trials = Trials(allowance)
    opened_with = ""
    if archive.needs_password() and not archive.infolist():  # encrypted headers: even names are hidden
        for password in allowance.passwords:
            if trials.exhausted:
                return trials.charged(Unpacked(incomplete=(trials.untried("the archive's encrypted headers"),)))
            began = time.monotonic()
            try:
                archive.setpassword(password)
                if archive.infolist():
                    opened_with = password
                    break
            except _FAILURES:
                pass
            trials.wrong(began)
        else:
            return trials.charged(stopped(Stop.ENCRYPTED, "encrypted headers, no password candidate fits"))
    out = Collector()
    meter = Meter(allowance, len(data))
    files = [i for i in archive.infolist() if not i.is_dir()]
    if len(files) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(files)} members")
        files = files[: allowance.members]
    locked = untried = 0
    for info in files:
        encrypted = info.needs_password()
        candidates = (
            (opened_with or None,)
            if not encrypted
            else tuple(dict.fromkeys(p for p in (opened_with, *allowance.passwords) if p))
        )
        content: bytes | None = None
        problem: Incomplete | None = None
        used: str | None = None
        gave_up = False
        for candidate in candidates:
            if encrypted and trials.exhausted:
                gave_up = True
                break
            start, began = meter.produced, time.monotonic()
            try:
                with archive.open(info, pwd=candidate) as stream:
                    content, problem = meter.read(stream, info.compress_size)
                used = candidate
                break
            except _FAILURES as exc:
                meter.produced = start
                problem = Incomplete(Stop.CORRUPT, f"{info.filename}: {type(exc).__name__}")
                if encrypted:
                    trials.wrong(began)
        if content is None:
            if encrypted:
                untried += gave_up
                locked += not gave_up
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
    if untried:
        out.incomplete.append(trials.untried(f"{untried} encrypted member(s)"))
    if opened_with:
        out.observe(Fact.ENCRYPTED_OPENED, "rar")
    return trials.charged(out.result())
