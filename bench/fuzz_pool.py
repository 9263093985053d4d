"""Fuzz the real scanning pool with mutants of real mail: every mutant must end in a verdict.

Mutants come from ``tests/mutants.py`` (byte flips, header and boundary mangling,
charset and encoding swaps, truncation, nesting, archives). Each is scanned by
``mailward.workers.ScanPool`` with every detector (reputation against a loopback
DNS server from ``tests/dns_server.py`` that answers NXDOMAIN) and the milter's
message deadline, from as many threads as workers; the policy turns its evidence
into a verdict.
The same-run baseline is the unmutated seed messages through the same pool.
Prints mutants tried, verdict counts, failed scans (ScanFailed, i.e. the
message would get ``on_error``), deadline overruns, detector errors, max/p99
time and the peak RSS of the pool's processes. Failing mutants are written to
``--save`` for replay.

    mkdir -p /tmp/corpus && tar -xJf ../shared/corpus/spamassassin.tar.xz -C /tmp/corpus
    .venv/bin/python bench/fuzz_pool.py 20000 /tmp/corpus/spamassassin --save /tmp/fuzz-failures
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from dns_server import EMPTY_ROOT, DnsServer, knows_no_names  # noqa: E402
from mailward.config import load_settings  # noqa: E402
from mailward.errors import ScanFailed  # noqa: E402
from mailward.policy import decide  # noqa: E402
from mailward.source import MessageSource  # noqa: E402
from mailward.workers import ScanPool  # noqa: E402
from mutants import SENDER, mutants, seeds_from  # noqa: E402

# Findings that say a check did not run as meant (errors of category "error" are counted too).
NOTABLE = frozenset(
    {"scan-deadline", "detector-error", "parse-error", "parser-crash", "inspect-deadline", "dns-unavailable"}
)


def rss_kib(pids: list[int]) -> int:
    """Current resident memory of the given processes, in KiB (VmRSS)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total = max(total, int(line.split()[1]))
        except OSError:
            continue
    return total


class Run:
    """Counts for one batch of messages through the pool."""

    def __init__(self, pool: ScanPool, policy, deadline: float, save: Path | None):
        self.pool, self.policy, self.deadline, self.save = pool, policy, deadline, save
        self.verdicts: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.failures: list[str] = []
        self.times: list[float] = []
        self.slowest: list[tuple[float, str]] = []
        self.peak_worker_kib = 0
        self.lock = threading.Lock()

    def one(self, item: tuple[str, bytes]) -> None:
        name, raw = item
        t0 = time.perf_counter()
        try:
            evidence = self.pool.scan(MessageSource.of(raw), SENDER, self.deadline)
            verdict = decide(evidence, self.policy, "MW-FUZZ").action.value
        except ScanFailed as exc:
            verdict, evidence = "failed", None
            with self.lock:
                self.failures.append(f"{name}: {exc}")
            if self.save is not None:
                self.save.mkdir(parents=True, exist_ok=True)
                (self.save / hashlib.sha256(raw).hexdigest()[:16]).write_bytes(raw)
        seconds = time.perf_counter() - t0
        pids = self.pool.idle_pids()
        with self.lock:
            self.verdicts[verdict] += 1
            self.times.append(seconds)
            self.slowest = sorted(self.slowest + [(seconds, name)], reverse=True)[:5]
            if evidence is not None:
                self.findings.update(
                    f.name for f in evidence.findings if f.category.value == "error" or f.name in NOTABLE
                )
            self.peak_worker_kib = max(self.peak_worker_kib, rss_kib(pids))

    def report(self, label: str) -> None:
        ordered = sorted(self.times) or [0.0]
        print(f"{label}: {len(self.times)} messages")
        print(f"  verdicts: {dict(sorted(self.verdicts.items()))}")
        print(f"  failed scans: {len(self.failures)}")
        for line in self.failures[:10]:
            print(f"    {line}")
        print(f"  findings of note: {dict(sorted(self.findings.items()))}")
        p50, p99 = ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000
        print(f"  time: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {ordered[-1] * 1000:.1f} ms")
        print("  slowest: " + "; ".join(f"{s:.2f}s {n}" for s, n in self.slowest))
        print(f"  peak worker RSS: {self.peak_worker_kib / 1024:.0f} MiB")


def drive(run: Run, items, threads: int) -> None:
    """Feed ``items`` to the pool from ``threads`` threads, making each mutant only when one is free."""
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                item = next(items, None)
            if item is None:
                return
            run.one(item)

    with ThreadPoolExecutor(threads) as ex:
        for future in [ex.submit(worker) for _ in range(threads)]:
            future.result()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("count", type=int, help="mutants to try")
    ap.add_argument("mail", type=Path, nargs="+", help="files or directories of raw messages")
    ap.add_argument("--seeds", type=int, default=2000, help="seed messages read (sorted order)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--deadline", type=float, default=60.0, help="the milter's message_deadline")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save", type=Path, help="directory for mutants whose scan failed")
    ap.add_argument("--no-reputation", action="store_true", help="leave out the DNS checks")
    args = ap.parse_args()

    with contextlib.ExitStack() as stack:
        if args.no_reputation:
            reputation = {"enabled": False}
        else:  # every detector: reputation asks a loopback DNS server that knows no names
            dns = stack.enter_context(DnsServer({".": EMPTY_ROOT}))
            reputation = knows_no_names(dns.port)
        settings = load_settings(
            overrides={"state_dir": tempfile.mkdtemp(prefix="mailward-fuzz-"), "reputation": reputation}
        )
        return run(args, settings)


def run(args: argparse.Namespace, settings) -> int:
    seeds = seeds_from(args.mail, args.seeds)
    pool = ScanPool(settings, args.workers)
    policy = settings.policy.inbound
    try:
        drive(Run(pool, policy, args.deadline, None), iter([("warm-up", seeds[0])] * args.workers), args.workers)
        baseline = Run(pool, policy, args.deadline, None)
        drive(baseline, ((f"seed {i}", raw) for i, raw in enumerate(seeds)), args.workers)
        fuzz = Run(pool, policy, args.deadline, args.save)
        started = time.perf_counter()
        drive(fuzz, mutants(seeds, args.count, args.seed), args.workers)
        elapsed = time.perf_counter() - started
    finally:
        pool.close()
    baseline.report("baseline (unmutated seeds)")
    fuzz.report(f"mutants (seed {args.seed}, {elapsed:.0f} s, {len(fuzz.times) / elapsed:.1f}/s)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 1 if fuzz.failures else 0


if __name__ == "__main__":
    sys.exit(main())
