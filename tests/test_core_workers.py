"""The scanning process pool: real forkserver processes, real detectors."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from mailward.config import Settings, load_settings
from mailward.envelope import Envelope
from mailward.errors import ScanFailed
from mailward.evidence import Category
from mailward.source import MessageSource
from mailward.workers import ScanPool
from support.mail import eicar_message, message


def _offline(state: Path) -> Settings:
    """Settings with their state under ``state`` and no DNS checks (they have their own loopback tests)."""
    return load_settings(overrides={"state_dir": str(state), "reputation": {"enabled": False}})


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    p = ScanPool(_offline(tmp_path_factory.mktemp("state")), 2)
    yield p
    p.close()


def test_scans_in_worker_processes(pool):
    ev = pool.scan(MessageSource.of(eicar_message()[1]), Envelope(), deadline=60)
    assert Category.MALWARE in {f.category for f in ev.findings}
    assert pool.scan(MessageSource.of(message()[1]), Envelope(), deadline=60).findings == ()


def test_deadline_overrun_is_unchecked_and_worker_replaced(pool):
    pool.scan(MessageSource.of(message()[1]), Envelope(), deadline=60)  # warm
    ev = pool.scan(MessageSource.of(message(body="x" * 5_000_000)[1]), Envelope(), deadline=0.001)
    assert [f.name for f in ev.findings] == ["scan-deadline"]
    eicar = MessageSource.of(eicar_message()[1])
    assert Category.MALWARE in {f.category for f in pool.scan(eicar, Envelope(), deadline=60).findings}


def test_a_worker_dead_while_idle_costs_no_message(pool, caplog):
    """Workers killed between messages: the next message goes to the next live one, or waits for a
    replacement within its deadline, instead of failing with the dead one."""
    pids = _all_idle(pool)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        _wait_gone(pid)
    with caplog.at_level("WARNING", logger="mailward.workers"):
        ev = pool.scan(MessageSource.of(eicar_message()[1]), Envelope(), deadline=60)
    assert Category.MALWARE in {f.category for f in ev.findings}
    assert sum("had died" in r.getMessage() for r in caplog.records) == 2
    assert not set(pids) & set(pool.idle_pids())  # both replaced


def test_a_worker_dying_mid_message_is_reported_then_replaced(pool):
    """A worker that dies holding a message: that message is reported failed (never accepted), and
    the pool replaces the worker."""
    target = _all_idle(pool)[-1]  # the next one handed out
    os.kill(target, signal.SIGSTOP)  # it takes the job but never answers
    failed: list[BaseException] = []

    def scan() -> None:
        try:
            pool.scan(MessageSource.of(message()[1]), Envelope(), deadline=60)
        except ScanFailed as exc:
            failed.append(exc)

    scanning = threading.Thread(target=scan)
    scanning.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the job is sent: the scan waits for the answer
        frame = sys._current_frames().get(scanning.ident or 0)
        if frame is not None and frame.f_code.co_name == "receive":
            break
        time.sleep(0.002)
    else:
        raise AssertionError("the scan never reached the wait for its answer")
    os.kill(target, signal.SIGKILL)
    scanning.join(60)
    assert len(failed) == 1 and "died" in str(failed[0])
    ev = pool.scan(MessageSource.of(eicar_message()[1]), Envelope(), deadline=60)
    assert Category.MALWARE in {f.category for f in ev.findings}
    assert target not in pool.idle_pids()


def _all_idle(pool: ScanPool) -> list[int]:
    """The pool's two workers, once both are loaded and idle (a replacement may still be loading)."""
    deadline = time.monotonic() + 60
    while len(pids := pool.idle_pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(pids) == 2
    return pids


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still running")


def test_reload_swaps_workers(pool, tmp_path):
    before = set(pool.idle_pids())
    settings = _offline(tmp_path)
    pool.reload(settings)
    after = set(pool.idle_pids())
    assert before.isdisjoint(after)
    assert pool.scan(MessageSource.of(eicar_message()[1]), Envelope(), deadline=60).findings


def test_a_scan_past_its_cpu_budget_is_unchecked_and_the_worker_replaced(tmp_path):
    from support.mail import mime_mail as with_attachments
    from support.unpack import zipped

    MiB = 1 << 20
    settings = load_settings(
        overrides={
            "state_dir": str(tmp_path),
            "reputation": {"enabled": False},
            "milter": {"message_cpu": 1},
            "limits": {"max_ratio": 100_000, "min_unpack_budget": 600 * MiB, "max_unpack_budget": 600 * MiB},
        }
    )
    # 550 MB to inflate, hash and match: about 5 s of CPU, past the 1-2 s a budget of 1 s allows.
    costly = with_attachments(
        attachments=[("a.zip", zipped({f"m{i}.txt": b"abcdefghij" * 5_000_000 for i in range(11)}))]
    )
    small = ScanPool(settings, 1)
    try:
        small.scan(MessageSource.of(message()[1]), Envelope(), deadline=60)  # warm: detectors loaded
        started = time.monotonic()
        ev = small.scan(MessageSource.of(costly), Envelope(), deadline=60)
        assert [f.name for f in ev.findings] == ["scan-cpu-budget"]
        assert time.monotonic() - started < 20
        eicar = MessageSource.of(eicar_message()[1])
        assert Category.MALWARE in {f.category for f in small.scan(eicar, Envelope(), 60).findings}
    finally:
        small.close()


def test_one_client_never_holds_every_worker_while_another_waits(pool):
    """A burst of slow scans from one client takes turns; another client's mail goes through meanwhile."""
    import threading

    slow, clean = message(body="hello world " * 1_000_000)[1], message()[1]
    burst, other = Envelope(client_address="192.0.2.66"), Envelope(client_address="198.51.100.7")
    finished: dict[str, float] = {}
    most_held = 0
    done = threading.Event()

    def send(key, raw, envelope):
        pool.scan(MessageSource.of(raw), envelope, deadline=60)
        finished[key] = time.monotonic()

    def watch():
        nonlocal most_held
        while not done.is_set():
            most_held = max(most_held, pool.in_flight("192.0.2.66"))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=send, args=(f"burst{i}", slow, burst)) for i in range(4)]
    for t in senders:
        t.start()
    while not pool.in_flight("192.0.2.66"):  # the burst holds a worker
        time.sleep(0.005)
    sent = time.monotonic()
    send("clean", clean, other)
    for t in senders:
        t.join()
    done.set()
    watcher.join()
    assert most_held == 1
    assert finished["clean"] < max(finished[f"burst{i}"] for i in range(4))
    assert finished["clean"] - sent < 10


