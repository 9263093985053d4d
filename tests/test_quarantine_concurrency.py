"""Many threads and processes at once: nothing is lost and nothing is released twice."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailward.actor import Actor
from mailward.quarantine import ListFilter, ReleaseClaim
from mailward.source import MessageSource
from quarantine_support import envelope, message, spam_case

THREADS = 8
PER_THREAD = 15


def test_threads_putting_at_once_lose_nothing(store):
    def put_many(n: int) -> list[tuple[str, bytes]]:
        out = []
        for i in range(PER_THREAD):
            raw = message(f"thread {n} message {i}")
            v, e = spam_case()
            out.append((store.put(MessageSource.of(raw), envelope(), v, e), raw))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        results = [pair for batch in pool.map(put_many, range(THREADS)) for pair in batch]
    assert len({qid for qid, _ in results}) == THREADS * PER_THREAD
    assert len(store.list(ListFilter(limit=10_000))) == THREADS * PER_THREAD
    for qid, raw in results:
        assert store.read(qid) == raw


def test_threads_racing_to_release_claim_each_message_once(store):
    ids = []
    for i in range(20):
        v, e = spam_case()
        ids.append(store.put(MessageSource.of(message(f"m{i}")), envelope(), v, e))
    barrier = threading.Barrier(THREADS)
    won: list[tuple[str, int]] = []
    lock = threading.Lock()

    def race(n: int) -> None:
        actor = Actor(f"analyst{n}", "host")
        barrier.wait()
        for qid in ids:
            if store.claim_release(qid, actor) is ReleaseClaim.CLAIMED:
                with lock:
                    won.append((qid, n))
                store.finish_release(qid, actor, delivered=True)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(q for q, _ in won) == sorted(ids)
    for qid in ids:
        assert [e.action for e in store.history(qid)].count("release") == 1


def _worker(backend: str, location: str, n: int, ids: list[str], out) -> None:
    """One process: put its own messages and race the others to release the shared ones."""
    if backend == "postgresql":
        from mailward.quarantine.postgres import PostgresStore

        store = PostgresStore(location)
    else:
        from mailward.quarantine.sqlite import SqliteStore

        store = SqliteStore(Path(location))
    actor = Actor(f"proc{n}", "host")
    put = []
    for i in range(10):
        v, e = spam_case()
        put.append(store.put(MessageSource.of(message(f"proc {n} msg {i}")), envelope(), v, e))
    claimed = []
    for qid in ids:
        if store.claim_release(qid, actor) is ReleaseClaim.CLAIMED:
            claimed.append(qid)
            store.finish_release(qid, actor, delivered=True)
    store.close()
    out.put((put, claimed))


def test_processes_putting_and_releasing_at_once(store, store_factory):
    ids = []
    for i in range(15):
        v, e = spam_case()
        ids.append(store.put(MessageSource.of(message(f"shared {i}")), envelope(), v, e))
    location = store_factory.dsn if store_factory.backend == "postgresql" else str(store_factory.directory)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(store_factory.backend, location, n, ids, out)) for n in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    claimed = [q for _, c in results for q in c]
    assert sorted(claimed) == sorted(ids)  # each shared message exactly once
    put = [q for p, _ in results for q in p]
    assert len(set(put)) == 30
    assert len(store.list(ListFilter(limit=10_000))) == 45
