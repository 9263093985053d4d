"""Archives behind other bytes: a zip after a GIF header or a few text lines, a 7z or RAR inside a blob.

``zipfile``, 7-Zip and WinRAR open a zip wherever its end-of-central-directory record
says it starts, and 7-Zip and WinRAR find their own archives after a prefix (how
self-extracting archives work). libmagic names such a file by its first bytes, so
it would never be opened. Runs for objects no other handler reads; the search is a
few linear byte scans.
"""

from __future__ import annotations

import struct
from dataclasses import replace

from . import zip as zip_handler
from .meter import Meter, collect
from .model import Allowance, Collector, Fact, Observation, Unpacked

_END_OF_DIRECTORY = struct.Struct("<4s4H2LH")
_DIRECTORY_SEARCH = 0xFFFF + _END_OF_DIRECTORY.size  # the record is within the last 64 KiB + 22 (its comment)
_SIGNATURES = (
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07\x00", "rar"),
    (b"Rar!\x1a\x07\x01\x00", "rar"),
)


def zip_offset(data: bytes) -> int | None:
    """Where the zip that ends ``data`` starts, when its central directory is where the end record says."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - _DIRECTORY_SEARCH))
    if end < 0 or end + _END_OF_DIRECTORY.size > len(data):
        return None
    fields = _END_OF_DIRECTORY.unpack_from(data, end)
    entries, size, offset = int(fields[4]), int(fields[5]), int(fields[6])
    if not entries:
        return None
    directory = end - size  # the central directory ends where the end record starts
    if directory < offset or data[directory : directory + 4] != b"PK\x01\x02":
        return None
    start = directory - offset  # offsets count from the zip's start, that far into the data
    if start == 0:  # or from the file's start (self-extractors): the zip starts at its first entry
        first = data.find(b"PK\x03\x04", 0, directory)
        return first if first >= 0 else None
    return start


def has_embedded_archive(data: bytes) -> bool:
    offset = zip_offset(data)
    if offset is not None and offset > 0:
        return True
    return any(data.find(lead, 1) > 0 for lead, _ in _SIGNATURES)


def unpack(data: bytes, name: str, allowance: Allowance) -> Unpacked:
    offset = zip_offset(data)
    if offset is not None and offset > 0:
        opened = zip_handler.unpack(data, name, allowance)
        detail = f"a zip after {offset} bytes of other data"
        return replace(opened, observations=(Observation(Fact.POLYGLOT, detail), *opened.observations))
    out = Collector()
    meter = Meter(allowance, len(data))
    for lead, label in _SIGNATURES:
        start = data.find(lead, 1)
        if start > 0 and len(out.members) < allowance.members:
            out.observe(Fact.POLYGLOT, f"a {label} archive after {start} bytes of other data")
            if not collect(out, meter, f"{label} at offset {start}", data[start:]):
                break
    return out.result()
