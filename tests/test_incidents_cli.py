"""`mailward block`: add, list, remove and history, with expiry, reasons, audit and exit codes."""

from __future__ import annotations

import json

import pytest

from mailward.cli.block import duration
from mailward.cli.main import main
from mailward.config import load_settings
from mailward.incidents import Origin, SubjectKind, open_incidents
from support.incidents import WebhookReceiver


@pytest.fixture
def run(tmp_path, capsys):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')

    def call(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(cfg), "block", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    call.cfg = cfg
    return call


def test_add_list_remove_history(run):
    code, out, _ = run(
        "--analyst", "ann", "add", "sender", "<Spoof@Example.ORG>", "--reason", "CEO fraud", "--for", "12h"
    )
    assert code == 0 and "spoof@example.org" in out
    code, _, err = run("add", "sender", "spoof@example.org", "--reason", "again")
    assert code == 3 and "already blocked" in err
    run("add", "network", "203.0.113.0/24", "--reason", "scanner")
    code, out, _ = run("list", "--json")
    blocks = [json.loads(line) for line in out.splitlines()]
    assert [(b["kind"], b["value"]) for b in blocks] == [("network", "203.0.113.0/24"), ("sender", "spoof@example.org")]
    sender = blocks[1]
    assert sender["expires_at"] - sender["created_at"] == pytest.approx(12 * 3600, abs=5)
    assert sender["created_by"] == "ann" and sender["reason"] == "CEO fraud"
    code, out, _ = run("--analyst", "bob", "remove", "sender", "spoof@example.org", "--reason", "false alarm")
    assert code == 0 and "lifted by bob" in out
    code, _, err = run("remove", "sender", "spoof@example.org")
    assert code == 3 and "no active block" in err
    code, out, _ = run("list", "--kind", "sender")
    assert out.strip() == "no blocks"
    code, out, _ = run("list", "--all", "--kind", "sender")
    assert "lifted by bob" in out
    code, out, _ = run("history", "sender", "SPOOF@example.org", "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["action"], e["actor"]) for e in entries] == [("remove", "bob"), ("add", "ann")]
    assert entries[0]["detail"] == "false alarm" and entries[1]["detail"].startswith("analyst: CEO fraud (until 20")


def test_bad_input_fails_cleanly(run):
    code, out, err = run("add", "address", "not-an-ip", "--reason", "x")
    assert (code, out) == (1, "") and err.startswith("mailward: block add: 'not-an-ip' ")  # one line, no traceback
    assert err.count("\n") == 1
    code, _, err = run("remove", "network", "\x1b[2Jnot-a-network")
    assert code == 1 and "\x1b" not in err and err.startswith("mailward: block remove: ")
    assert run("add", "domain", "localhost", "--reason", "x")[0] == 1
    code, _, err = run("add", "account", "mallory", "--reason", "x", "--for", "forever")
    assert code == 1 and "duration" in err
    with pytest.raises(SystemExit):
        run("add", "mailbox", "x", "--reason", "x")  # not a kind


@pytest.mark.parametrize(
    "kind,value",
    [
        ("sender", "@"),
        ("sender", "a@"),
        ("sender", "@example.org"),
        ("sender", "a b@example.org"),
        ("sender", "ann@example.org\nX-Injected: 1"),
        ("sender", "\u202eann@example.org"),
        ("domain", "exa mple.com"),
        ("domain", "exam\nple.org"),
        ("domain", "ann@example.org"),
        ("account", "al\nice"),
        ("account", "al\x1bice"),
    ],
)
def test_a_block_no_message_can_match_is_refused(run, kind, value):
    code, out, err = run("add", kind, value, "--reason", "x")
    assert (code, out) == (1, "") and err.startswith("mailward: block add: ") and err.count("\n") == 1
    assert run("list")[1].strip() == "no blocks"


@pytest.mark.parametrize("length", ["0m", "0s", "0.0h", "999999999999999999999d", "522w"])
def test_a_block_for_no_time_or_past_ten_years_is_refused(run, length):
    code, out, err = run("add", "account", "mallory", "--reason", "x", "--for", length)
    assert (code, out) == (1, "") and "at most 10 years" in err and err.count("\n") == 1
    assert run("list")[1].strip() == "no blocks"
    assert run("add", "account", "mallory", "--reason", "x", "--for", "520w")[0] == 0


def test_an_analyst_block_is_alerted(run):
    with WebhookReceiver() as hook:
        with open(run.cfg, "a") as fh:
            fh.write(f'[alerts]\nwebhook_url = "{hook.url}"\n')
        assert run("add", "account", "mallory", "--reason", "phished")[0] == 0
        [alert] = hook.received  # the CLI waits for its alerts before exiting
    assert alert["kind"] == "block" and alert["subject"] == "account mallory"
    assert alert["details"]["reason"] == "phished"


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("90s", 90)])
def test_durations(text, seconds):
    assert duration(text) == seconds


def test_an_expired_block_is_listed_as_expired_with_its_end(run, tmp_path):
    """r11: a block that simply expired was listed as "lifted by  -"; one a new block replaced as bare "expired"."""
    incidents = open_incidents(load_settings(run.cfg))
    try:
        store = incidents.store
        for value in ("192.0.2.50", "192.0.2.51"):
            store.add_block(SubjectKind.ADDRESS, value, Origin.ANALYST, "test", "MW-1", "ann", "ws", expires_at=1.0e9)
        store.add_block(SubjectKind.ADDRESS, "192.0.2.51", Origin.ANALYST, "again", "MW-2", "ann", "ws")  # marks it
    finally:
        incidents.close()
    code, out, _ = run("list", "--all")
    lines = [line for line in out.splitlines() if "192.0.2.5" in line]
    assert code == 0 and len(lines) == 3 and "lifted by" not in out
    assert sum(line.endswith(", expired 2001-09-09 01:46:40Z") for line in lines) == 2
    assert lines[0].endswith(", active")
