"""Uuencoded files inside text bodies (``begin 644 name`` ... ``end``).

Old clients and some malware still send attachments this way; mail readers
show them as attachments, so they are objects like any MIME part.
"""

from __future__ import annotations

import binascii
import re

from .meter import Meter, collect
from .model import Allowance, Collector, Stop, Unpacked

_BEGIN = re.compile(rb"^begin [0-7]{3,4} ([^\r\n]{1,255})\r?$", re.M)
_END = re.compile(rb"^end\r?$", re.M)
_UU_BYTES = bytes(range(32, 97)) + b"\r\n"


def has_uuencoded(data: bytes) -> bool:
    return _BEGIN.search(data) is not None


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    """Decode every ``begin`` ... ``end`` block in one pass over ``data``.

    A block runs to its ``end`` line, or to the next ``begin`` when the end is
    missing: each byte is decoded at most once, however many unterminated
    ``begin`` lines a hostile body repeats (searching for an end from every
    begin was quadratic).
    """
    out = Collector()
    meter = Meter(allowance, len(data))
    begins = list(_BEGIN.finditer(data))
    ends = iter(_END.finditer(data))
    end = next(ends, None)
    unterminated = 0
    for index, begin in enumerate(begins):
        if len(out.members) >= allowance.members:
            out.stop(Stop.TOO_MANY, f"more than {allowance.members} uuencoded files")
            break
        while end is not None and end.start() < begin.end():
            end = next(ends, None)
        limit = begins[index + 1].start() if index + 1 < len(begins) else len(data)
        stop = end.start() if end is not None and end.start() < limit else None
        decoded = bytearray()
        for line in data[begin.end() : limit if stop is None else stop].splitlines():
            decoded += _decode_line(line)
        unterminated += stop is None
        if not collect(out, meter, begin.group(1).decode("latin-1").strip(), bytes(decoded)):
            break
    if unterminated:
        out.stop(Stop.CORRUPT, f"{unterminated} uuencoded file(s) without an end line")
    return out.result()


def _decode_line(line: bytes) -> bytes:
    stripped = line.strip()
    if not stripped or stripped == b"`":
        return b""
    # a2b_uu refuses any byte outside its alphabet: check first, as raising per line of
    # non-uuencoded filler costs several times the decoding itself.
    if not line[1:].translate(None, _UU_BYTES):  # the first byte, a length, may be anything
        try:
            return binascii.a2b_uu(line)
        except binascii.Error:
            pass
    # Some encoders pad lines short; decode as many bytes as the length character promises.
    promised = line[: (((line[0] - 32) & 63) * 4 + 5) // 3]
    if promised[1:].translate(None, _UU_BYTES):
        return b""
    try:
        return binascii.a2b_uu(promised)
    except binascii.Error:
        return b""
