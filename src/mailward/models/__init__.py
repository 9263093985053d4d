"""Spam detection: the Naive Bayes classifier and spam test patterns.

Scoring needs numpy and mmh3 only; scikit-learn is imported by ``training/`` (and the pickle converter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Settings
from ..trust import TrustedOwners
from .gtube import GtubeDetector

if TYPE_CHECKING:
    from ..detector import Detector
    from .loader import ModelSource


def detectors(settings: Settings, on_refusal: Callable[[str], None] | None = None) -> list[Detector]:
    """The spam detectors; ``on_refusal`` hears of a model on disk that cannot be loaded (the composition
    root passes incident response's alert, so detection needs no incident package)."""
    from .loader import ModelLoader  # numpy and the model load only when a scanner is built
    from .spam import SpamDetector

    loader = ModelLoader(
        settings.model_dir,
        shipped=settings.model.shipped_model,
        check_interval=settings.model.check_interval,
        on_refusal=on_refusal,
        owners=TrustedOwners.of(settings.milter.user),
        source=model_source(settings),
    )
    return [GtubeDetector(), SpamDetector(loader)]


def model_source(settings: Settings) -> ModelSource | None:
    """Where the live model comes from: the database registry with the PostgreSQL backend (one model
    for many hosts), else None (the model directory)."""
    if settings.quarantine.backend != "postgresql":
        return None
    from .database import ModelDatabase
    from .loader import DatabaseSource

    return DatabaseSource(ModelDatabase(settings.quarantine.dsn, settings.quarantine.write_timeout, keep_open=True))
