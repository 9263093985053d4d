"""The mailward-milter process itself: --check as a dry run of a start, reloads, what a stop leaves."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.milter import MilterProcess
from real_parts import require


def config(tmp_path: Path, extra: str = "", workers: int = 1) -> Path:
    path = tmp_path / "mailward.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n{extra}\n'
        f'[milter]\nsocket = "unix:{tmp_path / "sock" / "milter.sock"}"\nworkers = {workers}\n'
        f"[reputation]\nenabled = false\n"
        f'[logging]\nfile = "{tmp_path / "milter.log"}"\n'
    )
    return path


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailward.milter.daemon", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def started(tmp_path: Path, extra: str = "", workers: int = 1) -> MilterProcess:
    proc = MilterProcess(config(tmp_path, extra, workers), tmp_path / "sock" / "milter.sock", tmp_path / "milter.log")
    proc.start()
    return proc


def started_with_rules(tmp_path: Path) -> tuple[MilterProcess, Path]:
    """A milter (one worker) whose rules include one file of our own, and that file."""
    rules = tmp_path / "rules"
    rules.mkdir()
    rule = rules / "a.yar"
    rule.write_text("rule a { condition: false }\n")
    return started(tmp_path, f'[signatures]\nrules_dirs = ["{rules}"]\n', workers=1), rule


def wait_for_log(proc: MilterProcess, text: str, count: int = 1, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = proc.log_path.read_text().count(text) if proc.log_path.exists() else 0
        if seen >= count:
            return seen
        if proc.proc is not None and proc.proc.poll() is not None:  # it will log nothing more
            log = proc.log_path.read_text()[-2000:] if proc.log_path.exists() else ""
            raise AssertionError(f"the milter exited ({proc.proc.returncode}) before logging {text!r}: {log}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} logged fewer than {count} times")


def test_check_passes_a_good_configuration(tmp_path):
    result = check(config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "is valid" in result.stdout


def start_alone(path: Path) -> subprocess.CompletedProcess:
    """A start expected to end at once, with an error."""
    return subprocess.run(
        [sys.executable, "-m", "mailward.milter.daemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _socket_in(tmp_path: Path, directory: Path) -> Path:
    path = config(tmp_path)
    path.write_text(path.read_text().replace(str(tmp_path / "sock"), str(directory)))
    return path


def test_check_is_a_dry_run_that_changes_no_directory_and_creates_no_log(tmp_path):
    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o1777)
    result = check(_socket_in(tmp_path, shared))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777 and not (tmp_path / "milter.log").exists()
    assert not (tmp_path / "state").exists() and "created at start" in result.stdout  # checked in a stand-in


def test_a_start_leaves_a_socket_directory_that_is_not_its_own_as_it_is(tmp_path):
    shared = tmp_path / "run"
    shared.mkdir()
    (shared / "other.pid").write_text("1\n")
    shared.chmod(0o755)
    proc = MilterProcess(_socket_in(tmp_path, shared), shared / "milter.sock", tmp_path / "milter.log")
    proc.start()
    try:
        assert stat.S_IMODE(shared.stat().st_mode) == 0o755
        assert "not the milter's own" in proc.log_path.read_text()
    finally:
        assert proc.stop() == 0


def test_a_state_dir_anyone_may_write_to_is_refused_and_left_as_it_is(tmp_path):
    path = config(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state").chmod(0o1777)
    result = check(path)
    assert result.returncode == 1 and "writable by everyone" in result.stderr
    start = start_alone(path)
    assert start.returncode == 1 and "writable by everyone" in start.stderr and "Traceback" not in start.stderr
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o1777


def test_a_log_file_that_cannot_be_opened_stops_the_start_with_one_line(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    path = config(tmp_path)
    path.write_text(path.read_text().replace(str(tmp_path / "milter.log"), str(tmp_path / "not-a-dir" / "m.log")))
    start = start_alone(path)
    assert start.returncode == 1 and "Traceback" not in start.stderr
    assert start.stderr.startswith("mailward-milter: cannot start: logging.file ")
    cli = subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--config", str(path), "block", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and cli.stderr.startswith("mailward: logging.file ") and "Traceback" not in cli.stderr


def test_check_reports_a_rule_file_that_does_not_compile_every_time(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "good.yar").write_text("rule good { condition: false }\n")
    (rules / "broken.yar").write_text("rule broken { condition: nonsense }\n")
    path = config(tmp_path, f'[signatures]\nrules_dirs = ["{rules}"]\n')
    for _ in range(2):  # the second run must not be approved from the bundle cache
        result = check(path)
        assert result.returncode == 1
        assert "broken.yar does not compile" in result.stderr


@pytest.mark.parametrize(
    "extra,key",
    [
        ('[metrics]\nlisten = "garbage"\n', "metrics.listen"),
        ('[metrics]\nlisten = "9464"\n', "metrics.listen"),
        ('[alerts]\nwebhook_url = "ftp://x"\n', "alerts.webhook_url"),
        ('[incidents]\nexempt_networks = ["not-a-network"]\n', "incidents.exempt_networks"),
    ],
)
def test_check_rejects_observed_bad_values(tmp_path, extra, key):
    result = check(config(tmp_path, extra))
    assert result.returncode != 0
    assert key in result.stderr


def test_check_fails_when_the_model_cannot_load(tmp_path):
    result = check(config(tmp_path, f'[model]\nshipped_model = false\ndirectory = "{tmp_path / "no-models"}"\n'))
    assert result.returncode == 1 and "scanning stack" in result.stderr


def test_check_fails_when_clamd_does_not_answer_and_passes_when_it_does(tmp_path, clamd):
    """A configured clamd that is down would leave every message unchecked: --check says so first."""
    dead = tmp_path / "dead"
    dead.mkdir()
    down = check(config(dead, f'[clamav]\nsocket = "unix:{dead / "no-clamd.sock"}"\n'))
    assert down.returncode == 1 and "clamd (unix:" in down.stderr and "does not answer" in down.stderr
    up = tmp_path / "up"
    up.mkdir()
    assert check(config(up, f'[clamav]\nsocket = "{clamd.socket}"\n')).returncode == 0


def test_start_removes_orphaned_spool_files_and_stop_removes_the_socket(tmp_path):
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    orphan = spool / "msg-killed.eml"
    orphan.write_bytes(b"x" * 1000)
    proc = started(tmp_path)
    try:
        assert not orphan.exists()
    finally:
        assert proc.stop() == 0
    assert not proc.socket_path.exists()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_reloads_close_the_old_stores_and_build_no_scanner_in_the_milter(tmp_path):
    proc = started(tmp_path, workers=1)
    try:
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reloaded from", 1)
        baseline = _fds(proc.proc.pid)
        for n in range(2, 8):
            proc.signal(signal.SIGHUP)
            wait_for_log(proc, "reloaded from", n)
        assert _fds(proc.proc.pid) <= baseline + 1  # before: every reload leaked the old stores
        maps = _maps(proc.proc.pid)
        assert "libyara" not in maps and "sklearn" not in maps  # workers scan; the milter holds no scanner
    finally:
        proc.stop()


def test_a_reload_of_a_file_that_is_not_utf8_keeps_the_milter_serving(tmp_path):
    proc = started(tmp_path)
    try:
        proc.config.write_bytes(b"# caf\xe9\n" + proc.config.read_bytes())
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reload refused")
        assert "not UTF-8" in proc.log_path.read_text()
        proc.signal(signal.SIGHUP)  # the reload thread is still there to refuse the next one too
        wait_for_log(proc, "reload refused", 2)
        assert proc.proc is not None and proc.proc.poll() is None and proc.socket_path.exists()
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_reload_to_a_log_file_that_cannot_be_opened_keeps_the_milter_serving(tmp_path, workers):
    """The reload opens the log file first. Without scanning processes (whose start failed on it) a file
    it could not open ended the reload thread after the swap, and with it the milter."""
    proc = started(tmp_path, workers=workers)
    try:
        (tmp_path / "not-a-dir").write_text("")
        text = proc.config.read_text()
        proc.config.write_text(text.replace(str(tmp_path / "milter.log"), str(tmp_path / "not-a-dir" / "m.log")))
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reload refused")
        assert "m.log" in proc.log_path.read_text()  # the refusal names the file
        assert proc.proc is not None and proc.proc.poll() is None and proc.socket_path.exists()
        proc.config.write_text(text)
        proc.signal(signal.SIGHUP)  # the file fixed: the next reload goes through
        wait_for_log(proc, "reloaded from")
    finally:
        assert proc.stop() == 0


def test_a_refused_reload_keeps_the_running_log_file(tmp_path):
    """The log file is opened first, but used only once the reload goes through: one refused later
    (here, an unusable quarantine directory) left the milter logging to the new file it never took."""
    proc = started(tmp_path, workers=0)
    try:
        (tmp_path / "qfile").write_text("not a directory")
        text = proc.config.read_text()
        moved = text.replace(str(tmp_path / "milter.log"), str(tmp_path / "new.log"))
        proc.config.write_text(moved + f'[quarantine]\ndirectory = "{tmp_path / "qfile"}"\n')
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reload refused")  # in the running log file
        assert "qfile" in proc.log_path.read_text()
        assert not (tmp_path / "new.log").exists() or (tmp_path / "new.log").read_text() == ""
        proc.config.write_text(text)
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reloaded from")
    finally:
        assert proc.stop() == 0


def test_reloads_faster_than_they_complete_are_coalesced(tmp_path):
    proc, rule = started_with_rules(tmp_path)
    try:
        for n in range(10):  # each edit makes the workers reload: slow
            rule.write_text(f"rule a{n} {{ condition: false }}\n")
            proc.signal(signal.SIGHUP)
            time.sleep(0.02)
        done = wait_for_log(proc, "reloaded from", 1)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # settle: no reload in progress or pending
            before = proc.log_path.read_text().count("reloaded from")
            time.sleep(3)
            done = proc.log_path.read_text().count("reloaded from")
            if done == before:
                break
        assert 1 <= done <= 3
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_a_reload_with_unchanged_scanning_inputs_keeps_the_workers(tmp_path):
    proc, rule = started_with_rules(tmp_path)
    try:
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reloaded from", 1)
        assert "scanning processes stay" in proc.log_path.read_text()
        rule.write_text("rule a { condition: true }\n")
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reloaded from", 2)
        assert proc.log_path.read_text().count("scanning processes stay") == 1
    finally:
        proc.stop()


def test_a_reload_whose_rules_directory_vanished_keeps_the_running_workers(tmp_path):
    proc, rule = started_with_rules(tmp_path)
    try:
        rule.unlink()
        rule.parent.rmdir()
        proc.signal(signal.SIGHUP)
        wait_for_log(proc, "reload refused")
        assert proc.proc.poll() is None
    finally:
        proc.stop()


ROOT = Path(__file__).resolve().parent.parent


def _run_milter_check(tmp_path: Path, path: Path) -> str:
    env = {
        **os.environ,
        "MAILWARD_SKIP_SETUP": "1",
        "MAILWARD_VENV": str(Path(sys.executable).parent.parent),
        "MAILWARD_STATE_DIR": str(tmp_path / "script-default"),
    }
    result = subprocess.run(
        [str(ROOT / "scripts" / "run-milter"), "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_run_milter_keeps_the_configuration_files_state_dir(tmp_path):
    """The CLI reads the file's state_dir; the script's default must not send the milter elsewhere."""
    path = config(tmp_path)
    assert f"state_dir {tmp_path / 'state'}," in _run_milter_check(tmp_path, path)
    path.write_text(path.read_text().replace(f'state_dir = "{tmp_path / "state"}"', ""))
    assert f"state_dir {tmp_path / 'script-default'}," in _run_milter_check(tmp_path, path)


def _closed_loopback_port() -> int:
    """A UDP port on loopback nothing listens on: a probe there gets port-unreachable or silence."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _with_reputation(path: Path, port: int) -> Path:
    path.write_text(
        path.read_text().replace(
            "[reputation]\nenabled = false\n",
            f'[reputation]\nnameservers = ["127.0.0.1"]\nport = {port}\nquery_timeout = 1.0\n',
        )
    )
    return path


