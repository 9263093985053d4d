"""Quarantine write throughput: puts per second for SQLite and PostgreSQL, 1 and N threads.

Usage: python bench/quarantine_put.py [--count N] [--threads T] [--size BYTES] [--dsn DSN]

Without --dsn a throwaway PostgreSQL cluster with fsync on is started from
Debian's binaries (tests/pg_server.py), so both backends pay for durability.
SQLite runs in a temporary directory on the file system of $TMPDIR.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailward.envelope import Envelope
from mailward.evidence import Category, Evidence, Finding, Severity
from mailward.quarantine.store import QuarantineStore
from mailward.source import MessageSource
from mailward.verdict import Action, Verdict, new_incident_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def sample(size: int, n: int) -> bytes:
    head = (
        f"From: sender{n}@example.org\r\nTo: user@example.net\r\nSubject: benchmark message {n}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def run(store: QuarantineStore, count: int, threads: int, size: int) -> tuple[float, list[float]]:
    evidence = Evidence(findings=(Finding(Category.SPAM, "gtube", Severity.HIGH, "gtube", "part 1"),))
    env = Envelope(mail_from="a@example.org", recipients=("u@example.net",), client_address="192.0.2.1")
    latencies: list[float] = []

    def one(n: int) -> None:
        verdict = Verdict(Action.QUARANTINE, ("spam",), new_incident_id())
        t0 = time.perf_counter()
        store.put(MessageSource.of(sample(size, n)), env, verdict, evidence)
        latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started), latencies


def report(name: str, store: QuarantineStore, args) -> None:
    for threads in (1, args.threads):
        rate, lat = run(store, args.count, threads, args.size)
        lat.sort()
        print(
            f"{name:<11} threads={threads:<2} {rate:8.1f} put/s   p50 {statistics.median(lat) * 1000:6.2f} ms"
            f"   p99 {lat[int(len(lat) * 0.99) - 1] * 1000:6.2f} ms"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size", type=int, default=20_000, help="message size in bytes")
    parser.add_argument("--dsn", help="use this PostgreSQL server instead of a throwaway one")
    parser.add_argument("--sqlite-only", action="store_true", help="leave PostgreSQL out")
    args = parser.parse_args()
    print(f"{args.count} puts of {args.size}-byte messages per run")

    from mailward.quarantine.sqlite import SqliteStore

    with tempfile.TemporaryDirectory() as tmp, SqliteStore(Path(tmp) / "q") as store:
        report("sqlite", store, args)
    if args.sqlite_only:
        return 0

    from mailward.quarantine.postgres import PostgresStore

    server = None
    dsn = args.dsn
    if dsn is None:
        from pg_server import PostgresServer

        server = PostgresServer(durable=True)
        server.start()
        dsn = server.dsn
    try:
        with PostgresStore(dsn) as store:
            report("postgresql", store, args)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
