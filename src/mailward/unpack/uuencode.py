"""Files encoded in text: uuencode (``begin 644 name`` ... ``end``), yEnc and BinHex 4.0.

Old clients and some malware still send attachments this way; mail readers
show them as attachments (or decode them with a click), so they are objects like
any MIME part. Every decoder is a single bounded pass charged to the meter.
"""

from __future__ import annotations

import binascii
import re
import struct

from .meter import Meter, collect
from .model import Allowance, Collector, Stop, Unpacked

_BEGIN = re.compile(rb"^begin [0-7]{3,4} ([^\r\n]{1,255})\r?$", re.M)
_END = re.compile(rb"^end\r?$", re.M)
_UU_BYTES = bytes(range(32, 97)) + b"\r\n"


_YBEGIN = re.compile(rb"^=ybegin [^\r\n]*?name=([^\r\n]{1,255})\r?$", re.M)
_YEND = re.compile(rb"^=yend\b", re.M)
_YENC_PLAIN = bytes((b - 42) % 256 for b in range(256))
_YENC_ESCAPED = bytes((b - 106) % 256 for b in range(256))
_BINHEX = re.compile(rb"\(This file must be converted with BinHex[^\r\n]*\r?\n[\s]*:")
_BINHEX_ALPHABET = b"!\"#$%&'()*+,-012345689@ABCDEFGHIJKLMNPQRSTUVXYZ[`abcdefhijklmpqr"
_TO_BASE64 = bytes.maketrans(_BINHEX_ALPHABET, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_NOT_BINHEX = bytes(sorted(set(range(256)) - set(_BINHEX_ALPHABET)))


def has_uuencoded(data: bytes) -> bool:
    """Whether ``data`` holds a uuencoded, yEnc or BinHex file.

    A literal scan first: every text part is asked, and a line-anchored pattern tries each line.
    """
    return (
        (b"begin " in data and _BEGIN.search(data) is not None)
        or (b"=ybegin " in data and _YBEGIN.search(data) is not None)
        or (b"with BinHex" in data and _BINHEX.search(data) is not None)
    )


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
    _yenc(data, allowance, out, meter)
    _binhex(data, allowance, out, meter)
    return out.result()


def _yenc(data: bytes, allowance: Allowance, out: Collector, meter: Meter) -> None:
    """Each ``=ybegin`` ... ``=yend`` block: bytes shifted by 42, ``=`` escapes shifted by 64 more."""
    position = 0
    while (begin := _YBEGIN.search(data, position)) is not None:
        if len(out.members) >= allowance.members:
            out.stop(Stop.TOO_MANY, f"more than {allowance.members} encoded files")
            return
        end = _YEND.search(data, begin.end())
        stop = end.start() if end is not None else len(data)
        position = end.end() if end is not None else len(data)
        decoded = bytearray()
        for line in data[begin.end() : stop].splitlines():
            if line.startswith(b"=ypart "):
                continue
            first, *escaped = line.split(b"=")
            decoded += first.translate(_YENC_PLAIN)
            for piece in escaped:
                decoded += piece[:1].translate(_YENC_ESCAPED) + piece[1:].translate(_YENC_PLAIN)
        if end is None:
            out.stop(Stop.CORRUPT, "yEnc file without an =yend line")
        name = begin.group(1).decode("latin-1").strip()
        if not collect(out, meter, name, bytes(decoded)):
            return


def _binhex(data: bytes, allowance: Allowance, out: Collector, meter: Meter) -> None:
    """The data fork of each BinHex 4.0 file (resource forks carry nothing Windows runs)."""
    for start in _BINHEX.finditer(data):
        if len(out.members) >= allowance.members:
            out.stop(Stop.TOO_MANY, f"more than {allowance.members} encoded files")
            return
        end = data.find(b":", start.end())
        text = data[start.end() : end if end >= 0 else len(data)].translate(None, _NOT_BINHEX)
        text = text[: len(text) - len(text) % 4 if len(text) % 4 == 1 else len(text)]
        packed = binascii.a2b_base64(text.translate(_TO_BASE64) + b"=" * (-len(text) % 4))
        stream, complete = _unrun(packed, max(meter.remaining, 0) + 4096)
        try:
            size = stream[0]
            name = stream[1 : 1 + size].decode("mac-roman", "replace")
            (fork,) = struct.unpack_from(">L", stream, 1 + size + 1 + 10)
        except (IndexError, struct.error):
            out.stop(Stop.CORRUPT, "BinHex file cut short")
            continue
        body = 1 + size + 1 + 18 + 2
        content = stream[body : body + fork]
        if end < 0 or len(content) < fork and complete:
            out.stop(Stop.CORRUPT, f"BinHex file {name!r} cut short")
        if not collect(out, meter, name or "binhex file", content):
            return


def _unrun(packed: bytes, limit: int) -> tuple[bytes, bool]:
    """BinHex run-length decoding (``c 0x90 n``: c n times; ``0x90 0``: a literal 0x90), at most ``limit`` bytes."""
    first, *runs = packed.split(b"\x90")
    out = bytearray(first)
    for run in runs:
        if len(out) > limit:
            return bytes(out[:limit]), False
        if not run:
            continue
        count, rest = run[0], run[1:]
        if count == 0:
            out.append(0x90)
        elif out:
            out += out[-1:] * (count - 1)
        out += rest
    return bytes(out[:limit]), len(out) <= limit


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
