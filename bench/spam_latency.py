"""Spam scoring latency per message, as a milter worker pays it.

    python bench/spam_latency.py --corpus /tmp/corpus --index /tmp/corpus/index.tsv.gz [--model DIR]

Times the spam detector's ``inspect`` (tokenizing the parsed message, hashing its
tokens, looking up their weights, combining the score, picking the clues, and
the loader's check for a newer model) on every message of the test split, one
process, warm. MIME parsing is shared by all detectors and timed separately.
Each message is timed ``--repeat`` times and the fastest run kept: on a shared
machine that is the cost of the work itself, not of waiting for a core (the
single-run figures are printed too). Also reports how long loading the model
takes (a worker start or a promotion).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from mailward.config import LimitSettings
from mailward.envelope import Envelope
from mailward.message import parse_message
from mailward.models.artifact import SHIPPED_DIR
from mailward.models.loader import ModelLoader
from mailward.models.spam import SpamDetector
from mailward.training.corpus import index_messages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, type=Path)
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--model", type=Path, default=SHIPPED_DIR, help="model directory (default: shipped)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per message; the fastest counts")
    args = parser.parse_args()

    rss_before, peak_before = _rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    loader = ModelLoader(args.model, shipped=False)
    load_seconds = time.perf_counter() - started
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    detector = SpamDetector(loader)
    print(
        f"model {loader.current().version}: loaded in {load_seconds * 1000:.0f} ms; resident memory "
        f"+{_rss_mib() - rss_before:.0f} MiB once loaded "
        f"(+{(peak_after - peak_before) / 1024:.0f} MiB peak while loading)"
    )

    limits, envelope = LimitSettings(), Envelope()
    rows: dict[str, list[tuple[float, float, int]]] = {}
    messages = [m for m in index_messages(args.index, args.corpus, "test")]
    for m in messages[:50]:  # warm caches and lazy imports
        detector.inspect(parse_message(m.read(), limits), envelope)
    for m in messages:
        raw = m.read()
        scoring, parsing = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            parsed = parse_message(raw, limits)
            t1 = time.perf_counter()
            detector.inspect(parsed, envelope)
            t2 = time.perf_counter()
            scoring.append(t2 - t1)
            parsing.append(t1 - t0)
        rows.setdefault(m.source, []).append((min(scoring), min(parsing), len(raw), scoring[0]))
    rows["pooled"] = [r for source in list(rows) for r in rows[source]]
    rows["raw MIME (spamassassin + nazario)"] = rows.get("spamassassin", []) + rows.get("nazario-phishing", [])

    print(
        f"\n{'messages':36s} {'n':>6s} {'size p50':>9s} {'size p99':>9s} | {'spam score ms: p50':>18s} "
        f"{'p90':>6s} {'p99':>6s} {'max':>7s} | {'single run p50':>14s} {'p99':>6s} | "
        f"{'parse ms: p50':>13s} {'p99':>6s}"
    )
    for name, values in rows.items():
        score = np.array([v[0] for v in values]) * 1000
        parse = np.array([v[1] for v in values]) * 1000
        size = np.array([v[2] for v in values])
        single = np.array([v[3] for v in values]) * 1000
        print(
            f"{name:36s} {len(values):6d} "
            f"{np.percentile(size, 50) / 1024:8.1f}K {np.percentile(size, 99) / 1024:8.1f}K | "
            f"{np.percentile(score, 50):18.2f} {np.percentile(score, 90):6.2f} {np.percentile(score, 99):6.2f} "
            f"{score.max():7.1f} | {np.percentile(single, 50):14.2f} {np.percentile(single, 99):6.2f} | "
            f"{np.percentile(parse, 50):13.2f} {np.percentile(parse, 99):6.2f}"
        )
    return 0


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


if __name__ == "__main__":
    sys.exit(main())
