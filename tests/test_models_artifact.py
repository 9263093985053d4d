"""Model artifacts: round trip, checksums, versions, confinement to the model directory, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from mailward.errors import ArtifactError
from mailward.models.artifact import SIDECAR, load_artifact, save_artifact
from mailward.training.trainer import TrainingSettings
from support.mail import bare_mail as message
from support.models import HAM_LINES, SPAM_LINES, small_model, tokens


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture
def saved(model, tmp_path):
    return save_artifact(model, tmp_path), tmp_path


def edit_sidecar(directory, **changes):
    path = directory / SIDECAR
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))
    return meta


def test_round_trip_scores_identically(model, saved):
    written, directory = saved
    loaded = load_artifact(directory / SIDECAR, directory)
    assert loaded.version == written.version and written.version.startswith("nb-")
    assert loaded.class_counts == model.class_counts
    assert loaded.combiner == model.combiner and loaded.features == model.features
    before, after = written.scorer(), loaded.scorer()
    for line in HAM_LINES[:2] + SPAM_LINES[:2]:
        t = tokens(message("x", line))
        assert after.assess_tokens(t) == before.assess_tokens(t)
    assert after.assess_tokens(tokens(message("x", SPAM_LINES[0]))).model_version == written.version


def test_sidecar_describes_the_model(saved):
    written, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    assert meta["model_version"] == written.version
    assert (directory / meta["artifact"]).stat().st_size == meta["size"]
    assert meta["features"]["n_features"] == 2**12 and meta["features"]["tokenizer"]["bigrams"] is True
    assert meta["naive_bayes"] == {"variant": "MultinomialNB", "alpha": TrainingSettings().alpha}
    assert meta["class_counts"] == {"ham": 24, "spam": 24}
    assert meta["training_data"]["calibration"]["held_out"] > 0
    assert {"sha256", "sklearn_version", "format_version", "combiner"} <= meta.keys()


def test_model_files_are_private_unless_saved_for_the_package(model, tmp_path):
    import stat

    def modes(directory):
        return {stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}, stat.S_IMODE(directory.stat().st_mode)

    save_artifact(model, tmp_path / "state" / "models")
    assert modes(tmp_path / "state" / "models") == ({0o600}, 0o700)
    save_artifact(model, tmp_path / "package" / "default", mode=0o644)  # read by the milter's user, like code
    assert modes(tmp_path / "package" / "default") == ({0o644}, 0o755)


def test_same_model_same_payload(model, tmp_path):
    a = save_artifact(model, tmp_path / "a")
    b = save_artifact(small_model(), tmp_path / "b")
    assert a.version == b.version


def test_corrupt_payload_is_refused(saved):
    _, directory = saved
    payload = directory / json.loads((directory / SIDECAR).read_text())["artifact"]
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_artifact(directory / SIDECAR, directory)


def test_payload_that_is_not_a_model_is_refused_even_with_matching_checksum(saved):
    import hashlib

    _, directory = saved
    junk = b"not a joblib file"
    (directory / "junk.joblib").write_bytes(junk)
    edit_sidecar(directory, artifact="junk.joblib", sha256=hashlib.sha256(junk).hexdigest(), size=len(junk))
    with pytest.raises(ArtifactError, match="unreadable payload"):
        load_artifact(directory / SIDECAR, directory)


@pytest.mark.parametrize(
    "changes, message_part",
    [
        ({"format_version": 99}, "format version 99"),
        ({"sklearn_version": "0.24.2"}, "built with scikit-learn 0.24.2"),
        ({"kind": "something-else"}, "not a Mailward spam model"),
    ],
)
def test_version_mismatch_is_refused(saved, changes, message_part):
    _, directory = saved
    edit_sidecar(directory, **changes)
    with pytest.raises(ArtifactError, match=message_part):
        load_artifact(directory / SIDECAR, directory)


@pytest.mark.parametrize(
    "changes",
    [
        {"naive_bayes": {"variant": "MultinomialNB", "alpha": 0}},
        {"naive_bayes": {"variant": "MultinomialNB", "alpha": "NaN"}},
        {"combiner": {"evidence_per_side": 20, "slope": "x", "intercept": 0.0}},
        {"combiner": {"evidence_per_side": 0, "slope": 1.0, "intercept": 0.0}},
        {"combiner": {"evidence_per_side": 20, "slope": 1.0, "intercept": 0.0, "extra": 1}},
    ],
)
def test_settings_that_would_break_scoring_are_refused(saved, changes):
    _, directory = saved
    edit_sidecar(directory, **changes)
    with pytest.raises(ArtifactError, match="bad model settings"):
        load_artifact(directory / SIDECAR, directory)


def test_other_tokenizer_or_hashing_is_refused(saved):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    features = dict(meta["features"], tokenizer=dict(meta["features"]["tokenizer"], version=0))
    edit_sidecar(directory, features=features)
    with pytest.raises(ArtifactError, match="tokenizer version 0"):
        load_artifact(directory / SIDECAR, directory)
    edit_sidecar(directory, features=dict(meta["features"], hash_probe=[1, 2, 3, 4]))
    with pytest.raises(ArtifactError, match="feature hashing"):
        load_artifact(directory / SIDECAR, directory)


def test_nothing_is_loaded_from_outside_the_model_directory(saved, tmp_path_factory):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "x.joblib").write_bytes((directory / meta["artifact"]).read_bytes())
    for name in ("../x.joblib", f"{elsewhere}/x.joblib", ".hidden.joblib"):
        edit_sidecar(directory, artifact=name)
        with pytest.raises(ArtifactError, match="plain file name"):
            load_artifact(directory / SIDECAR, directory)
    (directory / "link.joblib").symlink_to(elsewhere / "x.joblib")
    edit_sidecar(directory, artifact="link.joblib")
    with pytest.raises(ArtifactError, match="outside the model directory"):
        load_artifact(directory / SIDECAR, directory)
    edit_sidecar(directory, artifact=meta["artifact"])
    with pytest.raises(ArtifactError, match="outside the model directory"):
        load_artifact(directory / SIDECAR, elsewhere)


def test_unreadable_sidecars_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match="cannot read"):
        load_artifact(tmp_path / SIDECAR, tmp_path)
    (tmp_path / SIDECAR).write_text("{ not json")
    with pytest.raises(ArtifactError, match="not a JSON sidecar"):
        load_artifact(tmp_path / SIDECAR, tmp_path)


def test_saving_replaces_atomically_and_leaves_no_temporary_files(model, saved):
    _, directory = saved
    before = os.stat(directory / SIDECAR).st_ino
    save_artifact(model, directory)
    assert os.stat(directory / SIDECAR).st_ino != before  # renamed into place, not rewritten
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]


def test_a_model_without_both_classes_is_not_saved(tmp_path):
    from mailward.training.trainer import Trainer
    from support.models import SMALL, corpus

    trainer = Trainer(SMALL, 0.3)
    ham = [t for _, t, label in corpus(1) if label == "ham"]
    trainer.learn(ham, ["ham"] * len(ham))
    from mailward.models.artifact import TrainedModel

    with pytest.raises(ArtifactError, match="at least one ham and one spam"):
        save_artifact(TrainedModel(trainer.counts(), SMALL), tmp_path)


def test_the_profile_is_recorded_and_a_model_is_scored_with_its_own(tmp_path):
    from dataclasses import replace as changed

    from mailward.models.features import FeatureSettings
    from mailward.models.tokens import TokenizerSettings

    site = small_model()
    site = changed(site, features=FeatureSettings(n_features=2**12, tokenizer=TokenizerSettings(profile="site")))
    written = save_artifact(site, tmp_path)
    meta = json.loads((tmp_path / SIDECAR).read_text())
    assert meta["features"]["tokenizer"]["profile"] == "site"
    assert load_artifact(tmp_path / SIDECAR, tmp_path).scorer().features.tokenizer.profile == "site"
    assert written.scorer().features == load_artifact(tmp_path / SIDECAR, tmp_path).features


def test_a_sidecar_without_a_profile_is_a_corpus_model(saved):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    tokenizer = {k: v for k, v in meta["features"]["tokenizer"].items() if k not in ("profile", "pair_window")}
    edit_sidecar(directory, features=dict(meta["features"], tokenizer=tokenizer))
    assert load_artifact(directory / SIDECAR, directory).features.tokenizer.profile == "corpus"


def test_unknown_profile_is_refused_clearly(saved):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    edit_sidecar(
        directory, features=dict(meta["features"], tokenizer=dict(meta["features"]["tokenizer"], profile="future"))
    )
    with pytest.raises(ArtifactError, match="unknown feature profile 'future'"):
        load_artifact(directory / SIDECAR, directory)


def edit_settings(directory, section, **changes):
    """Change keys inside one sidecar section (``combiner``, ``naive_bayes``, ``features``, ``tokenizer``)."""
    meta = json.loads((directory / SIDECAR).read_text())
    if section == "tokenizer":
        features = meta["features"]
        edit_sidecar(directory, features=dict(features, tokenizer=dict(features["tokenizer"], **changes)))
    else:
        edit_sidecar(directory, **{section: dict(meta[section], **changes)})


@pytest.mark.parametrize(
    "section, changes, refusal",
    [
        ("combiner", {"slope": "0.05"}, "bad model settings"),
        ("combiner", {"intercept": "0"}, "bad model settings"),
        ("combiner", {"slope": True}, "bad model settings"),
        ("combiner", {"evidence_per_side": 20.0}, "bad model settings"),
        ("combiner", {"intercept": 10**400}, "bad model settings"),
        ("naive_bayes", {"alpha": "0.3"}, "bad model settings"),
        ("tokenizer", {"max_words": "1000"}, "bad feature settings"),
        ("tokenizer", {"max_hosts": None}, "bad feature settings"),
        ("tokenizer", {"max_text_chars": -1}, "bad feature settings"),
        ("tokenizer", {"bigrams": 1}, "bad feature settings"),
        ("tokenizer", {"pair_window": True}, "bad feature settings"),
        ("features", {"n_features": 4096.0}, "bad feature settings"),
    ],
)
def test_settings_of_the_wrong_json_type_are_refused_not_loaded_to_fail_every_scan(saved, section, changes, refusal):
    _, directory = saved
    edit_settings(directory, section, **changes)
    with pytest.raises(ArtifactError, match=refusal):
        load_artifact(directory / SIDECAR, directory)


@pytest.mark.parametrize(
    "edit, refusal",
    [
        (lambda text: text.replace('"n_features": 4096', '"n_features": 1e999'), "bad feature settings"),
        (lambda text: text.replace('"training_data": {', '"training_data": [1, 2], "x": {'), "training_data is list"),
        (lambda text: text[:-2] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}", "not a JSON sidecar"),
    ],
    ids=["infinite n_features", "training_data a list", "deeply nested"],
)
def test_malformed_sidecars_are_refused_as_artifact_errors(saved, edit, refusal):
    _, directory = saved
    path = directory / SIDECAR
    path.write_text(edit(path.read_text()))
    with pytest.raises(ArtifactError, match=refusal):
        load_artifact(path, directory)


def test_a_payload_symlink_loop_is_refused(saved):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    (directory / meta["artifact"]).unlink()
    (directory / meta["artifact"]).symlink_to(directory / meta["artifact"])
    with pytest.raises(ArtifactError, match="cannot resolve"):
        load_artifact(directory / SIDECAR, directory)


def test_a_fifo_as_payload_is_refused_without_waiting(saved):
    import threading

    _, directory = saved
    payload = directory / json.loads((directory / SIDECAR).read_text())["artifact"]
    payload.unlink()
    os.mkfifo(payload, 0o600)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_artifact(directory / SIDECAR, directory)
        except BaseException as exc:
            outcome.append(exc)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(10)
    if loading.is_alive():  # the old loader blocks in open(): give it a writer and an end so it returns
        os.close(os.open(payload, os.O_WRONLY))
        loading.join(10)
        pytest.fail("loading a FIFO payload blocked")
    assert isinstance(outcome[0], ArtifactError) and "not a regular file" in str(outcome[0])


def test_a_payload_larger_than_its_sidecar_says_is_refused_before_it_is_read(saved):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    with open(directory / meta["artifact"], "r+b") as fh:
        fh.truncate(1 << 30)  # sparse: a gibibyte the old loader read whole before the checksum refused it
    with pytest.raises(ArtifactError, match=f"{1 << 30} bytes, expected {meta['size']}"):
        load_artifact(directory / SIDECAR, directory)


def test_a_sidecar_without_the_payload_size_is_refused(saved):
    _, directory = saved
    meta = json.loads((directory / SIDECAR).read_text())
    del meta["size"]
    (directory / SIDECAR).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="lacks 'size'"):
        load_artifact(directory / SIDECAR, directory)


def test_a_summary_with_an_impossible_label_count_is_a_cold_start_model(saved):
    from mailward.models.classifier import COLD_START_REGIME

    _, directory = saved
    path = directory / SIDECAR
    meta = json.loads(path.read_text())
    meta["training_data"]["ledger"] = {"current_labels": {"ham": 500, "spam": "SPAM_COUNT"}}
    path.write_text(json.dumps(meta).replace('"SPAM_COUNT"', "1e999"))
    assert load_artifact(path, directory).scorer().regime.name == COLD_START_REGIME
