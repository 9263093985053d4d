"""Rebuild the spam model shipped with Mailward from the developer corpus.

    python -m mailward.training.build_default --corpus /tmp/corpus \\
        --index /tmp/corpus/index.tsv.gz --out src/mailward/models/default

``--corpus`` is where the corpus archives were unpacked (the index's paths are
relative to it). Only the ``train`` split is learned. The same corpus gives the
same payload, byte for byte: training order is the index's, calibration
messages are chosen by content hash, and the sidecar holds no timestamps.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from ..models.artifact import PACKAGE_FILE_MODE, SIDECAR, read_sidecar, save_artifact
from ..models.features import FeatureSettings
from .corpus import LABELS, file_sha256, index_messages
from .trainer import TrainingSettings, tokenized, train

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailward.training.build_default", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--corpus", required=True, type=Path, help="directory the corpus archives were unpacked into")
    parser.add_argument("--index", required=True, type=Path, help="index.tsv.gz of the corpus")
    parser.add_argument("--out", required=True, type=Path, help="directory to write spam.json and its payload into")
    parser.add_argument("--split", default="train", help="split of the index to learn (default: train)")
    parser.add_argument("--n-features", type=int, default=FeatureSettings().n_features)
    parser.add_argument("--alpha", type=float, default=TrainingSettings().alpha)
    parser.add_argument("--evidence-per-side", type=int, default=TrainingSettings().evidence_per_side)
    parser.add_argument(
        "--spam-prior",
        type=float,
        default=TrainingSettings().spam_prior,
        help="share of spam the score is calibrated for (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    settings = TrainingSettings(
        features=FeatureSettings(n_features=args.n_features),
        alpha=args.alpha,
        evidence_per_side=args.evidence_per_side,
        spam_prior=args.spam_prior,
    )
    messages = list(index_messages(args.index, args.corpus, args.split))
    composition = Counter((m.source, m.label) for m in messages)
    summary = {
        "corpus_index": args.index.name,
        "corpus_index_sha256": file_sha256(args.index),
        "split": args.split,
        "messages": len(messages),
        "by_source": {
            source: {label: n for (s, label), n in sorted(composition.items()) if s == source}
            for source in sorted({s for s, _ in composition})
        },
        "label_map": LABELS,
        "command": "python -m mailward.training.build_default --corpus DIR --index INDEX --out DIR"
        + ("" if args.split == "train" else f" --split {args.split}"),
    }
    model = save_artifact(
        train(tokenized(messages, settings.features), settings, summary), args.out, mode=PACKAGE_FILE_MODE
    )
    _remove_stale_payloads(args.out)
    print(
        f"{args.out / SIDECAR}: model {model.version}, classes {model.class_counts}, "
        f"calibration {model.combiner.as_dict()}"
    )
    return 0


def _remove_stale_payloads(directory: Path) -> None:
    """The shipped directory holds one model; older payloads (of any format) would only bloat the package."""
    current = read_sidecar(directory / SIDECAR)["artifact"]
    for payload in directory.glob(f"{Path(SIDECAR).stem}-*"):
        if payload.name != current:
            payload.unlink()


if __name__ == "__main__":
    sys.exit(main())
