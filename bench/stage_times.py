"""Where the time goes per message: each detector's share on real mail, in one process.

Reads messages from a corpus index (``source  path  label  split  sha256`` rows, as in
the developer corpus's index.tsv.gz) or from .eml paths, inspects each with the
shipped rules and model, and prints p50/p99/mean per stage and its share of the total.

    .venv/bin/python bench/stage_times.py --corpus ~/corpus --index ~/corpus/index.tsv.gz \
        --sources spamassassin nazario-phishing --limit 800
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mailward.config import load_settings
from mailward.envelope import Envelope
from mailward.runtime import build_inspector


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return (
        ordered[len(ordered) // 2] * 1000,
        ordered[int(len(ordered) * 0.99)] * 1000,
        sum(ordered) * 1000 / len(ordered),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="directory the index's paths are relative to")
    ap.add_argument("--index", type=Path, help="index.tsv(.gz) with source, path, split columns")
    ap.add_argument("--split", default="test")
    ap.add_argument(
        "--sources",
        nargs="*",
        default=["spamassassin", "nazario-phishing"],
        help="raw-MIME sources (Enron's preprocessed text is not mail)",
    )
    ap.add_argument("--limit", type=int, default=800)
    ap.add_argument("paths", nargs="*", type=Path, help=".eml files instead of an index")
    args = ap.parse_args()
    if args.index:
        opener = gzip.open if args.index.suffix == ".gz" else open
        with opener(args.index, "rt") as fh:
            rows = [
                r
                for r in csv.DictReader(fh, delimiter="\t")
                if r["split"] == args.split and r["source"] in args.sources
            ]
        files = [args.corpus / r["path"] for r in rows][: args.limit]
    else:
        files = args.paths[: args.limit]
    if not files:
        ap.error("no messages: give --corpus and --index, or .eml paths")
    inspector = build_inspector(load_settings(overrides={"state_dir": tempfile.mkdtemp()}))
    envelope = Envelope(client_address="127.0.0.1")  # loopback: no DNS lookups in the figures
    stages: dict[str, list[float]] = defaultdict(list)
    totals = []
    for path in files:
        raw = path.read_bytes()
        started = time.perf_counter()
        evidence = inspector.inspect(raw, envelope)
        totals.append(time.perf_counter() - started)
        for stage, seconds in evidence.timings:
            stages[stage].append(seconds)
    grand = sum(totals)
    print(f"{len(files)} messages")
    print(f"{'stage':12} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'share':>6}")
    for stage, values in sorted(stages.items(), key=lambda kv: -sum(kv[1])):
        p50, p99, mean = quantiles(values)
        print(f"{stage:12} {p50:8.2f} {p99:8.2f} {mean:8.2f} {sum(values) / grand:6.1%}")
    p50, p99, mean = quantiles(totals)
    print(f"{'total':12} {p50:8.2f} {p99:8.2f} {mean:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
