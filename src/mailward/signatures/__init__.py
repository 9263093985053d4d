"""Signature detection: YARA rules, hash lists and file-type checks.

This is the only package that imports yara.
"""

from __future__ import annotations

from ..config import Settings
from .yara_rules import YaraDetector


def detectors(settings: Settings) -> list:
    return [YaraDetector.from_settings(settings)]
