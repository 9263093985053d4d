"""Tokens to hashed feature columns: the one mapping shared by training and scoring.

A stateless :class:`~sklearn.feature_extraction.text.HashingVectorizer` keeps
memory fixed however many distinct tokens the mail brings, and needs nothing
saved but its settings. Features are binary (a token is present or not): one
word repeated fifty times is one piece of evidence, not fifty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from .tokens import TokenizerSettings

# Hashed by the installed scikit-learn at load time and compared with the indices
# recorded at training time: proves the artifact's columns still mean the same tokens.
HASH_PROBE = ("mailward", "subject:free", "url:dom:example.com", "click here")


def tokens_as_given(tokens: list[str]) -> list[str]:
    """The vectorizer's analyzer: documents arrive already tokenized."""
    return tokens


@dataclass(frozen=True)
class FeatureSettings:
    n_features: int = 2 ** 22          # 4 Mi columns: fewer collide too often with word pairs (measured)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)

    def vectorizer(self) -> HashingVectorizer:
        return HashingVectorizer(analyzer=tokens_as_given, n_features=self.n_features, binary=True,
                                 norm=None, alternate_sign=False)

    def as_dict(self) -> dict:
        return {"n_features": self.n_features, "binary": True, "tokenizer": self.tokenizer.as_dict(),
                "hash_probe": hash_probe(self.vectorizer())}


def token_columns(vectorizer: HashingVectorizer, tokens: list[str]) -> np.ndarray:
    """The column of each token, in order: each token is hashed as a one-token document."""
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    rows = vectorizer.transform([[token] for token in tokens])
    return rows.indices.astype(np.int64, copy=False)


def hash_probe(vectorizer: HashingVectorizer) -> list[int]:
    return [int(i) for i in token_columns(vectorizer, list(HASH_PROBE))]
