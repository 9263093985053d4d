"""Per-message cost of the clamd call on real mail, against YARA on the same messages in the same run.

Starts a private clamd (the test database: EICAR and a marker; a production database
with millions of signatures makes clamd's own matching slower, the protocol and
parsing cost stay) unless ``--socket`` names a running one. Each message is parsed
once; then the ClamAV detector (every decoded object, and the whole message), the
YARA detector (same-run baseline), the whole inspection with and without ClamAV
(clamd runs in parallel with the other detectors), and a dead clamd are timed.

    .venv/bin/python bench/clamav_cost.py --corpus /tmp/corpus --index /tmp/corpus/index.tsv.gz --limit 600
"""

from __future__ import annotations

import argparse
import csv
import gzip
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from mailward.config import ClamavSettings, ReputationSettings, Settings
from mailward.envelope import Envelope
from mailward.message import parse_message
from mailward.runtime import build_inspector
from mailward.signatures.clamav import ClamavDetector
from mailward.signatures.hashes import HashList
from mailward.signatures.yara_rules import YaraDetector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50, p99 = ordered[len(ordered) // 2] * 1000, ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)] * 1000
    return f"{p50:8.2f} {p99:8.2f} {sum(ordered) * 1000 / len(ordered):8.2f}"


def load(args) -> list[bytes]:
    opener = gzip.open if args.index.suffix == ".gz" else open
    with opener(args.index, "rt") as fh:
        rows = [
            r for r in csv.DictReader(fh, delimiter="\t") if r["split"] == args.split and r["source"] in args.sources
        ]
    return [(args.corpus / r["path"]).read_bytes() for r in rows[: args.limit]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--sources", nargs="*", default=["spamassassin", "nazario-phishing"])
    ap.add_argument("--limit", type=int, default=600)
    ap.add_argument("--socket", default="", help="a running clamd (unix:/PATH or inet:PORT@HOST); default: start one")
    args = ap.parse_args()
    messages = load(args)
    state = tempfile.mkdtemp()
    server = None
    if not args.socket:
        from clamd_server import start_clamd

        server = start_clamd(Path(state) / "clamd", stream_max_length="25M")
    socket = args.socket or server.socket
    try:
        base = replace(Settings(), state_dir=state, reputation=ReputationSettings(enabled=False))
        with_clamav = replace(base, clamav=ClamavSettings(socket=socket))
        plain, full = build_inspector(base), build_inspector(with_clamav)
        yara = next(d for d in plain.detectors if isinstance(d, YaraDetector))
        allow = HashList.load(())
        objects = ClamavDetector(with_clamav.clamav, allow, base.limits.inspect_deadline)
        whole = ClamavDetector(replace(with_clamav.clamav, scan="message"), allow, base.limits.inspect_deadline)
        dead = ClamavDetector(ClamavSettings(socket=f"unix:{state}/no-clamd.sock", retry_after=0.0), allow, 25.0)
        down = ClamavDetector(ClamavSettings(socket=f"unix:{state}/no-clamd.sock", retry_after=5.0), allow, 25.0)
        envelope = Envelope(client_address="127.0.0.1")
        timings: dict[str, list[float]] = {
            k: []
            for k in (
                "yara (baseline)",
                "clamav objects",
                "clamav message",
                "inspect without clamav",
                "inspect with clamav",
                "clamd dead, each call",
                "clamd dead, retry_after",
            )
        }
        objects_scanned = 0
        for raw in messages:
            parsed = parse_message(raw, base.limits, plain.unpacker)
            objects_scanned += sum(1 for o in parsed.objects if o.has_content and o.data)
            for label, detector in (
                ("yara (baseline)", yara),
                ("clamav objects", objects),
                ("clamav message", whole),
                ("clamd dead, each call", dead),
                ("clamd dead, retry_after", down),
            ):
                t0 = time.perf_counter()
                detector.inspect(parsed, envelope)
                timings[label].append(time.perf_counter() - t0)
            for label, inspector in (("inspect without clamav", plain), ("inspect with clamav", full)):
                t0 = time.perf_counter()
                inspector.inspect(raw, envelope)
                timings[label].append(time.perf_counter() - t0)
        print(
            f"{len(messages)} messages ({', '.join(args.sources)}, split {args.split}), "
            f"{objects_scanned} objects with content"
        )
        print(f"{'stage':26} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for label, values in timings.items():
            print(f"{label:26} {quantiles(values)}")
        plain.unpacker.close()
        full.unpacker.close()
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
