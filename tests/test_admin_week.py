"""An administrator's week in a minute and a half, against a real Postfix.

The milter runs as a service user with two scanning processes while mail
flows from two SMTP clients that retry on 4xx as an MTA would. Meanwhile:
a SIGHUP every second; the CLI, as root, labels and releases quarantined
mail, blocks a sender, trains and promotes a model; a rule file is edited
into a broken one and back; the milter is SIGKILLed and restarted; the
quarantine database is locked for longer than Postfix's milter timeout.

At the end every message is accounted for: delivered, quarantined or
rejected with a reply (after any number of tempfails), never twice; every
analyst action took effect within its poll interval and is still there
after the milter stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path

import pytest

from harness.milter import MilterProcess
from harness.postfix import Postfix, wait_for
from harness.service import interpreter_reachable, run_cli
from support.mail import EICAR, GTUBE, message

pytestmark = pytest.mark.postfix

TRAINING = Path(__file__).parent / "fixtures" / "training" / "layout"
MARKER = "WEEK-MARKER-7d1f0c"
GOOD_RULE = (
    f'rule week_marker {{ meta: category = "malware" severity = "high" strings: $a = "{MARKER}" condition: $a }}\n'
)
CONTENT_TIMEOUT = 12  # Postfix's milter_content_timeout for this instance
BLOCKED = "blocked@example.org"


@dataclass
class Sent:
    number: int
    kind: str
    message_id: str
    sender: str
    codes: list[int] = field(default_factory=list)

    @property
    def final(self) -> int:
        return self.codes[-1] if self.codes else 0


def build(number: int, kind: str, sender: str) -> tuple[str, bytes]:
    subject = f"week {number} {kind}"
    if kind == "spam":
        return message(body=f"Cheap watches!\n\n{GTUBE}\n", subject=subject, sender=sender)
    if kind == "virus":
        return message(
            subject=subject, sender=sender, attachments=(("invoice.com", EICAR, "application/octet-stream"),)
        )
    if kind == "marker":
        return message(body=f"Hello,\n{MARKER}\n", subject=subject, sender=sender)
    return message(body=f"Hello,\n\nminutes of meeting {number} are below.\n\nAnna\n", subject=subject, sender=sender)


class Load:
    """Two SMTP clients sending a mix in turn; a 4xx is retried (same bytes) until a final answer."""

    KINDS = ("clean", "spam", "clean", "virus", "clean", "marker")

    def __init__(self, postfix: Postfix):
        self.postfix = postfix
        self.sent: list[Sent] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(2)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self, timeout: float = 120) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), "a sender never got a final answer"

    def send_one(self, kind: str, sender: str = "anna@example.org") -> Sent:
        with self.lock:
            number = len(self.sent)
            mid, raw = build(number, kind, sender)
            record = Sent(number, kind, mid, sender)
            self.sent.append(record)
        deadline = time.monotonic() + 150
        while True:
            try:
                code, _ = self.postfix.send(raw, mail_from=sender)
            except (OSError, EOFError):  # e.g. the connection dropped: an MTA retries as for 4xx
                code = 421
            record.codes.append(code)
            if not 400 <= code < 500 or time.monotonic() > deadline:
                return record
            time.sleep(0.5)

    def _client(self, index: int) -> None:
        turn = 3 * index
        while not self.stop.is_set():
            self.send_one(self.KINDS[turn % len(self.KINDS)])
            turn += 1


def maildir_copies(postfix: Postfix) -> Counter:
    copies: Counter = Counter()
    new = postfix.maildir / "new"
    for path in new.glob("*") if new.exists() else ():
        copies[message_from_bytes(path.read_bytes()).get("Message-ID", "").strip()] += 1
    return copies


def hold_database_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holds the quarantine database's write lock (as a stuck backup job would)."""
    code = (
        "import sqlite3, sys, time\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)\n"
        "c.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "c.execute('ROLLBACK')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def week(service_user):
    svc = service_user
    base = Path(tempfile.mkdtemp(prefix="mailward-week-", dir="/tmp"))
    os.chmod(base, 0o755)
    postfix = Postfix.create(base / "run" / "milter.sock")
    postfix.configure(
        f"milter_content_timeout = {CONTENT_TIMEOUT}s",
        f"milter_command_timeout = {CONTENT_TIMEOUT}s",
        "smtpd_error_sleep_time = 0",
    )
    postfix.start()
    yield svc, base, postfix
    postfix.destroy()
    shutil.rmtree(base, ignore_errors=True)


def test_an_admins_week_loses_nothing_and_duplicates_nothing(week):
    svc, base, postfix = week
    state, rules = base / "state", base / "rules"
    state.mkdir(mode=0o700)
    os.chown(state, svc.pw_uid, svc.pw_gid)
    rules.mkdir()
    rule_file = rules / "local.yar"
    rule_file.write_text(GOOD_RULE)
    log_path = base / "milter.log"  # created by the milter as root, handed to the service user
    common = (
        f'state_dir = "{state}"\n'
        f'[policy.inbound]\nspam_action = "quarantine"\n'
        f"[model]\ncheck_interval = 0.5\n"
        f"[incidents]\nrefresh = 0.5\n"
        f'[signatures]\nrules_dirs = ["{rules}"]\n'
        f"[reputation]\nenabled = false\n"
        f'[quarantine]\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.smtp_port}\nwrite_timeout = 3.0\n'
    )
    config = base / "mailward.toml"
    config.write_text(
        common + f'[milter]\nuser = "{svc.pw_name}"\nsocket = "unix:{postfix.milter_socket}"\n'
        f"workers = 2\nmessage_deadline = 7.0\n"
        f'[logging]\nfile = "{log_path}"\nlevel = "info"\n'
    )
    prefix = interpreter_reachable(base)
    sets = base / "sets"
    shutil.copytree(TRAINING, sets)
    os.chmod(sets, 0o755)
    for path in sets.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)

    milter = MilterProcess(config, postfix.milter_socket, log_path, prefix)
    milter.start()
    log_text = lambda: log_path.read_text(errors="replace")  # noqa: E731
    load = Load(postfix)
    reloading = threading.Event()
    reload_count = 0

    def reloads():
        nonlocal reload_count
        while not load.stop.wait(1.0):
            if reloading.is_set() and milter.proc.poll() is None:
                milter.signal(signal.SIGHUP)
                reload_count += 1

    reloader = threading.Thread(target=reloads, daemon=True)
    load.start()
    reloading.set()
    reloader.start()
    figures: dict[str, float] = {}
    try:
        # Monday: review. Label a quarantined message and release it, as root.
        held = wait_for(lambda: [r for r in _records(prefix, config) if r["status"] == "held"], 30)
        assert held, log_text()[-3000:]
        released = held[0]
        run_cli(prefix, config, "quarantine", "label", released["id"], "spam")
        run_cli(prefix, config, "quarantine", "release", released["id"])
        released_mid = next(s.message_id for s in load.sent if released["subject"] == f"week {s.number} {s.kind}")

        # Tuesday: block a sender; it is refused within the block list's refresh interval.
        blocked_at = time.monotonic()
        run_cli(prefix, config, "block", "add", "sender", BLOCKED, "--reason", "phishing campaign")
        refused = wait_for(lambda: 500 <= load.send_one("clean", BLOCKED).final < 600, 10)
        figures["block_effective_s"] = time.monotonic() - blocked_at
        assert refused

        # Wednesday: train on reviewed mail and promote; the milter loads it within its check interval.
        candidate = json.loads(run_cli(prefix, config, "train", str(sets), "--json").stdout)["candidate"]
        promoted_at = time.monotonic()
        run_cli(prefix, config, "model", "promote", candidate, "--force")
        assert wait_for(lambda: f"spam model {candidate}" in log_text(), 20), log_text()[-3000:]
        figures["model_effective_s"] = time.monotonic() - promoted_at

        # Thursday: a rule file edited into a broken one keeps the last good rules; then fixed.
        rule_file.write_text(GOOD_RULE + "rule broken {\n")
        assert wait_for(lambda: "keeping the last good rules" in log_text(), 30), log_text()[-3000:]
        assert 500 <= load.send_one("marker").final < 600
        rule_file.write_text(GOOD_RULE)

        # Friday: the milter is killed under load and started again.
        reloading.clear()
        milter.proc.send_signal(signal.SIGKILL)
        milter.proc.wait()
        tempfails = lambda: sum(400 <= c < 500 for s in list(load.sent) for c in list(s.codes))  # noqa: E731
        before = tempfails()
        assert wait_for(lambda: tempfails() > before, 30)  # mail meanwhile: Postfix answers 4xx (default action)
        milter.start()
        reloading.set()

        # Saturday: a backup job holds the quarantine database longer than Postfix waits for the milter.
        locker = hold_database_lock(state / "quarantine" / "quarantine.sqlite3", CONTENT_TIMEOUT + 3)
        during_lock = [load.send_one("spam") for _ in range(2)]
        locker.wait(60)
        time.sleep(2)
    finally:
        load.finish()
        reloading.clear()
        reloader.join(5)
        assert wait_for(lambda: not postfix.queue(), 60), postfix.queue()
        milter.stop()

    # Sunday: the accounting.
    copies = maildir_copies(postfix)
    records = _records(prefix, config)
    stored = Counter(r["subject"] for r in records)
    outcome: Counter = Counter()
    for s in load.sent:
        subject = f"week {s.number} {s.kind}"
        delivered, kept = copies[s.message_id], stored[subject]
        assert delivered <= 1 and kept <= 1, f"{subject}: {delivered} delivered, {kept} stored (codes {s.codes})"
        if 400 <= s.final < 500:
            pytest.fail(f"{subject} never got a final answer: {s.codes}")
        if s.final >= 500:
            assert delivered == 0, f"{subject} was rejected and delivered"
            outcome["rejected"] += 1
        elif kept:
            assert delivered == (1 if s.message_id == released_mid else 0), f"{subject}: stored and delivered"
            outcome["quarantined"] += 1
        else:
            assert delivered == 1, f"{subject} was accepted but is neither delivered nor stored: {s.codes}"
            outcome["delivered"] += 1
        if any(400 <= c < 500 for c in s.codes):
            outcome["tempfailed, then final"] += 1
        if s.sender != BLOCKED:  # mail from the blocked sender may precede the block
            assert (s.kind in ("virus", "marker")) == (s.final >= 500), f"{subject}: {s.codes}"
        if s.kind == "spam" and s.final < 500:
            assert kept == 1, f"{subject} was accepted but not kept in the quarantine"
    assert copies[released_mid] == 1
    assert all(s.final == 250 for s in during_lock)
    assert outcome["tempfailed, then final"] >= 1
    duplicated = sum(1 for n in copies.values() if n > 1)
    assert duplicated == 0

    # Every analyst action is still there after the milter stopped.
    blocks = [json.loads(line) for line in run_cli(prefix, config, "block", "list", "--json").stdout.splitlines()]
    assert any(b.get("value") == BLOCKED for b in blocks)
    history = run_cli(prefix, config, "quarantine", "history", released["id"], "--json").stdout
    assert '"label"' in history and '"release"' in history
    assert candidate in run_cli(prefix, config, "model", "list").stdout
    foreign = [str(p) for p in [state, *state.rglob("*")] if p.stat().st_uid != svc.pw_uid]
    assert foreign == []
    print(
        f"\nadmin's week: sent {len(load.sent)}; {dict(outcome)}; duplicated {duplicated}; "
        f"reloads {reload_count}; block took effect in {figures['block_effective_s']:.1f} s, "
        f"model in {figures['model_effective_s']:.1f} s"
    )


def _records(prefix: tuple[str, ...], config: Path) -> list[dict]:
    out = run_cli(prefix, config, "quarantine", "list", "--json", "--limit", "100000").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]