def test_check_fails_clearly_when_the_resolver_does_not_answer(tmp_path):
    result = check(_with_reputation(config(tmp_path), _closed_loopback_port()))
    assert result.returncode == 1
    assert "DNS resolver (127.0.0.1, port" in result.stderr and "does not answer" in result.stderr
    assert "unbound" in result.stderr and "reputation.nameservers" in result.stderr


def test_check_passes_with_an_answering_resolver(tmp_path):
    from dns_server import EMPTY_ROOT, DnsServer

    with DnsServer({".": EMPTY_ROOT}) as dns:
        result = check(_with_reputation(config(tmp_path), dns.port))
    assert result.returncode == 0, result.stderr


def test_a_start_with_a_silent_resolver_logs_an_error(tmp_path):
    path = _with_reputation(config(tmp_path), _closed_loopback_port())
    proc = MilterProcess(path, tmp_path / "sock" / "milter.sock", tmp_path / "milter.log")
    proc.start()
    try:
        wait_for_log(proc, "does not answer within", timeout=30)
        line = next(line for line in proc.log_path.read_text().splitlines() if "does not answer" in line)
        assert '"level": "error"' in line and "unbound" in line
        assert proc.proc.poll() is None  # a warning, not a refusal to run
    finally:
        proc.stop()


