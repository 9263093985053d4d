"""Hashed features: scoring looks up exactly the columns training counted.

Scoring hashes with ``mmh3``, training counts with scikit-learn's vectorizer; both must
give every token the same column, and mmh3 must only ever be given bytes (a str with a
lone surrogate crashed the process inside it).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from mailward.config import LimitSettings
from mailward.errors import ArtifactError
from mailward.message import parse_message
from mailward.models import features
from mailward.models.artifact import SHIPPED_DIR, SIDECAR, load_artifact
from mailward.models.features import HASH_PROBE, FeatureSettings, hash_probe, token_columns
from mailward.training.estimator import vectorizer, vectorizer_probe

ALPHABET = "abcxyz019 :./-_éßЖ中文😀\u200b\ufeff\U0010fffd"


def random_tokens(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    tokens = ["", " ", "subject:free", "url:dom:example.com", "click here", "x" * 500, "\x00", "\U0001f600" * 3]
    return tokens + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.mark.parametrize("n_features", [2**4, 2**12, 2**22, 2**26])
def test_token_columns_equal_the_vectorizer_s(n_features):
    tokens = random_tokens(3000)
    made = vectorizer(FeatureSettings(n_features=n_features))
    one_token_documents = made.transform([[t] for t in tokens])
    np.testing.assert_array_equal(token_columns(tokens, n_features), one_token_documents.indices)
    assert vectorizer_probe(made) == hash_probe(n_features)


def test_the_one_hash_whose_absolute_value_overflows_lands_where_the_vectorizer_puts_it(monkeypatch):
    """h = -2**31 has no positive int32; with a power-of-two width both arithmetics agree."""
    monkeypatch.setattr(features, "_murmur3_32", lambda key: -(2**31))
    assert token_columns(["any"], 2**22).tolist() == [(-(2**31)) % 2**22] == [0]


def test_empty_token_list():
    assert token_columns([], 2**22).tolist() == []


def test_training_refuses_a_vectorizer_that_hashes_unlike_scoring(monkeypatch):
    """Its counts would land in columns the scorer never looks up: a model silently wrong."""
    monkeypatch.setattr(features, "_murmur3_32", lambda key: len(key))
    with pytest.raises(ArtifactError, match="feature hashing differs"):
        vectorizer(FeatureSettings(n_features=2**12))


def test_binary_presence_not_counts():
    row = vectorizer(FeatureSettings(n_features=2**12)).transform([["free", "free", "free", "money"]])
    assert sorted(row.data) == [1.0, 1.0]


@pytest.mark.parametrize("n_features", [0, 1000, 3 * 2**20])
def test_widths_other_than_powers_of_two_are_refused(n_features):
    with pytest.raises(ValueError, match="power of two"):
        FeatureSettings(n_features=n_features)


def test_a_lone_surrogate_raises_as_in_scikit_learn_and_never_reaches_mmh3(monkeypatch):
    """Today's behaviour kept: strict UTF-8, so UnicodeEncodeError (the scan fails closed), never a crash."""
    made = vectorizer(FeatureSettings())
    seen: list[object] = []
    monkeypatch.setattr(features, "_murmur3_32", lambda key: seen.append(key) or 0)
    for token in ("a\udc80", "\ud800", "ok\udfffok"):
        with pytest.raises(UnicodeEncodeError):
            token_columns([token], 2**22)
        with pytest.raises(UnicodeEncodeError):
            made.transform([[token]])
    assert seen == []


def test_only_bytes_reach_mmh3_when_hostile_mail_is_scored(monkeypatch):
    """Every key the scorer hashes is bytes: headers, file names and text with invalid UTF-8 and
    encoded surrogates, through the shipped model."""
    keys: list[object] = []
    real = features._murmur3_32

    def recording(key: object) -> int:
        keys.append(key)
        assert isinstance(key, bytes), f"mmh3 was given {type(key).__name__} {key!r}"
        return real(key)

    monkeypatch.setattr(features, "_murmur3_32", recording)
    model = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR).scorer()
    raws = [
        b"From: \xff\xfe <a@b\xff.com>\r\nSubject: hi \xed\xa0\x80 x =?utf-8?b?7aCA?=\r\n"
        b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
        b'Content-Type: application/octet-stream; name="f\xff\xed\xa0\x80.exe"\r\n\r\nAAAA\r\n--B\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello \xed\xa0\x80 world http://ex\xffample.com/\r\n--B--\r\n",
        b"Subject: \x80\x81\r\nContent-Type: text/html; charset=idna\r\n\r\n<p>\xed\xb2\x80 caf\xc3\xa9</p>",
        b"Subject: plain\r\n\r\n" + "\udc80 text".encode("utf-8", "surrogateescape"),
    ]
    for raw in raws:
        model.assess(parse_message(raw, LimitSettings()))
    assert keys and all(isinstance(k, bytes) for k in keys)


def test_the_shipped_model_s_recorded_columns_match():
    meta = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR)
    assert meta.features.as_dict()["hash_probe"] == hash_probe(meta.features.n_features)
    assert len(HASH_PROBE) == 4
