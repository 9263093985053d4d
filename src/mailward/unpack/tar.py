"""Tar members (any compression layer was already peeled off by :mod:`.compressed`)."""

from __future__ import annotations

import io
import tarfile

from .meter import Meter
from .model import Allowance, Collector, Member, MemberState, Stop, Unpacked, stopped


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    out = Collector()
    meter = Meter(allowance, len(data))
    try:
        for info in archive:
            if not info.isfile():
                continue
            if len(out.members) >= allowance.members:
                out.stop(Stop.TOO_MANY, f"more than {allowance.members} members")
                break
            stream = archive.extractfile(info)
            content, problem = meter.read(stream) if stream is not None else (b"", None)
            if problem is not None:
                out.members.append(Member(info.name, content, MemberState.TRUNCATED))
                out.incomplete.append(problem)
                break
            out.members.append(Member(info.name, content))
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        out.stop(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    return out.result()
