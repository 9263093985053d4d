"""Name and type policy on every name of every object, members of encrypted archives included.

Banned extensions, double extensions (``invoice.pdf.exe``; never ``archive.zip.001``,
``v1.2.3.tar.gz`` or ``photo.2024.jpg``), bidi-override characters that flip
how a name reads, risky container types, executables by content, and a
declared type or extension that hides what the content really is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import SignatureSettings
from ..envelope import Envelope
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ContentObject, ParsedMessage
from ..unpack import Kind
from ..unpack.sniff import classify_mime
from .hashes import HashList

BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
_RISKY_KINDS = {
    Kind.LNK: Severity.HIGH,
    Kind.ONENOTE: Severity.MEDIUM,
    Kind.ISO: Severity.MEDIUM,
    Kind.DISK_IMAGE: Severity.MEDIUM,
}
_CONTENT_SEVERITY = {Kind.EXECUTABLE: Severity.HIGH, Kind.LNK: Severity.HIGH}
# What an extension promises. Only these are compared with the content; unknown extensions promise nothing.
_PROMISES = {
    **dict.fromkeys(("pdf",), Kind.PDF),
    **dict.fromkeys(("doc", "dot", "xls", "xlt", "ppt", "pps", "msg"), Kind.OLE),
    **dict.fromkeys(("rtf",), Kind.RTF),
    **dict.fromkeys(("zip",), Kind.ZIP),  # a .zip that is an executable, a RAR or a 7z archive hides what it is
    **dict.fromkeys(("7z",), Kind.SEVENZIP),
    **dict.fromkeys(("rar",), Kind.RAR),
    **dict.fromkeys(("txt", "csv", "log", "ics", "vcf"), Kind.TEXT),
    **dict.fromkeys(
        ("jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "webp", "heic", "mp3", "mp4", "wav", "mov", "avi", "ogg"),
        Kind.OTHER,
    ),
    **dict.fromkeys(
        (
            "docx",
            "docm",
            "dotx",
            "dotm",
            "xlsx",
            "xlsm",
            "xltx",
            "xltm",
            "xlsb",
            "pptx",
            "pptm",
            "ppsx",
            "ppsm",
            "potx",
            "odt",
            "ods",
            "odp",
            "odg",
            "epub",
        ),
        Kind.ZIP,
    ),
}
_DISGUISES = {
    Kind.EXECUTABLE: Severity.HIGH,
    Kind.LNK: Severity.HIGH,
    Kind.ZIP: Severity.MEDIUM,
    Kind.SEVENZIP: Severity.MEDIUM,
    Kind.RAR: Severity.MEDIUM,
    Kind.ISO: Severity.MEDIUM,
    Kind.OTHER_ARCHIVE: Severity.MEDIUM,
}


def extensions(name: str) -> tuple[str, str]:
    """(second-to-last, last) extension of the base name, lower-case; '' where there is none."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, last = base.rpartition(".")
    if not dot:
        return "", ""
    _, dot2, second = stem.rpartition(".")
    return (second.strip().lower() if dot2 else ""), last.strip().lower()


def is_double_extension(name: str, dangerous: frozenset[str]) -> bool:
    """A dangerous last extension behind a plausible one: 1-4 letters or digits, not a number."""
    second, last = extensions(name)
    return last in dangerous and 1 <= len(second) <= 4 and second.isalnum() and not second.isdigit()


@dataclass(frozen=True)
class NameDetector:
    banned: frozenset[str]
    risky: frozenset[str]
    allow: HashList
    name: str = "names"

    @classmethod
    def from_settings(cls, settings: SignatureSettings, allow: HashList) -> NameDetector:
        return cls(
            frozenset(e.lower().lstrip(".") for e in settings.banned_extensions),
            frozenset(e.lower().lstrip(".") for e in settings.risky_extensions),
            allow,
        )

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        exempt = self.allow.exempt(message.objects)
        findings: dict[tuple[str, str], Finding] = {}
        for obj in message.objects:
            if obj.path in exempt:
                continue
            for f in self.check(obj):
                findings.setdefault((f.name, f.location), f)
        return Evidence(findings=tuple(findings.values()))

    def check(self, obj: ContentObject) -> list[Finding]:
        out = []
        for name in obj.names:
            out.extend(self._name(obj, name))
        if obj.has_content:
            out.extend(self._content(obj))
        return out

    def _name(self, obj: ContentObject, name: str) -> list[Finding]:
        out = []
        shown = BIDI_CONTROLS.sub(lambda m: f"<U+{ord(m.group()):04X}>", name)
        if BIDI_CONTROLS.search(name):
            out.append(self._finding("bidi-override-name", Severity.HIGH, obj, shown))
        second, last = extensions(BIDI_CONTROLS.sub("", name))
        if last in self.banned:
            out.append(self._finding("banned-extension", Severity.HIGH, obj, f".{last} in {shown}"))
            if is_double_extension(BIDI_CONTROLS.sub("", name), self.banned):
                out.append(self._finding("double-extension", Severity.HIGH, obj, shown))
        elif last in self.risky:
            out.append(self._finding("risky-type", Severity.MEDIUM, obj, f".{last} in {shown}"))
        promised = _PROMISES.get(last)
        if obj.has_content and promised is not None and obj.kind in _DISGUISES and obj.kind is not promised:
            out.append(self._finding("type-mismatch", _DISGUISES[obj.kind], obj, f"{shown} is {obj.sniffed_type}"))
        return out

    def _content(self, obj: ContentObject) -> list[Finding]:
        out = []
        if obj.kind in _RISKY_KINDS:
            out.append(self._finding("risky-type", _RISKY_KINDS[obj.kind], obj, obj.sniffed_type))
        if obj.kind in _CONTENT_SEVERITY:
            out.append(self._finding("executable-content", _CONTENT_SEVERITY[obj.kind], obj, obj.sniffed_type))
        declared = classify_mime(obj.declared_type.lower())
        if (
            declared in (Kind.PDF, Kind.OLE, Kind.RTF, Kind.HTML)
            and obj.kind in _DISGUISES
            and obj.kind is not declared
        ):
            out.append(
                self._finding(
                    "type-mismatch", _DISGUISES[obj.kind], obj, f"declared {obj.declared_type}, is {obj.sniffed_type}"
                )
            )
        return out

    def _finding(self, check: str, severity: Severity, obj: ContentObject, detail: str) -> Finding:
        return Finding(Category.FILETYPE, check, severity, self.name, obj.path, detail[:200])
