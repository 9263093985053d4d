"""Online evaluation in the TREC spam-track protocol: score each message, then learn its label.

The messages go by in the set's order, each scored by a filter that has learned
exactly the messages before it; the cumulative (1-AUC)% over all those scores is
the honest measure of a filter that is retrained as mail arrives.

Mailward's filter starts from empty counts and uses the same tokenizer, hashing
and scoring as the live model (its feature settings and score calibration).
Refitting scikit-learn's estimator after every message would cost a pass over
all 4 Mi columns each time, so :class:`OnlineNaiveBayes` keeps the same
sufficient statistics (per-class column counts) and derives the weights of only
the columns a message has, by the formula
:func:`~mailward.models.classifier.column_weights` gives a loaded model; the
tests check both give the same score. bogofilter does the same run through its
command line: ``-TT`` to score, then ``-s`` or ``-n`` to register the true label,
in a wordlist of its own in a temporary directory.

The score's calibration follows the model as it learns, as a site model's
does (:class:`SiteCalibration`): it is refitted every ``refit_every`` messages
on the most recent ``window`` messages' evidence, each taken when the message
was scored, before it was learned. FP and FN at the configured thresholds are
therefore those the live model would have had at each point. The ranking
figures ((1-AUC)%) use the same calibrated score as log-odds, which a
probability in float64 would round to exactly 1 for the surest spam.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import MailwardError
from ..models.classifier import Combiner, column_weights
from ..models.features import FeatureSettings, token_columns
from .calibration import SITE_CALIBRATION, OnlineCalibration, SiteCalibration
from .evaluate import Evaluation, Scores, Thresholds, measure
from .sources import LabelledMail
from .streams import progress, with_tokens

CHECKPOINTS = 10  # points on the learning curve


class BogofilterError(MailwardError):
    """bogofilter is missing or failed on a message."""


@dataclass(frozen=True)
class ReplayResult:
    filter: str
    evaluation: Evaluation
    curve: list[tuple[int, float | None]] = field(default_factory=list)  # (messages seen, cumulative (1-AUC)%)

    def as_dict(self) -> dict[str, Any]:
        return {
            "filter": self.filter,
            **self.evaluation.as_dict(),
            "curve": [{"n": n, "one_minus_auc_percent": v} for n, v in self.curve],
        }


class OnlineNaiveBayes:
    """Multinomial Naive Bayes counts over binary hashed features, scored through a :class:`Combiner`."""

    def __init__(self, features: FeatureSettings, alpha: float, combiner: Combiner):
        self.n_features = features.n_features
        self.alpha = alpha
        self.combiner = combiner
        self.feature_count = np.zeros((2, features.n_features))  # rows: ham, spam
        self.totals = np.zeros(2)

    def columns(self, tokens: list[str]) -> np.ndarray:
        return np.unique(token_columns(list(dict.fromkeys(tokens)), self.n_features))

    def weights(self, columns: np.ndarray) -> np.ndarray:
        return column_weights(self.feature_count[:, columns], self.totals, self.alpha, self.n_features)

    def score(self, columns: np.ndarray) -> float:
        return self.combiner.probability(self.combiner.evidence(self.weights(columns)))

    def learn(self, columns: np.ndarray, is_spam: bool) -> None:
        self.feature_count[int(is_spam), columns] += 1.0
        self.totals[int(is_spam)] += len(columns)


def replay_mailward(
    mails: Iterable[LabelledMail],
    features: FeatureSettings,
    alpha: float,
    combiner: Combiner,
    thresholds: Thresholds,
    jobs: int = 1,
    total: int | None = None,
    calibration: SiteCalibration = SITE_CALIBRATION,
) -> ReplayResult:
    return replay_tokens(
        progress(with_tokens(mails, features, jobs=jobs), "replay mailward", total),
        features,
        alpha,
        combiner,
        thresholds,
        calibration,
    )


def replay_tokens(
    stream: Iterable[tuple[LabelledMail, list[str]]],
    features: FeatureSettings,
    alpha: float,
    combiner: Combiner,
    thresholds: Thresholds,
    calibration: SiteCalibration = SITE_CALIBRATION,
) -> ReplayResult:
    """The online replay of already tokenized mail (benchmarks tokenize once for many settings)."""
    model = OnlineNaiveBayes(features, alpha, combiner)
    calibrated = OnlineCalibration(combiner, calibration)
    log_odds, labels = [], []
    for mail, tokens in stream:
        columns = model.columns(tokens)
        is_spam = mail.spam_label == "spam"
        evidence = combiner.evidence(model.weights(columns))
        log_odds.append(calibrated.log_odds(evidence))
        labels.append(is_spam)
        calibrated.observe(evidence, is_spam)
        model.learn(columns, is_spam)
    ranking = Scores(np.array(log_odds, dtype=np.float64), np.array(labels, dtype=bool))
    probability = Scores(1.0 / (1.0 + np.exp(-np.clip(ranking.score, -700, 700))), ranking.is_spam)
    evaluation = measure(probability, thresholds, "mailward")
    if evaluation.auc is not None:
        evaluation = replace(evaluation, auc=float(roc_auc_score(ranking.is_spam, ranking.score)))
    return ReplayResult("mailward", evaluation, list(_curve(ranking)))


class Bogofilter:
    """One bogofilter wordlist in its own directory, driven message by message."""

    def __init__(self, directory: Path, program: str = "bogofilter"):
        self.program = shutil.which(program) or ""
        if not self.program:
            raise BogofilterError(f"{program} not found (Debian package bogofilter)")
        self.directory = directory
        self.learned = 0

    def cutoffs(self) -> Thresholds:
        """bogofilter's own ham and spam cutoffs (built-in defaults: no config file is read)."""
        out = self._run(["-Q"], b"").stdout.decode()
        values = dict(re.findall(r"^(ham_cutoff|spam_cutoff)\s*=\s*([0-9.]+)", out, re.M))
        return Thresholds(float(values["ham_cutoff"]), float(values["spam_cutoff"]))

    def score(self, data: bytes) -> float:
        if not self.learned:
            return 0.5  # an empty wordlist is an error to bogofilter, and no evidence either way
        done = self._run(["-TT"], data)
        if done.returncode not in (0, 1, 2):
            raise BogofilterError(f"bogofilter -TT failed: {done.stderr.decode(errors='replace').strip()}")
        return float(done.stdout.split()[0])

    def learn(self, data: bytes, is_spam: bool) -> None:
        done = self._run(["-s" if is_spam else "-n"], data)
        if done.returncode != 0:
            raise BogofilterError(f"bogofilter registration failed: {done.stderr.decode(errors='replace').strip()}")
        self.learned += 1

    def _run(self, args: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.program, "-C", "-d", str(self.directory), *args], input=data, capture_output=True, timeout=120
        )


def replay_bogofilter(mails: Iterable[LabelledMail], total: int | None = None) -> ReplayResult:
    with tempfile.TemporaryDirectory(prefix="mailward-bogofilter-") as wordlists:
        bogo = Bogofilter(Path(wordlists))
        pairs = []
        for mail in progress(mails, "replay bogofilter", total):
            is_spam = mail.spam_label == "spam"
            pairs.append((bogo.score(mail.data), is_spam))
            bogo.learn(mail.data, is_spam)
        return _result("bogofilter", Scores.of(pairs), bogo.cutoffs())


def _result(name: str, scores: Scores, thresholds: Thresholds) -> ReplayResult:
    return ReplayResult(name, measure(scores, thresholds, name), list(_curve(scores)))


def _curve(scores: Scores) -> Iterator[tuple[int, float | None]]:
    n = len(scores.score)
    for k in sorted({max(1, round(n * i / CHECKPOINTS)) for i in range(1, CHECKPOINTS + 1)}):
        spam = scores.is_spam[:k]
        yield k, (100.0 * (1.0 - roc_auc_score(spam, scores.score[:k])) if spam.any() and not spam.all() else None)
