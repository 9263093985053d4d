"""The Naive Bayes spam model at scoring time: token evidence to a bounded score and clues.

The classifier is a multinomial Naive Bayes model over binary hashed features,
trained with scikit-learn's ``MultinomialNB`` (:mod:`mailward.training.estimator`)
and scored here with numpy alone from its counts. Its per-token log-likelihood ratio
``log P(token|spam) - log P(token|ham)`` is the evidence each token carries.
The raw Naive Bayes posterior multiplies hundreds of such ratios and saturates
at 0 or 1, so it says little about *how* sure the model is. Instead, like
Graham's and Robinson's filters, only the strongest evidence counts: the
``evidence_per_side`` most spammy and most hammy tokens present, summed, then
mapped to 0..1 by a logistic curve fitted on held-out training mail (Platt
scaling). The score is therefore bounded, calibrated on mail the counts never
saw, and hard to swamp with a pile of innocent words.

(For two classes ComplementNB's weights equal MultinomialNB's; measured the
same, so the plain multinomial model is used.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evidence import TRAINING_CLASSES, Clue, SpamAssessment
from ..message import ParsedMessage
from .features import FeatureSettings, token_columns
from .tokens import tokenize

CLASSES = TRAINING_CLASSES  # column order of the model's counts
MAX_CLUES = 10
WEIGHT_CHUNK = 1 << 18  # columns weighed at a time when a model loads
# Cold start: until a model has learned this many ham and this many spam of the site's own mail
# (SpamAssassin and rspamd wait for 200 of each before their Bayes counts), its score may tag but
# the spam action needs at least COLD_START_THRESHOLD: the score at which a corpus model's ham
# false-positive rate on mail from another corpus is at most 0.05 % (bench/cold_start.py measured
# 0.985 at most; docs/training.md has the figures).
COLD_START_MIN = 200
COLD_START_THRESHOLD = 0.99
SITE_REGIME = "site"
COLD_START_REGIME = "cold-start"


@dataclass(frozen=True)
class Regime:
    """Which quarantine rule a model's scores fall under, from how much of the site's mail it learned."""

    name: str = SITE_REGIME
    spam_floor: float = 0.0  # the spam action needs at least this score (0: the policy's threshold)
    site_ham: int = 0
    site_spam: int = 0

    @classmethod
    def of(cls, site_ham: int, site_spam: int) -> Regime:
        if min(site_ham, site_spam) >= COLD_START_MIN:
            return cls(SITE_REGIME, 0.0, site_ham, site_spam)
        return cls(COLD_START_REGIME, COLD_START_THRESHOLD, site_ham, site_spam)

    @classmethod
    def of_training(cls, training_data: object) -> Regime:
        """From a sidecar's training summary: the site mail learned is the ledger's labels it reflects
        (none for the shipped model or one without a ledger)."""
        ledger = training_data.get("ledger") if isinstance(training_data, dict) else None
        labels = ledger.get("current_labels") if isinstance(ledger, dict) else None
        if not isinstance(labels, dict):  # none, or not a summary Mailward wrote
            return cls.of(0, 0)
        ham, spam = labels.get("ham", 0), labels.get("spam", 0)
        if type(ham) is not int or type(spam) is not int:  # Mailward writes counts; 1e999 is no count
            return cls.of(0, 0)
        return cls.of(ham, spam)

    def describe(self) -> str:
        learned = f"site mail learned: {self.site_ham} ham, {self.site_spam} spam"
        if self.name == SITE_REGIME:
            return f"regime {self.name} ({learned})"
        return (
            f"regime {self.name} ({learned}, {COLD_START_MIN} of each needed; "
            f"spam action only at score >= {self.spam_floor:g})"
        )


@dataclass(frozen=True)
class Combiner:
    """How the strongest token evidence becomes one score in 0..1."""

    evidence_per_side: int = 20  # strongest spam and strongest ham tokens that count (chosen by CV)
    slope: float = 1.0  # logistic calibration, fitted on held-out training mail
    intercept: float = 0.0

    def evidence(self, weights: np.ndarray) -> float:
        """Sum of the ``evidence_per_side`` largest positive and most negative weights."""
        n = self.evidence_per_side
        spammy = weights[weights > 0]
        hammy = weights[weights < 0]
        if len(spammy) > n:
            spammy = np.partition(spammy, len(spammy) - n)[-n:]
        if len(hammy) > n:
            hammy = np.partition(hammy, n)[:n]
        return float(spammy.sum() + hammy.sum())

    def probability(self, evidence: float) -> float:
        z = self.slope * evidence + self.intercept
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def as_dict(self) -> dict[str, Any]:
        return {"evidence_per_side": self.evidence_per_side, "slope": self.slope, "intercept": self.intercept}


def strongest_first(weights: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` weights largest in magnitude, largest first, ties in index order.

    The same as a stable argsort of all of them cut to ``n``, without sorting the hundreds
    of weights a message has: the ones at least as strong as the ``n``-th are sorted alone.
    """
    strength = -np.abs(weights)
    if len(strength) > n:
        nth = np.partition(strength, n - 1)[n - 1]
        candidates = np.flatnonzero(strength <= nth)  # ties with the n-th too, in index order
        chosen: np.ndarray = candidates[np.argsort(strength[candidates], kind="stable")[:n]]
        return chosen
    ordered: np.ndarray = np.argsort(strength, kind="stable")
    return ordered


