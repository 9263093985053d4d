"""The real type of an object, from its content (libmagic), never from its name.

libmagic gives the MIME type; a few formats it does not know or names
ambiguously (OneNote, ARJ, CAB without a sane header) are recognised by their
leading bytes. :class:`Kind` is what dispatch and the type policy work with.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from enum import Enum

import magic

SNIFF_PREFIX = 64 * 1024  # libmagic needs the start only (zip/OOXML entries, ISO 9660 at 32 KB are in it)
# libmagic's text rules look 4-8 KB deep (search/4096, search/8192 plus a regex) and cost per byte: up to
# 250 ms for 64 KB of newlines (regex over blank lines). Text gets this much, long whitespace runs cut short.
TEXT_PREFIX = 8 * 1024
_WHITESPACE_RUN = 16
_LONG_WHITESPACE = re.compile(rb"([\t\n\v\f\r ]{%d})[\t\n\v\f\r ]+" % _WHITESPACE_RUN)
# Every byte but those libmagic's encoding check calls binary (file's text_chars 'F', 0-6, 14-26, 28-31, 127):
# with one of those its text rules never run. Deleting these leaves the binary bytes, at C speed.
_NOT_BINARY = bytes(b for b in range(256) if not (b <= 6 or 14 <= b <= 26 or 28 <= b <= 31 or b == 127))


class Kind(str, Enum):
    ZIP = "zip"  # also OOXML, ODF, JAR: zip containers
    SEVENZIP = "7z"
    RAR = "rar"
    TAR = "tar"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    ISO = "iso"
    TNEF = "tnef"
    EMAIL = "email"
    OLE = "ole"  # compound file: .doc/.xls/.ppt, vbaProject.bin, .msg, .msi
    PDF = "pdf"
    RTF = "rtf"
    HTML = "html"  # HTML, XHTML and SVG: markup that can carry script
    TEXT = "text"
    EXECUTABLE = "executable"
    SCRIPT = "script"
    LNK = "lnk"
    ONENOTE = "onenote"
    DISK_IMAGE = "disk-image"  # VHD/VHDX
    OTHER_ARCHIVE = "other-archive"  # an archive format we do not open (cab, arj, ace, lzh, zstd...)
    OTHER = "other"

    @property
    def is_archive(self) -> bool:
        return self in _ARCHIVES

    @property
    def yara_filetype(self) -> str:
        """The upper-case type name public rule sets expect in the ``filetype`` external."""
        return _YARA_FILETYPE.get(self, "")


_ARCHIVES = frozenset(
    {
        Kind.ZIP,
        Kind.SEVENZIP,
        Kind.RAR,
        Kind.TAR,
        Kind.GZIP,
        Kind.BZIP2,
        Kind.XZ,
        Kind.ISO,
        Kind.DISK_IMAGE,
        Kind.OTHER_ARCHIVE,
    }
)

_YARA_FILETYPE = {
    Kind.ZIP: "ZIP",
    Kind.SEVENZIP: "7Z",
    Kind.RAR: "RAR",
    Kind.TAR: "TAR",
    Kind.GZIP: "GZIP",
    Kind.BZIP2: "BZIP2",
    Kind.XZ: "XZ",
    Kind.ISO: "ISO",
    Kind.OLE: "OLE",
    Kind.PDF: "PDF",
    Kind.RTF: "RTF",
    Kind.HTML: "HTML",
    Kind.TEXT: "TEXT",
    Kind.EXECUTABLE: "EXE",
    Kind.SCRIPT: "SCRIPT",
    Kind.LNK: "LNK",
    Kind.ONENOTE: "ONENOTE",
    Kind.EMAIL: "EML",
    Kind.TNEF: "TNEF",
    Kind.DISK_IMAGE: "VHD",
}

_BY_MIME = {
    "application/zip": Kind.ZIP,
    "application/java-archive": Kind.ZIP,
    "application/x-zip-compressed": Kind.ZIP,
    "application/x-7z-compressed": Kind.SEVENZIP,
    "application/x-rar": Kind.RAR,
    "application/vnd.rar": Kind.RAR,
    "application/x-rar-compressed": Kind.RAR,
    "application/x-tar": Kind.TAR,
    "application/x-gtar": Kind.TAR,
    "application/gzip": Kind.GZIP,
    "application/x-gzip": Kind.GZIP,
    "application/x-bzip2": Kind.BZIP2,
    "application/x-xz": Kind.XZ,
    "application/x-iso9660-image": Kind.ISO,
    "application/vnd.ms-tnef": Kind.TNEF,
    "message/rfc822": Kind.EMAIL,
    "application/x-ole-storage": Kind.OLE,
    "application/cdfv2": Kind.OLE,
    "application/msword": Kind.OLE,
    "application/vnd.ms-excel": Kind.OLE,
    "application/vnd.ms-powerpoint": Kind.OLE,
    "application/vnd.ms-office": Kind.OLE,
    "application/vnd.ms-outlook": Kind.OLE,
    "application/x-msi": Kind.OLE,
    "application/pdf": Kind.PDF,
    "text/rtf": Kind.RTF,
    "application/rtf": Kind.RTF,
    "text/html": Kind.HTML,
    "application/xhtml+xml": Kind.HTML,
    "image/svg+xml": Kind.HTML,
    "application/x-dosexec": Kind.EXECUTABLE,
    "application/vnd.microsoft.portable-executable": Kind.EXECUTABLE,
    "application/x-executable": Kind.EXECUTABLE,
    "application/x-sharedlib": Kind.EXECUTABLE,
    "application/x-pie-executable": Kind.EXECUTABLE,
    "application/x-mach-binary": Kind.EXECUTABLE,
    "application/x-elf": Kind.EXECUTABLE,
    "text/x-shellscript": Kind.SCRIPT,
    "text/x-msdos-batch": Kind.SCRIPT,
    "text/x-perl": Kind.SCRIPT,
    "text/x-python": Kind.SCRIPT,
    "application/javascript": Kind.SCRIPT,
    "text/javascript": Kind.SCRIPT,
    "application/x-ms-shortcut": Kind.LNK,
    "application/x-virtualbox-vhd": Kind.DISK_IMAGE,
    "application/x-virtualbox-vhdx": Kind.DISK_IMAGE,
    "application/vnd.ms-cab-compressed": Kind.OTHER_ARCHIVE,
    "application/x-arj": Kind.OTHER_ARCHIVE,
    "application/x-lzh-compressed": Kind.OTHER_ARCHIVE,
    "application/x-lha": Kind.OTHER_ARCHIVE,
    "application/zstd": Kind.OTHER_ARCHIVE,
    "application/x-lz4": Kind.OTHER_ARCHIVE,
    "application/x-lzip": Kind.OTHER_ARCHIVE,
    "application/x-cpio": Kind.OTHER_ARCHIVE,
    "application/x-xar": Kind.OTHER_ARCHIVE,
    "application/x-ace-compressed": Kind.OTHER_ARCHIVE,
    "application/x-compress": Kind.OTHER_ARCHIVE,
    "application/x-lzma": Kind.OTHER_ARCHIVE,
}

# (offset, leading bytes, kind, mime) for what libmagic misses or calls plain text.
_SIGNATURES = (
    (0, bytes.fromhex("E4525C7B8CD8A74DAEB15378D02996D3"), Kind.ONENOTE, "application/onenote"),
    (0, bytes.fromhex("4C0000000114020000000000C000000000000046"), Kind.LNK, "application/x-ms-shortcut"),
    (0, bytes.fromhex("789F3E22"), Kind.TNEF, "application/vnd.ms-tnef"),
    (0, b"MSCF\0\0\0\0", Kind.OTHER_ARCHIVE, "application/vnd.ms-cab-compressed"),
    (7, b"**ACE**", Kind.OTHER_ARCHIVE, "application/x-ace-compressed"),
    (0, b"vhdxfile", Kind.DISK_IMAGE, "application/x-virtualbox-vhdx"),
    (0, b"\x7fELF", Kind.EXECUTABLE, "application/x-executable"),
)


_TRUSTED_TEXT = ("text/plain", "text/html", "text/xml")

# libmagic names encrypted documents "application/encrypted" whatever the format; the container's
# own magic says which handler can try the default and message passwords (or report it encrypted).
_ENCRYPTED_CONTAINERS = (
    (bytes.fromhex("D0CF11E0A1B11AE1"), Kind.OLE),  # OLE: encrypted OOXML (EncryptedPackage), .doc/.xls/.ppt
    (b"%PDF-", Kind.PDF),
    (b"PK\x03\x04", Kind.ZIP),
)


@dataclass(frozen=True)
class Sniffed:
    mime: str
    kind: Kind


class Sniffer:
    """One libmagic handle; libmagic handles are not thread-safe, so calls are serialised."""

    def __init__(self) -> None:
        self._magic = magic.Magic(mime=True)
        self._lock = threading.Lock()

    def sniff(self, data: bytes, declared_text: str = "") -> Sniffed:
        """The real type of ``data``.

        ``declared_text`` (text/plain or text/html of a message body, text/xml
        of an Office package part) allows a fast path: libmagic spends 1-3 ms on
        every text buffer, and for data with no NUL byte it could only answer
        another text type anyway.
        """
        for offset, lead, kind, mime in _SIGNATURES:
            if data[offset : offset + len(lead)] == lead:
                return Sniffed(mime, kind)
        if not data:
            return Sniffed("application/x-empty", Kind.OTHER)
        if (
            declared_text in _TRUSTED_TEXT
            and b"\0" not in data[:SNIFF_PREFIX]
            and not data.lstrip()[:5].lower().startswith((b"%pdf-", b"{\\rt", b"mz"))
        ):
            return Sniffed(declared_text, Kind.HTML if declared_text == "text/html" else Kind.TEXT)
        prefix = magic_prefix(data)
        if not prefix.strip():  # only whitespace: text, and libmagic's dearest input
            return Sniffed("text/plain", Kind.TEXT)
        with self._lock:
            try:
                mime = self._magic.from_buffer(prefix).lower()
            except magic.MagicException:
                mime = "application/octet-stream"
        if mime == "application/encrypted":
            return Sniffed(
                mime,
                next(
                    (kind for lead, kind in _ENCRYPTED_CONTAINERS if data.lstrip(b"\0")[: len(lead)] == lead),
                    Kind.OTHER,
                ),
            )
        return Sniffed(mime, classify_mime(mime))


def magic_prefix(data: bytes) -> bytes:
    """What libmagic is shown of ``data``: a bound on its cost, with what its rules read.

    Binary data (a byte libmagic's encoding check rejects) gets the first
    :data:`SNIFF_PREFIX` bytes unchanged: libmagic skips its text rules, and the
    binary ones read fixed offsets. Text gets :data:`TEXT_PREFIX` bytes, taken
    after cutting every whitespace run to :data:`_WHITESPACE_RUN` bytes: the
    text rules cost per byte and quadratically in blank lines, and no text rule
    counts blanks, so libmagic still sees every word it would have looked at.
    """
    head = data[:SNIFF_PREFIX]
    if head.translate(None, _NOT_BINARY):
        return head
    return _LONG_WHITESPACE.sub(rb"\1", head[:TEXT_PREFIX])


def classify_mime(mime: str) -> Kind:
    kind = _BY_MIME.get(mime)
    if kind is not None:
        return kind
    if mime.startswith(("application/vnd.openxmlformats-officedocument.", "application/vnd.oasis.opendocument.")) or (
        mime.startswith("application/vnd.ms-") and "macroenabled" in mime
    ):
        return Kind.ZIP
    if mime.startswith("text/"):
        return Kind.TEXT
    return Kind.OTHER
