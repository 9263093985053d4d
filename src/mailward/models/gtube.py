"""GTUBE, the standard spam test string: lets admins prove the spam path works."""

from __future__ import annotations

from dataclasses import dataclass

from ..envelope import Envelope
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ParsedMessage

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass(frozen=True)
class GtubeDetector:
    name: str = "gtube"

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        for obj in message.objects:
            if GTUBE in obj.data:
                return Evidence(findings=(Finding(Category.SPAM, "GTUBE", Severity.HIGH, self.name, obj.path),))
        return Evidence()
