"""Per-message overhead of incident response: counting one outcome, and the block checks per connection.

For each backend (SQLite in a temporary state dir; PostgreSQL in a throwaway cluster when its
binaries are installed, or at --dsn) it times ``IncidentResponse.observe`` (counting in memory;
the store is written by the flusher) from 1 and from 8 threads over many accounts, one flush
of every account's counts (one transaction: an upsert per account and bucket, a window sum per
account read back), plus the
in-memory ``client_block`` / ``sender_block`` lookups the milter makes per connection and per
transaction with a block list of --blocks entries. Prints p50/p99 and throughput.

    .venv/bin/python bench/incident_counters.py --messages 5000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mailward.actor import Actor  # noqa: E402
from mailward.config import load_settings  # noqa: E402
from mailward.envelope import Direction, Envelope  # noqa: E402
from mailward.evidence import Evidence  # noqa: E402
from mailward.incidents import SubjectKind, open_incidents  # noqa: E402
from mailward.verdict import (  # noqa: E402
    Action,
    Outcome,  # noqa: E402
    Verdict,
)


def outcome(i: int, accounts: int) -> Outcome:
    env = Envelope(
        mail_from=f"user{i % accounts}@example.org",
        recipients=("a@example.net", "b@example.net"),
        client_address=f"192.0.2.{i % 250 + 1}",
        auth_user=f"user{i % accounts}",
        direction=Direction.OUTBOUND,
    )
    return Outcome(env, Verdict(Action.ACCEPT, (), f"MW-{i:08X}-00000000"), Evidence(), 1000)


def timed(fn, n: int, threads: int) -> tuple[list[float], float]:
    samples: list[float] = []
    lock = threading.Lock()

    def work(start: int) -> None:
        mine = []
        for i in range(start, n, threads):
            t0 = time.perf_counter()
            fn(i)
            mine.append(time.perf_counter() - t0)
        with lock:
            samples.extend(mine)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return samples, time.perf_counter() - t0


def report(label: str, samples: list[float], wall: float) -> None:
    samples.sort()
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(
        f"  {label:38} p50 {statistics.median(samples) * 1e6:8.0f} us   p99 {p99 * 1e6:8.0f} us   "
        f"{len(samples) / wall:8.0f} /s"
    )


def run(backend: str, overrides: dict, args) -> None:
    settings = load_settings(None, overrides)
    incidents = open_incidents(settings)
    analyst = Actor("bench", "bench")
    for k in range(args.blocks):
        incidents.block(SubjectKind.ADDRESS, f"10.{k // 65536 % 256}.{k // 256 % 256}.{k % 256}", "bench", analyst)
    incidents.block(SubjectKind.NETWORK, "198.51.100.0/24", "bench", analyst)
    incidents.alerts.drain(30)
    print(f"{backend}:")
    for threads in (1, 8):
        samples, wall = timed(lambda i: incidents.observe(outcome(i, args.accounts)), args.messages, threads)
        report(f"observe (count in memory), {threads} thr", samples, wall)
    for i in range(args.accounts):
        incidents.observe(outcome(i, args.accounts))
    samples, wall = timed(lambda i: incidents.counts.flush(), 1, 1)  # all of them in one transaction
    report(f"flush of {args.accounts} accounts' counts", samples, wall)
    samples, wall = timed(lambda i: incidents.client_block(f"192.0.2.{i % 250 + 1}"), args.messages, 1)
    report(f"client_block, {args.blocks} blocks", samples, wall)
    samples, wall = timed(lambda i: incidents.sender_block(f"user{i}", f"user{i}@mail.example.org"), args.messages, 1)
    report("sender_block (account, sender, domains)", samples, wall)
    incidents.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--dsn", help="PostgreSQL to use instead of a throwaway cluster")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not one line per block and alert
    with tempfile.TemporaryDirectory() as state:
        run("sqlite", {"state_dir": state}, args)
    server = None
    dsn = args.dsn
    if dsn is None:
        from pg_server import PostgresServer, binaries

        if binaries() is None:
            print("postgresql: skipped (no server binaries; pass --dsn)")
            return 0
        server = PostgresServer(durable=True)
        server.start()
        dsn = server.dsn
    try:
        with tempfile.TemporaryDirectory() as state:
            run("postgresql", {"state_dir": state, "quarantine": {"backend": "postgresql", "dsn": dsn}}, args)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
