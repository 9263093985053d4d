"""Spam model accuracy on the corpus test split, measured against bogofilter in the same run.

    python bench/spam_accuracy.py --corpus /tmp/corpus --index /tmp/corpus/index.tsv.gz \\
        [--model src/mailward/models/default] [--ablations] [--no-bogofilter]

Trains Mailward's model on the ``train`` split exactly as the shipped one is
built (and, with ``--model``, also scores that artifact), trains bogofilter with
its own defaults on the same split (``-s``/``-n`` into a temporary wordlist),
and scores the ``test`` split with both. Nothing here is tuned: the choices were
made by cross-validation inside ``train`` (bench/spam_select.py).

Reported per source and pooled: ham false-positive rate and spam false-negative
rate at the configured thresholds (Mailward: inbound tag/spam thresholds from
config; bogofilter: its own ham/spam cutoffs, "Spam" being its quarantine-grade
verdict), and ROC AUC. Phish has no ham of its own: its AUC is against all test ham.

Both filters see the same bytes with the label-leaking headers of the corpus
MANIFEST (Status, X-Status, X-Keywords, X-UID, Content-Length, X-Spam-*,
X-Virus-*) removed; Mailward ignores them anyway, bogofilter would learn them.
bogofilter's spamicity is read at full precision (``-v`` with a ``%0.17f``
format) because ``-T`` rounds to six digits, which ties many messages at 0 or 1.

``--ablations`` adds the alternatives the design was chosen over, trained and
scored the same way, so each choice can be read off against bogofilter.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.metrics import roc_auc_score
from sklearn.naive_bayes import MultinomialNB

from mailward.config import Settings
from mailward.models.artifact import SIDECAR, load_artifact, save_artifact
from mailward.models.classifier import SpamModel
from mailward.models.features import FeatureSettings
from mailward.models.tokens import TokenizerSettings
from mailward.training.corpus import index_messages
from mailward.training.estimator import tokens_as_given, vectorizer
from mailward.training.trainer import BATCH, TrainingSettings, message_tokens, train

LEAKING = re.compile(rb"(status|x-status|x-keywords|x-uid|content-length|x-spam-[\w-]*|x-virus-[\w-]*):", re.I)
SOURCES = ("spamassassin", "enron-spam", "nazario-phishing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--model", type=Path, help="also score this model directory (e.g. the shipped default)")
    parser.add_argument("--ablations", action="store_true", help="also train and score the alternatives")
    parser.add_argument("--no-bogofilter", action="store_true")
    args = parser.parse_args()
    policy = Settings().policy.inbound
    tag, spam_threshold = policy.tag_threshold, policy.spam_threshold

    messages = list(index_messages(args.index, args.corpus))
    train_set = [m for m in messages if m.split == "train"]
    test_set = [m for m in messages if m.split == "test"]
    features = FeatureSettings()
    started = time.perf_counter()
    tokens = {m.path: message_tokens(m.read(), features) for m in train_set + test_set}
    print(f"tokenized {len(tokens)} messages in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    truth = np.array([m.spam_label == "spam" for m in test_set])
    sources = np.array([m.source for m in test_set])

    results: list[tuple[str, np.ndarray, np.ndarray | None]] = []  # (name, scores, bogofilter verdicts)
    model = train(((m.sha256, tokens[m.path], m.spam_label) for m in train_set), TrainingSettings())
    with tempfile.TemporaryDirectory() as scratch:
        model = save_artifact(model, scratch)  # gives it its version: equal to the shipped one if rebuilt alike
    results.append((f"mailward {model.version} (trained now)", _scores(model.scorer(), test_set, tokens), None))
    if args.model:
        shipped = load_artifact(args.model / SIDECAR, args.model).scorer()
        results.append((f"mailward {shipped.version} ({args.model})", _scores(shipped, test_set, tokens), None))
    if args.ablations:
        results.extend(_ablations(train_set, test_set, tokens))
    if not args.no_bogofilter:
        verdicts, spamicity = _bogofilter(train_set, test_set)
        results.append(("bogofilter (own defaults)", spamicity, verdicts))

    print(
        f"\nTest split: {len(test_set)} messages. Mailward thresholds: tag {tag}, spam {spam_threshold}; "
        f"bogofilter: its Unsure/Spam verdicts (cutoffs 0.45/0.99)."
    )
    print(
        "FP = ham at/above the spam threshold (quarantined); FN = spam/phish below it; "
        "tagged = ham at/above the tag threshold; missed = spam below the tag threshold.\n"
    )
    header = (
        f"{'model':58s} {'source':17s} {'ham':>5s} {'spam':>5s} {'FP%':>7s} {'FN%':>7s} "
        f"{'tagged%':>8s} {'missed%':>8s} {'AUC':>8s} {'1-AUC%':>7s}"
    )
    print(header)
    print("-" * len(header))
    for name, scores, verdicts in results:
        for source in (*SOURCES, "pooled"):
            print(_row(name, source, scores, verdicts, truth, sources, tag, spam_threshold))
        print()
    print("Where the scores fall (share of test messages; a saturated score would leave only the ends):")
    edges = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0)
    bins = " ".join(f"{f'{a:g}-{b:g}':>9s}" for a, b in zip(edges, edges[1:]))
    print(f"{'model':58s} {bins} {'=0 or =1':>9s}")
    for name, scores, _ in results:
        shares = np.histogram(scores, bins=edges)[0] / len(scores)
        exact = np.mean((scores == 0.0) | (scores == 1.0))
        print(f"{name[:58]:58s} " + " ".join(f"{100 * x:8.2f}%" for x in shares) + f" {100 * exact:8.2f}%")
    return 0


def _scores(scorer: SpamModel, messages, tokens) -> np.ndarray:
    return np.array([scorer.assess_tokens(tokens[m.path]).score for m in messages])


def _ablations(train_set, test_set, tokens):
    """The alternatives, each differing from the chosen design in one respect (or the naive baseline)."""
    out = []
    labels = [m.spam_label for m in train_set]

    def nb_posterior(vectorizer, docs_of, alpha):
        nb = MultinomialNB(alpha=alpha)
        for start in range(0, len(train_set), BATCH):
            chunk = train_set[start : start + BATCH]
            nb.partial_fit(
                vectorizer.transform([docs_of(m) for m in chunk]),
                labels[start : start + BATCH],
                classes=["ham", "spam"],
            )
        spam = list(nb.classes_).index("spam")
        return np.concatenate(
            [
                nb.predict_proba(vectorizer.transform([docs_of(m) for m in test_set[s : s + BATCH]]))[:, spam]
                for s in range(0, len(test_set), BATCH)
            ]
        )

    raw_text = lambda m: m.read().decode("latin-1")  # noqa: E731 - the naive baseline reads raw text
    out.append(
        (
            "naive: sklearn word counts of raw text, MNB posterior",
            nb_posterior(HashingVectorizer(alternate_sign=False), raw_text, 1.0),
            None,
        )
    )
    counts = HashingVectorizer(analyzer=tokens_as_given, n_features=2**22, norm=None, alternate_sign=False)
    out.append(
        ("our tokens, counts, MNB posterior (alpha 1)", nb_posterior(counts, lambda m: tokens[m.path], 1.0), None)
    )
    alpha = TrainingSettings().alpha
    out.append(
        (
            f"our tokens, binary, MNB posterior (alpha {alpha:g})",
            nb_posterior(vectorizer(FeatureSettings()), lambda m: tokens[m.path], alpha),
            None,
        )
    )

    def variant(name, settings, keep=lambda t: True):
        kept = {m.path: [t for t in tokens[m.path] if keep(t)] for m in train_set + test_set}
        model = train(((m.sha256, kept[m.path], m.spam_label) for m in train_set), settings)
        out.append((name, _scores(model.scorer(), test_set, kept), None))

    base = TrainingSettings()
    variant("evidence of all tokens (no top-N), calibrated", replace(base, evidence_per_side=10**6))
    variant(
        "no word pairs",
        replace(base, features=FeatureSettings(tokenizer=TokenizerSettings(bigrams=False))),
        keep=lambda t: " " not in t,
    )
    variant("2^20 hashed columns", replace(base, features=FeatureSettings(n_features=2**20)))
    variant("calibrated to the corpus balance (no spam prior)", replace(base, spam_prior=None))
    return out


def _bogofilter(train_set, test_set) -> tuple[np.ndarray, np.ndarray]:
    if shutil.which("bogofilter") is None:
        sys.exit("bogofilter is not installed (apt-get install bogofilter)")
    work = Path(tempfile.mkdtemp(prefix="bogofilter-bench-"))
    try:
        files = {}
        for i, m in enumerate(train_set + test_set):
            files[m.path] = work / "mail" / str(i)
            files[m.path].parent.mkdir(exist_ok=True)
            files[m.path].write_bytes(_without_leaking_headers(m.read()))
        wordlist = work / "wordlist"
        wordlist.mkdir()
        for flag, label in (("-s", "spam"), ("-n", "ham")):
            chosen = [str(files[m.path]) for m in train_set if m.spam_label == label]
            for start in range(0, len(chosen), 2000):
                subprocess.run(
                    ["bogofilter", "-d", str(wordlist), flag, "-B", *chosen[start : start + 2000]], check=True
                )
        verdicts, spamicity = {}, {}
        paths = [str(files[m.path]) for m in test_set]
        for start in range(0, len(paths), 2000):
            out = subprocess.run(
                [
                    "bogofilter",
                    "-d",
                    str(wordlist),
                    "-v",
                    "--header-format=%c %p",
                    "--spamicity-formats=%0.17f,%0.17f,%0.17f",
                    "-B",
                    *paths[start : start + 2000],
                ],
                capture_output=True,
                text=True,
            ).stdout
            for line in out.splitlines():
                path, verdict, value = line.rsplit(" ", 2)
                verdicts[path], spamicity[path] = verdict, float(value)
        return np.array([verdicts[p] for p in paths]), np.array([spamicity[p] for p in paths])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _without_leaking_headers(raw: bytes) -> bytes:
    head, sep, body = raw.partition(b"\n\n")
    kept, skipping = [], False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = bool(LEAKING.match(line))
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


def _row(name, source, scores, verdicts, truth, sources, tag, spam_threshold) -> str:
    if source == "pooled":
        chosen = np.ones(len(truth), dtype=bool)
    elif source == "nazario-phishing":
        chosen = (sources == source) | ~truth  # phish against all test ham, for its AUC
    else:
        chosen = sources == source
    t, s = truth[chosen], scores[chosen]
    ham_scores, spam_scores = s[~t], s[t]
    if verdicts is None:
        fp, fn = np.mean(ham_scores >= spam_threshold), np.mean(spam_scores < spam_threshold)
        tagged, missed = np.mean(ham_scores >= tag), np.mean(spam_scores < tag)
    else:
        v = verdicts[chosen]
        fp, fn = np.mean(v[~t] == "Spam"), np.mean(v[t] != "Spam")
        tagged, missed = np.mean(v[~t] != "Ham"), np.mean(v[t] == "Ham")
    auc = roc_auc_score(t, s)
    ham_cols = f"{100 * fp:7.3f} " if source != "nazario-phishing" else f"{'-':>7s} "
    tag_col = f"{100 * tagged:8.3f} " if source != "nazario-phishing" else f"{'-':>8s} "
    return (
        f"{name[:58]:58s} {source:17s} {len(ham_scores) if source != 'nazario-phishing' else 0:5d} "
        f"{len(spam_scores):5d} {ham_cols}{100 * fn:7.3f} {tag_col}{100 * missed:8.3f} {auc:8.5f} "
        f"{100 * (1 - auc):7.3f}"
    )


if __name__ == "__main__":
    sys.exit(main())
