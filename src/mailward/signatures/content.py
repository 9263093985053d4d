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

_MARKUP_SCAN = 8 * 1024 * 1024  # smuggling pages are small; look at the first 8 MiB
_BLOB = re.compile(rb"new\s+Blob\s*\(|createObjectURL\s*\(|msSaveOrOpenBlob|msSaveBlob|new\s+File\s*\(\s*\[", re.I)
_DECODE = re.compile(rb"\batob\s*\(|fromCharCode|Uint8Array|charCodeAt|base64|decodeURIComponent|unescape\s*\(", re.I)
_DELIVER = re.compile(
    rb"\.download\s*=|download\s*=|setAttribute\s*\(\s*[\"']download|msSaveOrOpenBlob|msSaveBlob"
    rb"|\.click\s*\(\s*\)|location(?:\.href)?\s*=|window\.open\s*\(",
    re.I,
)
# Runs are found with a short minimum and measured afterwards: a {4000,} pattern would rescan long
# near-miss runs from every position (quadratic on hostile pages).
_RUNS = re.compile(rb"[A-Za-z0-9+/]{64,}|(?:[0-9a-fA-F]{2}[,\s]?){32,}|(?:\d{1,3}\s*,\s*){32,}")
PAYLOAD_MIN = 4000
# A download link that carries its file as a data: URI. Matched by hand, tag by tag: one regex
# spanning "<a ... href=data:...;base64,RUN ... download" backtracked through every position of a
# long run without "download" (400 KB took 20 s). Every piece below is bounded or consumed once.
_ANCHOR_OPEN = re.compile(rb"<a\b", re.I)
_DATA_HREF = re.compile(rb"\bhref\s*=\s*[\"']?data:(?!image/)[\w.+-]{1,127}/[\w.+-]{1,127}[^\"'>]{0,100};base64,", re.I)
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/\s]*")  # browsers skip whitespace in base64 data URIs
_DOWNLOAD = re.compile(rb"\bdownload\b", re.I)
_ANCHOR_PREFIX = 400  # attributes before href that still count as the same link
_AFTER_PAYLOAD = 400  # attributes after the payload where "download" is looked for
DATA_URI_MIN = 2000


def weigh(observation: Observation) -> tuple[Category, str, Severity]:
    category, name, severity = _WEIGHTS[observation.fact]
    if observation.fact is Fact.OLE_OBJECT and _EQUATION_EDITOR.search(observation.detail):
        return Category.MACRO, "equation-editor-object", Severity.HIGH
    if observation.fact is Fact.PDF_AUTO_ACTION and "/Launch" in observation.detail:
        return Category.MACRO, "pdf-auto-launch", Severity.HIGH
    return category, name, severity


def is_html_smuggling(data: bytes) -> bool:
    head = data[:_MARKUP_SCAN]
    if has_data_uri_download(head):
        return True
    return bool(
        b"<script" in head.lower()
        and _BLOB.search(head)
        and _DECODE.search(head)
        and _DELIVER.search(head)
        and any(m.end() - m.start() >= PAYLOAD_MIN for m in _RUNS.finditer(head))
    )


def has_data_uri_download(head: bytes) -> bool:
    """An ``<a href="data:TYPE;base64,...">`` with a long payload and a ``download`` attribute
    (before or after it; the payload may be line-wrapped).

    Each tag (from ``<a`` to the next ``>``) is read once; the search resumes
    after it, so text without a closing ``>`` is not rescanned from every ``<a``.
    """
    position = 0
    while (opening := _ANCHOR_OPEN.search(head, position)) is not None:
        close = head.find(b">", opening.end())
        tag_end = close if close >= 0 else len(head)
        cursor = opening.end()
        while (href := _DATA_HREF.search(head, cursor, tag_end)) is not None:
            if href.start() - opening.end() > _ANCHOR_PREFIX:
                break
            run = _BASE64_RUN.match(head, href.end(), tag_end)  # matches the empty run too
            run_end = run.end() if run is not None else href.end()
            if run_end - href.end() >= DATA_URI_MIN and (
                _DOWNLOAD.search(head, opening.end(), href.start())  # download="x.exe" before href
                or _DOWNLOAD.search(head, run_end, min(tag_end, run_end + _AFTER_PAYLOAD))
            ):
                return True
            cursor = max(run_end, href.end())
        position = tag_end + 1
    return False


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
            out.append(
                Finding(
                    Category.FILETYPE,
                    "html-smuggling",
                    Severity.HIGH,
                    self.name,
                    obj.path,
                    "script builds a download from an embedded payload",
                )
            )
        return out
