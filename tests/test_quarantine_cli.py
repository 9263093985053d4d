"""`mailward quarantine ...` in process, on both backends: review, release, label, export, purge, audit, digest."""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import io
import json
import os
import stat
import time
import zipfile

import pytest

from mailward.cli.quarantine import parse_age, parse_when, register
from mailward.config import load_settings
from mailward.envelope import Direction
from mailward.evidence import RELEASE_HEADER
from mailward.quarantine import open_store
from mailward.quarantine.release import ReleaseVerifier
from mailward.source import MessageSource
from support.mail import plain_mail as message
from support.quarantine import envelope, malware_case, quarantine_cli, spam_case


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.js", "WScript.Echo(1)")
    return buf.getvalue()


ZIP = _zip()
HOSTILE = (
    b'From: "Evil\x1b]0;pwned\x07" <evil@bad.test>\r\nTo: bob@example.net\r\n'
    b"Subject: =?utf-8?q?Invoice_=E2=80=AEfdp.exe?=\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Open the file\x1b[2J\x1b[31m now\r\nTo: fake-header-line\r\n"
    b'--b1\r\nContent-Type: text/html\r\n\r\n<img src="http://tracker.test/x">\r\n'
    b'--b1\r\nContent-Type: application/pdf; name="invoice.pdf"\r\n'
    b'Content-Disposition: attachment; filename="invoice.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    + base64.encodebytes(ZIP).replace(b"\n", b"\r\n")
    + b"--b1--\r\n"
)


@pytest.fixture
def settings(request, backend, tmp_path, smtp_sink):
    quarantine = {"relay_port": smtp_sink.port, "relay_timeout": 10.0}
    if backend == "postgresql":
        quarantine |= {"backend": "postgresql", "dsn": request.getfixturevalue("fresh_pg_dsn")}
    return load_settings(overrides={"state_dir": str(tmp_path / "state"), "quarantine": quarantine})


@pytest.fixture
def cli(settings, capsys):
    return quarantine_cli(settings, capsys)


@pytest.fixture
def put(settings):
    def put_one(raw: bytes = None, case=None, env=None) -> str:
        v, e = (case or spam_case)()
        with open_store(settings) as store:
            return store.put(MessageSource.of(raw if raw is not None else message()), env or envelope(), v, e)

    return put_one


def test_list_table_and_json_with_filters(cli, put):
    spam = put(message("Cheap offer \x1b[31m"))
    mal = put(message("Invoice"), malware_case, envelope(sender="billing@corp.test", direction=Direction.OUTBOUND))

    code, out, _ = cli("list")
    assert code == 0 and spam in out and mal in out
    assert "\x1b" not in out and "\\x1b" in out
    code, out, _ = cli("list", "--json", "--reason", "malware")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == [mal]
    assert rows[0]["findings"][0]["location"] == "invoice.zip > eicar.com"
    assert [json.loads(x)["id"] for x in cli("list", "--json", "--direction", "inbound")[1].splitlines()] == [spam]
    assert [json.loads(x)["id"] for x in cli("list", "--json", "--sender", "BILLING")[1].splitlines()] == [mal]
    assert cli("list", "--json", "--since", "2999-01-01")[1] == ""
    assert len(cli("list", "--json", "--since", "1h", "--verdict", "quarantine")[1].splitlines()) == 2
    assert len(cli("list", "--json", "--limit", "1")[1].splitlines()) == 1


def test_a_negative_row_limit_is_a_usage_error(cli, capsys):
    """It reached PostgreSQL ("LIMIT must not be negative") as a traceback."""
    with pytest.raises(SystemExit) as exit_:
        cli("list", "--limit", "-1")
    assert exit_.value.code == 2 and "not a number of rows: '-1'" in capsys.readouterr().err


def test_show_renders_hostile_content_inertly(cli, put):
    qid = put(HOSTILE)
    code, out, _ = cli("show", qid)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out
    assert "  | Open the file\\x1b[2J\\x1b[31m now" in out
    assert "  | To: fake-header-line" in out  # body lines cannot pose as headers
    assert '"invoice.pdf" attachment  real: application/zip  (type differs from declared)' in out
    assert "<img src=" in out and "shown as source" in out  # HTML as text, never rendered
    assert "[high] spam gtube (gtube) at part 1" in out
    assert "Spam score:     0.970 (model nb-1)" in out and "+2.500  viagra" in out

    raw_json = cli("show", qid, "--json")[1]
    assert not any(ch in raw_json for ch in "\x1b\x07\u202e")  # escaped in JSON too
    data = json.loads(raw_json)
    pdf = [p for p in data["parts"] if p["filename"] == "invoice.pdf"][0]
    assert pdf["declared_type"] == "application/pdf" and pdf["real_type"] == "application/zip"
    assert len(pdf["sha256"]) == 64 and pdf["size"] == len(ZIP)
    assert [p["part"] for p in data["parts"]] == ["message", "1", "2", "3"]


def test_release_through_relay_marks_and_audits(cli, put, smtp_sink, settings):
    qid = put()
    code, out, _ = cli("--analyst", "carol", "release", qid)
    assert code == 0 and "released" in out
    [(sender, rcpts, data)] = smtp_sink.received
    assert rcpts == ("bob@example.net",)
    msg = email.message_from_bytes(data)
    verifier = ReleaseVerifier.from_settings(settings)
    assert verifier.verify(msg[RELEASE_HEADER], data, rcpts).quarantine_id == qid
    assert cli("release", qid)[0] == 3  # already released: nothing sent again
    assert len(smtp_sink.received) == 1
    hist = cli("history", qid, "--json")[1].splitlines()
    release_event = json.loads(hist[-1])
    assert release_event["action"] == "release" and release_event["actor"] == "carol"
    assert release_event["host"] and "bob@example.net" in release_event["detail"]


