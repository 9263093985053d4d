"""Figures at the configured thresholds, and the online replay scoring exactly as the saved model would."""

from __future__ import annotations

import numpy as np
import pytest

from mailward.models.artifact import SHIPPED_DIR, SIDECAR, load_artifact
from mailward.models.classifier import Combiner, SpamModel
from mailward.models.features import FeatureSettings
from mailward.training.estimator import counts_of, naive_bayes_from_counts
from mailward.training.evaluate import Scores, Thresholds, measure, score_set
from mailward.training.replay import OnlineNaiveBayes, replay_mailward
from mailward.training.sources import read_sets
from mailward.training.trainer import message_tokens
from support.training import FIXTURES


def test_rates_and_confusion_at_the_thresholds():
    scores = Scores(
        np.array([0.1, 0.6, 0.95, 0.2, 0.4, 0.7, 0.91, 0.99]),
        np.array([False, False, False, False, True, True, True, True]),
    )
    e = measure(scores, Thresholds(tag=0.5, spam=0.9), "m")
    assert (e.n, e.n_ham, e.n_spam) == (8, 4, 4)
    assert e.fp_rate == 0.25 and e.fn_rate == 0.5  # one ham at >= 0.9; two spam below it
    assert e.confusion == {"ham": {"ham": 2, "unsure": 1, "spam": 1}, "spam": {"ham": 1, "unsure": 1, "spam": 2}}
    assert e.auc == pytest.approx(12 / 16)  # spam-over-ham pairs: 2 + 3 + 3 + 4
    assert sum(e.histogram["ham"]) == 4 and e.histogram["spam"][-2:] == [1, 1]  # 0.90-0.95, 0.95-1
    assert set(e.as_dict()) >= {"n", "auc", "fp_rate", "fn_rate", "one_minus_auc_percent"}


def test_one_class_sets_have_no_auc():
    e = measure(Scores(np.array([0.1, 0.2]), np.array([False, False])), Thresholds(0.5, 0.9), "m")
    assert e.auc is None and e.fn_rate is None and e.fp_rate == 0.0


def test_online_counts_score_like_the_model_built_from_the_same_counts():
    features = FeatureSettings()
    combiner = Combiner(evidence_per_side=20, slope=0.7, intercept=-0.3)
    online = OnlineNaiveBayes(features, alpha=0.3, combiner=combiner)
    mails = list(read_sets([str(FIXTURES / "layout")]))
    for mail in mails[:-3]:
        online.learn(online.columns(message_tokens(mail.data, features)), mail.spam_label == "spam")
    class_count = np.array([sum(m.spam_label == c for m in mails[:-3]) for c in ("ham", "spam")], dtype=float)
    counts = counts_of(naive_bayes_from_counts(class_count, online.feature_count, 0.3))
    model = SpamModel.build("x", features, combiner, counts)
    for mail in mails[-3:] + mails[:2]:
        tokens = message_tokens(mail.data, features)
        assert online.score(online.columns(tokens)) == pytest.approx(model.assess_tokens(tokens).score, abs=1e-6)


def test_replay_scores_before_learning():
    mails = list(read_sets([str(FIXTURES / "list.tsv")]))
    result = replay_mailward(mails, FeatureSettings(), 0.3, Combiner(), Thresholds(0.5, 0.9))
    assert result.evaluation.n == 5
    # The first message is scored by an empty model: no evidence, the calibration's midpoint.
    assert result.curve[0] == (1, None)
    again = replay_mailward(mails[:1], FeatureSettings(), 0.3, Combiner(), Thresholds(0.5, 0.9))
    assert again.evaluation.confusion["spam"]["unsure"] == 1  # score exactly 0.5


def test_tokenizing_in_worker_processes_keeps_order_and_scores():
    model = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR).scorer()
    [alone] = score_set([model], read_sets([str(FIXTURES / "layout")]))
    [pooled] = score_set([model], read_sets([str(FIXTURES / "layout")]), jobs=2)
    assert np.array_equal(alone.score, pooled.score) and np.array_equal(alone.is_spam, pooled.is_spam)
    assert alone.is_spam.sum() == 6
