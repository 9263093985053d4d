"""What the scanning process pool costs and buys, measured in one run.

Compares, on the same message mix: in-process inspection from one thread (the
baseline), in-process from several threads (GIL-bound, as libmilter's threads
would be), and the process pool with 1 and 2 workers fed by several threads.
Prints per-message time, messages/s and the pool's overhead per message
(pool round trip minus in-process time, one worker, one thread).

    .venv/bin/python bench/pool_overhead.py --messages 400
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mailward.config import load_settings  # noqa: E402
from mailward.envelope import Envelope  # noqa: E402
from mailward.runtime import build_inspector  # noqa: E402
from mailward.source import MessageSource  # noqa: E402
from mailward.workers import ScanPool  # noqa: E402
from milter_throughput import corpus  # noqa: E402


def timed(fn, msgs, threads: int) -> tuple[float, list[float]]:
    per: list[float] = []

    def one(raw: bytes) -> None:
        t0 = time.perf_counter()
        fn(raw)
        per.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(one, msgs))
    return len(msgs) / (time.perf_counter() - started), per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    settings = load_settings(overrides={"state_dir": tempfile.mkdtemp(prefix="mailward-bench-")})
    msgs = corpus(args.messages)
    env = Envelope()
    inspector = build_inspector(settings)
    inproc = lambda raw: inspector.inspect(raw, env)  # noqa: E731
    timed(inproc, msgs[:50], 1)
    rows = [
        ("in-process, 1 thread", *timed(inproc, msgs, 1)),
        (f"in-process, {args.threads} threads", *timed(inproc, msgs, args.threads)),
    ]
    for workers in (1, 2):
        pool = ScanPool(settings, workers)
        scan = lambda raw, pool=pool: pool.scan(MessageSource.of(raw), env, 60)  # noqa: E731
        timed(scan, msgs[:50], workers)
        rows.append((f"pool {workers} worker(s), 1 thread", *timed(scan, msgs, 1)))
        rows.append((f"pool {workers} worker(s), {args.threads} threads", *timed(scan, msgs, args.threads)))
        pool.close()
    base = rows[0][1]
    print(f"{len(msgs)} messages, {sum(map(len, msgs)) / 1e6:.1f} MB")
    print(f"{'mode':34} {'msg/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for name, rate, per in rows:
        q = statistics.quantiles(per, n=100)
        print(f"{name:34} {rate:8.1f} {rate / base:6.2f} {q[49] * 1000:7.2f} {q[98] * 1000:7.2f}")
    one_thread = {name: statistics.median(per) for name, _, per in rows}
    overhead = one_thread["pool 1 worker(s), 1 thread"] - one_thread["in-process, 1 thread"]
    print(f"pool overhead per message (median, 1 worker, 1 thread): {overhead * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
