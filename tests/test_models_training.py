"""Training: incremental partial_fit equals one fit, saved counts resume exactly, the build command works."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json

import numpy as np
import pytest
from sklearn.naive_bayes import MultinomialNB

from mailward.models.artifact import SIDECAR, load_artifact, save_artifact
from mailward.models.classifier import CLASSES, Combiner
from mailward.training import build_default
from mailward.training.corpus import CorpusError
from mailward.training.estimator import estimator, naive_bayes_from_counts
from mailward.training.trainer import Trainer, TrainingSettings, train
from support.mail import bare_mail as message
from support.models import SMALL, corpus, small_model, tokens


@pytest.fixture(scope="module")
def examples():
    return corpus(4)


def assert_same_counts(a: MultinomialNB, b: MultinomialNB) -> None:
    assert list(a.classes_) == list(b.classes_) == list(CLASSES)
    np.testing.assert_array_equal(a.class_count_, b.class_count_)
    np.testing.assert_array_equal(a.feature_count_, b.feature_count_)
    np.testing.assert_allclose(a.feature_log_prob_, b.feature_log_prob_, rtol=0, atol=1e-12)


def test_partial_fit_over_batches_equals_a_single_fit(examples):
    docs = [t for _, t, _ in examples]
    labels = [label for _, _, label in examples]
    incremental = Trainer(SMALL, 0.3)
    for start in range(0, len(docs), 7):  # uneven batches, the last one short
        incremental.learn(docs[start : start + 7], labels[start : start + 7])
    whole = MultinomialNB(alpha=0.3, force_alpha=True).fit(incremental.hashed(docs), np.array(labels))
    assert_same_counts(incremental.nb, whole)


def test_counts_rebuild_the_same_classifier(examples):
    trainer = Trainer(SMALL, 0.3)
    trainer.learn([t for _, t, _ in examples], [label for _, _, label in examples])
    rebuilt = naive_bayes_from_counts(trainer.nb.class_count_, trainer.nb.feature_count_, 0.3)
    assert_same_counts(rebuilt, trainer.nb)


def test_weights_from_sparse_counts_equal_the_estimators(examples):
    trainer = Trainer(SMALL, 0.3)
    trainer.learn([t for _, t, _ in examples], [label for _, _, label in examples])
    nb = trainer.nb
    spam, ham = list(nb.classes_).index("spam"), list(nb.classes_).index("ham")
    dense = (nb.feature_log_prob_[spam] - nb.feature_log_prob_[ham]).astype(np.float32)
    dense[nb.feature_count_.sum(axis=0) == 0] = 0.0
    counts = trainer.counts()
    assert len(counts.columns) < SMALL.n_features  # only the columns some message had are kept
    np.testing.assert_allclose(counts.weights(), dense, rtol=1e-6, atol=1e-6)
    assert_same_counts(estimator(counts), nb)


def test_learning_resumes_from_a_saved_artifact(examples, tmp_path):
    first, second = examples[:30], examples[30:]
    start = Trainer(SMALL, 0.3)
    start.learn([t for _, t, _ in first], [label for _, _, label in first])
    from mailward.models.artifact import TrainedModel

    save_artifact(TrainedModel(start.counts(), SMALL), tmp_path)
    resumed = Trainer.resume(load_artifact(tmp_path / SIDECAR, tmp_path))
    resumed.learn([t for _, t, _ in second], [label for _, _, label in second])
    everything = Trainer(SMALL, 0.3)
    everything.learn([t for _, t, _ in examples], [label for _, _, label in examples])
    assert_same_counts(resumed.nb, everything.nb)


def test_trained_model_is_calibrated_and_separates_the_classes(examples):
    model = small_model()
    assert model.combiner.slope > 0 and model.combiner != Combiner()
    assert model.training_data["calibration"] == {
        "held_out": model.training_data["calibration"]["held_out"],
        "spam_prior": 0.1,
    }
    scorer = model.scorer()
    spam = scorer.assess_tokens(tokens(message("offer", "buy cheap viagra now, limited time offer, click here")))
    ham = scorer.assess_tokens(tokens(message("agenda", "please review the meeting agenda for the project call")))
    assert 0.0 < ham.score < spam.score < 1.0
    assert spam.clues and spam.clues[0].weight > 0
    assert {c.token for c in spam.clues} <= set(
        tokens(message("offer", "buy cheap viagra now, limited time offer, click here"))
    )


def test_spam_prior_moves_only_the_intercept(examples):
    neutral = train(examples, TrainingSettings(features=SMALL, calibration_share=3, spam_prior=None))
    wary = train(examples, TrainingSettings(features=SMALL, calibration_share=3, spam_prior=0.1))
    assert wary.combiner.slope == neutral.combiner.slope
    assert wary.combiner.intercept < neutral.combiner.intercept


def write_corpus(root, rows):
    index = root / "index.tsv.gz"
    with gzip.open(index, "wt", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["source", "path", "label", "split", "sha256"])
        for path, label, split, data in rows:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
            w.writerow(["dev", path, label, split, hashlib.sha256(data).hexdigest()])
    return index


def test_build_command_trains_on_the_train_split_only(tmp_path):
    from support.models import HAM_LINES, SPAM_LINES

    rows = []
    for i in range(3):
        rows += [(f"c/ham/{i}-{j}", "ham", "train", message("hi", f"{line} {i}")) for j, line in enumerate(HAM_LINES)]
        rows += [
            (f"c/spam/{i}-{j}", "spam" if j % 2 else "phish", "train", message("hi", f"{line} {i}"))
            for j, line in enumerate(SPAM_LINES)
        ]
    rows.append(("c/ham/held-out", "ham", "test", message("hi", "a message of the test split")))
    index = write_corpus(tmp_path, rows)
    out = tmp_path / "out"
    args = ["--corpus", str(tmp_path), "--index", str(index), "--out", str(out), "--n-features", "4096"]
    assert build_default.main(args) == 0
    meta = json.loads((out / SIDECAR).read_text())
    assert meta["class_counts"] == {"ham": 18, "spam": 18}
    assert meta["training_data"]["by_source"] == {"dev": {"ham": 18, "phish": 9, "spam": 9}}
    assert meta["training_data"]["split"] == "train"
    first = meta["model_version"]
    assert build_default.main(args) == 0  # reproducible, and one payload only
    assert json.loads((out / SIDECAR).read_text())["model_version"] == first
    assert [p.name for p in out.iterdir() if p.name != SIDECAR] == [json.loads((out / SIDECAR).read_text())["artifact"]]
    assert meta["artifact"].endswith(".npz")


def test_build_command_refuses_a_message_that_changed(tmp_path):
    index = write_corpus(tmp_path, [("c/ham/0", "ham", "train", message("hi", "hello"))])
    (tmp_path / "c/ham/0").write_bytes(b"tampered")
    with pytest.raises(CorpusError, match="does not match the sha256"):
        build_default.main(["--corpus", str(tmp_path), "--index", str(index), "--out", str(tmp_path / "o")])


def test_training_set_that_fills_whole_batches_leaves_no_empty_batch_to_fail(monkeypatch):
    import mailward.training.trainer as trainer_module

    examples = corpus()
    monkeypatch.setattr(trainer_module, "BATCH", 1)  # every batch full: nothing is left for the last one
    model = train(examples, TrainingSettings(features=SMALL))
    assert model.counts.class_count.sum() == len(examples)
