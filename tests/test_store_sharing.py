"""A long-lived process that reloads its stores, and CLI processes beside it: one database, forever.

Real processes on real SQLite files: ``store_holder.py`` plays the milter
(opens the stores, opens them again as a reload does, keeps writing) while
``mailward`` CLI commands run and exit in other processes. Closing a second
descriptor of the database file in the holder used to drop its POSIX locks,
so the next CLI process's last connection checkpointed and unlinked the WAL
under it: two databases from then on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HOLDER = Path(__file__).parent / "store_holder.py"
ROUNDS = 3


class Holder:
    def __init__(self, state: Path):
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.ask_line() == "ready"

    def ask_line(self):
        line = self.proc.stdout.readline()
        assert line, f"store holder exited with {self.proc.wait()}"
        return json.loads(line)

    def ask(self, command: str):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.ask_line()

    def deleted_files(self) -> list[str]:
        return deleted_databases(self.proc.pid)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def deleted_databases(pid: int) -> list[str]:
    """Database files a process still has open although their name is gone (a forked -wal looks like this)."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except FileNotFoundError:
            continue
    return [t for t in targets if t.endswith(" (deleted)") and ".sqlite3" in t]


def cli(state: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "mailward.cli.main", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def cli_ids(state: Path) -> set[str]:
    return {
        json.loads(line)["id"]
        for line in cli(state, "quarantine", "list", "--json", "--limit", "100000").splitlines()
        if line.strip()
    }


def cli_blocks(state: Path) -> set[str]:
    return {json.loads(line)["value"] for line in cli(state, "block", "list", "--json").splitlines() if line.strip()}


@pytest.fixture
def holder(tmp_path):
    h = Holder(tmp_path / "state")
    yield h
    h.close()


def test_reloads_beside_cli_processes_keep_one_quarantine(holder, tmp_path):
    state = tmp_path / "state"
    held: list[str] = []
    labelled: list[str] = []
    for round_ in range(ROUNDS):
        assert holder.ask("open") == round_ + 2  # a reload opens the store again
        held.append(holder.ask(f"put after reload {round_}"))
        held.append(holder.ask(f"old-put old store {round_}"))  # the pre-reload store still works
        assert cli_ids(state) >= set(held)  # the CLI sees what the "milter" stored
        cli(state, "quarantine", "label", held[-1], "spam")  # and what the CLI writes...
        labelled.append(held[-1])
        assert holder.ask(f"label {held[-1]}") == "spam"  # ...the "milter" sees
        assert holder.deleted_files() == []  # no -wal unlinked under the live process
    assert set(holder.ask("ids")) == set(held) == cli_ids(state)
    for qid in labelled:
        assert holder.ask(f"label {qid}") == "spam"
    holder.close()
    assert cli_ids(state) == set(held)  # nothing lost when the "milter" stops
    for qid in labelled:
        assert json.loads(cli(state, "quarantine", "show", qid, "--json").splitlines()[0])["label"] == "spam"


def test_reloads_beside_cli_processes_keep_one_block_list(holder, tmp_path):
    state = tmp_path / "state"
    mine: set[str] = set()
    analysts: set[str] = set()
    for round_ in range(ROUNDS):
        assert holder.ask("open") == round_ + 2
        mine.add(holder.ask(f"block 192.0.2.{round_ + 1}"))
        cli(state, "block", "add", "address", f"198.51.100.{round_ + 1}", "--reason", "analyst")
        analysts.add(f"198.51.100.{round_ + 1}")
        assert cli_blocks(state) == mine | analysts  # the CLI sees the "milter's" blocks...
        assert set(holder.ask("blocks")) == mine | analysts  # ...and the "milter" the analysts'
        assert holder.deleted_files() == []
    cli(state, "block", "remove", "address", "198.51.100.1")
    assert set(holder.ask("blocks")) == (mine | analysts) - {"198.51.100.1"}
    holder.close()
    assert cli_blocks(state) == (mine | analysts) - {"198.51.100.1"}
    history = cli(state, "block", "history", "--json")
    assert len([line for line in history.splitlines() if line.strip()]) == 2 * ROUNDS + 1  # no audit row lost


def _refused(postfix, raw: bytes) -> bool:
    """Whether Postfix refuses the message for good (a blocked client is turned away at connect)."""
    import smtplib

    try:
        return postfix.send(raw)[0] >= 500
    except smtplib.SMTPConnectError as exc:
        return exc.smtp_code >= 500


@pytest.mark.postfix
def test_real_milter_reloads_beside_cli_processes_and_enforces_their_writes(postfix, milter, tmp_path):
    from support.mail import eicar_message, message

    m = milter('[policy.inbound]\nmalware_action = "quarantine"\n[incidents]\nrefresh = 0.5\n')
    state = tmp_path / "state"
    stored: set[str] = set()
    for _ in range(ROUNDS):
        reloads = m.log_path.read_text().count("reloaded")
        m.signal(signal.SIGHUP)
        deadline = time.monotonic() + 120  # a reload rebuilds rules and model
        while m.log_path.read_text().count("reloaded") == reloads:
            assert time.monotonic() < deadline, "the milter did not reload"
            time.sleep(0.1)
        assert postfix.send(eicar_message()[1])[0] == 250
        new = cli_ids(state) - stored  # the CLI sees what the milter stored...
        assert len(new) == 1
        stored |= new
        cli(state, "quarantine", "label", next(iter(new)), "spam")
        assert deleted_databases(m.proc.pid) == []  # ...and the milter's WAL is still the one
    cli(state, "block", "add", "address", "127.0.0.1", "--reason", "analyst block after reloads")
    deadline = time.monotonic() + 60
    while not _refused(postfix, message()[1]):  # the analyst's block takes effect
        assert time.monotonic() < deadline, "the analyst's block was never enforced"
        time.sleep(0.2)
    assert deleted_databases(m.proc.pid) == []
    m.stop()
    assert cli_ids(state) == stored  # nothing overwritten at the milter's stop
    for qid in stored:
        assert json.loads(cli(state, "quarantine", "show", qid, "--json").splitlines()[0])["label"] == "spam"
    assert cli_blocks(state) == {"127.0.0.1"}
