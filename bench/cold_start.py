"""Cold-start quarantine threshold: a corpus model's ham false positives on mail from another corpus.

    python bench/cold_start.py --corpus /tmp/corpus --index /tmp/corpus/index.tsv.gz

A shipped model scores mail from a site and an era it never saw. To find a
threshold that keeps its quarantined ham rare there, a model is built exactly
as the shipped one (``corpus`` profile, the shipped training settings and
calibration) on the ``train`` split of some sources and scores every message
of another (both splits: none of them was learned):

* SpamAssassin (+ Nazario phish, as in the shipped model) -> all of Enron-Spam;
* the shipped model's sources less one Enron mailbox -> that mailbox (its owner's
  ham is a site the model never saw), for two mailboxes with different spam feeds;
* Enron-Spam alone -> SpamAssassin, reported but not used: a model that never saw
  a header nor list mail (Enron's ham is header-less, lower-cased corporate mail)
  is nothing like the shipped one, and no threshold below 1 keeps its FP at 0.05 %.

For each direction it prints ham FP and spam caught at several thresholds, and the
lowest threshold whose ham FP rate is at most ``--max-fp`` (0.05 %). The cold-start
threshold (``COLD_START_THRESHOLD`` in mailward/models/classifier.py) is the largest
of the directions used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mailward.training.corpus import LabelledMessage, index_messages
from mailward.training.trainer import TrainingSettings, message_tokens, tokenized, train

THRESHOLDS = (0.9, 0.99, 0.995, 0.999, 0.9995, 0.9999)
ALL = ("spamassassin", "nazario-phishing", "enron1", "enron2", "enron3", "enron4", "enron5", "enron6")
# (sources learned, source scored, whether it counts for the threshold)
DIRECTIONS = (
    (("spamassassin", "nazario-phishing"), "enron-spam", True),
    (tuple(s for s in ALL if s != "enron1"), "enron1", True),
    (tuple(s for s in ALL if s != "enron3"), "enron3", True),
    (("enron-spam",), "spamassassin", False),
)


def scores(
    model_sources: tuple[str, ...], test_source: str, messages: list[LabelledMessage]
) -> tuple[np.ndarray, np.ndarray]:
    settings = TrainingSettings()
    learn = [m for m in messages if m.split == "train" and _source(m) & set(model_sources)]
    scorer = train(tokenized(learn, settings.features), settings).scorer()
    test = [m for m in messages if test_source in _source(m)]
    score = np.array([scorer.assess_tokens(message_tokens(m.read(), settings.features)).score for m in test])
    return score, np.array([m.spam_label == "spam" for m in test])


def _source(m: LabelledMessage) -> set[str]:
    """The message's source, and its Enron mailbox (``enron1``...) for Enron-Spam."""
    return {m.source} | ({m.path.parts[-3]} if m.source == "enron-spam" else set())


def lowest_threshold(score: np.ndarray, is_spam: np.ndarray, max_fp: float) -> float:
    """The lowest score threshold (of the scores seen, or 1.0) whose ham FP rate is at most ``max_fp``."""
    ham = np.sort(score[~is_spam])[::-1]
    allowed = int(np.floor(max_fp * len(ham)))  # ham that may score at or above the threshold
    if allowed >= len(ham):
        return 0.0
    return float(np.nextafter(ham[allowed], 2.0))  # just above the first ham that must stay below


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--max-fp", type=float, default=0.0005)
    args = parser.parse_args()
    messages = list(index_messages(args.index, args.corpus))
    needed = []
    for model_sources, test_source, counts in DIRECTIONS:
        score, is_spam = scores(model_sources, test_source, messages)
        ham, spam = score[~is_spam], score[is_spam]
        print(
            f"model on {'+'.join(model_sources)} (train split), scoring {test_source}: {len(ham)} ham, {len(spam)} spam"
        )
        for t in THRESHOLDS:
            print(
                f"  at {t:<7g} ham FP {int((ham >= t).sum()):>4} ({100 * (ham >= t).mean():.3f} %), "
                f"spam caught {100 * (spam >= t).mean():.1f} %"
            )
        low = lowest_threshold(score, is_spam, args.max_fp)
        if counts:
            needed.append(low)
        print(
            f"  lowest threshold with ham FP <= {100 * args.max_fp:g} %: {low:.6f} "
            f"(spam caught {100 * (spam >= low).mean():.1f} %){'' if counts else ' (not used)'}",
            flush=True,
        )
    print(f"cold-start threshold (largest of the directions used): {max(needed):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
