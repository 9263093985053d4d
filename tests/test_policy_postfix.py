"""End to end through a real Postfix: one message, recipients with different policies, split by delrcpt."""

from __future__ import annotations

import json
import smtplib
from email import message_from_bytes

import pytest

from harness.postfix import wait_for
from mailward.cli.main import main
from support.mail import gtube_message, message

pytestmark = pytest.mark.postfix

# Spam is quarantined for everyone but remote.test, whose recipients get it tagged.
POLICY = '[incidents]\nrefresh = 0.2\n[[policy.recipient]]\nmatch = "remote.test"\nspam_action = "tag"\n'


def copies(postfix, message_id: str) -> dict[str, bytes]:
    """Every delivered copy of the message, by the recipient Postfix's virtual(8) wrote it for."""
    found = {}
    for path in (postfix.maildir / "new").glob("*") if (postfix.maildir / "new").exists() else ():
        raw = path.read_bytes()
        parsed = message_from_bytes(raw)
        if parsed.get("Message-ID", "").strip() == message_id:
            found[parsed["Delivered-To"]] = raw
    return found


def settled(postfix, event: dict) -> bool:
    """Postfix has finished with the message: every delivery made, its queue file removed."""
    return f"{event['email']['local_id']}: removed" in postfix.log()


def quarantined(cfg, capsys) -> list[dict]:
    assert main(["--config", str(cfg), "quarantine", "list", "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_recipients_with_different_policies_get_their_own_outcome(postfix, milter, tmp_path, capsys):
    cfg = tmp_path / "cli.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    # a@example.test alone has blocked the sender's domain: their copy counts as certain spam.
    assert (
        main(
            [
                "--config",
                str(cfg),
                "block",
                "add",
                "domain",
                "example.org",
                "--recipient",
                "a@example.test",
                "--reason",
                "unwanted",
            ]
        )
        == 0
    )
    capsys.readouterr()
    m = milter(POLICY)

    mid, raw = gtube_message()
    rcpts = ("ceo@example.test", "a@example.test", "b@remote.test")
    assert postfix.send(raw, rcpts=rcpts)[0] == 250
    event = m.event_where(lambda e: e.get("email", {}).get("message_id") == mid)
    assert event is not None and wait_for(lambda: settled(postfix, event)), postfix.log()[-3000:]
    assert event["mailward"]["held_recipients"] == ["ceo@example.test", "a@example.test"]
    delivered = copies(postfix, mid)
    assert list(delivered) == ["b@remote.test"], postfix.log()[-3000:]  # nothing for the others...
    assert message_from_bytes(delivered["b@remote.test"])["X-Mailward-Verdict"] == "tag"
    held = [r for r in quarantined(cfg, capsys) if r["id"] == event["mailward"]["quarantine_id"]]
    assert [r["envelope"]["recipients"] for r in held] == [["ceo@example.test", "a@example.test"]]  # ...kept once

    mid, raw = message()
    assert postfix.send(raw, rcpts=("a@example.test", "b@remote.test"))[0] == 250
    event = m.event_where(lambda e: e.get("email", {}).get("message_id") == mid)
    assert event is not None and wait_for(lambda: settled(postfix, event)), postfix.log()[-3000:]
    assert event["mailward"]["held_recipients"] == ["a@example.test"]
    delivered = copies(postfix, mid)
    assert list(delivered) == ["b@remote.test"]
    assert message_from_bytes(delivered["b@remote.test"])["X-Mailward-Verdict"] == "accept"
    [record] = [r for r in quarantined(cfg, capsys) if r["id"] == event["mailward"]["quarantine_id"]]
    assert record["envelope"]["recipients"] == ["a@example.test"] and record["reasons"] == ["blocked"]


@pytest.mark.parametrize(
    "written, held",
    [
        ("<@hop.example:ceo@example.test>", "ceo@example.test"),  # Postfix drops the route
        ("<ceo@example.test.>", "ceo@example.test."),  # and keeps the rest as written
        ("<CEO@EXAMPLE.TEST>", "CEO@EXAMPLE.TEST"),
    ],
)
def test_a_held_recipient_gets_no_copy_however_it_was_written(postfix, milter, written, held):
    """A delrcpt matches the recipient as Postfix recorded it. Named with the source route Postfix had
    dropped, or as {rcpt_addr} (resolved: domain lower-cased, trailing dot gone), it matched nothing,
    and the held recipient got the message as well as a quarantine record."""
    m = milter(POLICY)
    mid, raw = gtube_message()
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as smtp:
        smtp.ehlo("client.example.org")
        assert smtp.mail("sender@example.org")[0] == 250
        assert smtp.docmd(f"RCPT TO:{written}")[0] == 250
        assert smtp.rcpt("b@remote.test")[0] == 250
        assert smtp.data(raw)[0] == 250
    event = m.event_where(lambda e: e.get("email", {}).get("message_id") == mid)
    assert event is not None and wait_for(lambda: settled(postfix, event)), postfix.log()[-3000:]
    assert event["mailward"]["held_recipients"] == [held]
    assert list(copies(postfix, mid)) == ["b@remote.test"], postfix.log()[-3000:]


HELD_AT_REMOTE = '[[policy.recipient]]\nmatch = "remote.test"\nspam_action = "quarantine"\n'


def test_a_recipient_that_is_not_utf8_is_never_split_off(postfix, milter):
    """pymilter hands a recipient back as UTF-8 text: one written in other bytes could never be removed
    from the delivered copy. So the strictest verdict holds for everyone: the message is quarantined."""
    m = milter('[policy.inbound]\nspam_action = "tag"\n' + HELD_AT_REMOTE)
    mid, raw = gtube_message()
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as smtp:
        smtp.command_encoding = "latin-1"  # the raw byte 0xE9, as an 8-bit client sends it
        smtp.ehlo("client.example.org")
        assert smtp.mail("sender@example.org")[0] == 250
        assert smtp.rcpt("a@example.test")[0] == 250
        assert smtp.docmd("RCPT TO:<c\xe9@remote.test>")[0] == 250  # smtputf8_enable = no takes it
        assert smtp.data(raw)[0] == 250
    event = m.event_where(lambda e: e.get("email", {}).get("message_id") == mid)
    assert event is not None and event["mailward"]["verdict"] == "quarantine"
    assert postfix.milter_action(mid) == "discard" and copies(postfix, mid) == {}
