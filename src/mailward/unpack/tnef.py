"""Attachments and bodies inside TNEF (winmail.dat) parts that Outlook sends.

The RTF body (PR_RTF_COMPRESSED) becomes a member like the HTML and plain text
ones: Outlook shows it, and OLE packages embedded in it open from the message.
"""

from __future__ import annotations

import tnefparse

from .lzfu import rtf_body
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
    for label, body in (("winmail body.html", tnef.htmlbody), ("winmail body.txt", tnef.body)):
        if body:
            parts.append((label, body.encode("utf-8", "replace") if isinstance(body, str) else body))
    rtf = rtf_body(tnef._rtfbody, meter, out)  # the property itself: .rtfbody needs compressed_rtf
    if rtf:
        parts.append(("winmail body.rtf", rtf))
    if len(parts) > allowance.members:
        out.stop(Stop.TOO_MANY, f"{len(parts)} attachments")
        parts = parts[: allowance.members]
    for filename, content in parts:
        if not collect(out, meter, str(filename), bytes(content or b"")):
            break
    return out.result()
