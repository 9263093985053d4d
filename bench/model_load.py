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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from mailward.models.artifact import SHIPPED_DIR

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import sklearn.naive_bayes, scipy.sparse
from mailward.models.artifact import SIDECAR, load_artifact
from mailward.models.classifier import SpamModel
from mailward.models.database import ModelDatabase
from mailward.models.loader import DatabaseSource, ModelLoader
from mailward.training.estimator import estimator

def rss(field="VmRSS"):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent that forked us
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith(field + ":")) / 1024

way, directory = sys.argv[1], Path(sys.argv[2])
rss0, peak0 = rss(), rss("VmHWM")
started = time.perf_counter()
if way == "counts":
    model = ModelLoader(directory, shipped=False).current()
elif way == "database":
    model = ModelLoader(directory, shipped=False, source=DatabaseSource(ModelDatabase(sys.argv[3]))).current()
else:
    loaded = load_artifact(directory / SIDECAR, directory)
    nb = estimator(loaded.counts)
    weights = (nb.feature_log_prob_[1] - nb.feature_log_prob_[0]).astype(np.float32)
    weights[nb.feature_count_.sum(axis=0) == 0] = 0.0
    model = SpamModel(loaded.version, loaded.features, loaded.combiner, weights)
    del nb, loaded
seconds = time.perf_counter() - started
print(json.dumps({"ms": seconds * 1000, "peak": rss("VmHWM") - peak0,
                  "resident": rss() - rss0, "version": model.version}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_DIR, help="model directory (default: shipped)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per way; the median is printed")
    parser.add_argument("--database", action="store_true", help="also load it from the PostgreSQL registry")
    args = parser.parse_args()
    with ExitStack() as stack:
        dsn = stack.enter_context(_registry_with(args.model)) if args.database else ""
        _measure(args, dsn)
    return 0


def _measure(args: argparse.Namespace, dsn: str) -> None:
    print(f"{'way':10s} {'load ms':>8s} {'peak +MiB':>10s} {'resident +MiB':>14s}   (median of {args.runs})")
    for way in ("estimator", "counts", *(("database",) if dsn else ())):
        runs = []
        for _ in range(args.runs):
            done = subprocess.run(
                [sys.executable, "-c", CHILD, way, str(args.model), dsn], capture_output=True, text=True, check=True
            )
            runs.append(json.loads(done.stdout))
        mid = {key: sorted(r[key] for r in runs)[len(runs) // 2] for key in ("ms", "peak", "resident")}
        print(f"{way:10s} {mid['ms']:8.0f} {mid['peak']:10.0f} {mid['resident']:14.0f}   model {runs[0]['version']}")


@contextmanager
def _registry_with(model_dir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL whose model registry has the model of ``model_dir`` live; its DSN."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mailward.models.artifact import SIDECAR, load_artifact
    from mailward.models.database import ModelDatabase
    from pg_server import PostgresServer

    server = PostgresServer()
    server.start()
    try:
        database = ModelDatabase(server.dsn)
        database.create_schema()
        model = load_artifact(model_dir / SIDECAR, model_dir)
        database.add(model, version=model.version)
        database.promote(model.version, "promote", "bench", {}, 0.0)
        yield server.dsn
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
