"""Site models: the feature profile they train with, the calibration that follows them, and the
cold-start regime a model stays in until it has learned enough of the site's own mail."""

from __future__ import annotations

import pytest

from mailward.models.artifact import SHIPPED_DIR, SIDECAR, load_artifact
from mailward.models.classifier import COLD_START_MIN, COLD_START_THRESHOLD, Combiner, Regime
from mailward.training.calibration import OnlineCalibration, SiteCalibration
from mailward.training.evaluate import Thresholds
from mailward.training.replay import replay_mailward
from mailward.training.sources import read_sets
from mailward.training.trainer import TrainingSettings
from support.training import FIXTURES, run_json


def test_regime_needs_enough_site_ham_and_spam():
    assert Regime.of(COLD_START_MIN, COLD_START_MIN).name == "site"
    assert Regime.of(COLD_START_MIN, COLD_START_MIN).spam_floor == 0.0
    cold = Regime.of(10_000, COLD_START_MIN - 1)
    assert cold.name == "cold-start" and cold.spam_floor == COLD_START_THRESHOLD
    assert "cold-start" in cold.describe() and str(COLD_START_MIN) in cold.describe()
    # A sidecar's ledger summary decides; anything malformed counts as nothing learned.
    ledger = {"ledger": {"current_labels": {"ham": 250, "spam": 300}}}
    assert Regime.of_training(ledger).name == "site"
    assert Regime.of_training({"ledger": {"current_labels": {"ham": "many"}}}).name == "cold-start"
    assert Regime.of_training({"ledger": []}).name == "cold-start"


def test_the_shipped_model_is_in_cold_start_and_says_so():
    shipped = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR)
    assert shipped.features.tokenizer.profile == "corpus"
    assessment = shipped.scorer().assess_tokens(["subject:viagra"])
    assert (assessment.regime, assessment.spam_floor) == ("cold-start", COLD_START_THRESHOLD)


def test_calibration_is_refitted_on_recent_evidence():
    calibration = OnlineCalibration(Combiner(), SiteCalibration(window=50, refit_every=10, min_per_class=3))
    for i in range(9):
        calibration.observe(float(i % 3) - 5.0, False)
    assert calibration.combiner == Combiner()  # not yet due, and no spam seen
    calibration.observe(9.0, True)
    assert calibration.combiner == Combiner()  # due, but too few spam to fit
    for i in range(10):
        calibration.observe(4.0 + i % 3, True)
    fitted = calibration.combiner
    assert fitted.slope > 0 and fitted != Combiner()
    assert fitted.probability(6.0) > 0.9 > 0.1 > fitted.probability(-5.0)
    assert len(calibration.state()) == 20 and calibration.state()[-1] == [4.0, 1.0]


def test_replay_uses_the_site_profile_and_reports_at_the_calibrated_thresholds():
    tuned = TrainingSettings.for_profile("site")
    assert tuned.features.tokenizer.profile == "site" and TrainingSettings().features.tokenizer.profile == "corpus"
    mails = list(read_sets([str(FIXTURES / "layout")]))
    result = replay_mailward(
        mails,
        tuned.features,
        tuned.alpha,
        Combiner(tuned.evidence_per_side),
        Thresholds(0.5, 0.9),
        calibration=SiteCalibration(window=100, refit_every=2, min_per_class=1),
    )
    assert result.evaluation.n == len(mails) and result.evaluation.auc is not None
    assert sum(result.evaluation.confusion["ham"].values()) == result.evaluation.n_ham
    with pytest.raises(ValueError, match="unknown feature profile"):
        TrainingSettings.for_profile("other")


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state"


def test_train_builds_site_models_and_list_shows_the_regime(state):
    layout = str(FIXTURES / "layout")
    report = run_json(state, "train", layout)
    version = report["candidate"]
    model = run_json(state, "model", "list")
    [entry] = [v for v in model["versions"] if v["version"] == version]
    assert entry["training_data"]["ledger"]["current_labels"] == {"ham": 5, "spam": 6}
    assert model["regime"]["name"] == "cold-start"  # nothing live yet: the shipped model's regime
    corpus = run_json(state, "train", "update", "--no-quarantine", "--profile", "corpus", "--from", version)
    assert corpus["rebuilt"]  # another profile's counts: a new model
    assert corpus["candidate"] != version


def test_a_site_update_refits_its_calibration_on_what_it_learns(state):
    first = run_json(state, "train", str(FIXTURES / "layout"))["candidate"]
    update = run_json(
        state, "train", "--update", "--from", first, str(FIXTURES / "reports-spam.mbox"), str(FIXTURES / "maildir/ham")
    )
    assert update["learned"] == 6 and not update["rebuilt"]
    [sidecar] = [p for p in state.rglob(SIDECAR) if p.parent.name == update["candidate"]]
    kept = load_artifact(sidecar, sidecar.parent).training_data["calibration"]
    assert kept["follows_site"] and len(kept["recent"]) == 6  # each new message's evidence, before learning it
