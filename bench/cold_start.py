"""Cold-start quarantine threshold: a corpus model's ham false positives on mail from another corpus.

    python bench/cold_start.py --corpus /tmp/corpus --index /tmp/corpus/index.tsv.gz

A shipped model scores mail from a site and an era it never saw. To find a
threshold that keeps its quarantined ham rare there, a model is built exactly
as the shipped one (``corpus`` profile, the shipped training settings and
calibration) on one source's ``train`` split and scores another source's
messages (both splits: none of them was learned): SpamAssassin (full headers)
against Enron-Spam (body text), both ways. The Nazario phish join the
SpamAssassin side as they join the shipped model, not the Enron side: next to
Enron's header-less ham, any header at all would mark spam. For each direction it
prints ham FP and spam caught at several thresholds, and the lowest threshold
whose ham FP rate is at most ``--max-fp`` (0.05 %). The cold-start threshold
(``COLD_START_THRESHOLD`` in mailward/models/classifier.py) is the larger of the two.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mailward.training.corpus import LabelledMessage, index_messages
from mailward.training.trainer import TrainingSettings, message_tokens, tokenized, train

THRESHOLDS = (0.9, 0.99, 0.995, 0.999, 0.9995, 0.9999)
DIRECTIONS = ((("spamassassin", "nazario-phishing"), "enron-spam"),
              (("enron-spam",), "spamassassin"))


def scores(model_sources: tuple[str, ...], test_source: str,
           messages: list[LabelledMessage]) -> tuple[np.ndarray, np.ndarray]:
    settings = TrainingSettings()
    learn = [m for m in messages if m.source in model_sources and m.split == "train"]
    scorer = train(tokenized(learn, settings.features), settings).scorer()
    test = [m for m in messages if m.source == test_source]
    score = np.array([scorer.assess_tokens(message_tokens(m.read(), settings.features)).score for m in test])
    return score, np.array([m.spam_label == "spam" for m in test])


def lowest_threshold(score: np.ndarray, is_spam: np.ndarray, max_fp: float) -> float:
    """The lowest score threshold (of the scores seen, or 1.0) whose ham FP rate is at most ``max_fp``."""
    ham = np.sort(score[~is_spam])[::-1]
    allowed = int(np.floor(max_fp * len(ham)))       # ham that may score at or above the threshold
    if allowed >= len(ham):
        return 0.0
    return float(np.nextafter(ham[allowed], 2.0))     # just above the first ham that must stay below


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--max-fp", type=float, default=0.0005)
    args = parser.parse_args()
    messages = list(index_messages(args.index, args.corpus))
    needed = []
    for model_sources, test_source in DIRECTIONS:
        score, is_spam = scores(model_sources, test_source, messages)
        ham, spam = score[~is_spam], score[is_spam]
        print(f"model on {'+'.join(model_sources)} (train split), scoring {test_source}: "
              f"{len(ham)} ham, {len(spam)} spam")
        for t in THRESHOLDS:
            print(f"  at {t:<7g} ham FP {int((ham >= t).sum()):>4} ({100 * (ham >= t).mean():.3f} %), "
                  f"spam caught {100 * (spam >= t).mean():.1f} %")
        low = lowest_threshold(score, is_spam, args.max_fp)
        needed.append(low)
        print(f"  lowest threshold with ham FP <= {100 * args.max_fp:g} %: {low:.6f} "
              f"(spam caught {100 * (spam >= low).mean():.1f} %)", flush=True)
    print(f"cold-start threshold (larger of the two): {max(needed):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