def test_workers_forkserver_and_tracker_exit_when_the_milter_is_killed(tmp_path):
    """SIGKILL the process that owns a pool: a worker stuck mid-scan, the forkserver and the tracker go too."""
    import subprocess
    import sys
    import textwrap

    owner = textwrap.dedent(f"""
        import threading, time
        from mailward.config import load_settings
        from mailward.envelope import Envelope
        from mailward.workers import ScanPool
        if __name__ == "__main__":
            settings = load_settings(overrides={{"state_dir": {str(tmp_path)!r}, "reputation": {{"enabled": False}}}})
            pool = ScanPool(settings, 2)
            scans = [threading.Thread(target=pool.scan,
                                      args=(b"Subject: x\\r\\n\\r\\nhi\\r\\n", Envelope(client_address=c), 60))
                     for c in ("192.0.2.1", "192.0.2.2")]
            for s in scans: s.start()
            for s in scans: s.join()
            print("ready", flush=True)
            time.sleep(600)
    """)
    script = tmp_path / "owner.py"
    script.write_text(owner)
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        family = _descendants(child.pid)
        commands = {pid: _command(pid) for pid in family}
        assert any("resource_tracker" in c for c in commands.values())
        assert sum("forkserver" in c for c in commands.values()) == 3  # the server and its two workers
        forkservers = {pid for pid, c in commands.items() if "forkserver" in c}
        worker = max(pid for pid in forkservers if int(_stat(pid)[1]) in forkservers)
        os.kill(worker, signal.SIGSTOP)  # stands for a worker stuck in C code: it never reads its pipe
    finally:
        child.kill()
        child.wait()
    give_up = time.monotonic() + 10
    while (alive := [pid for pid in family if _running(pid)]) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert alive == [], {pid: commands[pid] for pid in alive}


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))):
            children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat(pid: int) -> list[str] | None:
    """State and parent pid of ``pid`` from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return None


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _command(pid: int) -> str:
    """The command line, or "" once the process is gone (it may exit between listing and reading)."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def test_cpu_budget_is_at_least_a_second_and_at_most_the_deadline(tmp_path):
    from mailward.errors import ConfigError

    with pytest.raises(ConfigError, match="milter.message_cpu"):
        load_settings(overrides={"state_dir": str(tmp_path), "milter": {"message_cpu": 0.5}})
    capped = load_settings(overrides={"state_dir": str(tmp_path), "milter": {"message_deadline": 20}})
    assert capped.milter.cpu_budget == 20


