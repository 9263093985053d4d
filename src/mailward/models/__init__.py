"""Spam detection: the Naive Bayes classifier and spam test patterns.

With ``training/`` the only place that imports scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from ..trust import TrustedOwners
from .gtube import GtubeDetector

if TYPE_CHECKING:
    from ..detector import Detector


def detectors(settings: Settings) -> list[Detector]:
    from ..incidents.alerts import model_refusal_alert
    from .loader import ModelLoader  # scikit-learn loads only when a scanner is built
    from .spam import SpamDetector

    loader = ModelLoader(settings.model_dir, shipped=settings.model.shipped_model,
                         check_interval=settings.model.check_interval, on_refusal=model_refusal_alert(settings),
                         owners=TrustedOwners.of(settings.milter.user))
    return [GtubeDetector(), SpamDetector(loader)]
