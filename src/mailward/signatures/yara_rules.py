"""YARA over every object with content, with the externals public rule sets expect.

Rule meta decides the finding: ``category`` (malware, phishing, filetype,
macro, spam; default malware) and ``severity`` (info..critical; default high).
A scan that times out is unchecked, never clean: libyara can also come back
empty at the time limit instead of raising, so the elapsed time is checked too.
libyara also stops recording a string's matches at its limit (1,000,000) with
no more than a warning; conditions on that string (``#x``, ``@x[i]``, ``not``
a later match) are then decided on part of the data, so the object is unchecked.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import yara

from ..envelope import Envelope
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ContentObject, ParsedMessage
from .hashes import HashList
from .ruleset import EXTERNALS, RuleSet

_CATEGORIES = {
    c.value: c for c in (Category.MALWARE, Category.PHISHING, Category.FILETYPE, Category.MACRO, Category.SPAM)
}


def externals_for(obj: ContentObject, direction: str) -> dict[str, str | int | bool]:
    name = obj.names[0] if obj.names else ""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return dict(
        EXTERNALS,
        filename=base,
        filepath=obj.path,
        extension=os.path.splitext(base)[1].lstrip(".").lower(),
        filetype=obj.kind.yara_filetype,
        mime_type=obj.sniffed_type or obj.declared_type,
        depth=obj.depth,
        in_archive=obj.in_archive,
        direction=direction,
    )


def finding_for(match: yara.Match, detector: str, location: str) -> Finding:
    meta = match.meta
    category = _CATEGORIES.get(str(meta.get("category", "malware")).lower(), Category.MALWARE)
    severity = Severity.__members__.get(str(meta.get("severity", "high")).upper(), Severity.HIGH)
    return Finding(
        category,
        f"{match.namespace}:{match.rule}",
        severity,
        detector,
        location,
        str(meta.get("description", ""))[:200],
    )


@dataclass(frozen=True)
class YaraDetector:
    ruleset: RuleSet
    allow: HashList
    timeout: int = 5
    deadline: float = 40.0  # seconds for the whole message; the rest is unchecked
    name: str = "yara"

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        rules = self.ruleset.rules
        if rules is None:
            return Evidence()
        exempt = self.allow.exempt(message.objects)
        findings: list[Finding] = []
        started = time.monotonic()
        for obj in message.objects:
            if not obj.has_content or not obj.data or obj.path in exempt:
                continue
            if time.monotonic() - started + self.timeout > self.deadline:  # the next scan may take its full limit
                findings.append(
                    Finding(
                        Category.UNCHECKED,
                        "yara-deadline",
                        Severity.HIGH,
                        self.name,
                        obj.path,
                        f"YARA ran more than {self.deadline:g}s on this message",
                    )
                )
                break
            t0 = time.monotonic()
            crowded = _Crowded()
            try:
                matches = rules.match(
                    data=obj.data,
                    externals=externals_for(obj, envelope.direction.value),
                    timeout=self.timeout,
                    warnings_callback=crowded,
                )
            except yara.TimeoutError:
                matches = None
            except yara.Error as exc:
                findings.append(
                    Finding(Category.UNCHECKED, "yara-error", Severity.HIGH, self.name, obj.path, str(exc)[:200])
                )
                continue
            if matches is None or (not matches and time.monotonic() - t0 >= self.timeout):
                findings.append(
                    Finding(
                        Category.UNCHECKED,
                        "yara-timeout",
                        Severity.HIGH,
                        self.name,
                        obj.path,
                        f"more than {self.timeout}s",
                    )
                )
                continue
            if crowded.strings:
                findings.append(
                    Finding(
                        Category.UNCHECKED,
                        "yara-too-many-matches",
                        Severity.HIGH,
                        self.name,
                        obj.path,
                        f"libyara stopped counting matches of {', '.join(crowded.strings[:3])}"[:200],
                    )
                )
            findings.extend(finding_for(m, self.name, obj.path) for m in matches)
        return Evidence(findings=tuple(findings))


class _Crowded:
    """libyara's warnings for one scan: the strings whose matches it stopped recording."""

    def __init__(self) -> None:
        self.strings: list[str] = []

    def __call__(self, kind: int, detail: Any) -> int:
        if kind == yara.CALLBACK_TOO_MANY_MATCHES:
            self.strings.append(f"{detail.namespace}:{detail.rule} {detail.string}")
        return int(yara.CALLBACK_CONTINUE)
