"""Files carried in HTML as base64 ``data:`` URIs: what a link or a script hands the browser.

Every base64 data URI becomes a member, named by the ``download`` attribute of its
tag when there is one (``<a download="invoice.exe" href="data:...">``), so YARA,
ClamAV and the name and type checks see the file the page delivers. Browsers ignore
whitespace in base64 data URIs, so line-wrapped payloads are decoded whole.
"""

from __future__ import annotations

import binascii
import re

from .meter import Meter, collect
from .model import Allowance, Collector, Stop, Unpacked

_DATA = re.compile(rb"data:([\w.+-]{1,127}/[\w.+-]{1,127})?[^,:\"'<>\s]{0,200}?;base64,", re.I)
_RUN = re.compile(rb"[A-Za-z0-9+/=\s]*")
_WHITESPACE = re.compile(rb"\s+")
_DOWNLOAD = re.compile(rb"\bdownload\s*=\s*[\"']?([^\"'<>\s]{1,255})", re.I)
TAG_REACH = 400  # attributes before or after the payload that still belong to its tag


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    out = Collector()
    meter = Meter(allowance, len(data))
    position = 0
    while (uri := _DATA.search(data, position)) is not None:
        run = _RUN.match(data, uri.end())
        end = run.end() if run is not None else uri.end()
        position = max(end, uri.end() + 1)
        payload = _WHITESPACE.sub(b"", data[uri.end() : end])
        if not payload:
            continue
        if len(out.members) >= allowance.members:
            out.stop(Stop.TOO_MANY, f"more than {allowance.members} data URIs")
            break
        try:
            content = binascii.a2b_base64(payload.rstrip(b"=") + b"=" * (-len(payload.rstrip(b"=")) % 4))
        except binascii.Error:
            out.stop(Stop.CORRUPT, f"data URI at offset {uri.start()}: not base64")
            continue
        label = _download_name(data, uri.start(), end) or f"data URI {len(out.members) + 1}"
        declared = (uri.group(1) or b"text/plain").decode("ascii").lower()  # RFC 2397's default
        if not collect(out, meter, label, content, declared):
            break
    return out.result()


def _download_name(data: bytes, start: int, end: int) -> str:
    """The ``download`` attribute of the tag around ``data[start:end]``, looked for nearby only."""
    opening = data.rfind(b"<", max(0, start - TAG_REACH), start)
    closing = data.find(b">", end, end + TAG_REACH)
    before = _DOWNLOAD.search(data, opening, start) if opening >= 0 else None
    after = _DOWNLOAD.search(data, end, closing) if closing >= 0 else None
    found = before or after
    return found.group(1).decode("utf-8", "replace") if found else ""