def test_a_reload_while_workers_are_found_dead_loses_no_message_and_leaves_no_stray(pool, tmp_path, caplog):
    """Both idle workers die, then a reload begins and a message finds them dead at send before the
    reload's workers are in: the message is scanned all the same, and the replacements started for the
    old generation, loaded only after the reload took over, are stopped rather than kept beside it."""
    old = _all_idle(pool)
    unrelated = set(_live_workers()) - set(old)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    for pid in old:
        _wait_gone(pid)
    settings = _offline(tmp_path)
    reloading = threading.Thread(target=pool.reload, args=(settings,))
    outcome: list[object] = []
    scanning = threading.Thread(
        target=lambda: outcome.append(pool.scan(MessageSource.of(eicar_message()[1]), Envelope(), deadline=60))
    )
    held: set[int] = set()
    with caplog.at_level("WARNING", logger="mailward.workers"):
        reloading.start()
        give_up = time.monotonic() + 30
        while len(fresh := set(_live_workers()) - unrelated) < 2 and time.monotonic() < give_up:
            time.sleep(0.002)  # the reload's workers exist and load
        scanning.start()  # finds both old workers dead: a replacement for each starts
        while len(held) < 2 and time.monotonic() < give_up:
            for pid in set(_live_workers()) - unrelated - fresh - held:
                os.kill(pid, signal.SIGSTOP)  # held mid-load until the reload has taken over
                held.add(pid)
            time.sleep(0.002)
        reloading.join(60)
        scanning.join(60)
    for pid in held:
        os.kill(pid, signal.SIGCONT)
    assert len(held) == 2 and not reloading.is_alive() and not scanning.is_alive()
    assert Category.MALWARE in {f.category for f in outcome[0].findings}  # by a worker of the reload
    assert sum("had died" in r.getMessage() for r in caplog.records) == 2  # sent to both dead ones first
    settle = time.monotonic() + 30
    while time.monotonic() < settle:
        idle = set(pool.idle_pids())
        if not held & set(_live_workers()) and len(idle) == 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"workers {set(_live_workers()) - unrelated}, idle {set(pool.idle_pids())}")
    assert idle == fresh and set(_live_workers()) - unrelated == fresh


def _live_workers() -> list[int]:
    """Running scanning processes of this test process: the children of its forkserver."""
    family = _descendants(os.getpid())
    servers = {
        pid
        for pid in family
        if "forkserver" in _command(pid) and (stat := _stat(pid)) is not None and stat[1] == str(os.getpid())
    }
    return [pid for pid in family if (stat := _stat(pid)) and stat[1] in {str(s) for s in servers} and stat[0] != "Z"]


def test_a_reload_whose_workers_cannot_load_keeps_the_old_ones(pool, tmp_path):
    before = set(pool.idle_pids())
    broken = load_settings(
        overrides={
            "state_dir": str(tmp_path),
            "reputation": {"enabled": False},
            "signatures": {"rules_dirs": [str(tmp_path / "missing")]},
        }
    )
    with pytest.raises(ScanFailed, match="could not load"):
        pool.reload(broken)
    assert set(pool.idle_pids()) == before
    eicar = MessageSource.of(eicar_message()[1])
    assert Category.MALWARE in {f.category for f in pool.scan(eicar, Envelope(), deadline=60).findings}


