"""How good a model is on a labelled set, at the thresholds the policy actually uses.

A ham message scoring at or above the inbound ``spam_threshold`` gets the spam
action: that is a false positive. A spam message below it escapes the spam
action: a false negative. Between ``tag_threshold`` and ``spam_threshold`` a
message is only tagged "unsure"; the confusion matrix shows those separately.
ROC AUC is threshold-free and says how well the scores rank spam above ham.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ..config import LearningSettings, Settings
from ..models.classifier import SpamModel
from ..models.tokens import TokenizerSettings
from .extras import import_extra
from .streams import progress, with_tokens

if TYPE_CHECKING:
    from .sources import LabelledMail

BINS = 20


@dataclass(frozen=True)
class Thresholds:
    tag: float
    spam: float

    @classmethod
    def inbound(cls, settings: Settings) -> Thresholds:
        return cls(settings.policy.inbound.tag_threshold, settings.policy.inbound.spam_threshold)


@dataclass(frozen=True, eq=False)
class Scores:
    """Each message's score and whether it is spam, in the set's order."""

    score: np.ndarray
    is_spam: np.ndarray

    @classmethod
    def of(cls, pairs: list[tuple[float, bool]]) -> Scores:
        return cls(np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs], dtype=bool))


@dataclass(frozen=True)
class Evaluation:
    model: str
    n: int
    n_ham: int
    n_spam: int
    auc: float | None  # None when the set lacks ham or spam
    fp_rate: float | None  # ham at or above the spam threshold
    fn_rate: float | None  # spam below the spam threshold
    thresholds: Thresholds
    confusion: dict[str, Any] = field(default_factory=dict)  # true class -> {ham, unsure, spam} counts
    histogram: dict[str, Any] = field(default_factory=dict)  # true class -> counts per score bin

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n": self.n,
            "n_ham": self.n_ham,
            "n_spam": self.n_spam,
            "auc": self.auc,
            "one_minus_auc_percent": None if self.auc is None else 100.0 * (1.0 - self.auc),
            "fp_rate": self.fp_rate,
            "fn_rate": self.fn_rate,
            "thresholds": {"tag": self.thresholds.tag, "spam": self.thresholds.spam},
            "confusion": self.confusion,
            "histogram": {"bins": BINS, **self.histogram},
        }

    def render(self) -> str:
        pct = percent
        rows = [
            f"model {self.model}: {self.n} messages ({self.n_ham} ham, {self.n_spam} spam)",
            f"  ROC AUC {figure(self.auc)}   (1-AUC) {pct(None if self.auc is None else 1 - self.auc)}",
            f"  at spam threshold {self.thresholds.spam:g}: ham FP rate {pct(self.fp_rate)}, "
            f"spam FN rate {pct(self.fn_rate)}",
            f"  confusion (tag threshold {self.thresholds.tag:g}):       ham   unsure     spam",
        ]
        for truth in ("ham", "spam"):
            c = self.confusion[truth]
            rows.append(f"    true {truth:<4}                          {c['ham']:>8} {c['unsure']:>8} {c['spam']:>8}")
        rows.append("  score histogram (ham / spam per 0.05):")
        for i in range(BINS):
            rows.append(
                f"    {i / BINS:.2f}-{(i + 1) / BINS:.2f} {self.histogram['ham'][i]:>8} {self.histogram['spam'][i]:>8}"
            )
        return "\n".join(rows)


FIGURES = (("AUC", "auc", False), ("FP rate", "fp_rate", True), ("FN rate", "fn_rate", True))


def figure(x: float | None) -> str:
    """A figure as people read it: 4 significant digits (``0.9988``, not ``0.9988444444444444``)."""
    return "n/a" if x is None else f"{x:.4g}"


def percent(x: float | None) -> str:
    """A rate as a percentage with 4 significant digits (``0.1234%``)."""
    return "n/a" if x is None else f"{100 * x:.4g}%"


def headline(e: Evaluation) -> str:
    """AUC, FP and FN rate on one line."""
    return ", ".join(
        f"{name} {percent(getattr(e, attr)) if pct else figure(getattr(e, attr))}" for name, attr, pct in FIGURES
    )


def difference(candidate: Evaluation, live: Evaluation) -> str:
    """candidate − live for each headline figure; rates in percentage points (lower FP/FN is better)."""
    parts = []
    for name, attr, pct in FIGURES:
        a, b = getattr(candidate, attr), getattr(live, attr)
        if a is None or b is None:
            parts.append(f"{name} n/a")
        elif pct:
            parts.append(f"{name} {100 * (a - b):+.4g} points")
        else:
            parts.append(f"{name} {a - b:+.4g}")
    return "candidate - live: " + ", ".join(parts)


def measure(scores: Scores, thresholds: Thresholds, model: str) -> Evaluation:
    s, spam = scores.score, scores.is_spam
    ham_scores, spam_scores = s[~spam], s[spam]
    both = len(ham_scores) and len(spam_scores)
    confusion = {
        name: {
            "ham": int((part < thresholds.tag).sum()),
            "unsure": int(((part >= thresholds.tag) & (part < thresholds.spam)).sum()),
            "spam": int((part >= thresholds.spam).sum()),
        }
        for name, part in (("ham", ham_scores), ("spam", spam_scores))
    }
    edges = np.linspace(0.0, 1.0, BINS + 1)
    return Evaluation(
        model=model,
        n=len(s),
        n_ham=len(ham_scores),
        n_spam=len(spam_scores),
        auc=float(roc_auc_score(spam, s)) if both else None,
        fp_rate=confusion["ham"]["spam"] / len(ham_scores) if len(ham_scores) else None,
        fn_rate=(len(spam_scores) - confusion["spam"]["spam"]) / len(spam_scores) if len(spam_scores) else None,
        thresholds=thresholds,
        confusion=confusion,
        histogram={
            name: [int(x) for x in np.histogram(part, edges)[0]]
            for name, part in (("ham", ham_scores), ("spam", spam_scores))
        },
    )


def unjudged(evaluation: Evaluation) -> str:
    """What the evaluated set lacks to judge a model ("" if nothing): without ham no false
    positive can show, without spam no miss, and every figure comparing them is "n/a"."""
    lacking = [label for label, n in (("ham", evaluation.n_ham), ("spam", evaluation.n_spam)) if not n]
    return "no " + " and no ".join(lacking) if lacking else ""


def regressions(candidate: Evaluation, live: Evaluation, settings: LearningSettings) -> list[str]:
    """Why ``candidate`` is worse than ``live`` beyond the configured margins (empty: it is not)."""
    problems = []
    if candidate.auc is not None and live.auc is not None and candidate.auc < live.auc - settings.max_auc_drop:
        problems.append(f"ROC AUC {figure(candidate.auc)} < live {figure(live.auc)} - {settings.max_auc_drop:g}")
    if (
        candidate.fp_rate is not None
        and live.fp_rate is not None
        and candidate.fp_rate > live.fp_rate + settings.max_fp_rate_rise
    ):
        problems.append(
            f"ham FP rate {percent(candidate.fp_rate)} > live {percent(live.fp_rate)} "
            f"+ {percent(settings.max_fp_rate_rise)}"
        )
    return problems


def score_set(models: list[SpamModel], mails: Iterable[LabelledMail], jobs: int = 1) -> list[Scores]:
    """Score every message of a set with each model (tokenized once per tokenizer)."""
    by_tokenizer: dict[TokenizerSettings, list[SpamModel]] = {}
    for m in models:
        by_tokenizer.setdefault(m.features.tokenizer, []).append(m)
    pairs: list[list[tuple[float, bool]]] = [[] for _ in models]
    if len(by_tokenizer) == 1:
        for mail, tokens in progress(with_tokens(mails, models[0].features, jobs=jobs), "scoring"):
            for i, m in enumerate(models):
                pairs[i].append((m.assess_tokens(tokens).score, mail.spam_label == "spam"))
        return [Scores.of(p) for p in pairs]
    mails = list(mails)  # models that tokenize differently: rare, and each needs its own pass
    return [score_set([m], mails, jobs)[0] for m in models]


def plot(curves: list[tuple[str, Scores]], thresholds: Thresholds, path: str) -> None:
    """ROC curves and score distributions as one PNG."""
    import_extra("matplotlib", "--plot").use("Agg")
    plt = import_extra("matplotlib.pyplot", "--plot")

    fig, (roc, dist) = plt.subplots(1, 2, figsize=(12, 5))
    for name, scores in curves:
        if scores.is_spam.all() or not scores.is_spam.any():
            continue
        fpr, tpr, _ = roc_curve(scores.is_spam, scores.score)
        roc.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(scores.is_spam, scores.score):.4f})")
    roc.set_xscale("symlog", linthresh=1e-3)
    roc.set(xlabel="ham false-positive rate", ylabel="spam detected", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    roc.legend(loc="lower right")
    edges = np.linspace(0.0, 1.0, BINS + 1)
    for name, scores in curves:
        for label, part, style in (
            ("ham", scores.score[~scores.is_spam], "-"),
            ("spam", scores.score[scores.is_spam], "--"),
        ):
            dist.hist(part, bins=edges, histtype="step", linestyle=style, label=f"{name} {label}")
    for value, what in ((thresholds.tag, "tag"), (thresholds.spam, "spam")):
        dist.axvline(value, color="grey", linestyle=":")
        dist.text(value, 1, f" {what}", color="grey", transform=dist.get_xaxis_transform(), va="top")
    dist.set_yscale("log")
    dist.set(xlabel="spam score", ylabel="messages", title="Score distribution")
    dist.legend(loc="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
