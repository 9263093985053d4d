"""Sender allow and block lists: the CLI, the store and audit trail, precedence, and the anti-spoofing rule."""

from __future__ import annotations

import json

import pytest

from mailward.actor import Actor
from mailward.cli.main import main
from mailward.config import load_settings
from mailward.envelope import Direction, Envelope
from mailward.incidents import open_incidents
from mailward.policy import Listed


@pytest.fixture
def run(tmp_path, capsys):
    cfg = tmp_path / "m.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')

    def call(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(cfg), *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    call.cfg = cfg
    return call


def test_allow_and_scoped_block_through_the_cli_are_listed_and_audited(run):
    code, out, _ = run(
        "allow",
        "--analyst",
        "ann",
        "add",
        "News@Partner.example",
        "--recipient",
        "example.org",
        "--reason",
        "newsletter we want",
    )
    assert code == 0 and "news@partner.example" in out
    assert run("allow", "add", "news@partner.example", "--recipient", "example.org", "--reason", "x")[0] == 3
    code, _, err = run("block", "add", "domain", "spam.example", "--recipient", "ceo@example.org", "--reason", "r")
    assert code == 0, err
    assert run("block", "add", "address", "192.0.2.1", "--recipient", "example.org", "--reason", "r")[0] == 1
    assert run("allow", "add", "not a sender", "--reason", "r")[0] == 1
    code, out, _ = run("allow", "list", "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert [(e["list"], e["scope"], e["sender"]) for e in entries] == [
        ("allow", "example.org", "news@partner.example"),
        ("block", "ceo@example.org", "spam.example"),
    ]
    assert entries[0]["created_by"] == "ann"
    assert run("block", "list", "--json")[1] == ""  # a per-recipient block refuses nobody at SMTP
    assert run("allow", "remove", "spam.example", "--recipient", "ceo@example.org")[0] == 3  # not an allow
    assert run("block", "remove", "domain", "spam.example", "--recipient", "ceo@example.org")[0] == 0
    assert run("allow", "remove", "news@partner.example", "--recipient", "example.org", "--reason", "done")[0] == 0
    assert run("allow", "list")[1].strip() == "no entries"
    code, out, _ = run("block", "history", "--json")
    trail = [(e["action"], e["kind"], e["value"], e["detail"]) for e in map(json.loads, out.splitlines())]
    assert trail == [
        ("allow-list-remove", "sender", "news@partner.example", "for example.org: done"),
        ("block-list-remove", "domain", "spam.example", "for ceo@example.org"),
        ("block-list-add", "domain", "spam.example", "for ceo@example.org: r"),
        ("allow-list-add", "sender", "news@partner.example", "for example.org: newsletter we want"),
    ]


def inbound(sender: str) -> Envelope:
    return Envelope(mail_from=sender, recipients=("a@example.org",), direction=Direction.INBOUND)


def test_most_specific_scope_then_sender_wins_and_allow_needs_authentication(tmp_path):
    settings = load_settings(None, {"state_dir": str(tmp_path / "state")})
    incidents = open_incidents(settings)
    ann = Actor("ann", "host")
    try:
        incidents.list_sender(Listed.BLOCK, "partner.example", "", "everyone blocks them", ann)
        incidents.list_sender(Listed.ALLOW, "partner.example", "example.org", "we trade with them", ann)
        incidents.list_sender(Listed.BLOCK, "bad@partner.example", "example.org", "this one spams", ann)
        incidents.list_sender(Listed.BLOCK, "partner.example", "ceo@example.org", "not the CEO", ann)
        signed = ("partner.example",)
        listed = incidents.listed
        assert listed(inbound("news@partner.example"), "a@example.org", signed) is Listed.ALLOW
        assert listed(inbound("news@mail.partner.example"), "a@sales.example.org", signed) is Listed.ALLOW
        assert listed(inbound("bad@partner.example"), "a@example.org", signed) is Listed.BLOCK
        assert listed(inbound("news@partner.example"), "ceo@example.org", signed) is Listed.BLOCK
        assert listed(inbound("news@partner.example"), "a@elsewhere.test", signed) is Listed.BLOCK
        # Anti-spoofing: a forged sender without SPF/DKIM/DMARC for its domain gets no allow.
        assert listed(inbound("news@partner.example"), "a@example.org", ()) is None
        assert listed(inbound("news@partner.example"), "a@example.org", ("evil.test",)) is None
        assert listed(inbound(""), "a@example.org", signed) is None  # bounces
        outbound = Envelope(mail_from="bad@partner.example", direction=Direction.OUTBOUND)
        assert listed(outbound, "a@example.org", signed) is None
    finally:
        incidents.close()
