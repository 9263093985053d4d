"""Single-stream compression (gzip, bzip2, xz), decompressed in bounded steps.

Each step asks the decompressor for at most one chunk (``max_length``), so a
bomb never produces more than the allowance before the meter stops it.
Concatenated streams (``cat a.gz b.gz``) are followed, as gzip itself does.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from collections.abc import Callable
from typing import Any

from .meter import CHUNK, Meter
from .model import Allowance, Incomplete, Member, MemberState, Stop, Unpacked

XZ_MEMORY_LIMIT = 256 * 1024 * 1024  # an xz header may ask for a dictionary of gigabytes
_GZIP_SUFFIXES = {".tgz": ".tar", ".gz": "", ".gzip": ""}
_BZIP2_SUFFIXES = {".tbz2": ".tar", ".tbz": ".tar", ".bz2": ""}
_XZ_SUFFIXES = {".txz": ".tar", ".xz": ""}


def unpack_gzip(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    return _unpack(
        data,
        _gzip_name(data) or _inner(name, _GZIP_SUFFIXES),
        lambda: zlib.decompressobj(wbits=31),
        zlib.error,
        allowance,
    )


def unpack_bzip2(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    return _unpack(data, _inner(name, _BZIP2_SUFFIXES), bz2.BZ2Decompressor, OSError, allowance)


def unpack_xz(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    return _unpack(
        data,
        _inner(name, _XZ_SUFFIXES),
        lambda: lzma.LZMADecompressor(memlimit=XZ_MEMORY_LIMIT),
        lzma.LZMAError,
        allowance,
    )


def _unpack(
    data: bytes, inner_name: str, factory: Callable[[], Any], error: type[Exception], allowance: Allowance
) -> Unpacked:
    meter = Meter(allowance, len(data))
    out = bytearray()
    pending = data
    problem = None
    try:
        while pending and problem is None:
            decompressor = factory()
            problem = _drain(decompressor, pending, meter, out)
            if problem is None and not decompressor.eof:
                problem = Incomplete(Stop.CORRUPT, "compressed stream ends early")
            pending = decompressor.unused_data if problem is None else b""
            pending = pending if pending.strip(b"\0") else b""  # tar-style zero padding
    except (error, EOFError, ValueError, MemoryError) as exc:
        problem = Incomplete(Stop.CORRUPT, f"{type(exc).__name__}: {exc}")
    state = MemberState.COMPLETE if problem is None else MemberState.TRUNCATED
    return Unpacked(members=(Member(inner_name, bytes(out), state),), incomplete=() if problem is None else (problem,))


def _drain(decompressor: Any, data: bytes, meter: Meter, out: bytearray) -> Incomplete | None:
    """Decompress one stream into ``out``, one bounded chunk at a time."""
    chunk = decompressor.decompress(data, CHUNK)
    while True:
        if chunk:
            out += chunk
            problem = meter.charge(len(out), len(chunk))
            if problem is not None:
                if problem.stop is Stop.BUDGET:
                    del out[len(out) - (meter.produced - meter.allowance.bytes) :]
                return problem
        if decompressor.eof:
            return None
        tail = getattr(decompressor, "unconsumed_tail", None)
        if tail is not None:  # zlib keeps the unread input itself
            if not tail and not chunk:
                return None
            chunk = decompressor.decompress(tail, CHUNK)
        elif decompressor.needs_input:
            return None
        else:
            chunk = decompressor.decompress(b"", CHUNK)


def _gzip_name(data: bytes) -> str:
    """The original file name a gzip header stores (FNAME), if any."""
    if len(data) < 10 or not data[3] & 0x08:
        return ""
    pos = 10
    if data[3] & 0x04:  # FEXTRA comes first
        pos += 2 + int.from_bytes(data[10:12], "little")
    end = data.find(b"\0", pos, pos + 1024)
    return os.path.basename(data[pos:end].decode("latin-1")) if end > pos else ""


def _inner(name: str, suffixes: dict[str, str]) -> str:
    base = os.path.basename(name) or "data"
    for suffix, replacement in suffixes.items():
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)] + replacement
    return base + ".out"
