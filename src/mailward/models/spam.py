"""The spam detector: the live Naive Bayes model's score and clues as evidence."""

from __future__ import annotations

from dataclasses import dataclass

from ..envelope import Envelope
from ..evidence import Evidence
from ..message import ParsedMessage
from .loader import ModelLoader


@dataclass(frozen=True)
class SpamDetector:
    """Scores every message; the policy compares the score with the direction's thresholds."""

    loader: ModelLoader
    name: str = "spam-model"

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        return Evidence(spam=self.loader.current().assess(message))