def column_weights(counts: np.ndarray, totals: np.ndarray, alpha: float, n_features: int) -> np.ndarray:
    """Evidence for spam, ``log P(column|spam) - log P(column|ham)``, of columns with per-class
    ``counts`` (rows ham, spam) under MultinomialNB's additive smoothing, as float32.

    ``totals`` are each class's summed feature counts. A column no training
    message had is no evidence either way (0), rather than the small bias
    smoothing would give it.
    """
    log_prob = np.log(counts + alpha) - np.log(np.asarray(totals, dtype=np.float64) + alpha * n_features)[:, None]
    weights = (log_prob[1] - log_prob[0]).astype(np.float32)
    weights[counts.sum(axis=0) == 0] = 0.0
    out: np.ndarray = weights
    return out


@dataclass(frozen=True, eq=False)
class NaiveBayesCounts:
    """A MultinomialNB's sufficient statistics, only for the columns some message had.

    This is what artifacts store and what scoring needs: the per-column weights
    follow from these counts directly, so loading a model never expands the
    estimator's dense (classes x 4 Mi) float64 arrays; only training does.
    """

    class_count: np.ndarray  # documents per class, in CLASSES order
    columns: np.ndarray  # sorted distinct feature columns with a non-zero count
    counts: np.ndarray  # (classes, len(columns)) feature counts
    n_features: int
    alpha: float

    def weights(self) -> np.ndarray:
        """Every column's evidence for spam (float32), computed from the counts alone."""
        weights = np.zeros(self.n_features, dtype=np.float32)
        totals = self.counts.sum(axis=1)
        for start in range(0, len(self.columns), WEIGHT_CHUNK):  # bounded temporaries at any model size
            part = slice(start, start + WEIGHT_CHUNK)
            weights[self.columns[part]] = column_weights(self.counts[:, part], totals, self.alpha, self.n_features)
        return weights


@dataclass(frozen=True, eq=False)
class SpamModel:
    """Everything scoring needs, and nothing it does not (no counts: 16 MiB of weights)."""

    version: str
    features: FeatureSettings
    combiner: Combiner
    weights: np.ndarray
    regime: Regime = Regime()

    @classmethod
    def build(
        cls,
        version: str,
        features: FeatureSettings,
        combiner: Combiner,
        counts: NaiveBayesCounts,
        regime: Regime = Regime(),
    ) -> SpamModel:
        return cls(version, features, combiner, counts.weights(), regime)

    def assess(self, message: ParsedMessage) -> SpamAssessment:
        return self.assess_tokens(tokenize(message, self.features.tokenizer))

    def assess_tokens(self, tokens: list[str]) -> SpamAssessment:
        unique = list(dict.fromkeys(tokens))
        columns = token_columns(unique, self.features.n_features)
        # Colliding tokens share a column; a column counts once, named by its first token.
        columns, first = np.unique(columns, return_index=True)
        weights = self.weights[columns]
        score = self.combiner.probability(self.combiner.evidence(weights))
        strongest = strongest_first(weights, MAX_CLUES)
        clues = tuple(Clue(unique[first[i]], round(float(weights[i]), 3)) for i in strongest if weights[i] != 0)
        return SpamAssessment(
            score=score,
            clues=clues,
            model_version=self.version,
            regime=self.regime.name,
            spam_floor=self.regime.spam_floor,
        )

    def evidence_of(self, columns: np.ndarray) -> float:
        """The uncalibrated evidence of a message's distinct feature columns; training calibrates on it."""
        return self.combiner.evidence(self.weights[columns])
