"""The scanning process pool: real forkserver processes, real detectors."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mail import eicar_message, message
from mailward.config import load_settings
from mailward.envelope import Envelope
from mailward.evidence import Category
from mailward.workers import ScanFailed, ScanPool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    settings = load_settings(overrides={"state_dir": str(tmp_path_factory.mktemp("state")),
                                        "reputation": {"enabled": False}})
    p = ScanPool(settings, 2)
    yield p
    p.close()


def test_scans_in_worker_processes(pool):
    ev = pool.scan(eicar_message()[1], Envelope(), deadline=60)
    assert Category.MALWARE in {f.category for f in ev.findings}
    assert pool.scan(message()[1], Envelope(), deadline=60).findings == ()


def test_deadline_overrun_is_unchecked_and_worker_replaced(pool):
    pool.scan(message()[1], Envelope(), deadline=60)             # warm
    ev = pool.scan(message(body="x" * 5_000_000)[1], Envelope(), deadline=0.001)
    assert [f.name for f in ev.findings] == ["scan-deadline"]
    assert Category.MALWARE in {f.category for f in pool.scan(eicar_message()[1], Envelope(), deadline=60).findings}


def test_dead_worker_is_reported_then_replaced(pool):
    pids = [w.process.pid for w in list(pool._idle.queue)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(ScanFailed):
        pool.scan(message()[1], Envelope(), deadline=30)
    # The pool heals: every slot is replaced by a live process as it comes back.
    for _ in range(3):
        try:
            ev = pool.scan(eicar_message()[1], Envelope(), deadline=60)
            break
        except ScanFailed:
            continue
    assert Category.MALWARE in {f.category for f in ev.findings}


def test_reload_swaps_workers(pool, tmp_path):
    before = {w.process.pid for w in list(pool._idle.queue)}
    settings = load_settings(overrides={"state_dir": str(tmp_path), "reputation": {"enabled": False}})
    pool.reload(settings)
    after = {w.process.pid for w in list(pool._idle.queue)}
    assert before.isdisjoint(after)
    assert pool.scan(eicar_message()[1], Envelope(), deadline=60).findings


def test_a_reload_whose_workers_cannot_load_keeps_the_old_ones(pool, tmp_path):
    before = {w.process.pid for w in list(pool._idle.queue)}
    broken = load_settings(overrides={"state_dir": str(tmp_path), "reputation": {"enabled": False},
                                      "signatures": {"rules_dirs": [str(tmp_path / "missing")]}})
    with pytest.raises(ScanFailed, match="could not load"):
        pool.reload(broken)
    assert {w.process.pid for w in list(pool._idle.queue)} == before
    assert Category.MALWARE in {f.category for f in pool.scan(eicar_message()[1], Envelope(), deadline=60).findings}
