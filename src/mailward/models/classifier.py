"""The Naive Bayes spam model at scoring time: token evidence to a bounded score and clues.

The classifier is a scikit-learn :class:`~sklearn.naive_bayes.MultinomialNB`
over binary hashed features. Its per-token log-likelihood ratio
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

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.naive_bayes import MultinomialNB

from ..evidence import Clue, SpamAssessment
from ..message import ParsedMessage
from .features import FeatureSettings, token_columns
from .tokens import tokenize

CLASSES = ("ham", "spam")       # column order of the model's counts
MAX_CLUES = 10


@dataclass(frozen=True)
class Combiner:
    """How the strongest token evidence becomes one score in 0..1."""

    evidence_per_side: int = 20    # strongest spam and strongest ham tokens that count (chosen by CV)
    slope: float = 1.0             # logistic calibration, fitted on held-out training mail
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

    def as_dict(self) -> dict:
        return {"evidence_per_side": self.evidence_per_side, "slope": self.slope, "intercept": self.intercept}


def naive_bayes_from_counts(class_count: np.ndarray, feature_count, alpha: float) -> MultinomialNB:
    """Rebuild a fitted MultinomialNB from its sufficient statistics through ``partial_fit`` alone.

    The first call adds each class's feature-count row as one sample; the second
    adds the remaining documents of each class as empty, weighted samples. The
    result is exactly the model that counted the original documents, and it can
    go on learning with ``partial_fit``.
    """
    from scipy import sparse

    n_features = feature_count.shape[1]
    nb = MultinomialNB(alpha=alpha, force_alpha=True)
    labels = np.array(CLASSES)
    nb.partial_fit(sparse.csr_matrix(feature_count, dtype=np.float64), labels, classes=labels)
    nb.partial_fit(sparse.csr_matrix((len(CLASSES), n_features), dtype=np.float64), labels,
                   sample_weight=np.asarray(class_count, dtype=np.float64) - 1.0)
    return nb


def token_weights(nb: MultinomialNB) -> np.ndarray:
    """Per-column evidence for spam, ``log P(column|spam) - log P(column|ham)``, as float32.

    A column no training message had is no evidence either way (0), rather than
    the small bias smoothing would give it.
    """
    spam, ham = list(nb.classes_).index("spam"), list(nb.classes_).index("ham")
    weights = (nb.feature_log_prob_[spam] - nb.feature_log_prob_[ham]).astype(np.float32)
    weights[nb.feature_count_.sum(axis=0) == 0] = 0.0
    return weights


@dataclass(frozen=True, eq=False)
class SpamModel:
    """Everything scoring needs, and nothing it does not (no counts: 16 MiB of weights)."""

    version: str
    features: FeatureSettings
    combiner: Combiner
    weights: np.ndarray
    vectorizer: HashingVectorizer

    @classmethod
    def build(cls, version: str, features: FeatureSettings, combiner: Combiner, nb: MultinomialNB) -> "SpamModel":
        return cls(version, features, combiner, token_weights(nb), features.vectorizer())

    def assess(self, message: ParsedMessage) -> SpamAssessment:
        return self.assess_tokens(tokenize(message, self.features.tokenizer))

    def assess_tokens(self, tokens: list[str]) -> SpamAssessment:
        unique = list(dict.fromkeys(tokens))
        columns = token_columns(self.vectorizer, unique)
        # Colliding tokens share a column; a column counts once, named by its first token.
        columns, first = np.unique(columns, return_index=True)
        weights = self.weights[columns]
        score = self.combiner.probability(self.combiner.evidence(weights))
        strongest = np.argsort(-np.abs(weights), kind="stable")[:MAX_CLUES]
        clues = tuple(Clue(unique[first[i]], round(float(weights[i]), 3)) for i in strongest if weights[i] != 0)
        return SpamAssessment(score=score, clues=clues, model_version=self.version)

    def evidence_of(self, columns: np.ndarray) -> float:
        """The uncalibrated evidence of a message's distinct feature columns; training calibrates on it."""
        return self.combiner.evidence(self.weights[columns])
