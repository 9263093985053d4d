"""``mailward rules check DIR [--benign DIR]``: gate a rule set before it enters the SMTP path.

Public rule sets compile almost entirely; their problems are speed and false
positives. This compiles every file alone (errors, warnings, rule count) and,
given a directory of benign mail, scans it with each file alone and with the
whole bundle, as the milter would (same object tree, same externals): scan
speed per file against an empty-rule baseline measured in the same run, and
every hit on the benign sample. A file's own cost is its *marginal* speed:
sample bytes divided by the time it adds to the baseline (the per-object call
overhead is the same for every file). Exit status 0 only when every file
compiles, nothing hits the benign sample and every file's marginal speed is at
least ``--min-speed`` MB/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yara

from ..config import LimitSettings
from ..errors import ArtifactError
from ..message import ContentObject, parse_message
from ..textsafe import neutralise
from ..unpack import Unpacker
from .ruleset import EXTERNALS, RuleFile, Source, compile_file, discover
from .yara_rules import externals_for

MIN_MEASURE = 0.2  # seconds: small samples are scanned repeatedly until timings mean something
MAX_PASSES = 20
MAX_MEASURE = 2.0  # seconds per rule file: a slow file is measured on fewer passes
MESSAGE_SUFFIXES = (".eml", ".msg", ".mbox", "")


@dataclass
class FileReport:
    file: RuleFile
    mb_per_s: float | None = None  # scanning the sample with this file alone
    marginal_mb_per_s: float | None = None  # sample bytes / time this file adds to the baseline
    hits: list[dict[str, Any]] = field(default_factory=list)
    slow: bool = False

    @property
    def ok(self) -> bool:
        return self.file.ok and not self.hits and not self.slow


@dataclass(frozen=True)
class Sample:
    source: str
    obj: ContentObject


def rules_check_main(argv: list[str]) -> int:
    """Entry point for ``mailward rules check``; ``argv`` is what follows ``check``."""
    parser = argparse.ArgumentParser(prog="mailward rules check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "directory", type=Path, help="directory of YARA rule files (*.yar, *.yara), searched recursively"
    )
    parser.add_argument(
        "--benign", type=Path, help="directory of benign mail (.eml) or files to measure speed and hits on"
    )
    parser.add_argument(
        "--min-speed",
        type=float,
        default=50.0,
        metavar="MB/S",
        help="slowest acceptable marginal scan speed of one file on the benign sample (default 50)",
    )
    parser.add_argument("--timeout", type=int, default=10, help="YARA timeout per object in seconds (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = parser.parse_args(argv)
    try:
        sources = discover([(args.directory.name or "rules", args.directory)])
    except ArtifactError as exc:
        print(f"mailward rules check: {exc}", file=sys.stderr)
        return 2
    if not sources:
        print(f"mailward rules check: no *.yar or *.yara files under {args.directory}", file=sys.stderr)
        return 2
    compiled = [compile_file(s) for s in sources]
    reports = [FileReport(f) for f, _ in compiled]
    summary: dict[str, Any] = {
        "files": len(reports),
        "rules": sum(r.file.rules for r in reports),
        "broken": sum(not r.file.ok for r in reports),
    }
    if args.benign is not None:
        samples = load_samples(args.benign)
        summary.update(measure(sources, compiled, reports, samples, args.timeout, args.min_speed))
    ok = all(r.ok for r in reports) and summary.get("bundle_error") is None
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "summary": summary,
                    "files": [
                        dict(
                            asdict(r.file),
                            mb_per_s=r.mb_per_s,
                            marginal_mb_per_s=r.marginal_mb_per_s,
                            hits=r.hits,
                            slow=r.slow,
                        )
                        for r in reports
                    ],
                },
                indent=2,
            )
        )
    else:
        print_table(reports, summary, args.min_speed)
    return 0 if ok else 1


def load_samples(directory: Path) -> list[Sample]:
    """Mail is parsed and expanded as the milter would; any other file is one object."""
    samples: list[Sample] = []
    limits = LimitSettings()
    with Unpacker(limits) as unpacker:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if path.suffix.lower() in MESSAGE_SUFFIXES and _looks_like_mail(data):
                message = parse_message(data, limits, unpacker)
                samples.extend(Sample(str(path), o) for o in message.objects if o.has_content and o.data)
            else:
                sniffed = unpacker.sniff(data)
                samples.append(
                    Sample(
                        str(path),
                        ContentObject(
                            path.name, data, names=(path.name,), depth=1, sniffed_type=sniffed.mime, kind=sniffed.kind
                        ),
                    )
                )
    return samples


def _looks_like_mail(data: bytes) -> bool:
    head = data[:4096]
    return b"\n\n" in head.replace(b"\r\n", b"\n") and (
        b"From:" in head or b"Received:" in head or b"Subject:" in head or b"MIME-Version:" in head
    )


def measure(
    sources: list[Source],
    compiled: list[tuple[RuleFile, Any]],
    reports: list[FileReport],
    samples: list[Sample],
    timeout: int,
    min_speed: float,
) -> dict[str, Any]:
    total = sum(len(s.obj.data) for s in samples)
    baseline_rules = yara.compile(source="rule mailward_baseline { condition: false }", externals=EXTERNALS)
    baseline, passes = _timed(baseline_rules, samples, timeout, None)
    out: dict[str, Any] = {
        "sample_objects": len(samples),
        "sample_bytes": total,
        "passes": passes,
        "baseline_mb_per_s": _speed(total, baseline),
        "bundle_error": None,
    }
    for report, (_, rules) in zip(reports, compiled):
        if rules is None:
            continue
        seconds, _ = _timed(rules, samples, timeout, passes, report.hits)
        report.mb_per_s = _speed(total, seconds)
        added = seconds - baseline
        report.marginal_mb_per_s = _speed(total, added)
        # Below the noise floor (1 ms or a tenth of the baseline per pass) a file costs nothing measurable.
        report.slow = (
            report.marginal_mb_per_s is not None
            and report.marginal_mb_per_s < min_speed
            and added > max(0.001, 0.1 * baseline)
        )
    good = {f.namespace: f.path for f, _ in compiled if f.ok}
    if good:
        try:
            bundle = yara.compile(filepaths=good, externals=EXTERNALS, includes=False)
        except (yara.SyntaxError, yara.Error) as exc:
            out["bundle_error"] = str(exc)
        else:
            seconds, _ = _timed(bundle, samples, timeout, passes)
            out["bundle_mb_per_s"] = _speed(total, seconds)
            out["bundle_vs_baseline"] = round(seconds / baseline, 2) if baseline else None
    return out


def _timed(
    rules: yara.Rules, samples: list[Sample], timeout: int, passes: int | None, hits: list[dict[str, Any]] | None = None
) -> tuple[float, int]:
    """Seconds per pass over all samples; the first pass records hits."""
    runs = 0
    started = time.perf_counter()
    while True:
        for sample in samples:
            try:
                matches = rules.match(
                    data=sample.obj.data, externals=externals_for(sample.obj, "inbound"), timeout=timeout
                )
            except yara.TimeoutError:
                matches = []
                if hits is not None and runs == 0:
                    hits.append({"rule": "(timeout)", "sample": sample.source, "object": sample.obj.path})
            if hits is not None and runs == 0:
                hits.extend({"rule": f"{m.rule}", "sample": sample.source, "object": sample.obj.path} for m in matches)
        runs += 1
        elapsed = time.perf_counter() - started
        enough = (
            runs >= passes or elapsed >= MAX_MEASURE
            if passes is not None
            else elapsed >= MIN_MEASURE or runs >= MAX_PASSES
        )
        if enough:
            return elapsed / runs, runs


def _speed(total: int, seconds: float) -> float | None:
    """MB/s; None when there is nothing to measure, infinity when the time is lost in the noise."""
    if not total:
        return None
    return round(total / seconds / 1e6, 1) if seconds > 0 else float("inf")


def print_table(reports: list[FileReport], summary: dict[str, Any], min_speed: float) -> None:
    measured = "baseline_mb_per_s" in summary
    print(f"{'status':7} {'rules':>5} {'warn':>4} {'MB/s':>8} {'margin':>8} {'hits':>4}  file")
    for r in reports:
        status = "ERROR" if not r.file.ok else "FP" if r.hits else "SLOW" if r.slow else "ok"
        speed = " ".join(f"{v:8.1f}" if v is not None else f"{'-':>8}" for v in (r.mb_per_s, r.marginal_mb_per_s))
        print(f"{status:7} {r.file.rules:5d} {len(r.file.warnings):4d} {speed} {len(r.hits):4d}  {r.file.path}")
        for line in r.file.errors:
            print(f"        error: {line}")
        for line in r.file.warnings[:5]:
            print(f"        warning: {line}")
        for hit in r.hits[:5]:
            print(neutralise(f"        hit: {hit['rule']} on {hit['sample']} ({hit['object']})"))
    print(f"\n{summary['files']} files, {summary['rules']} rules, {summary['broken']} broken")
    if measured:
        print(
            f"benign sample: {summary['sample_objects']} objects, {summary['sample_bytes'] / 1e6:.1f} MB, "
            f"{summary['passes']} pass(es); empty-rule baseline {summary['baseline_mb_per_s']} MB/s"
        )
        if summary.get("bundle_error"):
            print(f"bundle does not compile: {summary['bundle_error']}")
        elif "bundle_mb_per_s" in summary:
            print(
                f"whole bundle: {summary['bundle_mb_per_s']} MB/s "
                f"({summary['bundle_vs_baseline']}x the baseline's time); "
                f"gate: each file's margin >= {min_speed:g} MB/s, "
                "no hits"
            )
