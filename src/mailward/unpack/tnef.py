"""Attachments inside TNEF (winmail.dat) parts that Outlook sends."""

from __future__ import annotations

import tnefparse

from .meter import Meter, collect
from .model import Allowance, Collector, Stop, Unpacked, stopped


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    try:
        tnef = tnefparse.TNEF(data, do_checksum=False)
    except Exception as exc:  # tnefparse raises bare ValueError/struct.error/IndexError on damaged input
        return stopped(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    out = Collector()
    meter = Meter(allowance, len(data))
    parts = [(a.long_filename() or a.name or f"attachment {i}", a.data) for i, a in enumerate(tnef.attachments, 1)]
    if tnef.htmlbody:
        body = tnef.htmlbody
        parts.append(("winmail body.html", body.encode("utf-8", "replace") if isinstance(body, str) else body))
    if len(parts) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(parts)} attachments")
        parts = parts[: allowance.members]
    for filename, content in parts:
        if not collect(out, meter, str(filename), bytes(content or b"")):
            break
    return out.result()
