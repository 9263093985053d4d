"""End to end through a real Postfix and mailward-milter: hold and release exactly once, release marks used
once and only for their recipients, and Mailward's own alert mail not caught by the rules it reports."""

from __future__ import annotations

import smtplib
import subprocess
import time
from email import message_from_bytes

import pytest

from harness.postfix import wait_for
from mailward.cli.main import main as cli
from mailward.config import load_settings
from mailward.evidence import RELEASE_HEADER
from mailward.marks import key_path, load_release_key, release_mark
from mailward.quarantine import open_store
from support.mail import eicar_message, gtube_message

pytestmark = pytest.mark.postfix


def copies(postfix, needle: bytes) -> list[bytes]:
    new = postfix.maildir / "new"
    return [p.read_bytes() for p in new.glob("*") if needle in p.read_bytes()] if new.exists() else []


def queue_empty(postfix) -> bool:
    subprocess.run(["postqueue", "-c", str(postfix.conf), "-f"], capture_output=True)
    return not postfix.queue()


def test_release_with_hold_leaves_no_held_copy_and_delivers_once(postfix, milter, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAIL_CONFIG", str(postfix.conf))  # postsuper of the test's Postfix instance
    mid, qid, queue_id = _hold_one(postfix, milter)

    assert cli(["--config", str(tmp_path / "mailward.toml"), "quarantine", "release", qid]) == 0
    assert f"held copy {queue_id} deleted from Postfix's hold queue" in capsys.readouterr().out
    assert not postfix.queue("hold")  # the held copy is gone before ours goes out
    assert wait_for(lambda: copies(postfix, mid.encode())), postfix.log()[-2000:]
    # What the README used to suggest: release the hold queue. Nothing is left there to deliver twice.
    subprocess.run(["postsuper", "-H", "ALL", "hold"], capture_output=True, check=True)
    assert wait_for(lambda: queue_empty(postfix))
    [delivered] = copies(postfix, mid.encode())
    msg = message_from_bytes(delivered)
    assert msg["X-Mailward-Verdict"] == "tag" and "released" in msg["X-Mailward-Reasons"]
    history = [e.action for e in open_store(load_settings(str(tmp_path / "mailward.toml"))).history(qid)]
    assert history[-4:-2] == ["release-claim", "held-copy-deleted"]
    assert sorted(history[-2:]) == ["release", "release-mark-used"]


def _hold_one(postfix, milter) -> tuple[str, str, str]:
    """A spam message quarantined and held: (Message-ID, quarantine ID, Postfix queue ID)."""
    m = milter(
        f'[policy.inbound]\nspam_action = "quarantine"\n'
        f'[quarantine]\nhold = true\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.smtp_port}\n'
    )
    mid, raw = gtube_message()
    assert postfix.send(raw)[0] == 250
    held = wait_for(lambda: postfix.queue("hold"))
    assert len(held) == 1, postfix.log()[-2000:]
    qid = m.event_where(lambda e: e["mailward"]["verdict"] == "quarantine")["mailward"]["quarantine_id"]
    return mid, qid, held[0]["queue_id"]


def test_a_held_copy_released_behind_our_back_is_not_delivered_again(postfix, milter, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAIL_CONFIG", str(postfix.conf))
    config = str(tmp_path / "mailward.toml")
    mid, qid, queue_id = _hold_one(postfix, milter)
    subprocess.run(["postsuper", "-H", "ALL", "hold"], capture_output=True, check=True)  # what the README forbids
    assert wait_for(lambda: copies(postfix, mid.encode())), postfix.log()[-2000:]

    assert cli(["--config", config, "quarantine", "release", qid]) == 3
    err = capsys.readouterr().err
    assert f"no held copy {queue_id} in Postfix's hold queue" in err and "--without-held-copy" in err
    [last] = open_store(load_settings(config)).history(qid)[-1:]
    assert last.action == "release-failed" and "not delivered, so that nobody gets it twice" in last.detail
    assert wait_for(lambda: queue_empty(postfix)) and len(copies(postfix, mid.encode())) == 1

    # The analyst checked the mailboxes and insists: delivered, and the trail says how.
    assert cli(["--config", config, "quarantine", "release", qid, "--without-held-copy"]) == 0
    assert "delivered anyway as asked" in capsys.readouterr().out
    assert wait_for(lambda: len(copies(postfix, mid.encode())) == 2)


def test_a_release_retried_after_a_relay_failure_delivers_once(postfix, milter, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAIL_CONFIG", str(postfix.conf))
    config = tmp_path / "mailward.toml"
    mid, qid, queue_id = _hold_one(postfix, milter)
    unreachable = tmp_path / "unreachable.toml"  # the held copy goes first, then the relay fails
    unreachable.write_text(config.read_text().replace(f"relay_port = {postfix.smtp_port}", "relay_port = 9"))

    assert cli(["--config", str(unreachable), "quarantine", "release", qid]) == 1
    assert f"held copy {queue_id} deleted" in capsys.readouterr().err and not postfix.queue("hold")
    assert cli(["--config", str(config), "quarantine", "release", qid]) == 0
    assert f"held copy {queue_id} already deleted by an earlier attempt" in capsys.readouterr().out
    assert wait_for(lambda: copies(postfix, mid.encode())) and wait_for(lambda: queue_empty(postfix))
    assert len(copies(postfix, mid.encode())) == 1


def test_release_mark_is_used_once_and_only_for_its_recipients(postfix, milter, tmp_path):
    config = str(tmp_path / "mailward.toml")
    m = milter(
        f'[policy.inbound]\nspam_action = "quarantine"\n'
        f'[quarantine]\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.smtp_port}\n'
    )
    mid, raw = gtube_message()
    reply = postfix.send(raw)
    assert reply[0] == 250, (reply, m.log_path.read_text()[-3000:], postfix.log()[-2000:])
    qid = m.event_where(lambda e: e["mailward"]["verdict"] == "quarantine")["mailward"]["quarantine_id"]
    assert cli(["--config", config, "quarantine", "release", qid]) == 0
    assert wait_for(lambda: copies(postfix, mid.encode()))

    # The mark the release carried (the milter strips it from delivered mail), rebuilt from the key and the
    # time the store recorded: a replay of it, to the same or to other recipients, is quarantined again.
    settings = load_settings(config)
    store = open_store(settings)
    [used] = [e for e in store.history(qid) if e.action == "release-mark-used"]
    stamp = int(used.detail.split()[-1])
    stored = store.read(qid)
    mark = release_mark(load_release_key(key_path(settings)), qid, stored, ("user@example.test",), stamp)
    replay = f"{RELEASE_HEADER}: {mark}\r\n".encode() + stored
    for rcpts in (("user@example.test",), ("other@example.test",)):
        before = len(m.events())
        reply = postfix.send(replay, rcpts=rcpts)
        assert reply[0] == 250, (reply, m.log_path.read_text()[-3000:], postfix.log()[-2000:])
        event = wait_for(lambda before=before: m.events()[before:])[0]
        assert event["mailward"]["verdict"] == "quarantine" and event["mailward"]["released_from"] is None
    assert len(copies(postfix, mid.encode())) == 1


def test_alert_quoting_a_malware_finding_is_delivered_tagged(postfix, milter, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    # A local rule like the one that caught alerts in the field: it matches the alert's quote too.
    (rules / "local.yar").write_text('rule Local_Invoice_Com { strings: $a = "invoice.com" nocase condition: $a }\n')
    m = milter(
        f'[signatures]\nrules_dirs = ["{rules}"]\n'
        f'[alerts]\nemail_to = ["soc@example.test"]\nemail_from = "mailward@mailward.test"\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {postfix.smtp_port}\n'
    )
    mid, raw = eicar_message()
    assert postfix.send(raw)[0] == 550
    alert = wait_for(lambda: copies(postfix, b"[Mailward "), timeout=30)
    assert alert, postfix.log()[-3000:]
    msg = message_from_bytes(alert[0])
    assert "invoice.com" in msg.get_payload(decode=True).decode()
    assert msg["X-Mailward-Verdict"] == "tag" and "alert" in msg["X-Mailward-Reasons"]
    assert msg["X-Mailward-Alert-Mark"] is None  # our marks never reach the mailbox
    tagged = m.event_where(lambda e: "alert" in e["mailward"].get("reasons", ()))
    assert any(f["name"].endswith("Local_Invoice_Com") for f in tagged["mailward"]["findings"])
    alerts = [d for d in _log_docs(m) if d.get("event", {}).get("action") == "alert-malware"]
    assert len(alerts) == 1  # no alert about the alert

    # The same text without a valid mark (a forgery) is still rejected.
    forged = alert[0].replace(b"X-Mailward-Verdict", b"X-Old-Verdict")
    forged = b"X-Mailward-Alert-Mark: MW-1 %d %s\r\n" % (int(time.time()), b"0" * 64) + forged
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as smtp, pytest.raises(smtplib.SMTPDataError):
        smtp.sendmail("mailward@mailward.test", ["soc@example.test"], forged)


def _log_docs(m) -> list[dict]:
    import json

    return [json.loads(line) for line in m.log_path.read_text().splitlines() if line.startswith("{")]
