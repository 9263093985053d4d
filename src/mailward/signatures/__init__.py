"""Signature detection: YARA rules, hash lists, the name and type policy, active content, ClamAV.

This is the only package that imports yara. All four detectors share one hash
allow list: an allowed object (and whatever was unpacked from it) gets no
signature findings at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Settings
from ..trust import TrustedOwners
from .clamav import ClamavDetector
from .content import ContentDetector
from .hashes import HashDetector, HashList
from .names import NameDetector
from .ruleset import SHIPPED_PREFIX, RuleSet, fingerprint, shipped_rules_dir
from .yara_rules import YaraDetector

if TYPE_CHECKING:
    from ..detector import Detector


def rule_directories(settings: Settings) -> list[tuple[str, Path]]:
    """(namespace prefix, directory) for the shipped rules and every configured directory."""
    dirs = [(SHIPPED_PREFIX, shipped_rules_dir())] if settings.signatures.shipped_rules else []
    for configured in settings.signatures.rules_dirs:
        path = Path(configured)
        prefix = path.name or "rules"
        taken = {p for p, _ in dirs}
        dirs.append((prefix if prefix not in taken else f"{prefix}-{len(dirs)}", path))
    return dirs


def rules_version(settings: Settings) -> str:
    """The short name of the rules on disk (the metric ``mailward_rules_info``): the first 12
    characters of the fingerprint their compiled bundle is cached under; reads every rule file."""
    return fingerprint(rule_directories(settings))[:12]


def load_rules(settings: Settings, previous: RuleSet | None = None) -> RuleSet:
    return RuleSet.load_or_keep(
        rule_directories(settings), settings.rules_cache_dir, previous, TrustedOwners.of(settings.milter.user)
    )


def detectors(settings: Settings, previous: RuleSet | None = None) -> list[Detector]:
    sig = settings.signatures
    owners = TrustedOwners.of(settings.milter.user)
    allow = HashList.load(sig.hash_allow_lists, owners)
    found: list[Detector] = [
        YaraDetector(load_rules(settings, previous), allow, sig.yara_timeout, settings.limits.inspect_deadline),
        HashDetector(HashList.load(sig.hash_lists, owners), allow),
        NameDetector.from_settings(sig, allow),
        ContentDetector(allow),
    ]
    if settings.clamav.socket:
        found.insert(0, ClamavDetector(settings.clamav, allow, settings.limits.inspect_deadline))
    return found
