"""scikit-learn's side of the spam model: the vectorizer and the MultinomialNB that training fits.

Scoring needs neither (:mod:`mailward.models` hashes with ``mmh3`` and weighs with
numpy), so scikit-learn and scipy are imported by training, never by a worker.
Training counts with the vectorizer and scores with the model's own hash; both
must give every token the same column, which :func:`vectorizer` checks.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.naive_bayes import MultinomialNB

from ..errors import ArtifactError
from ..models.classifier import CLASSES, NaiveBayesCounts
from ..models.features import HASH_PROBE, FeatureSettings, hash_probe


def tokens_as_given(tokens: list[str]) -> list[str]:
    """The vectorizer's analyzer: documents arrive already tokenized."""
    return tokens


def vectorizer(features: FeatureSettings) -> HashingVectorizer:
    """The stateless vectorizer training counts with; refused unless it hashes as scoring does."""
    made = HashingVectorizer(
        analyzer=tokens_as_given, n_features=features.n_features, binary=True, norm=None, alternate_sign=False
    )
    if vectorizer_probe(made) != hash_probe(features.n_features):
        raise ArtifactError("scikit-learn's feature hashing differs from mmh3's: a model trained here would not score")
    return made


def vectorizer_probe(made: HashingVectorizer) -> list[int]:
    """Columns of the probe tokens, through the vectorizer itself."""
    return [int(i) for i in made.transform([[token] for token in HASH_PROBE]).indices]


def naive_bayes_from_counts(
    class_count: np.ndarray, feature_count: np.ndarray | sparse.csr_matrix, alpha: float
) -> MultinomialNB:
    """Rebuild a fitted MultinomialNB from its sufficient statistics through ``partial_fit`` alone.

    The first call adds each class's feature-count row as one sample; the second
    adds the remaining documents of each class as empty, weighted samples. The
    result is exactly the model that counted the original documents, and it can
    go on learning with ``partial_fit``.
    """
    n_features = feature_count.shape[1]
    nb = MultinomialNB(alpha=alpha, force_alpha=True)
    labels = np.array(CLASSES)
    nb.partial_fit(sparse.csr_matrix(feature_count, dtype=np.float64), labels, classes=labels)
    nb.partial_fit(
        sparse.csr_matrix((len(CLASSES), n_features), dtype=np.float64),
        labels,
        sample_weight=np.asarray(class_count, dtype=np.float64) - 1.0,
    )
    return nb


def counts_of(nb: MultinomialNB) -> NaiveBayesCounts:
    """What a fitted estimator has learned, as a model keeps it: the counts of the columns it saw."""
    if not hasattr(nb, "classes_"):  # an empty training set: the estimator was never fitted
        raise ArtifactError("no mail was learned; a spam model needs at least one ham and one spam message")
    if list(nb.classes_) != list(CLASSES):
        raise ValueError(f"classes {list(nb.classes_)}, a spam model has {list(CLASSES)}")
    columns = np.flatnonzero(nb.feature_count_.any(axis=0))
    return NaiveBayesCounts(
        np.array(nb.class_count_, dtype=np.float64),
        columns,
        np.ascontiguousarray(nb.feature_count_[:, columns], dtype=np.float64),
        int(nb.feature_count_.shape[1]),
        float(nb.alpha),
    )


def feature_count(counts: NaiveBayesCounts) -> sparse.csr_matrix:
    """The (classes x n_features) feature counts ``counts`` keeps for its columns only."""
    rows = np.repeat(np.arange(len(CLASSES)), len(counts.columns))
    return sparse.csr_matrix(
        (counts.counts.ravel(), (rows, np.tile(counts.columns, len(CLASSES)))),
        shape=(len(CLASSES), counts.n_features),
    )


def estimator(counts: NaiveBayesCounts) -> MultinomialNB:
    """A fitted estimator that can go on learning (dense: for training, not for scoring)."""
    return naive_bayes_from_counts(counts.class_count, feature_count(counts), counts.alpha)