TRACED = "rt_sigprocmask,rt_sigtimedwait,clone,clone3,vfork"  # what blocks signals or starts a thread


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _signal_thread_started_at(lines: list[str]) -> int:
    """Index of the trace line where libmilter's signal thread (the one in sigwait) was created."""
    waiter = next(line.split()[0] for line in lines if "rt_sigtimedwait([HUP INT TERM]" in line)
    return next(i for i, line in enumerate(lines) if "clone" in line and line.rstrip().endswith(f"= {waiter}"))


def test_once_libmilter_runs_the_main_thread_never_blocks_a_signal(tmp_path):
    """The kernel passes a signal the main thread blocks to another thread: maybe libmilter's, which
    stops the milter for good. glibc blocks every signal in a thread while it starts a thread or a
    process, so the main thread must start neither, through reloads that start new workers."""
    require(shutil.which("strace") is not None, "strace (Debian strace) is not installed")
    rules = tmp_path / "rules"
    rules.mkdir()
    rule = rules / "a.yar"
    rule.write_text("rule a { condition: false }\n")
    trace = tmp_path / "trace"
    proc = MilterProcess(
        config(tmp_path, f'[signatures]\nrules_dirs = ["{rules}"]\n'),
        tmp_path / "sock" / "milter.sock",
        tmp_path / "milter.log",
        prefix=("strace", "-f", "--seccomp-bpf", "-qq", "-o", str(trace), "-e", f"trace={TRACED}"),
    )
    proc.start()
    try:
        (milter,) = _children(proc.proc.pid)
        rule.write_text("rule b { condition: false }\n")  # the workers reload, in the reload thread
        for sig in (signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR1):
            os.kill(milter, sig)
        wait_for_log(proc, "reloaded from")
        os.kill(milter, signal.SIGTERM)
        assert proc.proc.wait(timeout=60) == 0
    finally:
        proc.stop()
    lines = trace.read_text().splitlines()
    started = _signal_thread_started_at(lines)
    assert any(line.startswith(f"{milter} ") and "clone" in line for line in lines[:started])  # seen before
    main = [line for line in lines[started:] if line.split()[0] == str(milter)]
    until_stop = main[: next((i for i, line in enumerate(main) if "SIGTERM" in line), len(main))]
    offending = [line for line in until_stop if "SIG_BLOCK" in line or "clone" in line or "vfork" in line]
    assert offending == []


