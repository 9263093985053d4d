"""Active content in Office Open XML packages, seen from their already extracted parts.

Remote template injection (an external ``attachedTemplate`` or ``oleObject``
relationship), DDE fields in Word and Excel, and Excel 4 (XLM) macro sheets. VBA
lives in ``vbaProject.bin``, an OLE member that the office handler analyses.
"""

from __future__ import annotations

import re

from dataclasses import replace

from .model import Fact, Member, Observation, Unpacked

_EXTERNAL_REL = re.compile(
    rb'<Relationship\b(?=[^>]*TargetMode="External")(?=[^>]*Type="[^"]*/(attachedTemplate|oleObject|frame|subDocument)")'
    rb'[^>]*Target="([^"]{1,300})"', re.I)
_INSTR = re.compile(rb'<w:instrText[^>]*>([^<]*)</w:instrText>|w:instr="([^"]*)"', re.I)
_DDE = re.compile(r'(?:^|[\s"{])(DDE(?:AUTO)?\s.{0,200})', re.I | re.S)
_EXCEL_DDE = re.compile(rb'<ddeLink\b[^>]*ddeService="([^"]{0,100})"[^>]*ddeTopic="([^"]{0,200})"', re.I)
_REMOTE = re.compile(rb"^(https?:|\\\\|//|file:)", re.I)
# XLM (Excel 4) functions that run programs, call DLLs or fetch and write files.
XLM_CALL = re.compile(rb"\b(EXEC|CALL|REGISTER|URLDownloadToFile|SHELL|RUN|FOPEN|FWRITE)\s*\(", re.I)


def observe(members: list[Member]) -> list[Observation]:
    names = {m.name for m in members}
    if "[Content_Types].xml" not in names:
        return []
    found: list[Observation] = []
    for member in members:
        lower = member.name.lower()
        if lower.endswith(".rels"):
            for rel_type, target in _EXTERNAL_REL.findall(member.data):
                if _REMOTE.match(target.strip()):
                    found.append(Observation(Fact.REMOTE_TEMPLATE, f"{rel_type.decode()} -> {target.decode(errors='replace')}"))
        elif lower.startswith("word/") and lower.endswith(".xml"):
            # Word splits a field instruction across runs: join them before looking.
            instructions = b"".join(a or b for a, b in _INSTR.findall(member.data)).decode("utf-8", "replace")
            found.extend(Observation(Fact.DDE_LINK, m.strip()) for m in _DDE.findall(instructions))
        elif lower.startswith("xl/macrosheets/"):
            found.append(Observation(Fact.XLM_MACROS, member.name))
            calls = sorted({c.decode().upper() for c in XLM_CALL.findall(member.data)})
            if calls:
                found.append(Observation(Fact.XLM_SUSPICIOUS, f"{member.name}: {', '.join(calls)}"))
        elif lower.startswith("xl/externallinks/"):
            for service, topic in _EXCEL_DDE.findall(member.data):
                found.append(Observation(Fact.DDE_LINK, f"{service.decode(errors='replace')}|{topic.decode(errors='replace')}"))
    return found


def typed(unpacked: Unpacked) -> Unpacked:
    """Declare the XML parts of an Office package as text/xml (the package says so; sniffing confirms no NULs)."""
    if not any(m.name == "[Content_Types].xml" for m in unpacked.members):
        return unpacked
    members = tuple(replace(m, declared_type="text/xml") if m.name.lower().endswith((".xml", ".rels")) else m
                    for m in unpacked.members)
    return replace(unpacked, members=members)
