"""Spam detection: the Naive Bayes classifier and spam test patterns.

With ``training/`` the only place that imports scikit-learn.
"""

from __future__ import annotations

from ..config import Settings
from .gtube import GtubeDetector


def detectors(settings: Settings) -> list:
    return [GtubeDetector()]
