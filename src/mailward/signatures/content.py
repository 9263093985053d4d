"""Active content: what the document handlers observed, weighed; and HTML smuggling.

Macros are weighed by whether they run by themselves (policy.NAMED_ACTIONS gives
each its own action per direction): a macro alone only tags, an auto-exec VBA
or XLM macro quarantines inbound, and auto-execution combined with executing,
downloading, CreateObject, the environment or an IOC is malware. DDE fields, remote templates, Excel 4 macros,
Equation Editor objects and PDF launch actions are rare in honest mail.
PDF JavaScript alone is a weak signal.

HTML smuggling: a page whose script decodes an embedded payload into a Blob
and hands it to the browser as a download, so the file never crosses the
gateway as an attachment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..envelope import Envelope
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ContentObject, ParsedMessage
from ..unpack import Fact, Kind, Observation
from .hashes import HashList

_WEIGHTS: dict[Fact, tuple[Category, str, Severity]] = {
    Fact.VBA_MACROS: (Category.MACRO, "vba-macros", Severity.INFO),
    Fact.VBA_AUTOEXEC: (Category.MACRO, "vba-autoexec", Severity.MEDIUM),
    Fact.VBA_SUSPICIOUS: (Category.MALWARE, "vba-autoexec-suspicious", Severity.HIGH),
    Fact.XLM_MACROS: (Category.MACRO, "xlm-macros", Severity.MEDIUM),
    Fact.XLM_SUSPICIOUS: (Category.MALWARE, "xlm-autoexec-suspicious", Severity.HIGH),
    Fact.DDE_LINK: (Category.MACRO, "dde-link", Severity.HIGH),
    Fact.REMOTE_TEMPLATE: (Category.MACRO, "remote-template", Severity.HIGH),
    Fact.OLE_OBJECT: (Category.MACRO, "embedded-object", Severity.INFO),
    Fact.PDF_JAVASCRIPT: (Category.MACRO, "pdf-javascript", Severity.LOW),
    Fact.PDF_AUTO_ACTION: (Category.MACRO, "pdf-auto-action", Severity.MEDIUM),
    Fact.PDF_LAUNCH: (Category.MACRO, "pdf-launch", Severity.HIGH),
    Fact.PDF_EMBEDDED_FILE: (Category.FILETYPE, "pdf-embedded-file", Severity.INFO),
    Fact.ENCRYPTED_OPENED: (Category.FILETYPE, "encrypted-opened", Severity.LOW),
    Fact.POLYGLOT: (Category.FILETYPE, "polyglot", Severity.LOW),
}
_EQUATION_EDITOR = re.compile(r"equation\.[23]|microsoft equation|0002ce02", re.I)

_MARKUP_SCAN = 8 * 1024 * 1024       # smuggling pages are small; look at the first 8 MiB
_BLOB = re.compile(rb"new\s+Blob\s*\(|createObjectURL\s*\(|msSaveOrOpenBlob|msSaveBlob|new\s+File\s*\(\s*\[", re.I)
_DECODE = re.compile(rb"\batob\s*\(|fromCharCode|Uint8Array|charCodeAt|base64|decodeURIComponent|unescape\s*\(", re.I)
_DELIVER = re.compile(rb"\.download\s*=|download\s*=|setAttribute\s*\(\s*[\"']download|msSaveOrOpenBlob|msSaveBlob"
                      rb"|\.click\s*\(\s*\)|location(?:\.href)?\s*=|window\.open\s*\(", re.I)
# Runs are found with a short minimum and measured afterwards: a {4000,} pattern would rescan long
# near-miss runs from every position (quadratic on hostile pages).
_RUNS = re.compile(rb"[A-Za-z0-9+/]{64,}|(?:[0-9a-fA-F]{2}[,\s]?){32,}|(?:\d{1,3}\s*,\s*){32,}")
PAYLOAD_MIN = 4000
_DATA_URI_DOWNLOAD = re.compile(rb"<a\b[^>]{0,400}\bhref\s*=\s*[\"']?data:(?!image/)[\w.+-]+/[\w.+-]+[^\"'>]{0,100};base64,"
                                rb"[A-Za-z0-9+/]{2000,}[^>]{0,400}\bdownload\b", re.I)


def weigh(observation: Observation) -> tuple[Category, str, Severity]:
    category, name, severity = _WEIGHTS[observation.fact]
    if observation.fact is Fact.OLE_OBJECT and _EQUATION_EDITOR.search(observation.detail):
        return Category.MACRO, "equation-editor-object", Severity.HIGH
    if observation.fact is Fact.PDF_AUTO_ACTION and "/Launch" in observation.detail:
        return Category.MACRO, "pdf-auto-launch", Severity.HIGH
    return category, name, severity


def is_html_smuggling(data: bytes) -> bool:
    head = data[:_MARKUP_SCAN]
    if _DATA_URI_DOWNLOAD.search(head):
        return True
    return bool(b"<script" in head.lower() and _BLOB.search(head) and _DECODE.search(head)
                and _DELIVER.search(head) and any(m.end() - m.start() >= PAYLOAD_MIN for m in _RUNS.finditer(head)))


@dataclass(frozen=True)
class ContentDetector:
    allow: HashList
    name: str = "content"

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        exempt = self.allow.exempt(message.objects)
        findings = []
        for obj in message.objects:
            if obj.path in exempt:
                continue
            findings.extend(self.check(obj))
        return Evidence(findings=tuple(findings))

    def check(self, obj: ContentObject) -> list[Finding]:
        out = []
        for observation in obj.observations:
            category, check, severity = weigh(observation)
            out.append(Finding(category, check, severity, self.name, obj.path, observation.detail[:200]))
        if obj.kind is Kind.HTML and obj.has_content and is_html_smuggling(obj.data):
            out.append(Finding(Category.FILETYPE, "html-smuggling", Severity.HIGH, self.name, obj.path,
                               "script builds a download from an embedded payload"))
        return out