def _hold_the_next_worker(known: set[int]) -> int:
    """The one scanning process started beside ``known``, stopped mid-load so it never reports loaded."""
    give_up = time.monotonic() + 30
    while not (new := set(_live_workers()) - known) and time.monotonic() < give_up:
        time.sleep(0.002)
    (pid,) = new
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_closing_stops_a_replacement_still_loading(tmp_path):
    """A worker replaced just before shutdown is still loading its rules when the pool closes: it is
    killed with the rest, even held stopped, and no scanning process outlives close()."""
    settings = _offline(tmp_path)
    unrelated = set(_live_workers())
    small = ScanPool(settings, 1)
    try:
        (old,) = small.idle_pids()
        os.kill(old, signal.SIGKILL)
        _wait_gone(old)
        scanning = threading.Thread(
            target=small.scan, args=(MessageSource.of(message()[1]), Envelope()), kwargs={"deadline": 2}
        )
        scanning.start()  # finds the worker dead: a replacement starts and loads
        replacement = _hold_the_next_worker(unrelated | {old})
        scanning.join(30)
    finally:
        started = time.monotonic()
        small.close()
    assert time.monotonic() - started < 10
    _wait_gone(replacement)
    assert not set(_live_workers()) - unrelated


def test_a_worker_started_as_the_pool_closes_does_not_outlive_it(tmp_path):
    """A replacement whose start races close() (spawned just after close took the loading set) is
    killed at once rather than left to load and wait on a pipe nobody reads."""
    settings = _offline(tmp_path)
    small = ScanPool(settings, 1)
    small.close()
    late = small._spawn(settings, 0)  # what a replacement thread does after close() returned
    late.process.join(10)
    assert late.process.exitcode == -signal.SIGKILL
    late.close_pipe()


def test_closing_during_a_reload_stops_the_reloads_workers(tmp_path):
    """The pool closes while a reload's workers load: the reload fails (nothing to swap in), its
    workers are killed even when held stopped, and none outlives close()."""
    settings = _offline(tmp_path)
    unrelated = set(_live_workers())
    small = ScanPool(settings, 1)
    old = set(small.idle_pids())
    failed: list[BaseException] = []

    def reload() -> None:
        try:
            small.reload(settings)
        except ScanFailed as exc:
            failed.append(exc)

    reloading = threading.Thread(target=reload)
    try:
        reloading.start()
        fresh = _hold_the_next_worker(unrelated | old)
    finally:
        small.close()
    reloading.join(10)
    assert not reloading.is_alive() and failed and "could not load" in str(failed[0])
    _wait_gone(fresh)
    assert not set(_live_workers()) - unrelated


class _ForkserverKilledMidStart(ScanPool):
    """A pool whose next starts fail as they do when the forkserver is killed mid-handshake (EOFError
    from reading the new process's ID), and whose replacement retries come quickly."""

    RESPAWN_DELAY = 0.1

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.failing_starts = 0
        super().__init__(*args, **kwargs)

    def _spawn(self, settings, generation):
        if self.failing_starts:
            self.failing_starts -= 1
            raise EOFError
        return super()._spawn(settings, generation)


def test_a_replacement_that_cannot_start_is_tried_again(tmp_path):
    """Killing the forkserver and the workers twice in a second left a milter with no workers for good:
    each replacement thread ended on the EOFError, and every message waited out its deadline."""
    small = _ForkserverKilledMidStart(_offline(tmp_path), 1)
    try:
        (old,) = small.idle_pids()
        small.failing_starts = 3
        os.kill(old, signal.SIGKILL)
        _wait_gone(old)
        evidence = small.scan(MessageSource.of(eicar_message()[1]), Envelope(), deadline=30)
        assert Category.MALWARE in {f.category for f in evidence.findings}
        assert small.failing_starts == 0 and small.idle_pids() and old not in small.idle_pids()
    finally:
        small.close()


def test_a_reload_that_cannot_start_its_workers_keeps_the_old_ones(tmp_path):
    small = _ForkserverKilledMidStart(_offline(tmp_path), 1)
    try:
        before = small.idle_pids()
        small.failing_starts = 1
        with pytest.raises(ScanFailed, match="could not start: EOFError"):
            small.reload(_offline(tmp_path))
        assert small.idle_pids() == before
    finally:
        small.close()
