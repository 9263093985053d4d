"""`mailward scan`: the milter's pipeline and policy on .eml files, offline.

Nothing is quarantined or delivered: it reports what the milter would do.
Exit status 0 whatever the verdicts; 1 when any file could not be read or
scanned (each reported on stderr, and the other files still scanned).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Settings
from ..envelope import Direction, Envelope
from ..runtime import Runtime, build_runtime
from ..source import MessageSource
from ..textsafe import json_line, neutralise
from ..verdict import Outcome


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("scan", help="scan .eml files or directories as the milter would")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--direction",
        choices=[d.value for d in Direction],
        help="default: decided from --client-ip and the configured internal networks",
    )
    p.add_argument("--client-ip", default="", help="the connecting client's address to assume")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(handler=run)


def _files(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def report(path: Path, outcome: Outcome) -> dict[str, Any]:
    evidence, verdict = outcome.evidence, outcome.verdict
    return {
        "path": str(path),
        "action": verdict.action.value,
        "reasons": list(verdict.reasons),
        "spam_score": evidence.spam_score,
        "clues": [c.as_dict() for c in (evidence.spam.clues if evidence.spam else ())],
        "findings": [f.as_dict() for f in evidence.findings],
        "direction": outcome.envelope.direction.value,
        "incident_id": verdict.incident_id,
        "timings_ms": {stage: round(sec * 1000, 3) for stage, sec in evidence.timings},
    }


def run(args: argparse.Namespace, settings: Settings) -> int:
    runtime = build_runtime(settings, keep=False)
    try:
        return _scan_files(args, runtime)
    finally:
        runtime.close()


def _scan_files(args: argparse.Namespace, runtime: Runtime) -> int:
    screener, rules = runtime.screener, runtime.direction
    failed = 0
    for path in _files(args.paths):
        try:
            raw = path.read_bytes()
        except OSError as exc:
            print(f"mailward scan: {neutralise(str(path))}: {exc.strerror}", file=sys.stderr)
            failed += 1
            continue
        envelope = Envelope(client_address=args.client_ip)
        direction = Direction(args.direction) if args.direction else rules.classify(envelope)
        try:
            outcome = screener.screen(MessageSource.of(raw), envelope.with_direction(direction))
        except Exception as exc:  # one file the pipeline cannot handle must not hide the rest
            print(
                f"mailward scan: {neutralise(str(path))}: scan failed: {neutralise(f'{type(exc).__name__}: {exc}')}",
                file=sys.stderr,
            )
            failed += 1
            continue
        doc = report(path, outcome)
        if args.json:
            print(json_line(doc))
        else:
            score = "-" if doc["spam_score"] is None else f"{doc['spam_score']:.3f}"
            where = "; ".join(f"{f['category']}:{f['name']}@{f['location']}" for f in doc["findings"])
            print(neutralise(f"{path}: {doc['action']} spam={score} {where}".rstrip()))
    return 1 if failed else 0