def test_release_of_malware_needs_force(cli, put, smtp_sink):
    qid = put(case=malware_case)
    code, _, err = cli("release", qid)
    assert code == 3 and "--force" in err and smtp_sink.received == []
    assert cli("release", qid, "--force")[0] == 0 and len(smtp_sink.received) == 1


def test_label_export_delete_and_history(cli, put, tmp_path):
    qid = put(HOSTILE)
    assert cli("label", qid, "spam")[0] == 0
    assert cli("label", "MW-NOPE", "ham")[0] == 1
    target = tmp_path / "sample.eml"
    assert cli("export", qid, "-o", str(target))[0] == 0
    assert target.read_bytes() == HOSTILE and stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert cli("export", qid, "-o", str(target))[0] == 1  # never overwrites
    assert cli("delete", qid)[0] == 0
    assert cli("show", qid)[0] == 1
    assert cli("delete", qid)[0] == 1
    code, out, _ = cli("history", qid)
    assert code == 0
    assert [line.split()[3] for line in out.splitlines()] == ["quarantine", "label", "export", "delete"]


def test_label_phish_is_its_own_label(cli, put):
    qid = put()
    code, out, _ = cli("label", qid, "phish")
    assert code == 0 and "labelled" in out and "phish" in out
    code, out, _ = cli("list")
    row = next(line for line in out.splitlines() if line.startswith(qid))
    assert " phish " in row
    assert json.loads(cli("history", qid, "--json")[1].splitlines()[-1])["detail"] == "phish"
    with pytest.raises(SystemExit):
        cli("label", qid, "scam")


def test_list_has_a_recipient_column(cli, put):
    one = put(env=envelope(recipients=("carol@example.net",)))
    many = put(env=envelope(recipients=("dave@example.net", "erin@example.net", "frank@example.net")))
    out = cli("list")[1].splitlines()
    assert "RECIPIENT" in out[0].split()
    assert "carol@example.net" in next(line for line in out if line.startswith(one))
    row = next(line for line in out if line.startswith(many))
    assert "dave@example.net +2" in row and "erin@" not in row


def test_export_to_stdout_is_byte_exact(settings, put, capsysbinary):
    qid = put(HOSTILE)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["quarantine", "export", qid])
    assert args.handler(args, settings) == 0
    assert capsysbinary.readouterr().out == HOSTILE


def test_purge_uses_retention_or_older_than(cli, put, settings):
    qid = put()
    assert cli("purge")[0] == 0  # 30 days retention: too young
    with open_store(settings) as store:
        assert store.get(qid) is not None
    code, out, _ = cli("purge", "--older-than", "0")  # everything received before now
    assert code == 0 and "purged 1" in out
    assert json.loads(cli("history", qid, "--json")[1].splitlines()[-1])["action"] == "purge"


def test_digest_to_contacts_and_recipients(cli, put, smtp_sink):
    a = put(message("For bob"), env=envelope(recipients=("bob@example.net",)))
    put(message("Outbound"), env=envelope(recipients=("ext@else.test",), direction=Direction.OUTBOUND))
    code, out, _ = cli("digest", "--to", "soc@example.net")
    assert code == 0 and "sent 2 digest(s)" in out
    by_rcpt = {
        rcpts[0]: email.message_from_bytes(data, policy=email.policy.default) for _, rcpts, data in smtp_sink.received
    }
    assert set(by_rcpt) == {"soc@example.net", "bob@example.net"}  # never the outbound recipient
    bob = by_rcpt["bob@example.net"].get_body(("plain",)).get_content()
    assert a in bob and "For bob" in bob and "Outbound" not in bob
    assert "Outbound" in by_rcpt["soc@example.net"].get_body(("plain",)).get_content()
    assert any("digest to bob@example.net" in line for line in cli("history", a)[1].splitlines())


def test_bad_ids_and_durations_fail_cleanly(cli):
    assert cli("show", "../../etc/passwd")[0] == 1
    assert cli("purge", "--older-than", "soon")[0] == 2
    assert cli("list", "--since", "yesterday")[0] == 2


def test_time_parsing():
    assert parse_age("30d") == 30 * 86400 and parse_age("12h") == 43200 and parse_age("2") == 172800
    assert parse_when("2024-05-01", 0) == 1714521600
    assert parse_when("2024-05-01T02:00+02:00", 0) == 1714521600
    now = time.time()
    assert parse_when("1h", now) == now - 3600


def test_actor_names_the_person_and_where_they_came_from(monkeypatch):
    import pwd

    from mailward.actor import Actor

    me = pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("USER", "spoofed")
    monkeypatch.setenv("SSH_CONNECTION", "192.0.2.50 51234 192.0.2.1 22")
    monkeypatch.delenv("SUDO_USER", raising=False)
    actor = Actor.current()
    assert actor.name == me and actor.origin == "ssh 192.0.2.50" and actor.host
    named = Actor.current("carol")
    assert named.name == "carol" and f"os user {me}" in named.origin
    if os.getuid() == 0:
        monkeypatch.setenv("SUDO_USER", "alice")
        assert Actor.current().name == "alice" and "sudo by alice" in Actor.current().origin
