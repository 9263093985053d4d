"""Offline training: labelled mail streamed through ``partial_fit`` into a spam model.

Memory stays flat however large the set: messages are tokenized and hashed in
batches, and the Naive Bayes model keeps only per-class counts. The score's
logistic calibration is fitted on a held-out slice of the training mail (chosen
by content hash, so reproducible), scored by the model trained on the rest;
that slice is then learned too, so the final counts cover every message.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import MultinomialNB

from ..config import LimitSettings
from ..message import parse_message
from ..models.artifact import TrainedModel
from ..models.classifier import CLASSES, Combiner, NaiveBayesCounts, SpamModel
from ..models.features import FeatureSettings
from ..models.tokens import CORPUS, SITE, TokenizerSettings, tokenize
from .estimator import counts_of, estimator, vectorizer

log = logging.getLogger(__name__)

SITE_ALPHA = 0.001  # online replay ablation, docs/training.md
SITE_EVIDENCE_PER_SIDE = 30
BATCH = 1000  # messages per partial_fit call: each call costs O(n_features)


@dataclass(frozen=True)
class TrainingSettings:
    features: FeatureSettings = field(default_factory=FeatureSettings)
    alpha: float = 0.1  # additive smoothing (chosen by CV on the train split: bench/spam_select.py)
    evidence_per_side: int = 20
    calibration_share: int = 10  # one message in this many is held out for calibration...
    calibration_max: int = 5000  # ...up to this many (bounds memory)
    # The score is P(spam) for mail of which this share is spam. Training sets are balanced;
    # mail reaching the filter after the MTA's own checks is mostly ham, and quarantined ham
    # costs far more than delivered spam. None keeps the held-out slice's own balance.
    spam_prior: float | None = 0.1

    @classmethod
    def for_profile(cls, profile: str) -> TrainingSettings:
        """The tuned settings of a feature profile: ``corpus`` as the shipped model is built (chosen by
        CV on the dev corpus), ``site`` as chosen by the online replay ablation (docs/training.md)."""
        if profile == CORPUS:
            return cls()
        if profile != SITE:
            raise ValueError(f"unknown feature profile {profile!r}; this Mailward knows {CORPUS}, {SITE}")
        # spam_prior None: calibrated to the labelled mail's own balance, as the site calibration
        # (training.calibration) refits it on the recent labelled stream
        return cls(
            features=FeatureSettings(tokenizer=TokenizerSettings(profile=SITE)),
            alpha=SITE_ALPHA,
            evidence_per_side=SITE_EVIDENCE_PER_SIDE,
            spam_prior=None,
        )


def message_tokens(raw: bytes, features: FeatureSettings, limits: LimitSettings = LimitSettings()) -> list[str]:
    return tokenize(parse_message(raw, limits), features.tokenizer)


class Trainer:
    """A MultinomialNB fed by the stateless hashing vectorizer, one batch at a time."""

    def __init__(self, features: FeatureSettings, alpha: float, nb: MultinomialNB | None = None):
        self.features = features
        self.vectorizer = vectorizer(features)
        self.nb = nb if nb is not None else MultinomialNB(alpha=alpha, force_alpha=True)

    @classmethod
    def resume(cls, model: TrainedModel) -> Trainer:
        """Continue learning from a saved model's counts."""
        return cls(model.features, model.counts.alpha, estimator(model.counts))

    def counts(self) -> NaiveBayesCounts:
        """What has been learned so far, as a model keeps it."""
        return counts_of(self.nb)

    def hashed(self, token_docs: list[list[str]]) -> sparse.csr_matrix:
        rows: sparse.csr_matrix = self.vectorizer.transform(token_docs)
        return rows

    def learn_hashed(self, rows: sparse.csr_matrix, labels: list[str]) -> None:
        if rows.shape[0]:
            self.nb.partial_fit(rows, np.asarray(labels), classes=np.array(CLASSES))

    def learn(self, token_docs: list[list[str]], labels: list[str]) -> None:
        if token_docs:  # the vectorizer cannot transform an empty batch
            self.learn_hashed(self.hashed(token_docs), labels)


