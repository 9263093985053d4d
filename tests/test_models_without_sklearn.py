"""Scoring needs no scikit-learn: a worker neither imports it nor scores differently without it.

Importing scikit-learn (and scipy under it) cost each forkserver seconds of CPU and each
worker tens of MiB; scoring used it only for the token hash. The model's own hash
(``mmh3`` over UTF-8 bytes) and numpy weights must give what scikit-learn gave: the same
columns, score and clues on thousands of real messages (the corpus when it is unpacked,
else generated mail), compared here against scikit-learn itself.
"""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mailward.config import LimitSettings
from mailward.evidence import Clue
from mailward.message import parse_message
from mailward.models.artifact import SHIPPED_DIR, SIDECAR, load_artifact
from mailward.models.classifier import MAX_CLUES, SpamModel, strongest_first
from mailward.models.tokens import tokenize
from mailward.training.estimator import estimator, vectorizer

MAIL = Path(__file__).parent / "fixtures" / "mail"
CORPUS = Path(os.environ.get("MAILWARD_CORPUS", "/tmp/corpus"))
MESSAGES = 5000

WORKER = textwrap.dedent("""
    # What a scanning worker imports and does before and while it scans (workers.py: PRELOAD,
    # build_inspector, the warm-up scan), in a fresh interpreter.
    import importlib, sys
    from mailward.config import load_settings
    from mailward.envelope import Envelope
    from mailward.runtime import build_inspector
    from mailward.workers import ScanPool, _warm_up_message

    for name in ScanPool.PRELOAD:
        importlib.import_module(name)
    inspector = build_inspector(load_settings(sys.argv[1]), start_sandbox=True)
    inspector.inspect(_warm_up_message(), Envelope())
    evidence = inspector.inspect(open(sys.argv[2], "rb").read(), Envelope())
    assert evidence.spam is not None and evidence.spam.score > 0.5, evidence.spam
    inspector.unpacker.close()
    print(sorted({m.split(".")[0] for m in sys.modules} & {"sklearn", "scipy"}))
""")


def test_a_worker_scores_without_importing_scikit_learn_or_scipy(tmp_path):
    config = tmp_path / "mailward.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[reputation]\nenabled = false\n')
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(config), str(MAIL / "spammy.eml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def sample() -> list[bytes]:
    """``MESSAGES`` messages: an even pick from the unpacked corpus, else generated mail."""
    index = CORPUS / "index.tsv.gz"
    if index.is_file():
        with gzip.open(index, "rt", encoding="utf-8") as fh:
            paths = [line.split("\t")[1] for line in list(fh)[1:]]
        chosen = random.Random(17).sample(paths, min(MESSAGES, len(paths)))
        raws = [(CORPUS / p).read_bytes() for p in chosen]
        if len(raws) >= MESSAGES:
            return raws
    return generated(MESSAGES)


def generated(n: int) -> list[bytes]:
    """Mail of words drawn from the fixtures' own text and a mixed-script alphabet, with links."""
    rng = random.Random(5)
    words = sorted({w for p in MAIL.glob("*.eml") for w in p.read_text(errors="replace").split()})
    alphabet = "abcdefghijklmnopqrstuvwxyzéßЖ中文😀$!"
    out = []
    for i in range(n):
        body = [rng.choice(words) for _ in range(rng.randint(5, 200))]
        body += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(0, 30))]
        body.append(f"https://host{rng.randint(0, 500)}.example.com/p{i}")
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        raw = f"From: s{i}@example.org\r\nTo: u@example.test\r\nSubject: {subject}\r\n"
        raw += "Content-Type: text/plain; charset=utf-8\r\n\r\n" + " ".join(body) + "\r\n"
        out.append(raw.encode("utf-8"))
    return out


def sklearn_assessment(model: SpamModel, weights: np.ndarray, made, tokens: list[str]) -> tuple[float, tuple]:
    """Today's score and clues the way scoring computed them with scikit-learn: its vectorizer's
    columns and the estimator's own log-probabilities."""
    unique = list(dict.fromkeys(tokens))
    columns = made.transform([[t] for t in unique]).indices if unique else np.zeros(0, dtype=np.int64)
    columns, first = np.unique(columns, return_index=True)
    found = weights[columns]
    score = model.combiner.probability(model.combiner.evidence(found))
    clues = tuple(
        Clue(unique[first[i]], round(float(found[i]), 3)) for i in strongest_first(found, MAX_CLUES) if found[i] != 0
    )
    return score, clues


def test_scores_and_clues_equal_scikit_learn_s_on_thousands_of_messages():
    trained = load_artifact(SHIPPED_DIR / SIDECAR, SHIPPED_DIR)
    model = trained.scorer()
    nb = estimator(trained.counts)  # scikit-learn's MultinomialNB over the same counts
    spam, ham = list(nb.classes_).index("spam"), list(nb.classes_).index("ham")
    sklearn_log_ratio = nb.feature_log_prob_[spam] - nb.feature_log_prob_[ham]
    seen = nb.feature_count_.sum(axis=0) > 0
    # The scorer's weights are the estimator's log-likelihood ratios (to float32 rounding), 0 where unseen.
    np.testing.assert_allclose(model.weights[seen], sklearn_log_ratio[seen], rtol=1e-6, atol=1e-6)
    assert not model.weights[~seen].any()
    made = vectorizer(trained.features)
    limits = LimitSettings()
    compared = spammy = 0
    for raw in sample():
        tokens = tokenize(parse_message(raw, limits), trained.features.tokenizer)
        ours = model.assess_tokens(tokens)
        score, clues = sklearn_assessment(model, model.weights, made, tokens)
        assert ours.score == pytest.approx(score, rel=0, abs=1e-9)
        assert ours.clues == clues
        assert (ours.score >= 0.5) == (score >= 0.5)
        compared += 1
        spammy += ours.score >= 0.5
    assert compared >= MESSAGES and 0 < spammy < compared
