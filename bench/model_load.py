"""Memory and time of loading the spam model, as every worker pays it at start, respawn and reload.

    python bench/model_load.py [--model DIR] [--runs 3]

Each load runs in a fresh process; the figures are that process's peak and
resident memory above what it held once the libraries were imported. Two
ways, same run: ``counts`` is what the loader does (weights computed from
the payload's sparse counts), ``estimator`` the way loading worked before
(rebuild scikit-learn's MultinomialNB, whose dense classes x 4 Mi float64
arrays give the weights): the baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mailward.models.artifact import SHIPPED_DIR

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
import sklearn.naive_bayes, scipy.sparse
from mailward.models.artifact import SIDECAR, load_artifact
from mailward.models.classifier import SpamModel
from mailward.models.loader import ModelLoader

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS")) / 1024

way, directory = sys.argv[1], Path(sys.argv[2])
rss0, peak0 = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
if way == "counts":
    model = ModelLoader(directory, shipped=False).current()
else:
    loaded = load_artifact(directory / SIDECAR, directory)
    nb = loaded.counts.estimator()
    weights = (nb.feature_log_prob_[1] - nb.feature_log_prob_[0]).astype(np.float32)
    weights[nb.feature_count_.sum(axis=0) == 0] = 0.0
    model = SpamModel(loaded.version, loaded.features, loaded.combiner, weights, loaded.features.vectorizer())
    del nb, loaded
seconds = time.perf_counter() - started
print(json.dumps({"ms": seconds * 1000, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak0,
                  "resident": rss() - rss0, "version": model.version}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_DIR, help="model directory (default: shipped)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per way; the median is printed")
    args = parser.parse_args()
    print(f"{'way':10s} {'load ms':>8s} {'peak +MiB':>10s} {'resident +MiB':>14s}   (median of {args.runs})")
    for way in ("estimator", "counts"):
        runs = []
        for _ in range(args.runs):
            done = subprocess.run([sys.executable, "-c", CHILD, way, str(args.model)], capture_output=True,
                                  text=True, check=True)
            runs.append(json.loads(done.stdout))
        mid = {key: sorted(r[key] for r in runs)[len(runs) // 2] for key in ("ms", "peak", "resident")}
        print(f"{way:10s} {mid['ms']:8.0f} {mid['peak']:10.0f} {mid['resident']:14.0f}   model {runs[0]['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
