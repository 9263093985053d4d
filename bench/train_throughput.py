"""Training throughput and peak memory of `mailward train`, and the online replay against bogofilter.

    python bench/train_throughput.py CORPUS_DIR [--index INDEX] [--jobs 1] [--scale 100000] [--replay]

CORPUS_DIR is where the developer corpus archives were unpacked. Each run is the
real command in a fresh process with a fresh state directory, so its peak RSS
is the command's own:

* ``mailward train`` on the first 5,000 messages of the ``train`` split, then on
  all of it: messages/s (reading, recording in the ledger, tokenizing, learning,
  calibrating, saving) and peak RSS: the peak hardly moves from 5k messages to the whole
  split (fixed-width hashed counts; at most 5,000 calibration rows are held).
* ``mailward train --update`` with the ``test`` split on top: the incremental path.
* with ``--scale N``: ``mailward train`` on N distinct messages (copies of the train split,
  each with its own ``X-Bench-Copy`` header) in two mboxes, to show memory stays flat at 100k+.
* with ``--replay``: ``mailward model replay --bogofilter`` on the ``test`` split in
  content-hash order (a reproducible shuffle; the index is sorted by folder, which would feed
  all ham of a source, then all its spam). Both filters start empty and learn the same stream;
  Mailward uses the tokenizer, smoothing and score calibration of the model trained on the
  ``train`` split (so its FP/FN rates depend on that calibration; (1-AUC)% does not).
Figures only, not a test.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_list(rows: list[dict], corpus: Path, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(f"{row['label']}\t{corpus / row['path']}\n")
    return path


def mailward(state: Path, *argv: str) -> tuple[dict, float, int]:
    """Run one command in a child process: its JSON output, wall seconds and its own peak RSS in MiB."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "mailward.cli.main", "--state-dir", str(state), *argv, "--json"],
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            sys.exit(f"mailward {' '.join(argv)} failed:\n{err.read().decode(errors='replace')[-2000:]}")
        return json.loads(out.read()), seconds, usage.ru_maxrss // 1024


def write_scaled_mboxes(rows: list[dict], corpus: Path, n: int, work: Path) -> list[Path]:
    """N distinct messages cycling through ``rows``, into ham.mbox and spam.mbox by their label."""
    paths = {label: work / f"scaled-{label}.mbox" for label in ("ham", "spam")}
    files = {label: open(path, "wb") for label, path in paths.items()}
    try:
        for k in range(n):
            row = rows[k % len(rows)]
            data = (corpus / row["path"]).read_bytes()
            data = data.split(b"\n", 1)[1] if data.startswith(b"From ") else data
            files["ham" if row["label"] == "ham" else "spam"].write(
                b"From bench@example.org Mon Sep  1 10:00:00 2025\n"
                + f"X-Bench-Copy: {k}\n".encode()
                + data.replace(b"\nFrom ", b"\n>From ").rstrip(b"\n")
                + b"\n\n"
            )
    finally:
        for fh in files.values():
            fh.close()
    return list(paths.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--index", type=Path)
    parser.add_argument("--jobs", default="1")
    parser.add_argument("--replay", action="store_true")
    parser.add_argument(
        "--scale",
        type=int,
        default=0,
        metavar="N",
        help="also train on N distinct messages (train split copies, each with its own "
        "X-Bench-Copy header) in two mboxes, to show memory stays flat",
    )
    args = parser.parse_args()
    index = args.index or args.corpus / "index.tsv.gz"
    rows = list(csv.DictReader(gzip.open(index, "rt", encoding="utf-8"), delimiter="\t"))
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["sha256"])

    with tempfile.TemporaryDirectory(prefix="mailward-train-bench-") as tmp:
        work = Path(tmp)
        print(
            f"corpus {args.corpus}: {len(train_rows)} train, {len(test_rows)} test messages; "
            f"jobs {args.jobs}; {os.cpu_count()} CPUs"
        )
        for name, part in (("train[:5000]", train_rows[:5000]), ("train", train_rows)):
            listing = write_list(part, args.corpus, work / f"{len(part)}.tsv")
            report, seconds, peak = mailward(work / f"state-{len(part)}", "train", str(listing), "--jobs", args.jobs)
            print(
                f"mailward train {name:>13}: {len(part):>6} msgs in {seconds:7.1f} s = "
                f"{len(part) / seconds:6.1f} msg/s, peak RSS {peak} MiB, model {report['candidate']} "
                f"{report['class_counts']}"
            )
        state, trained = work / f"state-{len(train_rows)}", report["candidate"]  # what --update continues
        if args.scale:
            mboxes = write_scaled_mboxes(train_rows, args.corpus, args.scale, work)
            report, seconds, peak = mailward(work / "state-scaled", "train", *map(str, mboxes), "--jobs", args.jobs)
            print(
                f"mailward train {'scaled mboxes':>13}: {args.scale:>6} msgs in {seconds:7.1f} s = "
                f"{args.scale / seconds:6.1f} msg/s, peak RSS {peak} MiB, model {report['class_counts']}"
            )
        listing = write_list(test_rows, args.corpus, work / "test.tsv")
        report, seconds, peak = mailward(
            state, "train", "--update", "--from", trained, str(listing), "--jobs", args.jobs
        )
        print(
            f"mailward train --update test: {len(test_rows):>6} msgs in {seconds:7.1f} s = "
            f"{len(test_rows) / seconds:6.1f} msg/s, peak RSS {peak} MiB, learned {report['learned']}"
        )
        if args.replay:
            # Mailward replays with the tokenizer, smoothing and score calibration of the live model.
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mailward.cli.main",
                    "--state-dir",
                    str(state),
                    "model",
                    "promote",
                    trained,
                    "--force",
                ],
                check=True,
                capture_output=True,
            )
            report, seconds, _ = mailward(state, "model", "replay", str(listing), "--bogofilter", "--jobs", args.jobs)
            for doc in (report, report["bogofilter"]):
                print(
                    f"replay {doc['filter']:>10}: n {doc['n']}, cumulative (1-AUC) "
                    f"{doc['one_minus_auc_percent']:.4f}%, FP rate {100 * doc['fp_rate']:.3f}%, "
                    f"FN rate {100 * doc['fn_rate']:.3f}% at spam {doc['thresholds']['spam']}"
                )
                print(
                    "   curve: "
                    + ", ".join(
                        f"{p['n']}:{p['one_minus_auc_percent']:.3f}%"
                        for p in doc["curve"]
                        if p["one_minus_auc_percent"] is not None
                    )
                )
            print(f"replay of both filters took {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
