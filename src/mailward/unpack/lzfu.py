"""Compressed RTF (MS-OXRTFCP, "LZFu"): the RTF body Outlook stores in TNEF and .msg files.

A small, bounded decoder: the output stops at the size the header declares or
at ``limit``, whichever is smaller, so a hostile header costs nothing extra.
"""

from __future__ import annotations

import struct

from .meter import Meter
from .model import Collector, Stop

_HEADER = struct.Struct("<4L")
_COMPRESSED = 0x75465A4C  # "LZFu"
_UNCOMPRESSED = 0x414C454D  # "MELA"
_PREBUFFER = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern \\fscript "
    b"\\fdecor MS Sans SerifSymbolArialTimes New RomanCourier{\\colortbl\\red0\\green0\\blue0\r\n\\par "
    b"\\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)
_WINDOW = 4096


class CompressedRtfError(ValueError):
    """Not compressed RTF, or a format it does not define."""


def decompress(data: bytes, limit: int) -> tuple[bytes, bool]:
    """The RTF in ``data`` and whether all of it fit in ``limit`` bytes (False: cut)."""
    if len(data) < _HEADER.size:
        raise CompressedRtfError("shorter than its header")
    _, raw_size, kind, _ = _HEADER.unpack_from(data)
    if kind == _UNCOMPRESSED:
        body = data[_HEADER.size : _HEADER.size + raw_size]
        return body[:limit], len(body) <= limit
    if kind != _COMPRESSED:
        raise CompressedRtfError(f"compression type {kind:#010x}")
    window = bytearray(_PREBUFFER.ljust(_WINDOW, b"\0"))
    write = len(_PREBUFFER)
    out = bytearray()
    wanted = min(raw_size, limit)
    position = _HEADER.size
    end = len(data)
    while position < end and len(out) < wanted:
        control = data[position]
        position += 1
        for bit in range(8):
            if position >= end or len(out) >= wanted:
                break
            if not control & (1 << bit):
                byte = data[position]
                position += 1
                out.append(byte)
                window[write] = byte
                write = (write + 1) % _WINDOW
                continue
            if position + 2 > end:
                raise CompressedRtfError("reference cut short")
            word = data[position] << 8 | data[position + 1]
            position += 2
            offset, length = word >> 4, (word & 0xF) + 2
            if offset == write:  # the end marker
                return bytes(out), len(out) <= limit
            for step in range(min(length, wanted - len(out))):
                byte = window[(offset + step) % _WINDOW]
                out.append(byte)
                window[write] = byte
                write = (write + 1) % _WINDOW
    return bytes(out), len(out) < wanted or raw_size <= limit


def rtf_body(compressed: object, meter: Meter, out: Collector) -> bytes:
    """The RTF of a PR_RTF_COMPRESSED value within the meter's budget; a stop when damaged or cut."""
    if not isinstance(compressed, bytes | bytearray) or not compressed:
        return b""
    try:
        rtf, whole = decompress(bytes(compressed), max(meter.remaining, 0))
    except CompressedRtfError as exc:
        out.stop(Stop.CORRUPT, f"compressed RTF body: {exc}")
        return b""
    if not whole:
        out.stop(Stop.BUDGET, "compressed RTF body larger than the budget left")
    return rtf
