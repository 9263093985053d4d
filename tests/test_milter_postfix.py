"""End to end: a real Postfix on 127.0.0.1 talking to a real mailward-milter over a unix socket."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import threading
import time
from email import message_from_bytes

import pytest

from support.mail import eicar_message, gtube_message, message

pytestmark = pytest.mark.postfix

INTERNALS = re.compile(r"EICAR|yara|Traceback|Exception|pymilter|rules/", re.I)


def test_clean_message_is_delivered_with_headers(postfix, milter):
    m = milter()
    mid, raw = message()
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None, postfix.log()[-3000:]
    assert delivered["X-Mailward-Verdict"] == "accept"
    assert delivered["X-Mailward-Incident"].startswith("MW-")
    event = m.event_for(delivered["X-Mailward-Incident"])
    assert event["mailward"]["verdict"] == "accept"
    assert event["email"]["direction"] == "inbound"
    assert event["email"]["local_id"]  # Postfix queue ID on the summary line
    assert "parse" in event["mailward"]["timings_ms"]


def test_added_headers_have_a_space_after_the_colon(postfix, milter):
    milter()
    mid, raw = message()
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered_bytes(mid)
    assert delivered is not None, postfix.log()[-3000:]
    assert b"\nX-Mailward-Verdict: accept\n" in delivered
    assert re.search(rb"\nX-Mailward-Incident: MW-", delivered)
    assert b"X-Spam-Flag" not in delivered  # clean mail is not flagged


def test_tagged_spam_gets_spam_flag_and_subject_tag(postfix, milter):
    milter('[policy.inbound]\nspam_action = "tag"\n[headers]\nsubject_tag = "[SPAM] "\n')
    mid, raw = gtube_message()
    raw = raw.replace(b"Subject:", b"X-Spam-Flag: NO\r\nSubject:", 1)  # the sender's own word is dropped
    assert postfix.send(raw)[0] == 250
    delivered_raw = postfix.delivered_bytes(mid)
    assert delivered_raw is not None, postfix.log()[-3000:]
    assert b"\nX-Spam-Flag: YES\n" in delivered_raw
    delivered = postfix.delivered(mid)
    assert delivered.get_all("X-Spam-Flag") == ["YES"]
    assert delivered["Subject"].startswith("[SPAM] ") and delivered["Subject"].count("[SPAM]") == 1
    assert re.search(rb"\nSubject: \[SPAM\] \S", delivered_raw)


def test_spam_flag_and_subject_tag_can_be_turned_off(postfix, milter):
    milter('[policy.inbound]\nspam_action = "tag"\n[headers]\nspam_flag = false\n')
    mid, raw = gtube_message()
    subject = message_from_bytes(raw)["Subject"]
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None and delivered["X-Mailward-Verdict"] == "tag"
    assert delivered["X-Spam-Flag"] is None and delivered["Subject"] == subject


def test_forged_mailward_headers_are_replaced(postfix, milter):
    milter()
    mid, raw = message()
    raw = raw.replace(b"Subject:", b"X-Mailward-Verdict: accept-forged\r\nSubject:", 1)
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered.get_all("X-Mailward-Verdict") == ["accept"]


def test_eicar_is_rejected_generically_by_default(postfix, milter):
    milter()
    mid, raw = eicar_message()
    code, text = postfix.send(raw)
    assert code == 550
    assert "5.7.1" in text and "incident MW-" in text
    assert not INTERNALS.search(text)
    assert postfix.milter_action(mid) == "reject"  # the queue file is gone: never delivered
    assert postfix.delivered(mid, timeout=0) is None


def test_eicar_goes_to_quarantine_store_not_mailbox(postfix, milter, tmp_path):
    milter('[policy.inbound]\nmalware_action = "quarantine"\n')
    mid, raw = eicar_message()
    assert postfix.send(raw)[0] == 250  # accepted for quarantine, then discarded from the flow
    assert postfix.milter_action(mid) == "discard"
    assert postfix.delivered(mid, timeout=0) is None
    db = tmp_path / "state" / "quarantine" / "quarantine.sqlite3"
    assert db.exists()
    files = [
        p
        for p in (tmp_path / "state" / "quarantine").rglob("*")
        if p.is_file() and p != db and not p.name.startswith("quarantine.sqlite3")
    ]
    stored = [p.read_bytes() for p in files]
    assert any(mid.encode() in b for b in stored)
    assert all((p.stat().st_mode & 0o077) == 0 for p in files)


def test_quarantine_with_hold_puts_message_in_postfix_hold_queue(postfix, milter):
    milter('[policy.inbound]\nmalware_action = "quarantine"\n[quarantine]\nhold = true\n')
    mid, raw = eicar_message()
    assert postfix.send(raw)[0] == 250
    deadline = time.monotonic() + 10
    held = []
    while time.monotonic() < deadline and not held:
        held = postfix.queue("hold")
        time.sleep(0.2)
    assert held, postfix.log()[-2000:]
    subprocess_delete_hold(postfix)


def subprocess_delete_hold(postfix) -> None:
    import subprocess

    subprocess.run(["postsuper", "-c", str(postfix.conf), "-d", "ALL", "hold"], capture_output=True)


@pytest.mark.parametrize("action,expected_code", [("reject", 550), ("tag", 250)])
def test_gtube_is_handled_per_config(postfix, milter, action, expected_code):
    milter(f'[policy.inbound]\nspam_action = "{action}"\n')
    mid, raw = gtube_message()
    code, text = postfix.send(raw)
    assert code == expected_code
    if action == "tag":
        delivered = postfix.delivered(mid)
        assert delivered["X-Mailward-Verdict"] == "tag"
        assert "spam" in delivered["X-Mailward-Reasons"]
    else:
        assert "spam" in text and not INTERNALS.search(text)


def test_internal_failure_tempfails_with_generic_reply(postfix, milter, tmp_path):
    m = milter("", workers=1)
    # Replace the spool directory by a file: writing the body now fails inside the milter.
    spool = tmp_path / "state" / "spool"
    spool.rmdir()
    spool.write_text("not a directory")
    assert m.proc.poll() is None  # the milter keeps running
    mid, raw = message(body="x" * 3_000_000)  # above the 1 MiB spool threshold
    code, text = postfix.send(raw)
    assert code == 451
    assert "incident MW-" in text and not INTERNALS.search(text)
    assert postfix.milter_action(mid) == "reject"  # a 4xx at end of message: the queue file is gone
    assert postfix.delivered(mid, timeout=0) is None


def test_forged_fields_are_removed_from_an_on_error_accept_copy_too(postfix, milter, tmp_path):
    """A header callback that fails (the spool unwritable once the fields outgrow its threshold),
    answered with on_error = "accept": the fields forged in our name were delivered beside ours."""
    milter(
        '[policy.inbound]\non_error = "accept"\n[reputation]\nauthserv_id = "mx.mailward.test"\n',
        milter_toml="spool_threshold = 4096",
    )
    spool = tmp_path / "state" / "spool"
    spool.rmdir()
    spool.write_text("not a directory")
    forged = (
        "X-Mailward-Verdict: accept\r\nX-Mailward-Incident: MW-FORGED\r\nX-Spam-Flag: NO\r\n"
        "Authentication-Results: mx.mailward.test; dmarc=pass header.from=bank.example\r\n"
        + "".join(f"X-Pad-{i}: {'p' * 200}\r\n" for i in range(30))
    )
    mid, raw = message()
    raw = raw.replace(b"Subject:", forged.encode() + b"Subject:", 1)
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None, postfix.log()[-3000:]
    assert delivered.get_all("X-Mailward-Verdict") == ["accept"] and delivered["X-Mailward-Reasons"] == "error"
    assert "MW-FORGED" not in str(delivered.get_all("X-Mailward-Incident"))
    assert delivered["X-Spam-Flag"] is None and delivered["Authentication-Results"] is None


def test_failed_quarantine_write_tempfails(postfix, milter, tmp_path):
    milter('[policy.inbound]\nmalware_action = "quarantine"\n')
    qdir = tmp_path / "state" / "quarantine"
    shutil.rmtree(qdir)  # the disk "fails" under the running milter
    qdir.write_text("a file where the quarantine directory should be")
    mid, raw = eicar_message()
    code, text = postfix.send(raw)
    assert code == 451
    assert "incident MW-" in text and not INTERNALS.search(text)
    assert postfix.milter_action(mid) == "reject"  # a 4xx at end of message: the queue file is gone
    assert postfix.delivered(mid, timeout=0) is None


def test_unusable_quarantine_at_start_is_a_clear_error(postfix, milter, tmp_path):
    qdir = tmp_path / "qfile"
    qdir.write_text("not a directory")
    with pytest.raises(RuntimeError, match="cannot start: .*qfile"):
        milter(f'[quarantine]\ndirectory = "{qdir}"\n')


def test_milter_down_tempfails(postfix):
    postfix.milter_socket.unlink(missing_ok=True)  # no milter listening: Postfix must not deliver unchecked
    mid, raw = message()
    sender = f"down-{mid.strip('<>')}"
    code, _ = postfix.send(raw, mail_from=sender)
    assert code == 451
    assert "451 4.7.1" in postfix.refused_before_data(sender)  # no queue file was ever made
    assert postfix.delivered(mid, timeout=0) is None


def test_submission_gets_outbound_policy(postfix, milter):
    # Inbound spam is tagged, outbound spam rejected: the submission service (ORIGINATING) must be outbound.
    m = milter('[policy.inbound]\nspam_action = "tag"\n[policy.outbound]\nspam_action = "reject"\n')
    mid, raw = gtube_message(to="someone@remote.test")
    code, text = postfix.send(raw, port=postfix.submission_port, rcpts=("someone@remote.test",))
    assert code == 550
    incident = re.search(r"MW-[0-9A-F-]+", text).group(0)
    event = m.event_for(incident)
    assert event["email"]["direction"] == "outbound"


def test_mail_from_the_local_sendmail_command_is_outbound(postfix, milter):
    """non_smtpd_milters: the host's own sendmail has no SMTP client; it gets the outbound policy,
    while SMTP from the same loopback address stays inbound."""
    import subprocess

    m = milter('[policy.inbound]\nspam_action = "tag"\n[policy.outbound]\nspam_action = "tag"\n')
    mid, raw = gtube_message()
    sent = subprocess.run(
        ["sendmail", "-C", str(postfix.conf), "-f", "root@example.org", "user@example.test"],
        input=raw,
        capture_output=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr
    delivered = postfix.delivered(mid)
    assert delivered is not None, postfix.log()[-3000:]
    event = m.event_for(delivered["X-Mailward-Incident"])
    assert event["email"]["direction"] == "outbound"
    mid, raw = gtube_message()
    assert postfix.send(raw)[0] == 250
    event = m.event_for(postfix.delivered(mid)["X-Mailward-Incident"])
    assert event["email"]["direction"] == "inbound"


def test_sighup_reloads_without_dropping_the_milter(postfix, milter, tmp_path):
    m = milter('[policy.inbound]\nspam_action = "tag"\n')
    config = tmp_path / "mailward.toml"
    config.write_text(config.read_text().replace('spam_action = "tag"', 'spam_action = "reject"'))
    m.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "reloaded" not in m.log_path.read_text():
        time.sleep(0.1)
    assert m.proc.poll() is None
    mid, raw = gtube_message()
    assert postfix.send(raw)[0] == 550


def _libmilter_signal_thread(pid: int) -> int:
    """The thread of ``pid`` blocked in rt_sigtimedwait (x86-64 syscall 128): libmilter's signal thread."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:  # libmilter's pool threads come and go: one listed may be gone by now
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                if f.read().split()[:1] == ["128"]:
                    return int(tid)
        except OSError:
            continue
    raise AssertionError("no thread waits in rt_sigtimedwait")