def train(
    examples: Iterable[tuple[str, list[str], str]],
    settings: TrainingSettings = TrainingSettings(),
    training_data: dict[str, Any] | None = None,
) -> TrainedModel:
    """Train and calibrate a model from ``(key, tokens, label)`` triples, labels ``ham``/``spam``.

    ``key`` identifies the message's content (e.g. its sha256) and decides,
    reproducibly, whether it belongs to the calibration slice.
    """
    trainer = Trainer(settings.features, settings.alpha)
    held_rows: list[sparse.csr_matrix] = []
    held_labels: list[str] = []
    docs: list[list[str]] = []
    labels: list[str] = []
    seen = 0
    for key, tokens, label in examples:
        seen += 1
        if len(held_rows) < settings.calibration_max and _in_calibration(key, settings.calibration_share):
            held_rows.append(trainer.hashed([tokens]))
            held_labels.append(label)
            continue
        docs.append(tokens)
        labels.append(label)
        if len(docs) >= BATCH:
            trainer.learn(docs, labels)
            docs, labels = [], []
        if seen % 5000 == 0:
            log.info("training: %d messages read", seen)
    trainer.learn(docs, labels)
    combiner = calibrate(trainer, held_rows, held_labels, settings.evidence_per_side, settings.spam_prior)
    if held_rows:
        trainer.learn_hashed(sparse.vstack(held_rows, format="csr"), held_labels)
    log.info("training: %d messages learned, %d used for calibration", seen, len(held_rows))
    summary = dict(training_data or {})
    summary["calibration"] = {"held_out": len(held_rows), "spam_prior": settings.spam_prior}
    return TrainedModel(trainer.counts(), settings.features, combiner, summary)


def calibrate(
    trainer: Trainer,
    rows: list[sparse.csr_matrix],
    labels: list[str],
    evidence_per_side: int,
    spam_prior: float | None = None,
) -> Combiner:
    """Fit the logistic map from evidence to score on messages the counts have not seen (Platt
    scaling), then move its intercept from the slice's spam share to ``spam_prior``."""
    uncalibrated = Combiner(evidence_per_side=evidence_per_side)
    if len(set(labels)) < 2:
        log.warning("calibration needs held-out ham and spam; using the uncalibrated logistic")
        return uncalibrated
    scorer = SpamModel.build("", trainer.features, uncalibrated, trainer.counts())
    evidence = np.array([scorer.evidence_of(row.indices) for row in rows])
    target = np.array([label == "spam" for label in labels], dtype=bool)
    slope, intercept = platt(evidence, target)
    if spam_prior is not None:
        intercept += _logit(spam_prior) - _logit(float(target.mean()))
    return replace(uncalibrated, slope=slope, intercept=intercept)


def platt(evidence: np.ndarray, is_spam: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the logistic map from evidence to P(spam), fitted on labelled
    messages the counts had not learned when they were scored (both classes present)."""
    fit = LogisticRegression().fit(evidence.reshape(-1, 1), is_spam.astype(int))
    return float(fit.coef_[0][0]), float(fit.intercept_[0])


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _in_calibration(key: str, share: int) -> bool:
    # Its own hash of the key, independent of any split the key's digits already decide.
    return int(hashlib.sha256(f"calibration:{key}".encode()).hexdigest()[:8], 16) % share == 0


def tokenized(messages: Iterable[Any], features: FeatureSettings) -> Iterator[tuple[str, list[str], str]]:
    """``(key, tokens, label)`` for :func:`train` from :class:`~.corpus.LabelledMessage` items."""
    for item in messages:
        raw = item.read()
        yield item.sha256 or hashlib.sha256(raw).hexdigest(), message_tokens(raw, features), item.spam_label