def test_a_rule_edit_made_while_a_reload_loads_is_noticed_by_the_next_poll(tmp_path, monkeypatch):
    import argparse

    from mailward.config import load_settings
    from mailward.milter import service

    rules = tmp_path / "rules"
    rules.mkdir()
    rule = rules / "a.yar"
    rule.write_text("rule version1 { condition: false }\n")
    path = config(tmp_path, f'[signatures]\nrules_dirs = ["{rules}"]\n', workers=0)
    daemon = service.Daemon(argparse.Namespace(config=path), load_settings(path, {}), {}, None)
    real_build = service.build_runtime

    def build_while_the_admin_saves(*args, **kwargs):
        runtime = real_build(*args, **kwargs)  # the new rules are loaded here...
        time.sleep(0.01)
        rule.write_text("rule version3 { condition: false }\n")  # ...and the next save lands now
        return runtime

    monkeypatch.setattr(service, "build_runtime", build_while_the_admin_saves)
    monkeypatch.setattr(service, "install_log_handler", lambda *_: None)  # keep pytest's log capture
    try:
        rule.write_text("rule version2 { condition: false }\n")
        daemon.reload()
        assert service._rules_on_disk_now(daemon.rules_seen) != daemon.rules_seen  # so the poll reloads again
    finally:
        daemon.live.close()