def test_a_sighup_taken_by_libmilter_exits_for_a_restart(postfix, milter):
    """The kernel may hand a process's SIGHUP or SIGTERM to libmilter's own signal thread, which then
    stops the milter, and which of the two it was is lost (the same path: SIGHUP stands for both).

    The daemon must not look like a clean stop then (systemd's Restart=on-failure would leave mail
    tempfailed): it exits with status 75 and says why; the unit takes 75 as a clean stop when
    stopping, and restarts it otherwise (tests/test_contrib_service.py).
    """
    m = milter("")
    tid = _libmilter_signal_thread(m.proc.pid)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(234, m.proc.pid, tid, signal.SIGHUP) == 0  # tgkill(2) on x86-64
    assert m.proc.wait(timeout=30) == 75
    assert "did not handle" in m.log_path.read_text()


def test_reload_signals_during_a_reload_lose_no_mail(postfix, milter, tmp_path, monkeypatch):
    """SIGUSR1 reloads (libmilter never takes it). A burst of SIGUSR1 and SIGHUP while a reload starts
    new workers, with mail flowing: every message is accepted and screened, the milter keeps running,
    the burst folds into one more reload, and a stop is still clean."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(120)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    rule = tmp_path / "rules" / "a.yar"
    rule.parent.mkdir()
    rule.write_text("rule a { condition: false }\n")
    m = milter(f'[signatures]\nrules_dirs = ["{rule.parent}"]\n')
    assert "READY=1" in notify.recv(4096).decode()
    answers: list[tuple[str, int]] = []
    mailing = threading.Event()
    mailing.set()

    def mail() -> None:
        while mailing.is_set():
            mid, raw = message()
            answers.append((mid, postfix.send(raw)[0]))

    sender = threading.Thread(target=mail)
    sender.start()
    try:
        rule.write_text("rule b { condition: false }\n")  # the workers must reload: new processes
        m.signal(signal.SIGUSR1)
        assert notify.recv(4096).decode().startswith("RELOADING=1")
        for _ in range(50):  # while the new workers start and load
            m.signal(signal.SIGUSR1)
            m.signal(signal.SIGHUP)
        assert notify.recv(4096).decode() == "READY=1"
        assert notify.recv(4096).decode().startswith("RELOADING=1")  # the burst, folded into one reload
        assert notify.recv(4096).decode() == "READY=1"
    finally:
        mailing.clear()
        sender.join(timeout=120)
        notify.close()
    assert m.proc.poll() is None
    assert answers and all(code == 250 for _, code in answers), answers
    for mid, _ in answers:
        delivered = postfix.delivered(mid)
        assert delivered is not None and delivered["X-Mailward-Verdict"] == "accept", mid
    assert m.log_path.read_text().count("reloaded from") == 2
    assert m.stop() == 0


def test_broken_config_on_reload_keeps_running_policy(postfix, milter, tmp_path):
    m = milter('[policy.inbound]\nspam_action = "reject"\n')
    config = tmp_path / "mailward.toml"
    config.write_text(config.read_text() + "\n[policy.inbound.bogus]\n")
    m.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "reload refused" not in m.log_path.read_text():
        time.sleep(0.1)
    assert "reload refused" in m.log_path.read_text()
    mid, raw = gtube_message()
    assert postfix.send(raw)[0] == 550


def test_header_order_and_bytes_are_preserved_in_quarantine(postfix, milter, tmp_path):
    milter('[policy.inbound]\nmalware_action = "quarantine"\n')
    mid, raw = eicar_message()
    raw = raw.replace(b"Subject:", b"X-Folded: first line\r\n\tsecond line\r\nX-Tight:no-space\r\nSubject:", 1)
    assert postfix.send(raw)[0] == 250
    qdir = tmp_path / "state" / "quarantine"
    deadline = time.monotonic() + 5
    stored = None
    while time.monotonic() < deadline and stored is None:
        for p in qdir.rglob("*"):
            if p.is_file() and mid.encode() in p.read_bytes():
                stored = p.read_bytes()
        time.sleep(0.1)
    assert stored is not None
    assert b"X-Folded: first line\r\n\tsecond line\r\n" in stored
    assert b"X-Tight:no-space\r\n" in stored
    head, body = stored.split(b"\r\n\r\n", 1)
    assert raw.split(b"\r\n\r\n", 1)[1] in body.replace(b"\r\n..", b"\r\n.")


def test_released_message_is_delivered_once_and_not_quarantined_again(postfix, milter, tmp_path):
    from mailward.cli.main import main as cli

    m = milter(
        f'[policy.inbound]\nspam_action = "quarantine"\n'
        f'[quarantine]\nrelay_host = "127.0.0.1"\nrelay_port = {postfix.smtp_port}\n'
    )
    mid, raw = gtube_message()
    assert postfix.send(raw)[0] == 250
    assert postfix.milter_action(mid) == "discard"
    assert postfix.delivered(mid, timeout=0) is None
    event = m.event_where(lambda e: e["mailward"]["verdict"] == "quarantine")
    qid = event["mailward"]["quarantine_id"]
    config = str(tmp_path / "mailward.toml")
    assert cli(["--config", config, "quarantine", "--analyst", "anna", "release", qid]) == 0
    delivered = postfix.delivered(mid)
    assert delivered is not None, postfix.log()[-2000:]
    assert delivered["X-Mailward-Verdict"] == "tag"
    assert "released" in delivered["X-Mailward-Reasons"]
    assert delivered["X-Mailward-Release"] is None  # our marks never reach the mailbox
    released = [e for e in m.events() if e["mailward"].get("released_from") == qid]
    assert len(released) == 1
    assert cli(["--config", config, "quarantine", "release", qid]) == 3  # never twice


def test_forged_authentication_results_claiming_our_id_are_removed(postfix, milter):
    milter('[reputation]\nauthserv_id = "mx.mailward.test"\n')
    mid, raw = message()
    forged = (
        b"Authentication-Results: mx.mailward.test; dmarc=pass header.from=bank.example\r\n"
        b"Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=a@example.org\r\n"
    )
    raw = raw.replace(b"Subject:", forged + b"Subject:", 1)
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    values = delivered.get_all("Authentication-Results") or []
    assert not any(v.startswith("mx.mailward.test") for v in values)
    assert any(v.startswith("relay.example.net") for v in values)


def test_rule_files_are_hot_reloaded_and_a_broken_edit_never_disarms(postfix, milter, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "local.yar").write_text(
        'rule Local_Placeholder { strings: $a = "never-in-any-mail-1f3a" condition: $a }\n'
    )
    m = milter(f'[signatures]\nrules_dirs = ["{rules}"]\n')
    marker = "Quarterly-Marker-7c1d9e"
    mid, raw = message(body=f"see {marker}\n")
    assert postfix.send(raw)[0] == 250
    (rules / "local.yar").write_text(f'rule Local_Marker {{ strings: $a = "{marker}" condition: $a }}\n')
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and m.log_path.read_text().count("reloaded from") < 1:
        time.sleep(0.2)
    mid, raw = message(body=f"see {marker}\n")
    assert postfix.send(raw)[0] == 550  # the new rule is live without a restart
    (rules / "local.yar").write_text("rule Broken { condition: \n")  # a bad edit
    deadline = time.monotonic() + 30
    while (
        time.monotonic() < deadline
        and m.log_path.read_text().count("reloaded from") < 2
        and "reload refused" not in m.log_path.read_text()
    ):
        time.sleep(0.2)
    assert m.proc.poll() is None
    mid, raw = eicar_message()
    assert postfix.send(raw)[0] == 550  # shipped rules still armed
