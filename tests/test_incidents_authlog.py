"""Failed SMTP logins: Postfix's log lines, a follower that survives rotation, blocking after the limit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailward.cli.main import main as cli
from mailward.config import load_settings
from mailward.incidents import SubjectKind, open_incidents
from mailward.incidents.authlog import LogFollower, failed_login_address, watch
from support.incidents import FAILED_LOGIN_LINES, OTHER_LINES, failed_line, wait_for
from support.quarantine import FakeClock, SmtpSink


def test_failed_login_lines_and_nothing_else():
    assert [failed_login_address(line) for line in FAILED_LOGIN_LINES] == [
        "203.0.113.5",
        "203.0.113.5",
        "2001:db8::25",
        "127.0.0.1",
    ]
    # Including one whose client-chosen HELO text imitates a failed login.
    assert [failed_login_address(line) for line in OTHER_LINES] == [None] * len(OTHER_LINES)


def test_only_smtpds_own_syslog_lines_count():
    fake = "postfix/smtpd[1]: warning: unknown[198.51.100.10]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"
    forged = [
        # Dovecot logs the login name a client chose, with no [pid] before it (the audit's r1).
        f"Nov 22 19:21:00 mx dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<x {fake}>, "
        "method=PLAIN, rip=203.0.113.66, lip=192.0.2.1, TLS, session=<abc0>",
        f"Nov 22 19:21:01 mx sshd[77]: Invalid user {fake} from 203.0.113.66 port 22",
        f"2026-11-22T19:21:02.5+00:00 mx dovecot: auth: user=<{fake}>",
        f"Nov 22 19:21:03 mx postfix/cleanup[5]: 4ABC: warning: header Subject: {fake}",
        fake,  # no syslog header at all
    ]
    assert [failed_login_address(line) for line in forged] == [None] * len(forged)
    genuine = [
        "Nov  2 09:20:01 mx postfix/smtpd[12]: warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: "
        "UGFzc3dvcmQ6",
        "Nov 02 09:20:01 mx.example.org postfix-out/submission/smtpd[12]: warning: a.example[192.0.2.2]:4711: "
        "SASL PLAIN authentication failed: authentication failure",
        "2026-11-22T19:20:04+0000 mx postfix/smtps/smtpd[12]: warning: unknown[192.0.2.3]: SASL LOGIN "
        "authentication failed: UGFzc3dvcmQ6",  # journalctl -o short-iso
        "Nov 22 19:20:01.123456 mx postfix/smtpd[12]: warning: unknown[192.0.2.4]: SASL LOGIN authentication "
        "failed: UGFzc3dvcmQ6",  # journalctl -o short-precise
    ]
    assert [failed_login_address(line) for line in genuine] == [f"192.0.2.{n}" for n in range(1, 5)]


def _failure(reason: str) -> str:
    return (
        "Nov 22 19:21:00 mx postfix/submission/smtpd[30]: warning: office.example.org[198.51.100.20]: "
        f"SASL PLAIN authentication failed: {reason}"
    )


def test_only_wrong_credentials_count_not_auth_backend_outages():
    wrong_credentials = [
        "authentication failure",  # Cyrus
        "authentication failure, sasl_username=alice@example.org",  # Cyrus sasldb, Postfix 3.7 (Debian)
        "(reason unavailable), sasl_username=bob",  # Dovecot, Postfix >= 3.9
        "",  # Dovecot, Postfix < 3.9
        "UGFzc3dvcmQ6",  # Dovecot, Postfix < 3.9: the LOGIN challenge "Password:" echoed
        "VXNlcm5hbWU6, sasl_username=(unavailable)",
    ]
    assert {failed_login_address(_failure(r)) for r in wrong_credentials} == {"198.51.100.20"}
    assert failed_login_address(_failure("").rstrip()) == "198.51.100.20"  # a trailing blank stripped
    not_guesses = [
        "Connection lost to authentication server",  # the audit's r12: Dovecot's auth server restarted
        "Connection lost to authentication server, sasl_username=authentication failure",  # the client's name
        "Can't connect to authentication server",
        "generic failure, sasl_username=alice",  # Cyrus: sasldb unreadable, saslauthd away (454, right password)
        "Authentication backend error",
        "transient failure (e.g., weak key)",
        "remote authentication server unavailable",
        "no memory available",
        "Invalid base64 data in initial response",
        "Invalid authentication mechanism: 'X'",
        "account disabled",
        "authentication failure x",
    ]
    assert [failed_login_address(_failure(r)) for r in not_guesses] == [None] * len(not_guesses)


def test_an_auth_server_outage_blocks_nobody(tmp_path, capsys):
    log = tmp_path / "mail.log"
    log.write_text("".join(_failure("Connection lost to authentication server") + "\n" for _ in range(10)))
    state = tmp_path / "state"
    assert cli(["--state-dir", str(state), "watch-auth", "--log", str(log), "--once"]) == 0
    assert cli(["--state-dir", str(state), "block", "list", "--kind", "address"]) == 0
    assert "198.51.100.20" not in capsys.readouterr().out


class Follow:
    """Runs a follower in a thread and collects its lines."""

    def __init__(self, path: Path):
        self.lines: list[str] = []
        self.stop = threading.Event()
        follower = LogFollower(path, offset=path.stat().st_size, poll=0.02)
        self.thread = threading.Thread(target=lambda: self.lines.extend(follower.lines(self.stop)))
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(5)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()


def test_follower_handles_growth_partial_lines_rotation_and_truncation(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("old line before we started\n")
    follow = Follow(log)
    try:
        _append(log, "one\ntw")
        assert wait_for(lambda: follow.lines == ["one"])
        _append(log, "o\n")
        assert wait_for(lambda: follow.lines == ["one", "two"])
        # logrotate: rename, the writer finishes a line in the old file, then a new file appears.
        os.rename(log, tmp_path / "mail.log.1")
        _append(tmp_path / "mail.log.1", "three\n")
        log.write_text("four\n")
        assert wait_for(lambda: follow.lines == ["one", "two", "three", "four"])
        # copytruncate (noticed because the file is now shorter than what was read)
        with open(log, "w"):
            pass
        _append(log, "5\n")
        assert wait_for(lambda: follow.lines[-1:] == ["5"])
    finally:
        follow.close()
    assert "old line before we started" not in follow.lines


def _opened_by_us(path: Path) -> bool:
    """True when this process holds ``path`` open (the follower's thread has switched to it)."""
    wanted = path.stat()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (wanted.st_dev, wanted.st_ino):
            return True
    return False


def test_lines_written_to_the_renamed_file_after_the_new_one_appeared_are_read_once(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("")
    follow = Follow(log)
    try:
        writer = open(log, "a", buffering=1)  # rsyslog's descriptor
        writer.write("before rotation\n")
        assert wait_for(lambda: follow.lines == ["before rotation"])
        os.rename(log, tmp_path / "mail.log.1")  # logrotate's create: rename, a new empty file
        log.write_text("")
        assert wait_for(lambda: _opened_by_us(log))  # the follower has switched to the new file
        writer.write("old file, before the HUP 1\n")
        writer.write("old file, before the HUP 2\n")
        assert wait_for(lambda: len(follow.lines) == 3)
        writer.close()  # postrotate: the writer reopens by name
        _append(log, "after the HUP\n")
        assert wait_for(lambda: len(follow.lines) == 4)
        _append(tmp_path / "mail.log.1", "too late: nobody writes here any more\n")
        _append(log, "next\n")
        assert wait_for(lambda: len(follow.lines) >= 5)
    finally:
        follow.close()
    assert follow.lines == [
        "before rotation",
        "old file, before the HUP 1",
        "old file, before the HUP 2",
        "after the HUP",
        "next",
    ]


def test_ten_failures_block_the_address_and_alert(tmp_path):
    clock = FakeClock()
    with SmtpSink() as sink:
        cfg = tmp_path / "m.toml"
        cfg.write_text(
            f'state_dir = "{tmp_path / "state"}"\n[alerts]\nemail_to = ["soc@example.test"]\n'
            f'smtp_host = "127.0.0.1"\nsmtp_port = {sink.port}\n'
        )
        incidents = open_incidents(load_settings(cfg), clock=clock)
        log = tmp_path / "mail.log"
        log.write_text(failed_line("203.0.113.5", 99) + "\n")  # before the follower started: not news
        seen: list[str] = []
        stop = threading.Event()
        start = log.stat().st_size
        follower = threading.Thread(
            target=watch,
            args=(
                LogFollower(log, offset=start, poll=0.02),
                lambda a: seen.append(a) or incidents.failed_login(a),
                stop,
            ),
        )
        follower.start()
        try:
            _append(
                log,
                "".join(
                    line + "\n"
                    for line in [failed_line("203.0.113.5", n) for n in range(9)]
                    + list(OTHER_LINES)
                    + [FAILED_LOGIN_LINES[2]]
                ),
            )
            assert wait_for(lambda: len(seen) == 10)
            assert incidents.client_block("203.0.113.5") is None  # 9 < 10
            clock.now += 30
            _append(log, failed_line("203.0.113.5", 9) + "\n")
            assert wait_for(lambda: len(seen) == 11)
        finally:
            stop.set()
            follower.join(5)
        block = incidents.client_block("203.0.113.5")
        assert block is not None and block.expires_at == pytest.approx(clock.now + 86400)
        assert "10 failed SMTP logins" in block.reason and incidents.client_block("2001:db8::25") is None
        assert incidents.alerts.drain(10)
        incidents.close()
        [(_, _, raw)] = sink.received
    assert b"Address 203.0.113.5 blocked after repeated failed logins" in raw
    assert block.incident_id.encode() in raw


def test_failures_outside_the_window_or_from_exempt_networks_never_block(tmp_path):
    clock = FakeClock()
    settings = load_settings(
        None, {"state_dir": str(tmp_path / "state"), "incidents": {"auth_failures": 3, "auth_window": 60.0}}
    )
    incidents = open_incidents(settings, clock=clock)
    for _ in range(5):
        assert incidents.failed_login("192.0.2.9") is None
        clock.now += 31  # never 3 within 60 s
    for _ in range(5):
        assert incidents.failed_login("127.0.0.1") is None  # loopback (webmail) is exempt by default
    assert incidents.failed_login("unknown") is None
    for _ in range(2):
        incidents.failed_login("192.0.2.10")
    assert incidents.failed_login("192.0.2.10").origin.value == "auth-failures"
    incidents.close()


def test_hosts_sharing_postgresql_count_and_block_together(fresh_pg_dsn, tmp_path):
    settings = load_settings(
        None,
        {
            "state_dir": str(tmp_path / "state"),
            "quarantine": {"backend": "postgresql", "dsn": fresh_pg_dsn},
            "incidents": {"refresh": 0.0},
        },
    )
    mx1, mx2 = open_incidents(settings), open_incidents(settings)
    for _ in range(5):
        mx1.failed_login("203.0.113.99")
        mx2.failed_login("203.0.113.99")  # 10 in all, half on each host
    assert mx1.client_block("203.0.113.99") is not None and mx2.client_block("203.0.113.99") is not None
    assert len(mx1.store.blocks(SubjectKind.ADDRESS)) == 1
    assert not (tmp_path / "state" / "incidents.sqlite3").exists()
    mx1.close()
    mx2.close()


def test_watch_auth_command_reads_a_log_once(tmp_path, capsys):
    log = tmp_path / "mail.log"
    log.write_text("".join(failed_line("203.0.113.7", n) + "\n" for n in range(10)))
    state = tmp_path / "state"
    assert cli(["--state-dir", str(state), "watch-auth", "--log", str(log), "--once"]) == 0
    assert cli(["--state-dir", str(state), "block", "list", "--kind", "address"]) == 0
    out = capsys.readouterr().out
    assert "203.0.113.7" in out and "auth-failures" in out


@pytest.mark.parametrize("problem", ["missing", "a directory"])
def test_watch_auth_once_on_a_log_it_cannot_read_ends_with_an_error(tmp_path, problem):
    log = tmp_path / "mail.log"
    if problem == "a directory":
        log.mkdir()  # unreadable even for root
    done = subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--state-dir", str(tmp_path / "state")]
        + ["watch-auth", "--log", str(log), "--once"],
        capture_output=True,
        text=True,
        timeout=60,  # it waited for the file for ever
    )
    assert done.returncode == 1
    assert f"mailward: cannot read {log}: " in done.stderr


def test_an_unreadable_log_is_reported_once_until_it_can_be_read_again(tmp_path, caplog):
    log = tmp_path / "mail.log"
    log.mkdir()
    lines: list[str] = []
    stop = threading.Event()
    follower = LogFollower(log, offset=0, poll=0.01)
    thread = threading.Thread(target=lambda: lines.extend(follower.lines(stop)))
    with caplog.at_level(logging.INFO, logger="mailward.incidents.authlog"):
        thread.start()
        try:
            time.sleep(0.3)  # some 30 polls
            log.rmdir()
            log.write_text("readable now\n")
            assert wait_for(lambda: lines == ["readable now"])
        finally:
            stop.set()
            thread.join(5)
    said = [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records]
    assert said == [("ERROR", f"cannot read {log}: Is a directory"), ("INFO", f"can read {log} again")]
