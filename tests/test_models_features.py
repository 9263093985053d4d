"""Hashed features: scoring looks up exactly the columns training counted."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mailward.models.features import FeatureSettings, check_columns, token_columns


@pytest.mark.parametrize("n_features", [2**4, 2**12, 2**22])
def test_token_columns_equal_the_vectorizer_s(n_features):
    rng = random.Random(7)
    alphabet = "abcxyz019 :./-_éßЖ中文😀\u200b"
    tokens = ["", " ", "subject:free", "url:dom:example.com", "click here", "x" * 500]
    tokens += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    vectorizer = FeatureSettings(n_features=n_features).vectorizer()
    one_token_documents = vectorizer.transform([[t] for t in tokens])
    np.testing.assert_array_equal(token_columns(vectorizer, tokens), one_token_documents.indices)
    assert check_columns(vectorizer)


def test_binary_presence_not_counts():
    vectorizer = FeatureSettings(n_features=2**12).vectorizer()
    row = vectorizer.transform([["free", "free", "free", "money"]])
    assert sorted(row.data) == [1.0, 1.0]


@pytest.mark.parametrize("n_features", [0, 1000, 3 * 2**20])
def test_widths_other_than_powers_of_two_are_refused(n_features):
    with pytest.raises(ValueError, match="power of two"):
        FeatureSettings(n_features=n_features)
