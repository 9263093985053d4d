"""Tokens to hashed feature columns: the one mapping shared by training and scoring.

A stateless :class:`~sklearn.feature_extraction.text.HashingVectorizer` keeps
memory fixed however many distinct tokens the mail brings, and needs nothing
saved but its settings. Features are binary (a token is present or not): one
word repeated fifty times is one piece of evidence, not fifty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32

from .tokens import TokenizerSettings

# Hashed by the installed scikit-learn at load time and compared with the indices
# recorded at training time: proves the artifact's columns still mean the same tokens.
HASH_PROBE = ("mailward", "subject:free", "url:dom:example.com", "click here")


def tokens_as_given(tokens: list[str]) -> list[str]:
    """The vectorizer's analyzer: documents arrive already tokenized."""
    return tokens


@dataclass(frozen=True)
class FeatureSettings:
    n_features: int = 2**22  # 4 Mi columns: fewer collide too often with word pairs (measured)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)

    def __post_init__(self) -> None:
        if self.n_features < 2 or self.n_features & (self.n_features - 1):
            raise ValueError(f"n_features must be a power of two, not {self.n_features}")

    def vectorizer(self) -> HashingVectorizer:
        return HashingVectorizer(
            analyzer=tokens_as_given, n_features=self.n_features, binary=True, norm=None, alternate_sign=False
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "binary": True,
            "tokenizer": self.tokenizer.as_dict(),
            "hash_probe": hash_probe(self.vectorizer()),
        }


def token_columns(vectorizer: HashingVectorizer, tokens: list[str]) -> np.ndarray:
    """The column ``vectorizer`` gives each token, in order, for looking up per-token weights.

    Computed token by token with the vectorizer's own hash (scikit-learn's
    MurmurHash3, seed 0, ``abs(h) % n_features``; with a power-of-two width the
    one special case, h = -2**31, lands on the same column either way). Ten times
    faster than transforming one-token documents; :func:`check_columns` proves at
    load time that both agree.
    """
    hashes = np.array([murmurhash3_32(token, 0) for token in tokens], dtype=np.int64)
    columns: np.ndarray = np.abs(hashes) % vectorizer.n_features
    return columns


def hash_probe(vectorizer: HashingVectorizer) -> list[int]:
    """Columns of the probe tokens, through the vectorizer itself."""
    return [int(i) for i in vectorizer.transform([[token] for token in HASH_PROBE]).indices]


def check_columns(vectorizer: HashingVectorizer) -> bool:
    """Whether :func:`token_columns` agrees with the vectorizer (it must, or scores would be wrong)."""
    return hash_probe(vectorizer) == [int(i) for i in token_columns(vectorizer, list(HASH_PROBE))]
