"""A site model's score calibration, refitted as the model learns so thresholds keep their meaning.

A model's score maps its evidence to P(spam) through a logistic curve (Platt
scaling). Fitted once, the curve drifts out of true as the counts grow: the
same message gathers more evidence from a model that has seen more mail. So
the curve is refitted, every ``refit_every`` messages, on the most recent
``window`` messages' evidence, each taken when the message was scored, *before*
it was learned: exactly the mail a live model meets. Both the replay (the
calibration the live model would have had at each point) and ``mailward train
update`` use it, so replay's FP and FN at the configured thresholds are the
live model's. The window keeps its own ham/spam balance (no prior is imposed):
the score is P(spam) for mail like the recent labelled stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from ..models.classifier import Combiner
from .trainer import platt


@dataclass(frozen=True)
class SiteCalibration:
    """How a site model's score calibration follows it as it learns."""

    # Chosen by the replay ablation (docs/training.md): a longer window ranks better across the
    # refits, a shorter one follows the model faster; refitting often costs little.
    window: int = 3000  # most recent scored-then-learned messages the fit uses
    refit_every: int = 20  # messages learned between refits
    min_per_class: int = 5  # fewer ham or spam in the window: keep the calibration there is


SITE_CALIBRATION = SiteCalibration()


class OnlineCalibration:
    """Platt scaling refitted on the evidence of recent messages, taken before each was learned."""

    def __init__(
        self, combiner: Combiner, rules: SiteCalibration = SITE_CALIBRATION, recent: Iterable[tuple[float, bool]] = ()
    ):
        self.combiner = combiner
        self.rules = rules
        self.recent: deque[tuple[float, bool]] = deque(recent, maxlen=rules.window)
        self.seen = 0

    def observe(self, evidence: float, is_spam: bool) -> None:
        """One message's evidence before it was learned, and its true class; refits on schedule."""
        self.recent.append((evidence, is_spam))
        self.seen += 1
        if self.seen % self.rules.refit_every == 0:
            self.refit()

    def refit(self) -> bool:
        """Fit the curve to the window, if it holds enough of both classes; whether it did."""
        spam = sum(s for _, s in self.recent)
        if min(spam, len(self.recent) - spam) < self.rules.min_per_class:
            return False
        evidence = np.array([e for e, _ in self.recent], dtype=np.float64)
        slope, intercept = platt(evidence, np.array([s for _, s in self.recent], dtype=bool))
        self.combiner = replace(self.combiner, slope=slope, intercept=intercept)
        return True

    def log_odds(self, evidence: float) -> float:
        return self.combiner.slope * evidence + self.combiner.intercept

    def state(self) -> list[list[float]]:
        """The window, as a sidecar keeps it between updates (JSON: evidence rounded to 1e-4)."""
        return [[round(e, 4), float(s)] for e, s in self.recent]
