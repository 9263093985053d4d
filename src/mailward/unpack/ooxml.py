"""Active content in Office Open XML packages, seen from their already extracted parts.

Remote template injection (an external ``attachedTemplate`` or ``oleObject``
relationship), DDE fields in Word and Excel, and Excel 4 (XLM) macro sheets. VBA
lives in ``vbaProject.bin``, an OLE member that the office handler analyses.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .model import Fact, Member, Observation, Unpacked

# Attribute runs are [^<>]*, never [^>]*: a run that may cross "<" makes every unterminated
# "<Relationship" rescan the rest of the part (quadratic on a crafted part). Inside one tag the
# attributes are looked up one by one: two unbounded runs in one pattern backtrack over each other.
_RELATIONSHIP = re.compile(rb"<Relationship\b[^<>]*", re.I)
_EXTERNAL_MODE = re.compile(rb'TargetMode="External"', re.I)
_RISKY_TYPE = re.compile(rb'\bType="[^"<>]*/(attachedTemplate|oleObject|frame|subDocument)"', re.I)
_TARGET = re.compile(rb'\bTarget="([^"]{1,300})"', re.I)
_INSTR = re.compile(rb'<w:instrText[^<>]*>([^<]*)</w:instrText>|w:instr="([^"]*)"', re.I)
_DDE = re.compile(r'(?:^|[\s"{])(DDE(?:AUTO)?\s.{0,200})', re.I | re.S)
_DDE_LINK = re.compile(rb"<ddeLink\b[^<>]*", re.I)
_DDE_SERVICE = re.compile(rb'ddeService="([^"]{0,100})"', re.I)
_DDE_TOPIC = re.compile(rb'ddeTopic="([^"]{0,200})"', re.I)
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
            for rel_type, target in _external_relationships(member.data):
                if _REMOTE.match(target.strip()):
                    found.append(
                        Observation(Fact.REMOTE_TEMPLATE, f"{rel_type.decode()} -> {target.decode(errors='replace')}")
                    )
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
            for service, topic in _dde_links(member.data):
                found.append(
                    Observation(Fact.DDE_LINK, f"{service.decode(errors='replace')}|{topic.decode(errors='replace')}")
                )
    return found


def _external_relationships(part: bytes) -> list[tuple[bytes, bytes]]:
    """(type, target) of each external relationship of a risky type."""
    found = []
    for tag in _RELATIONSHIP.finditer(part):
        text = tag.group()
        kind, target = _RISKY_TYPE.search(text), _TARGET.search(text)
        if kind and target and _EXTERNAL_MODE.search(text):
            found.append((kind.group(1), target.group(1)))
    return found


def _dde_links(part: bytes) -> list[tuple[bytes, bytes]]:
    """(service, topic) of each Excel DDE link."""
    found = []
    for tag in _DDE_LINK.finditer(part):
        service, topic = _DDE_SERVICE.search(tag.group()), _DDE_TOPIC.search(tag.group())
        if service and topic:
            found.append((service.group(1), topic.group(1)))
    return found


def typed(unpacked: Unpacked) -> Unpacked:
    """Declare the XML parts of an Office package as text/xml (the package says so; sniffing confirms no NULs)."""
    if not any(m.name == "[Content_Types].xml" for m in unpacked.members):
        return unpacked
    members = tuple(
        replace(m, declared_type="text/xml") if m.name.lower().endswith((".xml", ".rels")) else m
        for m in unpacked.members
    )
    return replace(unpacked, members=members)
