"""Worker CPU per step (MIME parse, tokenize, score), this checkout against a baseline checkout,
and proof that both give every message the same tokens, score and evidence.

The shipped model scores tokens from the tokenizer it was trained with: a speed change
that altered one token would quietly change verdicts. Each checkout runs in its own
process (``PYTHONPATH`` set to its ``src``); they take turns ``--repeats`` times so a slow
minute of the shared machine hits both, and the median per step is reported. Each message is
also inspected whole once (every detector, the shipped rules and model; a loopback client, so
no DNS lookups), and its evidence but the timings must be the same in both checkouts.

    .venv/bin/python bench/model_steps.py --baseline /work/main /tmp/corpus/spamassassin \\
        /tmp/corpus/nazario-phishing /tmp/corpus/enron-spam --limit 3000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def files_of(directories: list[Path], limit: int) -> list[Path]:
    """Up to ``limit`` message files from ``directories``, picked with a fixed seed."""
    files = sorted(
        p
        for d in directories
        for p in d.rglob("*")
        if p.is_file() and p.stat().st_size < 2_000_000 and not p.name.startswith(("cmds", "Summary"))
    )
    return sorted(random.Random(7).sample(files, min(limit, len(files))))


def child(paths: list[Path], passes: int) -> None:
    """Run in one checkout: per-step seconds (best pass) and each message's token, score and evidence
    digest, as JSON."""
    from mailward.config import LimitSettings, load_settings
    from mailward.envelope import Envelope
    from mailward.message import parse_message
    from mailward.models.artifact import load_artifact
    from mailward.models.tokens import tokenize
    from mailward.runtime import build_inspector
    from mailward.unpack import Unpacker

    default = Path(sys.modules["mailward"].__file__ or "").parent / "models" / "default"
    model = load_artifact(default / "spam.json", default).scorer()
    limits = LimitSettings()
    unpacker = Unpacker(limits)
    raws = [p.read_bytes() for p in paths]
    best: dict[str, float] = {}
    for _ in range(passes):
        started = time.process_time()
        parsed = [parse_message(raw, limits, unpacker) for raw in raws]
        parse = time.process_time() - started
        started = time.process_time()
        tokens = [tokenize(message, model.features.tokenizer) for message in parsed]
        tokenizing = time.process_time() - started
        started = time.process_time()
        scores = [model.assess_tokens(t) for t in tokens]
        scoring = time.process_time() - started
        for step, seconds in (("parse", parse), ("tokenize", tokenizing), ("score", scoring)):
            best[step] = min(best.get(step, seconds), seconds)
    unpacker.close()
    inspector = build_inspector(load_settings(overrides={"state_dir": tempfile.mkdtemp()}))
    envelope = Envelope(client_address="127.0.0.1")  # loopback: no DNS lookups
    evidence = [repr(replace(inspector.inspect(raw, envelope), timings=())) for raw in raws]
    digests = [
        hashlib.sha256(("\n".join(t) + f"\n{s.score!r}\n{s.clues!r}\n{e}").encode("utf-8", "surrogatepass")).hexdigest()
        for t, s, e in zip(tokens, scores, evidence)
    ]
    json.dump({"seconds": best, "digests": digests}, sys.stdout)


def run(source: Path, paths_file: Path, passes: int) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(source / "src"))
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(paths_file), "--passes", str(passes)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directories", nargs="*", type=Path)
    ap.add_argument("--baseline", type=Path, help="another Mailward checkout (e.g. /work/main)")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--passes", type=int, default=2, help="passes per child; its best counts (warm caches)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child([Path(p) for p in args.child.read_text().splitlines()], args.passes)
        return 0
    if not args.directories:
        ap.error("give directories of messages")
    paths = files_of(args.directories, args.limit)
    paths_file = Path(f"/tmp/model-steps-{os.getpid()}.txt")
    paths_file.write_text("\n".join(map(str, paths)))
    here = Path(__file__).resolve().parents[1]
    checkouts = {"this": here, **({"baseline": args.baseline} if args.baseline else {})}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    digests: dict[str, list[str]] = {}
    try:
        for _ in range(args.repeats):
            for name, source in checkouts.items():
                result = run(source, paths_file, args.passes)
                figures[name].append(result["seconds"])  # type: ignore[arg-type]  # JSON of child()
                digests[name] = result["digests"]  # type: ignore[assignment]  # JSON of child()
    finally:
        paths_file.unlink()
    print(f"{len(paths)} messages; CPU ms/msg, median of {args.repeats} (each the best of {args.passes} passes)")
    print(f"  {'checkout':10} {'parse':>7} {'tokenize':>9} {'score':>7} {'total':>7}")
    totals = {}
    for name, runs in figures.items():
        steps = {s: statistics.median(r[s] for r in runs) * 1000 / len(paths) for s in ("parse", "tokenize", "score")}
        totals[name] = sum(steps.values())
        print(f"  {name:10} {steps['parse']:7.3f} {steps['tokenize']:9.3f} {steps['score']:7.3f} {totals[name]:7.3f}")
    if "baseline" in digests:
        differ = [str(p) for p, a, b in zip(paths, digests["this"], digests["baseline"]) if a != b]
        print(f"  this / baseline: {totals['this'] / totals['baseline']:.3f}")
        print(f"tokens, scores and evidence identical on {len(paths) - len(differ)} of {len(paths)} messages")
        for path in differ[:10]:
            print(f"  differs: {path}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
