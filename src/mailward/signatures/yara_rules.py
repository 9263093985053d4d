"""YARA over every decoded object, with the externals public rule sets expect."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yara

from ..config import Settings
from ..envelope import Envelope
from ..errors import ArtifactError
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ParsedMessage

EXTERNALS = {"filename": "", "filepath": "", "extension": "", "filetype": "", "owner": "",
             "mime_type": "", "depth": 0, "in_archive": False, "direction": ""}


def shipped_rules_dir() -> Path:
    return Path(str(resources.files("mailward.signatures") / "rules"))


def compile_rules(directories: list[Path]) -> yara.Rules:
    sources = {}
    for directory in directories:
        for path in sorted(directory.glob("*.yar")) + sorted(directory.glob("*.yara")):
            sources[f"{directory.name}/{path.stem}"] = str(path)
    if not sources:
        raise ArtifactError(f"no YARA rule files in {', '.join(map(str, directories))}")
    return yara.compile(filepaths=sources, externals=EXTERNALS)


@dataclass(frozen=True)
class YaraDetector:
    rules: yara.Rules
    timeout: int = 5
    name: str = "yara"

    @classmethod
    def from_settings(cls, settings: Settings) -> "YaraDetector":
        dirs = ([shipped_rules_dir()] if settings.signatures.shipped_rules else []) + \
            [Path(d) for d in settings.signatures.rules_dirs]
        return cls(compile_rules(dirs), settings.signatures.yara_timeout)

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        findings = []
        for obj in message.objects:
            name = obj.names[0] if obj.names else ""
            externals = dict(EXTERNALS, filename=name, filepath=obj.path,
                             extension=os.path.splitext(name)[1].lstrip(".").lower(),
                             mime_type=obj.declared_type, depth=obj.depth, in_archive=obj.in_archive,
                             direction=envelope.direction.value)
            try:
                matches = self.rules.match(data=obj.data, externals=externals, timeout=self.timeout)
            except yara.TimeoutError:
                findings.append(Finding(Category.UNCHECKED, "yara-timeout", Severity.HIGH, self.name, obj.path))
                continue
            for m in matches:
                category = Category(m.meta.get("category", "malware"))
                severity = Severity[str(m.meta.get("severity", "critical")).upper()]
                findings.append(Finding(category, f"{m.namespace}:{m.rule}", severity, self.name, obj.path))
        return Evidence(findings=tuple(findings))
