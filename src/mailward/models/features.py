"""Tokens to hashed feature columns: the one mapping shared by training and scoring.

Feature hashing keeps memory fixed however many distinct tokens the mail brings,
and needs nothing saved but its settings. Features are binary (a token is
present or not): one word repeated fifty times is one piece of evidence, not fifty.

The hash is scikit-learn's ``HashingVectorizer``'s (MurmurHash3 x86_32, seed 0,
over the token's UTF-8 bytes), computed here with ``mmh3`` so that scoring needs
no scikit-learn: importing it costs a worker seconds of start and tens of MiB.
Training still counts with the vectorizer (:mod:`mailward.training.vectorizer`),
which proves its columns equal these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mmh3
import numpy as np

from .tokens import TokenizerSettings

# Hashed at load time and compared with the columns recorded at training time: proves
# the artifact's columns still mean the same tokens.
HASH_PROBE = ("mailward", "subject:free", "url:dom:example.com", "click here")

# Takes bytes only by contract: given a str with a lone surrogate, mmh3 crashed the process
# (docs/performance.md). token_columns encodes first, strictly, as scikit-learn does.
_murmur3_32 = mmh3.mmh3_32_sintdigest


@dataclass(frozen=True)
class FeatureSettings:
    n_features: int = 2**22  # 4 Mi columns: fewer collide too often with word pairs (measured)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)

    def __post_init__(self) -> None:
        if self.n_features < 2 or self.n_features & (self.n_features - 1):
            raise ValueError(f"n_features must be a power of two, not {self.n_features}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "binary": True,
            "tokenizer": self.tokenizer.as_dict(),
            "hash_probe": hash_probe(self.n_features),
        }


def token_columns(tokens: list[str], n_features: int) -> np.ndarray:
    """The column of each token, in order, for looking up per-token weights.

    ``abs(h) % n_features`` of the signed hash, as the vectorizer computes it (with a
    power-of-two width the one special case, h = -2**31, lands on the same column
    either way). A token that is not valid Unicode (a lone surrogate) raises
    UnicodeEncodeError, as it does in scikit-learn; the tokenizer removes them.
    """
    hashes = np.array([_murmur3_32(token.encode()) for token in tokens], dtype=np.int64)  # str.encode: strict UTF-8
    columns: np.ndarray = np.abs(hashes) % n_features
    return columns


def hash_probe(n_features: int) -> list[int]:
    """Columns of the probe tokens."""
    return [int(i) for i in token_columns(list(HASH_PROBE), n_features)]
